"""Textual-inversion files in every real format, A1111's image-embedded data, and the embedding database.

Files are written with the same tools that make them in the wild (``torch.save``, ``safetensors``, PIL). The
pixel layout is checked three ways: a round trip through our encoder, a naive decoder written in this file
straight from A1111's description (loop LCG, no shared code), and A1111's published LCG test vector. No real
A1111-produced embedding PNG was available to use as a fixture (see the report in the module docstrings).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import save_file

from modules.hashes import HashCache
from modules.textual_inversion import image_embedding
from modules.textual_inversion.database import EmbeddingDatabase, find_at
from modules.textual_inversion.formats import (
    EmbeddingData, EmbeddingFileError, embedding_from_data, read_embedding_file, to_a1111_dict,
)

REPO = Path(__file__).resolve().parent.parent
SD1 = 768

#: A1111's image_embedding.py self-test: the first 100 LCG outputs and the sum of the next 100000.
A1111_LCG_FIRST_100 = [
    253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177, 95, 130, 79, 78, 14, 52, 215, 220, 194, 126, 28, 240,
    179, 160, 153, 149, 50, 105, 14, 21, 218, 199, 18, 54, 198, 193, 38, 128, 19, 53, 195, 124, 75, 205, 12, 6, 145,
    0, 28, 30, 148, 8, 45, 218, 171, 55, 249, 97, 166, 12, 35, 0, 41, 221, 122, 215, 170, 31, 113, 186, 97, 119, 31,
    23, 185, 66, 140, 30, 41, 37, 63, 137, 109, 216, 55, 159, 145, 82, 204, 86, 73, 222, 44, 198, 118, 240, 97,
]
A1111_LCG_NEXT_100000_SUM = 12731374


def vectors(n: int, width: int = SD1, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def a1111_dict(vec: torch.Tensor, name: str = "stored-name", step: int | None = 1500) -> dict:
    """What A1111's ``Embedding.save`` writes."""
    return {"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": name, "step": step,
            "sd_checkpoint": "cc6cb27103", "sd_checkpoint_name": "v1-5-pruned-emaonly"}


