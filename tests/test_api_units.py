"""Fast, in-process checks of the API's building blocks: live previews, styles, the job queue, hostile-input guards."""

from __future__ import annotations

import base64
import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules import previews, styles
from modules.api import safety
from modules.call_queue import CallQueue, DuplicateTaskError


# ------------------------------------------------------------------------------------------------------ previews
def test_cheap_preview_equals_a_per_pixel_computation() -> None:
    """Independent: plain Python arithmetic per pixel with A1111's published table, uint8 by truncation."""
    a1111_table = [[0.298, 0.207, 0.208], [0.187, 0.286, 0.173], [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(4, 5, 7, generator=generator) * 2
    got = previews.latent_to_rgb(latent)
    assert got.shape == (5, 7, 3) and got.dtype == np.uint8
    values = latent.tolist()
    for y in range(5):
        for x in range(7):
            for channel in range(3):
                mixed = sum(values[c][y][x] * a1111_table[c][channel] for c in range(4))
                unit = min(max((mixed + 1.0) / 2.0, 0.0), 1.0)
                assert abs(int(got[y, x, channel]) - int(255.0 * unit)) <= 1  # float32 vs float64 rounding at .0


def test_preview_of_a_batch_is_a_grid_and_encodes_as_png() -> None:
    latents = torch.zeros(4, 4, 8, 8)
    image = previews.preview_image(latents)
    assert image.size == (16, 16)  # 2x2 grid of latent-sized pictures
    assert np.all(np.asarray(image) == 127)  # zero latent → mid grey
    decoded = Image.open(io.BytesIO(base64.b64decode(previews.png_base64(image))))
    assert decoded.format == "PNG" and decoded.size == (16, 16)
    with pytest.raises(ValueError, match="shape"):
        previews.latent_to_rgb(torch.zeros(3, 8, 8))


# -------------------------------------------------------------------------------------------------------- styles
def write_styles(path: Path, rows: list[tuple[str, ...]], header: str = "name,prompt,negative_prompt") -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8-sig", newline="") as f:
        f.write(header + "\r\n")
        csv.writer(f).writerows(rows)
    return path


def test_style_placeholder_and_append_rules() -> None:
    assert styles.merge_prompts("masterpiece, {prompt}, 8k", "a cat") == "masterpiece, a cat, 8k"
    assert styles.merge_prompts("masterpiece", " a cat ") == "a cat, masterpiece"
    assert styles.merge_prompts("masterpiece", "") == "masterpiece"
    assert styles.merge_prompts("", "a cat") == "a cat"
    assert styles.apply_styles_to_prompt("cat", ["{prompt} in the rain", "oil painting"]) == "cat in the rain, oil painting"


def test_style_database_reads_several_files_comments_old_format_and_saves(tmp_path: Path) -> None:
    first = write_styles(tmp_path / "styles.csv", [("cinema", "cinematic, {prompt}", "blurry"), ("# note", "x", ""),
                                                   ("dup", "from first", "")])
    write_styles(tmp_path / "more" / "a.csv", [("dup", "from second", "")])
    write_styles(tmp_path / "more" / "b.csv", [("old", "old text")], header="name,text")
    database = styles.StyleDatabase([first, tmp_path / "more" / "*.csv"])
    assert [s.name for s in database.styles] == ["cinema", "dup", "old"]
    assert database.get("dup").prompt == "from second" and database.get("old").prompt == "old text"
    assert database.apply("a cat", "low quality", ["cinema", "old"]) == ("cinematic, a cat, old text", "low quality, blurry")
    with pytest.raises(styles.StyleNotFoundError, match="'nope' not found.*'cinema'"):
        database.apply("x", "", ["nope"])

    database.save_style("new", "p, {prompt}", "n")
    database.delete_style("cinema")
    again = styles.StyleDatabase([first])
    assert [(s.name, s.prompt, s.negative_prompt) for s in again.styles] == [("dup", "from first", ""), ("new", "p, {prompt}", "n")]
    assert (tmp_path / "styles.csv.bak").exists()
    assert first.read_bytes().startswith(b"\xef\xbb\xbfname,prompt,negative_prompt\r\n")  # A1111's utf-8-sig CSV


def test_unreadable_styles_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "styles.csv").write_bytes(b"name,prompt\n\xff\xfe\x00bad")
    assert styles.StyleDatabase([tmp_path / "styles.csv"]).styles == []
    assert styles.StyleDatabase([tmp_path / "missing.csv"]).styles == []


# --------------------------------------------------------------------------------------------------------- queue
def test_queue_ids_positions_force_id_and_finished() -> None:
    queue = CallQueue()
    gate = threading.Event()
    try:
        first, running = queue.submit(gate.wait, 30)
        while queue.running != first:
            time.sleep(0.01)
        second, _ = queue.submit(lambda: "b", task_id="mine")
        third, last = queue.submit(lambda: "c")
        assert first == "task(1)" and second == "mine" and third == "task(2)"
        assert queue.status("mine") == (False, 0, 2, False)
        assert queue.status(third) == (False, 1, 2, False)
        assert queue.status(first)[0] is True and queue.waiting == ["mine", third]
        with pytest.raises(DuplicateTaskError):
            queue.submit(lambda: None, task_id="mine")
        gate.set()
        assert last.result(timeout=30) == "c" and running.result(timeout=30) is True
        assert queue.status("mine") == (False, None, 0, True) and queue.running is None
    finally:
        gate.set()
        queue.shutdown()


# ---------------------------------------------------------------------------------------------------- the guards
@pytest.mark.parametrize("name", ["../x", "a/../../b", "..\\evil", "/etc/passwd", "C:\\Windows\\x", "\\\\host\\share",
                                  "x\x00y", "..%2Fsecret", "%2e%2e/secret", "%252e%252e%252fsecret", "%00", "sub/.."])
def test_path_shaped_names_are_refused(name: str) -> None:
    with pytest.raises(safety.NameRefusedError):
        safety.check_name("field", name)


@pytest.mark.parametrize("name", ["tiny.safetensors", "sub/model.safetensors [abc]", "my..lora", "a%b", "name with space"])
def test_plain_names_pass(name: str) -> None:
    assert safety.check_name("field", name) == name


def test_check_inside_follows_links(tmp_path: Path) -> None:
    library, outside = tmp_path / "data" / "lib", tmp_path / "outside"
    library.mkdir(parents=True)
    outside.mkdir()
    (outside / "x.bin").write_bytes(b"x")
    (library / "link.bin").symlink_to(outside / "x.bin")
    (library / "own.bin").write_bytes(b"y")
    safety.check_inside("f", "own", library / "own.bin", [library])
    with pytest.raises(safety.OutsideLibraryError, match="outside the data dir"):
        safety.check_inside("f", "link", library / "link.bin", [tmp_path / "data", library])
    safety.check_inside("f", "link", library / "link.bin", [library], allowed=[outside / "x.bin"])


def test_json_depth_scan() -> None:
    assert not safety.json_too_deep(b'{"a": [1, {"b": "[[[[[[[[[[["}]}', limit=3)
    assert safety.json_too_deep(b"[" * 5 + b"]" * 5, limit=4)
    assert not safety.json_too_deep(b"[" * 4 + b"]" * 4, limit=4)
    assert not safety.json_too_deep(b'{"s": "\\"[[[[[[[[[[" }', limit=2)  # brackets in an escaped string
    assert not safety.json_too_deep(b"[[[[[[}", limit=2)  # malformed: left to the JSON parser
    big = b'{"image": "' + b"A" * 20_000_000 + b'", "x": ' + b"[" * 100 + b"]" * 100 + b"}"
    start = time.perf_counter()
    assert safety.json_too_deep(big, limit=64)
    assert time.perf_counter() - start < 5
