"""The demo model's training pipeline: scenes and captions, the classifier, a quick training run, the shipped model.

The quick run trains the real layout for a few dozen steps (seconds) and checks that losses on fixed probe batches
fall and that the written file loads through the web UI's checkpoint loader and generates. The shipped model in
models/demo must match its checksum, load, and be what start-up picks when there is no checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules import cmd_args, demo_model, initialize
from modules.training import base_model, shapes

REPO = Path(__file__).resolve().parent.parent


def _sha256(path: Path) -> str:
    """An independent digest (hashlib over the whole file), not the project's own helper."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evaluate_demo():
    return _load_script("evaluate_demo")


def test_rendered_pixels_match_the_caption() -> None:
    rng = random.Random(7)
    for _ in range(40):
        scene = shapes.random_scene(rng)
        image = np.asarray(shapes.render(scene, 64))
        cx, cy, _ = scene.geometry(64)
        assert tuple(image[int(cy), int(cx)]) == shapes.PALETTE[scene.colour], scene
        assert tuple(image[0, 0]) == shapes.PALETTE[scene.background], scene
        text = shapes.caption(scene)
        assert text == (f"a {scene.size} {scene.colour} {scene.shape} {shapes.POSITIONS[scene.position]} "
                        f"on a {scene.background} background")
        # the object really is on the side the caption says
        columns = np.nonzero((image == shapes.PALETTE[scene.colour]).all(-1).any(0))[0]
        centre = (columns[0] + columns[-1]) / 2
        expected = {"left": centre < 32 - 4, "middle": abs(centre - 32) <= 5, "right": centre > 32 + 4}
        assert expected[scene.position], (scene, centre)


def test_held_out_triples_are_new_but_their_pairs_are_not() -> None:
    held, train = set(shapes.triples(True)), set(shapes.triples(False))
    assert held and not held & train
    pairs = {(c, b) for c, b, _ in train} | {(c, "s", s) for c, _, s in train} | {("b", b, s) for _, b, s in train}
    for c, b, s in held:
        assert (c, b) in pairs and (c, "s", s) in pairs and ("b", b, s) in pairs
    rng = random.Random(0)
    assert all(not shapes.is_held_out(x.colour, x.background, x.shape) for x in (shapes.random_scene(rng) for _ in range(200)))


def test_classifier_reads_rendered_scenes(evaluate_demo) -> None:
    check = evaluate_demo.classifier_self_check(count=120)
    assert check.percent("all_three") == 100.0
    scenes = [shapes.Scene(s, "red", "blue", "small", "left") for s in shapes.SHAPES]
    predictions = evaluate_demo.classify_images([shapes.render(s) for s in scenes])
    assert [p.shape for p in predictions] == list(shapes.SHAPES)
    assert {(p.colour, p.background) for p in predictions} == {("red", "blue")}
    empty = evaluate_demo.classify(Image.new("RGB", (64, 64), shapes.PALETTE["green"]))
    assert empty == evaluate_demo.Prediction(None, "green", None)


def test_noise_schedule_is_sd15s() -> None:
    from diffusers import DDPMScheduler

    reference = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    assert np.allclose(base_model.noise_schedule().numpy(), reference.alphas_cumprod.numpy(), atol=1e-6)


def test_min_snr_weights_cap_only_the_nearly_clean_timesteps() -> None:
    from diffusers import DDPMScheduler

    alphas = torch.tensor(DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                        beta_schedule="scaled_linear").alphas_cumprod.numpy())
    snr = alphas / (1 - alphas)
    weights = base_model.min_snr_weights(base_model.noise_schedule(), gamma=5.0)
    noisy = snr <= 5.0
    assert noisy.any() and (~noisy).any()
    assert torch.allclose(weights[noisy], torch.ones(int(noisy.sum())), atol=1e-5)  # SNR <= 5: weight 1
    assert torch.allclose(weights[~noisy], 5.0 / snr[~noisy], rtol=1e-4)
    assert weights[0] < 0.01 and bool((weights[1:] >= weights[:-1] - 1e-6).all())  # rises with the noise