def picture(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    """A noisy picture with no black pixels (so only the separators are black columns)."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(17, 255, size=(height, width, 3), dtype=np.uint8), "RGB")


def write_pt(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(REPO / "configs" / "sd15" / "tokenizer"), local_files_only=True)


# --- reference decoder, written from A1111's description only -----------------------------------------------------


def naive_lcg(count: int) -> list[int]:
    state, out = 0, []
    for _ in range(count):
        state = (1664525 * state + 1013904223) % 2**32
        out.append(state % 255)
    return out


def naive_decode(image: Image.Image) -> tuple[bytes, int, int]:
    """(raw bytes, low-strip width, high-strip start) of an image with pixel-embedded data."""
    px = np.asarray(image.convert("RGB")).astype(np.int64)
    h, w, _ = px.shape
    black = [x for x in range(w) if not px[:, x, :].any()]
    left, right = min(black), max(black)
    lower, upper = px[:, :left, :] & 15, px[:, right + 1:, :] & 15
    noise = np.array(naive_lcg(lower.size)).reshape(lower.shape) & 15
    raw = bytes((((upper ^ noise) << 4) | (lower ^ noise)).reshape(-1).astype(np.uint8).tolist())
    return raw, left, right + 1


# --- the LCG and the image layout -------------------------------------------------------------------------------


def test_lcg_matches_a1111_published_test_vector():
    stream = image_embedding.lcg_stream(100 + 100000)
    assert stream[:100].tolist() == A1111_LCG_FIRST_100
    assert int(stream[100:].astype(np.int64).sum()) == A1111_LCG_NEXT_100000_SUM
    assert stream[:5000].tolist() == naive_lcg(5000)


def test_pixel_layout_matches_a1111_description():
    vec = vectors(2, seed=3)
    data = a1111_dict(vec, name="probe")
    base = picture(64, 48)
    out = image_embedding.insert_pixel_data(base, data)
    compressed = zlib.compress(json.dumps(data, default=lambda t: {"TORCHTENSOR": t.tolist()}).encode(), level=9)

    raw, low_width, high_start = naive_decode(out)
    h = 48
    size = len(compressed) + (h - len(compressed) % h)
    size += 3 * h - size % (3 * h)
    assert low_width == size // (3 * h) and out.size == (64 + 2 * low_width + 2, h)
    assert high_start == low_width + 1 + 64 + 1
    # The plane is padded by repeating the compressed stream (numpy.resize), and inflating ignores the tail.
    assert raw == (compressed * (size // len(compressed) + 1))[:size]
    assert json.loads(zlib.decompress(raw))["string_to_param"]["*"]["TORCHTENSOR"] == vec.tolist()
    # The picture sits untouched between two pure black separator columns.
    px = np.asarray(out)
    assert np.array_equal(px[:, low_width + 1:low_width + 65], np.asarray(base))
    assert not px[:, low_width].any() and not px[:, high_start - 1].any()
    # High nibbles carry the dot decoration: the dot centred at (5, 5) is the 2nd column's 2nd dot (index ny + 1).
    magnitude = np.abs(vec[0].double().numpy()[:1024])
    greys = (magnitude / magnitude.max() * 255).astype(np.uint8)
    ny = len(range(-6, h, 8))
    assert px[5, 5, 0] & 0xF0 == greys[ny + 1] & 0xF0
    assert px[5, high_start + 5, 0] & 0xF0 == greys[::-1][ny + 1] & 0xF0


def test_text_chunk_is_base64_json_with_torchtensor_lists(tmp_path: Path):
    vec = vectors(3, seed=4)
    path = tmp_path / "chunk.png"
    image_embedding.save_embedding_png(path, picture(), a1111_dict(vec), pixels=False)
    with Image.open(path) as image:
        stored = json.loads(base64.b64decode(image.text["sd-ti-embedding"]))
    assert stored["string_to_param"]["*"] == {"TORCHTENSOR": vec.tolist()}
    assert stored["step"] == 1500 and stored["string_to_token"] == {"*": 265}


def test_pixel_encoding_is_deterministic_through_a_decode_cycle():
    data = a1111_dict(vectors(2, seed=5))
    first = image_embedding.insert_pixel_data(picture(), data)
    again = image_embedding.insert_pixel_data(picture(), image_embedding.extract_pixel_data(first))
    assert np.array_equal(np.asarray(first), np.asarray(again))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(height=st.integers(16, 80), width=st.integers(8, 40), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_pixel_round_trip_any_size(height: int, width: int, n: int, seed: int):
    vec = vectors(n, seed=seed)
    out = image_embedding.insert_pixel_data(picture(width, height, seed), a1111_dict(vec, name=f"n{n}"))
    decoded = image_embedding.extract_pixel_data(out)
    assert decoded["name"] == f"n{n}"
    assert torch.equal(decoded["string_to_param"]["*"].float(), vec)


def test_plain_pictures_carry_no_pixel_data():
    assert image_embedding.extract_pixel_data(picture()) is None
    striped = np.asarray(picture()).copy()
    striped[:, 10] = 0
    striped[:, 30] = 0  # two black columns, but no zlib stream between them
    assert image_embedding.extract_pixel_data(Image.fromarray(striped)) is None


# --- every file format --------------------------------------------------------------------------------------------


def test_a1111_pt_uses_file_stem_and_reads_metadata(tmp_path: Path):
    vec = vectors(4, seed=1)
    got = read_embedding_file(write_pt(tmp_path / "MyStyle.pt", a1111_dict(vec.requires_grad_(), name="other")))
    assert got.name == "MyStyle" and got.layout == "textual_inversion"
    assert got.vectors.dtype == torch.float32 and not got.vectors.requires_grad
    assert torch.equal(got.vectors, vec.detach())
    assert (got.step, got.sd_checkpoint, got.sd_checkpoint_name) == (1500, "cc6cb27103", "v1-5-pruned-emaonly")


def test_original_ti_parameterdict_pt(tmp_path: Path):
    vec = vectors(1, seed=2)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vec.clone())})
    got = read_embedding_file(write_pt(tmp_path / "old.pt", {"string_to_token": {"*": torch.tensor(265)},
                                                              "string_to_param": params}))
    assert got.name == "old" and torch.equal(got.vectors, vec) and got.step is None


def test_diffusers_bin_single_vector(tmp_path: Path):
    vec = vectors(1, seed=3)[0]
    got = read_embedding_file(write_pt(tmp_path / "learned_embeds.bin", {"<cat-toy>": vec}))
    assert got.name == "learned_embeds" and got.layout == "diffusers"
    assert got.vectors.shape == (1, SD1) and torch.equal(got.vectors[0], vec)


def test_safetensors_emb_params_fp16_and_other_single_key(tmp_path: Path):
    vec = vectors(8, seed=4).half()
    save_file({"emb_params": vec}, str(tmp_path / "neg.safetensors"))
    save_file({"<tok>": vec[:2].contiguous()}, str(tmp_path / "tok.safetensors"))
    got = read_embedding_file(tmp_path / "neg.safetensors")
    assert got.name == "neg" and got.vectors.dtype == torch.float32 and got.vectors.device.type == "cpu"
    assert torch.equal(got.vectors, vec.float())
    assert read_embedding_file(tmp_path / "tok.safetensors").vectors.shape == (2, SD1)


def test_sdxl_file_is_recognised_as_such(tmp_path: Path):
    g, l = vectors(2, 1280, seed=5), vectors(2, 768, seed=6)
    save_file({"clip_g": g, "clip_l": l}, str(tmp_path / "xl.safetensors"))
    got = read_embedding_file(tmp_path / "xl.safetensors")
    assert got.layout == "sdxl" and got.vectors.shape == (2, 2048)
    assert torch.equal(got.vectors[:, :1280], g) and torch.equal(got.vectors[:, 1280:], l)


def test_images_text_chunk_and_pixels_both_decode(tmp_path: Path):
    vec = vectors(2, seed=7)
    image_embedding.save_embedding_png(tmp_path / "both.png", picture(), a1111_dict(vec, name="from-data"))
    image_embedding.save_embedding_png(tmp_path / "chunk.png", picture(), a1111_dict(vec, name="c"), pixels=False)
    image_embedding.save_embedding_png(tmp_path / "pixels.png", picture(), a1111_dict(vec, name="p"), text=False)
    image_embedding.insert_pixel_data(picture(), a1111_dict(vec, name="w")).save(tmp_path / "pix.webp", lossless=True)
    nameless = {"string_to_param": {"*": vec}}
    image_embedding.save_embedding_png(tmp_path / "nameless.png", picture(), nameless, text=False)
    expected = {"both.png": "from-data", "chunk.png": "c", "pixels.png": "p", "pix.webp": "w", "nameless.png": "nameless"}
    for filename, name in expected.items():
        got = read_embedding_file(tmp_path / filename)
        assert got.name == name, filename
        assert torch.equal(got.vectors, vec), filename
    with Image.open(tmp_path / "pixels.png") as image:
        assert "sd-ti-embedding" not in image.text  # really decoded from the pixels


def test_images_without_embedding_and_previews_are_not_embeddings(tmp_path: Path):
    picture().save(tmp_path / "photo.png")
    image_embedding.save_embedding_png(tmp_path / "thing.preview.png", picture(), a1111_dict(vectors(1)))
    assert read_embedding_file(tmp_path / "photo.png") is None
    assert read_embedding_file(tmp_path / "thing.preview.png") is None


def test_to_a1111_dict_round_trips_through_pt(tmp_path: Path):
    data = EmbeddingData("x", vectors(3, seed=8), step=12, sd_checkpoint="abc", sd_checkpoint_name="model")
    got = read_embedding_file(write_pt(tmp_path / "x.pt", to_a1111_dict(data)))
    assert torch.equal(got.vectors, data.vectors) and (got.step, got.sd_checkpoint) == (12, "abc")


@pytest.mark.parametrize(("data", "reason"), [
    ({"string_to_param": {"a": vectors(1), "b": vectors(1)}}, "exactly one token"),
    ({"string_to_param": {}}, "holds no tensor"),
    ({"string_to_param": {"*": vectors(1).reshape(1, 1, SD1)}}, r"not \(vectors, width\)"),
    ({"clip_g": vectors(2, 1280), "clip_l": vectors(1)}, "clip_l vectors"),
    ({"lora_unet_x.alpha": "x"}, "not a textual-inversion embedding"),
    ([vectors(1)], "not an embedding dictionary"),
])
def test_bad_layouts_are_refused_with_a_reason(data: object, reason: str):
    with pytest.raises(EmbeddingFileError, match=reason):
        embedding_from_data(data, "f", "f.pt")


# --- the database -------------------------------------------------------------------------------------------------


class Evil:
    """Pickles to a call that would create the marker file when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def build_library(root: Path) -> dict[str, Path]:
    """A folder with one file of each kind, good and bad, as a user's embeddings/ might look."""
    files = {
        "good": write_pt(root / "good.pt", a1111_dict(vectors(2, seed=10))),
        "bin": write_pt(root / "concepts" / "learned_embeds.bin", {"<x>": vectors(1, seed=11)[0]}),
        "st": root / "neg.safetensors",
        "wide": write_pt(root / "sd2" / "wide.pt", a1111_dict(vectors(1, 1024, seed=12))),
        "xl": root / "sdxl" / "xl.safetensors",
        "corrupt": root / "corrupt.pt",
        "truncated": root / "truncated.safetensors",
        "unknown": write_pt(root / "unknown.pt", {"hello": "world", "n": 3}),
        "two": write_pt(root / "two.bin", {"<a>": vectors(1)[0], "<b>": vectors(1)[0]}),
        "notimage": root / "broken.png",
        "photo": root / "photo.png",
    }
    save_file({"emb_params": vectors(3, seed=13)}, str(files["st"]))
    files["xl"].parent.mkdir()
    save_file({"clip_g": vectors(1, 1280), "clip_l": vectors(1, 768)}, str(files["xl"]))
    files["corrupt"].write_bytes(b"garbage, not a pickle " * 8)
    save_file({"emb_params": vectors(4)}, str(files["truncated"]))
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:200])
    files["notimage"].write_bytes(b"<html>404 not found</html>")
    picture().save(files["photo"])
    (root / "empty.pt").write_bytes(b"")
    write_pt(root / ".hidden" / "secret.pt", a1111_dict(vectors(1)))
    image_embedding.save_embedding_png(root / "good.preview.png", picture(), a1111_dict(vectors(1), name="prev"))
    return files


