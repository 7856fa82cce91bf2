"""Checkpoint discovery, A1111 titles and hashes, lookups, the loaded-model cache and VAE choice."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from conftest import install_checkpoint
from modules import demo_model, sd_vae
from modules.hashes import HashCache
from modules.processing import process
from modules.processing_params import GenerationParams
from modules.sd_models import CheckpointNotFoundError, legacy_model_hash, list_checkpoints

SMALL = dict(prompt="a red circle", steps=3, width=64, height=64, seed=11, save_images=False)


def test_discovery_is_recursive_and_titles_follow_a1111(tmp_path: Path, tiny_checkpoint: Path) -> None:
    root = tmp_path / "Stable-diffusion"
    install_checkpoint(tiny_checkpoint, root, "b.safetensors")
    install_checkpoint(tiny_checkpoint, root / "sub", "a.ckpt")
    (root / "notes.txt").write_text("not a model")
    install_checkpoint(tiny_checkpoint, root, "b.vae.safetensors")  # a VAE beside checkpoints, not a checkpoint
    install_checkpoint(tiny_checkpoint, root / ".hidden", "h.safetensors")
    (root / "folder-model").mkdir()
    (root / "folder-model" / "model_index.json").write_text("{}")
    infos = list_checkpoints(root, None, HashCache(None))
    assert [i.name for i in infos] == ["b.safetensors", "folder-model", "sub/a.ckpt"]
    sub = infos[2]
    assert sub.title == "sub/a.ckpt"  # no hash until it is computed (A1111 does the same)
    assert sub.model_name == "sub_a" and sub.name_for_extra == "a"


def test_hash_is_sha256_and_cached_by_mtime_and_size(tmp_path: Path, tiny_checkpoint: Path) -> None:
    path = install_checkpoint(tiny_checkpoint, tmp_path, "m.safetensors")
    cache_file = tmp_path / "cache.json"
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert HashCache(cache_file).sha256(path) == expected
    assert HashCache(cache_file).cached(path) == expected  # a new process reads it back from cache.json
    with open(path, "ab") as f:
        f.write(b"\0")  # size and mtime change: the cache entry is stale
    assert HashCache(cache_file).cached(path) is None
    assert HashCache(cache_file).sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_loaded_model_gets_its_hash_title_and_every_a1111_alias(make_state, tiny_checkpoint: Path) -> None:
    state = make_state()
    info = state.models.current.info
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()
    assert info.title == f"tiny.safetensors [{digest[:10]}]"
    with open(tiny_checkpoint, "rb") as f:
        f.seek(0x100000)
        assert info.legacy_hash == hashlib.sha256(f.read(0x10000)).hexdigest()[:8] == legacy_model_hash(tiny_checkpoint)
    for query in (info.title, "tiny.safetensors", "tiny", digest, digest[:10], info.legacy_hash,
                  f"tiny [{digest[:10]}]"):  # the last: A1111's short_title (how infotexts name a hires checkpoint)
        assert state.models.find(query).path == info.path
    assert info.short_title == f"tiny [{digest[:10]}]"
    with pytest.raises(CheckpointNotFoundError, match="'nope' not found; available: tiny.safetensors"):
        state.models.find("nope")


def test_a_title_with_a_hash_finds_a_file_not_hashed_yet(make_state) -> None:
    """A1111 strips the ``[hash]`` of a title it cannot match, so an infotext naming a checkpoint by
    ``name [hash]`` resolves before that file was ever loaded (and hashed) here."""
    from modules import demo_model

    state = make_state()
    demo_model.write_checkpoint(state.models.ckpt_dir / "second.safetensors", seed=5)
    state.models.refresh()
    unhashed = state.models.find("second")
    assert unhashed.sha256 is None and unhashed.title == "second.safetensors"
    for query in ("second [0123456789]", "second.safetensors [0123abcd]"):
        assert state.models.find(query).path == unhashed.path
    with pytest.raises(CheckpointNotFoundError):
        state.models.find("third [0123456789]")


def _pixels(processed) -> np.ndarray:
    return np.asarray(processed.images[0]).astype(np.int16)


def test_switching_checkpoints_and_the_cache(make_state, tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = make_state()
    other = demo_model.write_checkpoint(tmp_path / "data" / "models" / "Stable-diffusion" / "other.safetensors", seed=1)
    state.models.refresh()
    first = _pixels(process(state, GenerationParams(**SMALL)))
    state.opts.set("sd_model_checkpoint", "other.safetensors", run_callbacks=False)
    second = _pixels(process(state, GenerationParams(**SMALL)))
    assert state.models.current.info.path == other
    assert np.abs(first - second).max() > 0  # other weights, other image
    # With the default limit of 1 only the current model stays in memory.
    assert len(state.models._loaded) == 1
    state.models.cache_limit = 2
    state.opts.set("sd_model_checkpoint", "tiny.safetensors", run_callbacks=False)
    again = _pixels(process(state, GenerationParams(**SMALL)))
    assert np.array_equal(first, again)
    pipe_before = state.models.current.pipe
    state.opts.set("sd_model_checkpoint", "other.safetensors", run_callbacks=False)
    process(state, GenerationParams(**SMALL))
    state.opts.set("sd_model_checkpoint", "tiny.safetensors", run_callbacks=False)
    process(state, GenerationParams(**SMALL))
    assert state.models.current.pipe is pipe_before  # came from the cache, not from disk


def test_broken_checkpoint_switch_fails_cleanly(make_state, tmp_path: Path) -> None:
    state = make_state()
    broken = tmp_path / "data" / "models" / "Stable-diffusion" / "broken.safetensors"
    broken.write_bytes(b"\0" * 100)
    state.models.refresh()
    before = state.models.current
    from modules.model_loading import ModelFileError

    with pytest.raises(ModelFileError, match="broken.safetensors"):
        state.models.load(state.models.find("broken.safetensors"))
    assert state.models.current is before  # still serving the old model
    assert process(state, GenerationParams(**SMALL)).images


def test_vae_choices_change_and_restore_the_image(make_state, tmp_path: Path) -> None:
    state = make_state()
    vae_dir = tmp_path / "data" / "models" / "VAE"
    other = demo_model.write_checkpoint(tmp_path / "src" / "other.safetensors", seed=3)
    from modules import model_loading

    vae_only = {k: v for k, v in model_loading.read_state_dict(other).items() if k.startswith("first_stage_model.")}
    from safetensors.torch import save_file

    vae_dir.mkdir(parents=True, exist_ok=True)
    save_file({k[len("first_stage_model."):]: v for k, v in vae_only.items()}, str(vae_dir / "other-vae.safetensors"))
    state.models.refresh()
    assert [v.name for v in state.models.vaes] == ["other-vae.safetensors"]

    baked = process(state, GenerationParams(**SMALL))
    state.opts.set("sd_vae", "other-vae.safetensors", run_callbacks=False)
    swapped = process(state, GenerationParams(**SMALL))
    assert np.abs(_pixels(baked) - _pixels(swapped)).max() > 0
    digest = hashlib.sha256((vae_dir / "other-vae.safetensors").read_bytes()).hexdigest()
    assert f"VAE hash: {digest[:10]}, VAE: other-vae" in swapped.infotexts[0]
    state.opts.set("sd_vae", "None", run_callbacks=False)
    restored = process(state, GenerationParams(**SMALL))
    assert np.array_equal(_pixels(baked), _pixels(restored))
    assert "VAE" not in restored.infotexts[0]


def test_automatic_vae_picks_the_one_named_like_the_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "sd" / "model.safetensors"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    (tmp_path / "vae").mkdir()
    near = tmp_path / "sd" / "model.vae.pt"
    near.write_bytes(b"x")
    vaes = sd_vae.list_vaes(tmp_path / "vae", tmp_path / "sd")
    assert sd_vae.resolve("Automatic", ckpt, vaes).path == near
    assert sd_vae.resolve("None", ckpt, vaes).path is None
    near.unlink()
    (tmp_path / "vae" / "model.safetensors").write_bytes(b"x")
    vaes = sd_vae.list_vaes(tmp_path / "vae", tmp_path / "sd")
    assert sd_vae.resolve("Automatic", ckpt, vaes).path == tmp_path / "vae" / "model.safetensors"
    with pytest.raises(ValueError, match="VAE 'missing.pt' not found"):
        sd_vae.resolve("missing.pt", ckpt, vaes)


def test_unload_to_ram_then_the_next_job_brings_the_model_back(make_state) -> None:
    """A1111's "Unload SD checkpoint to RAM" / "Load SD checkpoint to VRAM": the model stays loaded (no file is
    read again), the next job puts it back on its device by itself, and the image does not change."""
    state = make_state()
    model = state.models.current
    before = _pixels(process(state, GenerationParams(**SMALL)))
    assert not model.parked
    assert state.models.unload_to_ram() is model and model.parked
    assert state.models.unload_to_ram() is model and model.parked  # twice: no harm
    after = _pixels(process(state, GenerationParams(**SMALL)))
    assert np.array_equal(before, after)
    assert state.models.current is model and not model.parked  # the same object, back in use
    state.models.unload_to_ram()
    assert state.models.reload_to_device("") is model and not model.parked


def test_reload_with_nothing_loaded_loads_the_selected_checkpoint(make_state) -> None:
    state = make_state(load=False)
    assert state.models.current is None and state.models.unload_to_ram() is None
    assert state.models.reload_to_device("") is None  # nothing loaded, nothing selected: nothing to do
    with pytest.raises(CheckpointNotFoundError, match="nope"):
        state.models.reload_to_device("nope")
    model = state.models.reload_to_device("tiny.safetensors")
    assert model is state.models.current and model.info.name == "tiny.safetensors" and not model.parked