def test_narrow_posterior_start_gives_the_decoder_clean_latents() -> None:
    _, vae, _ = demo_model.build_components(demo_model.TinySpec(), seed=0)
    x = base_model.to_tensor([shapes.render(shapes.Scene("star", "red", "blue"))])
    with torch.no_grad():
        default_std = vae.encode(x).latent_dist.std
        base_model._start_with_narrow_posterior(vae, logvar=-8.0)
        posterior = vae.encode(x).latent_dist
    assert float(default_std.mean()) > 0.3  # diffusers' fresh encoder: sampling noise about as large as the signal
    assert torch.allclose(posterior.std, torch.full_like(posterior.std, float(np.exp(-4.0))), rtol=1e-4)


def test_quick_training_lowers_losses_and_writes_a_loadable_checkpoint(tmp_path: Path, evaluate_demo) -> None:
    out = tmp_path / "quick" / "quick.safetensors"
    report, _ = base_model.train(base_model.QUICK, out)
    crops = report.vae_losses[:-base_model.QUICK.vae_full_steps]  # the steps on crops, comparable with each other
    assert np.mean(crops[-6:]) < 0.95 * np.mean(crops[:6])
    assert report.diffusion_probe[1] < 0.9 * report.diffusion_probe[0]
    assert out.with_name(out.name + ".sha256").read_text().split() == [_sha256(out), out.name]
    state = evaluate_demo.open_state(out, tmp_path / "data")
    try:
        assert state.models.current.pipe.vae.config.scaling_factor == pytest.approx(report.scale_factor)
        case = evaluate_demo.Case("red", "blue", "circle")
        images = evaluate_demo.generate(state, case, evaluate_demo.GenerationSettings(steps=3, seeds=1))
        assert images[0].size == (64, 64)
    finally:
        state.queue.shutdown()


def test_shipped_demo_matches_its_checksum_and_generates(tmp_path: Path, evaluate_demo) -> None:
    path = demo_model.shipped_checkpoint()
    assert path.stat().st_size <= 20 * 1024 * 1024
    state = evaluate_demo.open_state(path, tmp_path / "data")
    try:
        settings = evaluate_demo.GenerationSettings(steps=20, seeds=2)
        images = evaluate_demo.generate(state, evaluate_demo.Case("red", "blue", "circle"), settings)
    finally:
        state.queue.shutdown()
    predictions = evaluate_demo.classify_images(images)
    assert [p.background for p in predictions] == ["blue", "blue"], predictions
    assert [p.colour for p in predictions] == ["red", "red"], predictions


def _startup_state(data: Path):
    return initialize.build_state(cmd_args.parse_args(["--data-dir", str(data), "--no-download-sd-model"]))


def test_startup_without_checkpoints_installs_the_trained_demo(tmp_path: Path) -> None:
    state = _startup_state(tmp_path / "data")
    try:
        info = initialize.choose_startup_checkpoint(state)
        assert info.name == f"{demo_model.TRAINED_NAME}.safetensors"
        assert _sha256(info.path) == _sha256(demo_model.shipped_checkpoint())
        assert "trained on coloured shapes" in state.notices[0]
    finally:
        state.queue.shutdown()


def test_damaged_shipped_demo_falls_back_to_the_random_model(tmp_path: Path, monkeypatch) -> None:
    damaged = tmp_path / "shipped"
    damaged.mkdir()
    source = demo_model.shipped_checkpoint()
    for path in (source, source.with_suffix(".yaml"), source.with_name(source.name + ".sha256")):
        shutil.copyfile(path, damaged / path.name)
    with open(damaged / source.name, "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    monkeypatch.setattr(demo_model, "SHIPPED_DIR", damaged)
    state = _startup_state(tmp_path / "data")
    try:
        info = initialize.choose_startup_checkpoint(state)
        assert info.name == f"{demo_model.DEMO_NAME}.safetensors"
        assert "unusable" in state.notices[0] and "random weights" in state.notices[0]
    finally:
        state.queue.shutdown()