def test_library_loads_good_files_skips_wrong_width_and_reports_errors(tmp_path: Path):
    root = tmp_path / "embeddings"
    marker = tmp_path / "marker.txt"
    files = build_library(root)
    files["evil"] = write_pt(root / "evil.pt", {"string_to_param": {"*": Evil(marker)}})
    with zipfile.ZipFile(files["evil"]) as archive:  # the file really carries the call
        assert any(b"exec" in archive.read(n) for n in archive.namelist() if n.endswith(".pkl"))

    db = EmbeddingDatabase(root, HashCache(None))
    assert db.refresh(SD1) is True

    assert list(db.loaded) == ["good", "learned_embeds", "neg"]
    assert db.loaded["neg"].vector_count == 3 and db.loaded["neg"].shape == SD1
    assert set(db.skipped) == {"wide", "xl"}
    assert db.skipped["xl"].layout == "sdxl" and db.skipped["xl"].shape == 2048
    assert db.skipped["wide"].shape == 1024
    reasons = {Path(p).name: r for p, r in db.errors.items()}
    assert set(reasons) == {"corrupt.pt", "truncated.safetensors", "unknown.pt", "two.bin", "broken.png", "evil.pt"}
    assert "Nothing in it was executed" in reasons["evil.pt"]
    assert "exactly one token" in reasons["two.bin"]
    assert "not a textual-inversion embedding" in reasons["unknown.pt"]
    assert "truncated or corrupt" in reasons["truncated.safetensors"]
    assert "not a readable image" in reasons["broken.png"]
    assert not marker.exists()


