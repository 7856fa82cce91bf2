"""Settings: validation, persistence next to A1111's own keys, --freeze-settings, change callbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modules.options import FrozenSettingsError, Options


def test_values_are_validated_and_coerced(tmp_path: Path) -> None:
    opts = Options(tmp_path / "config.json")
    assert opts.set("CLIP_stop_at_last_layers", 2.0) and opts["CLIP_stop_at_last_layers"] == 2
    for key, value, message in [("CLIP_stop_at_last_layers", 0, "at least 1"), ("CLIP_stop_at_last_layers", "two", "int"),
                                ("randn_source", "NV", "one of GPU, CPU"), ("samples_save", "yes", "bool")]:
        with pytest.raises(ValueError, match=message):
            opts.set(key, value)
    with pytest.raises(KeyError, match="unknown setting 'nope'"):
        opts.set("nope", 1)


def test_save_and_load_keep_foreign_a1111_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"CLIP_stop_at_last_layers": 2, "sd_vae": "Automatic", "img2img_color_correction": True,
                                "randn_source": "bogus"}))
    opts = Options(path)
    opts.load()
    assert opts["CLIP_stop_at_last_layers"] == 2 and opts["randn_source"] == "GPU"  # invalid → default
    opts.set("sd_vae", "None")
    opts.save()
    saved = json.loads(path.read_text())
    assert saved["img2img_color_correction"] is True and saved["sd_vae"] == "None"


def test_unreadable_config_falls_back_to_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    opts = Options(path)
    opts.load()
    assert opts["CLIP_stop_at_last_layers"] == 1


def test_freeze_settings(tmp_path: Path) -> None:
    opts = Options(tmp_path / "config.json", frozen=True)
    with pytest.raises(FrozenSettingsError, match="--freeze-settings"):
        opts.set("CLIP_stop_at_last_layers", 2)
    assert opts["CLIP_stop_at_last_layers"] == 1


def test_callback_failure_keeps_the_old_value(tmp_path: Path) -> None:
    opts = Options(None)
    seen = []
    opts.on_change("sd_vae", lambda key, value: seen.append(value))
    opts.set("sd_vae", "None")

    def refuse(key: str, value: object) -> None:
        raise ValueError("cannot load that")

    opts.on_change("sd_model_checkpoint", refuse)
    with pytest.raises(ValueError, match="cannot load that"):
        opts.set("sd_model_checkpoint", "x.safetensors")
    assert seen == ["None"] and opts["sd_model_checkpoint"] == ""


def test_snapshot_overrides_do_not_leak(tmp_path: Path) -> None:
    opts = Options(None)
    snap = opts.snapshot({"CLIP_stop_at_last_layers": 3})
    assert snap["CLIP_stop_at_last_layers"] == 3 and opts["CLIP_stop_at_last_layers"] == 1
    with pytest.raises(ValueError):
        opts.snapshot({"CLIP_stop_at_last_layers": "three"})


def test_concurrent_saves_never_collide_and_keep_the_latest_values(tmp_path: Path) -> None:
    """The UI's quicksettings and the API save from different threads; a shared temp file once made one fail."""
    import threading

    opts = Options(tmp_path / "config.json")
    errors: list[BaseException] = []

    def worker(steps: int) -> None:
        try:
            for _ in range(40):
                opts.set("show_progress_every_n_steps", steps)
                opts.save()
        except BaseException as e:  # noqa: BLE001 - any failure is the finding
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (3, 7, 11, 13)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    saved = json.loads((tmp_path / "config.json").read_text(encoding="utf-8"))
    assert saved["show_progress_every_n_steps"] == opts["show_progress_every_n_steps"]
    assert not (tmp_path / "config.json.tmp").exists()