def test_hashes_are_of_whole_files_and_only_for_embeddings(tmp_path: Path):
    root = tmp_path / "embeddings"
    files = build_library(root)
    hashes = HashCache(None)
    db = EmbeddingDatabase(root, hashes)
    db.refresh(SD1)
    good = db.loaded["good"]
    assert good.sha256 == hashlib.sha256(files["good"].read_bytes()).hexdigest()
    assert good.shorthash == good.sha256[:12] and good.path == files["good"]
    assert hashes.cached(files["xl"]) == db.skipped["xl"].sha256
    assert hashes.cached(files["photo"]) is None and hashes.cached(files["corrupt"]) is None


def test_api_payload_has_a1111_shape(tmp_path: Path):
    root = tmp_path / "embeddings"
    build_library(root)
    db = EmbeddingDatabase(root, HashCache(None))
    db.refresh(SD1)
    payload = db.api_payload()
    assert set(payload) == {"loaded", "skipped"}
    assert payload["loaded"]["good"] == {"step": 1500, "sd_checkpoint": "cc6cb27103",
                                         "sd_checkpoint_name": "v1-5-pruned-emaonly", "shape": SD1, "vectors": 2}
    assert payload["loaded"]["learned_embeds"] == {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                                   "shape": SD1, "vectors": 1}
    assert payload["skipped"]["xl"]["shape"] == 2048 and payload["skipped"]["wide"]["shape"] == 1024
    json.dumps(payload)  # plain JSON types only


def touch_later(path: Path, seconds: int = 5) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


def test_refresh_sees_adds_removes_overwrites_and_subfolder_edits(tmp_path: Path):
    root = tmp_path / "embeddings"
    write_pt(root / "a.pt", a1111_dict(vectors(1, seed=1)))
    deep = write_pt(root / "x" / "y" / "deep.pt", a1111_dict(vectors(1, seed=2)))
    db = EmbeddingDatabase(root, HashCache(None))
    assert db.refresh(SD1) is True
    assert db.refresh(SD1) is False  # nothing changed: nothing is done

    write_pt(root / "b.pt", a1111_dict(vectors(2, seed=3)))
    assert db.refresh(SD1) is True and db.loaded["b"].vector_count == 2

    top_mtime = root.stat().st_mtime_ns
    new = vectors(1, seed=4)
    write_pt(deep, a1111_dict(new))  # edit in a subfolder: A1111's top-folder mtime check misses this
    touch_later(deep)
    assert root.stat().st_mtime_ns == top_mtime
    assert db.refresh(SD1) is True and torch.equal(db.loaded["deep"].vectors, new)

    newer = vectors(1, seed=5)
    write_pt(root / "a.pt", a1111_dict(newer))  # overwritten in place, same size
    touch_later(root / "a.pt")
    assert db.refresh(SD1) is True and torch.equal(db.loaded["a"].vectors, newer)

    (root / "b.pt").unlink()
    assert db.refresh(SD1) is True and "b" not in db.loaded
    assert db.refresh(SD1) is False


def test_force_rereads_and_width_change_reclassifies(tmp_path: Path):
    root = tmp_path / "embeddings"
    path = write_pt(root / "a.pt", a1111_dict(vectors(1, seed=1)))
    write_pt(root / "w.pt", a1111_dict(vectors(1, 1024, seed=2)))
    db = EmbeddingDatabase(root, HashCache(None))
    db.refresh(SD1)
    st = path.stat()
    changed = vectors(1, seed=9)
    write_pt(path, a1111_dict(changed))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same stamp: invisible to the cheap signature
    assert path.stat().st_size == st.st_size
    assert db.refresh(SD1) is False and not torch.equal(db.loaded["a"].vectors, changed)
    assert db.refresh(SD1, force=True) is True and torch.equal(db.loaded["a"].vectors, changed)

    assert db.refresh(1024) is True
    assert list(db.loaded) == ["w"] and list(db.skipped) == ["a"]


def test_ignored_files_do_not_trigger_reloads(tmp_path: Path):
    root = tmp_path / "embeddings"
    build_library(root)
    db = EmbeddingDatabase(root, HashCache(None))
    db.refresh(SD1)
    assert "secret" not in db.loaded and "prev" not in db.loaded and "empty" not in db.loaded
    assert not any("empty.pt" in p or "secret" in p for p in db.errors)
    (root / "notes.txt").write_text("hello")
    image_embedding.save_embedding_png(root / "neg.preview.png", picture(), a1111_dict(vectors(1), name="prev2"))
    write_pt(root / ".hidden" / "secret2.pt", a1111_dict(vectors(1)))
    assert db.refresh(SD1) is False


def test_duplicate_names_last_in_walk_order_wins(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "embeddings"
    write_pt(root / "dup.pt", a1111_dict(vectors(1, seed=1)))
    inner = vectors(2, seed=2)
    write_pt(root / "sub" / "dup.pt", a1111_dict(inner))
    db = EmbeddingDatabase(root, HashCache(None))
    with caplog.at_level(logging.WARNING, logger="modules.textual_inversion.database"):
        db.refresh(SD1)
    assert db.loaded["dup"].path == root / "sub" / "dup.pt" and torch.equal(db.loaded["dup"].vectors, inner)
    assert any("Two embeddings are named 'dup'" in r.getMessage() for r in caplog.records)


def test_missing_folder_is_empty(tmp_path: Path):
    db = EmbeddingDatabase(tmp_path / "nope", HashCache(None))
    assert db.refresh(SD1) is True and db.loaded == {} and db.errors == {}
    assert db.refresh(SD1) is False


# --- token matching -------------------------------------------------------------------------------------------------


def test_token_index_finds_longest_match_case_and_spacing_insensitive(tmp_path: Path, tokenizer):
    root = tmp_path / "embeddings"
    for name, n in (("bad-hands-5", 5), ("bad-hands", 3), ("EasyNegative", 2)):
        write_pt(root / f"{name}.pt", a1111_dict(vectors(n, seed=n)))
    db = EmbeddingDatabase(root, HashCache(None))
    db.refresh(SD1)
    index = db.token_index(tokenizer)
    first = tokenizer(["bad"], add_special_tokens=False)["input_ids"][0][0]
    assert [e.name for _, e in index[first]] == ["bad-hands-5", "bad-hands"]

    prompt = "photo, BAD - HANDS - 5 and bad-hands, easynegative"
    tokens = tokenizer([prompt], add_special_tokens=False)["input_ids"][0]
    found, position = [], 0
    while position < len(tokens):
        match = db.find_at(tokens, position, index)
        if match is None:
            position += 1
            continue
        found.append((match[0].name, match[1]))
        position += match[1]
    assert found == [("bad-hands-5", 5), ("bad-hands", 3), ("EasyNegative", 2)]

    spaced = tokenizer(["bad - hands - 5"], add_special_tokens=False)["input_ids"][0]
    assert find_at(spaced, 0, index)[1] == 5
    assert find_at(tokens, 0, index) is None and find_at(tokens, len(tokens), index) is None


def test_token_index_is_cached_per_refresh_and_tokenizer(tmp_path: Path, tokenizer):
    from transformers import CLIPTokenizer

    root = tmp_path / "embeddings"
    write_pt(root / "a.pt", a1111_dict(vectors(1)))
    db = EmbeddingDatabase(root, HashCache(None))
    db.refresh(SD1)
    index = db.token_index(tokenizer)
    assert db.token_index(tokenizer) is index
    other = CLIPTokenizer.from_pretrained(str(REPO / "configs" / "sd15" / "tokenizer"), local_files_only=True)
    assert db.token_index(other) is not index
    db.refresh(SD1, force=True)
    rebuilt = db.token_index(other)
    assert rebuilt is not index and [e.path for _, e in rebuilt[next(iter(rebuilt))]] == [root / "a.pt"]
