"""The trainers on the tiny random-weight model: A1111 file formats, our loaders and diffusers' kohya loader read what
they write, a few steps lower the denoising loss measured through those loaders, the base weights are bit-identical
afterwards, and bad input fails clearly without leaving files behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from modules import model_loading
from modules.extra_networks import ActivationContext, parse_prompt
from modules.hypernetworks.hypernetwork import Hypernetwork
from modules.prompt_encoder import PromptEncoder
from modules.training import embedding_trainer, hypernetwork_trainer, lora_trainer, preprocess, runner
from modules.training.dataset import DatasetError, DatasetOptions, TrainingDataset, caption_for
from modules.training.schedule import ScheduleError

SIZE = 64


@pytest.fixture
def state(make_state):
    return make_state()


def red_dataset(folder: Path, count: int = 4, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """Images tinted red (the concept to learn), named with A1111-style leading numbers and tags."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 80, (size[1], size[0], 3)).astype(np.uint8)
        pixels[..., 0] = 180 + rng.integers(0, 70, (size[1], size[0]))
        Image.fromarray(pixels).save(folder / f"{i:02d}-red scene, tinted.png")
    return folder


def settings(data: Path, **changes) -> runner.TrainSettings:
    base = dict(learn_rate="0.01", data_root=str(data), width=SIZE, height=SIZE, steps=12, save_every=0,
                create_image_every=0, template_file="subject_filewords.txt", seed=3, preview_steps=2)
    return runner.TrainSettings(**{**base, **changes})


def weights(state) -> dict[str, torch.Tensor]:
    pipe = state.models.current.pipe
    return {f"{name}.{k}": v.detach().clone() for name in ("unet", "text_encoder", "vae")
            for k, v in getattr(pipe, name).state_dict().items()}


def eval_loss(state, prompt: str, data: Path) -> float:
    """Mean denoising loss on the dataset at fixed noise and timesteps, with ``prompt``'s networks active through
    the normal generation path (extra-network registry, embedding database)."""
    model = state.models.current
    pipe = model.pipe
    state.embeddings.refresh(pipe.text_encoder.config.hidden_size, force=True)
    text, network_data = parse_prompt(prompt)
    ds = TrainingDataset(DatasetOptions(data_root=data, width=SIZE, height=SIZE, latent_sampling_method="deterministic"),
                         pipe.vae)
    latents = torch.stack([e.latent for e in ds.entries])
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(123)
    ctx = ActivationContext(model=model, opts=state.opts.snapshot())
    total = 0.0
    with torch.no_grad(), state.networks.activated(ctx, network_data):
        cond = PromptEncoder(pipe.text_encoder, pipe.tokenizer, state.embeddings).encode([text] * len(latents))[0]
        for _ in range(6):
            noise = torch.randn(latents.shape, generator=generator)
            t = torch.randint(0, 1000, (len(latents),), generator=generator)
            pred = pipe.unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=cond).sample
            total += float(((pred - noise) ** 2).mean())
    return total / 6


def files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file() and p.name != "cache.json"}


# --- create -------------------------------------------------------------------------------------------------------

def test_create_embedding_writes_a1111_keys_and_loads(state) -> None:
    path = embedding_trainer.create_embedding(state, "my/emb*", 3, init_text="red cat")
    assert path.name == "myemb.pt"  # A1111 keeps only alphanumerics and ._-
    data = torch.load(path, weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    vectors = data["string_to_param"]["*"]
    pipe = state.models.current.pipe
    assert vectors.shape == (3, pipe.text_encoder.config.hidden_size)
    ids = pipe.tokenizer("red cat", add_special_tokens=False)["input_ids"]
    table = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(vectors[0], table[ids[0]]) and torch.equal(vectors[2], table[ids[1]])  # i·2//3 → 0, 0, 1
    assert "myemb" in state.embeddings.loaded and state.embeddings.loaded["myemb"].vector_count == 3
    with pytest.raises(ValueError, match="already exists"):
        embedding_trainer.create_embedding(state, "myemb", 1)
    embedding_trainer.create_embedding(state, "myemb", 1, overwrite_old=True, init_text="")
    assert torch.count_nonzero(torch.load(path, weights_only=True)["string_to_param"]["*"]) == 0


def test_create_hypernetwork_writes_a1111_keys_and_loads(state) -> None:
    path = hypernetwork_trainer.create_hypernetwork(state, "hn", ["32", "64"], layer_structure="1, 1.5, 1",
                                                    activation_func="relu", add_layer_norm=True, use_dropout=True,
                                                    dropout_structure="0, 0.1, 0", weight_init="XavierNormal")
    data = torch.load(path, weights_only=True)
    assert {32, 64} <= set(data) and data["layer_structure"] == [1.0, 1.5, 1.0]
    assert data["activation_func"] == "relu" and data["is_layer_norm"] is True and data["use_dropout"] is True
    assert data["dropout_structure"] == [0.0, 0.1, 0.0] and data["weight_initialization"] == "XavierNormal"
    k_state = data[32][0]
    # Linear, relu, LayerNorm, Dropout, Linear, LayerNorm: every module takes an index (A1111)
    assert sorted(k_state) == ["linear.0.bias", "linear.0.weight", "linear.2.bias", "linear.2.weight",
                               "linear.4.bias", "linear.4.weight", "linear.5.bias", "linear.5.weight"]
    loaded = Hypernetwork.load(path)
    assert loaded.dims == {32, 64} and loaded.name == "hn"
    assert "hn" in state.libraries["hypernet"].names
    with pytest.raises(ValueError, match="already exists"):
        hypernetwork_trainer.create_hypernetwork(state, "hn", ["32"])
    with pytest.raises(ValueError, match="start and end with 1"):
        hypernetwork_trainer.create_hypernetwork(state, "bad", ["32"], layer_structure="2, 1")
    assert not (state.paths.hypernetwork_dir / "bad.pt").exists()


# --- train --------------------------------------------------------------------------------------------------------

def test_train_hypernetwork_lowers_loss_keeps_weights_and_resumes(state, tmp_path: Path) -> None:
    data = red_dataset(tmp_path / "red")
    hypernetwork_trainer.create_hypernetwork(state, "redhn", ["32", "64"])
    before_weights = weights(state)
    before = eval_loss(state, "a photo of a redhn, red scene, tinted <hypernet:redhn:1>", data)
    result = hypernetwork_trainer.train_hypernetwork(
        state, "redhn", settings(data, learn_rate="0.01", steps=24, save_every=12, create_image_every=12))
    after = eval_loss(state, "a photo of a redhn, red scene, tinted <hypernet:redhn:1>", data)
    assert result.step == 24 and result.steps_run == 24 and not result.interrupted
    assert after < before * 0.95, (before, after)
    for patcher in state.models.current.patchers.values():  # the evaluation's folded hypernetwork stays merged
        patcher.restore_all()
    assert all(torch.equal(v, before_weights[k]) for k, v in weights(state).items()), "base weights changed"
    assert not any(type(p).__name__ == "HypernetworkAttnProcessor"
                   for p in state.models.current.pipe.unet.attn_processors.values())

    log = result.log_directory
    assert log.parent.name.count("-") == 2 and log.name == "redhn"  # <log>/<YYYY-MM-DD>/<name>
    assert sorted(p.name for p in (log / "hypernetworks").iterdir()) == [
        "redhn-12.pt", "redhn-12.pt.optim", "redhn-24.pt", "redhn-24.pt.optim"]
    assert (log / "images" / "redhn-12.png").is_file()
    assert Hypernetwork.load(log / "hypernetworks" / "redhn-12.pt").step == 11  # A1111: saved at steps_done = step+1
    optim = torch.load(result.final_path.with_name("redhn.pt.optim"), weights_only=True)
    assert optim["hash"] == runner.file_hash(result.final_path) and optim["optimizer_name"] == "AdamW"
    assert not list(result.final_path.parent.glob(".*tmp"))

    resumed = hypernetwork_trainer.train_hypernetwork(state, "redhn", settings(data, learn_rate="0.01", steps=27))
    assert resumed.steps_run == 3 and Hypernetwork.load(resumed.final_path).step == 27


def test_train_embedding_lowers_loss_and_loads(state, tmp_path: Path) -> None:
    data = red_dataset(tmp_path / "red")
    embedding_trainer.create_embedding(state, "redemb", 4, init_text="blue")
    before = eval_loss(state, "a photo of a redemb, red scene, tinted", data)
    result = embedding_trainer.train_embedding(state, "redemb", settings(data, learn_rate="0.2", steps=24,
                                                                                  write_csv_every=8))
    after = eval_loss(state, "a photo of a redemb, red scene, tinted", data)
    # On the random tiny model the text conditioning moves the UNet's output little: the gain is small but the
    # evaluation is deterministic (fixed noise and timesteps), so any drop is the embedding's doing.
    assert after < before - 2e-3, (before, after)
    saved = torch.load(result.final_path, weights_only=True)
    assert saved["step"] == 24 and saved["sd_checkpoint"] == state.models.current.info.shorthash
    assert state.embeddings.loaded["redemb"].step == 24
    csv_text = (result.log_directory / "textual_inversion_loss.csv").read_text()
    assert csv_text.startswith("step,epoch,epoch_step,loss,learn_rate")
    assert [line.split(",")[0] for line in csv_text.splitlines()[1:]] == ["8", "16", "24"]


def test_training_prompts_resolve_the_folders_other_embeddings(state) -> None:
    """A1111 trains the database entry itself, so a training prompt (or preview) that names another embedding of
    the folder gets that embedding's vectors; the trained name gets the training parameter, not its file's copy."""
    embedding_trainer.create_embedding(state, "mine", 2, init_text="blue")
    embedding_trainer.create_embedding(state, "shinything", 3, init_text="gold")
    model = state.models.current
    pipe = model.pipe
    state.embeddings.refresh(pipe.text_encoder.config.hidden_size, force=True)
    entry = state.embeddings.loaded["mine"]
    trainable = embedding_trainer.EmbeddingTrainable("mine", entry.vectors, 0, Path("unused.pt"), (None, None),
                                                     state.embeddings)
    with torch.no_grad():
        trainable.vectors.add_(torch.randn(trainable.vectors.shape, generator=torch.Generator().manual_seed(0)))

    def encode(prompt: str, embeddings) -> torch.Tensor:
        return PromptEncoder(pipe.text_encoder, pipe.tokenizer, embeddings).encode([prompt])[0]

    with torch.no_grad():
        assert torch.equal(encode("a shinything cat", trainable.embeddings),
                           encode("a shinything cat", state.embeddings))  # the database's vectors
        plain_text = encode("a shinything cat", None)
        assert (plain_text - encode("a shinything cat", state.embeddings)).abs().max() > 1e-3
        assert (encode("a mine cat", trainable.embeddings) - encode("a mine cat", state.embeddings)).abs().max() > 1e-3
    encoder = PromptEncoder(pipe.text_encoder, pipe.tokenizer, trainable.embeddings)  # as the trainer encodes
    chunks, _ = encoder.tokenize_line("a mine cat, shinything")
    encoder.encode_chunks(chunks[:1]).square().mean().backward()
    assert trainable.vectors.grad is not None and trainable.vectors.grad.abs().sum() > 0


def test_preview_from_txt2img_is_the_txt2img_image_of_the_embedding_copy(state, tmp_path: Path) -> None:
    """"Read parameters from txt2img tab": a preview is the image txt2img makes with the same parameters and the
    embedding as the copy saved at the same step (A1111 saves both at ``steps_done = step + 1``), through the
    independent path (prompt parser, embedding database, ``processing.process``); its infotext names the same
    parameters."""
    import shutil

    from modules import infotext
    from modules.processing import process
    from modules.processing_params import GenerationParams

    data = red_dataset(tmp_path / "red")
    embedding_trainer.create_embedding(state, "prevemb", 2, init_text="blue")
    # The whole prompt syntax (prompt editing, AND with a weight); a tag: txt2img removes it (the network is not
    # found), the preview removes it without activating anything.
    prompt = "a prevemb scene, [red:blue:2] AND a (bright:1.2) sky :0.6 <lora:not-here:1>"
    txt2img = dict(prompt=prompt, negative_prompt="blurry, green", steps=5,
                   sampler_name="Euler a", scheduler="Automatic", cfg_scale=6.5, seed=4242, width=64, height=80)
    result = embedding_trainer.train_embedding(state, "prevemb", settings(
        data, learn_rate="0.2", steps=8, create_image_every=6, save_every=6, preview_from_txt2img=True,
        **{f"preview_{k}": v for k, v in txt2img.items()}))
    preview = result.log_directory / "images" / "prevemb-6.png"
    assert preview in result.saved
    made = {}
    for label, source in (("final", None), ("copy", result.log_directory / "embeddings" / "prevemb-6.pt")):
        if source is not None:
            shutil.copyfile(source, result.final_path)
        state.embeddings.refresh(state.models.current.pipe.text_encoder.config.hidden_size, force=True)
        processed = process(state, GenerationParams(**txt2img, save_images=False))
        made[label] = (np.asarray(processed.images[processed.index_of_first_image]), processed.infotexts[0])
    with Image.open(preview) as image:
        assert image.size == (64, 80)
        pixels = np.asarray(image.convert("RGB"))
        text = infotext.read_from_image(image)
    assert np.array_equal(pixels, made["copy"][0])
    assert not np.array_equal(pixels, made["final"][0])  # two more steps change the picture: the copy is the match
    ours, theirs = infotext.parse(text), infotext.parse(made["copy"][1])
    assert ours["Prompt"] == prompt and ours["Negative prompt"] == "blurry, green"
    for key in ("Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size-1", "Size-2", "Model hash", "Model"):
        assert ours[key] == theirs[key], key


def test_embedding_images_carry_the_copy_they_follow(state, tmp_path: Path) -> None:
    """"Save images with embedding in PNG chunks": the first preview after each copy is also written to
    <log>/image_embeddings/, captioned, with that copy inside; the file loads through the embedding reader (text
    chunk, and pixels alone once the chunk is stripped) as the copy's vectors. Off: no such file."""
    from modules.textual_inversion import formats, image_embedding

    data = red_dataset(tmp_path / "red")
    embedding_trainer.create_embedding(state, "cardemb", 2, init_text="blue")
    result = embedding_trainer.train_embedding(state, "cardemb", settings(
        data, learn_rate="0.2", steps=6, save_every=2, create_image_every=3))
    folder = result.log_directory / "image_embeddings"
    # copies at 2, 4, 6; previews at 3 and 6: the one at 3 carries copy 2, the one at 6 carries copy 6
    assert sorted(p.name for p in folder.iterdir()) == ["cardemb-3.png", "cardemb-6.png"]
    for image_step, copy_step in ((3, 2), (6, 6)):
        card = folder / f"cardemb-{image_step}.png"
        copy = torch.load(result.log_directory / "embeddings" / f"cardemb-{copy_step}.pt", weights_only=True)
        loaded = formats.read_embedding_file(card)
        assert loaded is not None and torch.equal(loaded.vectors, copy["string_to_param"]["*"])
        assert loaded.step == copy["step"]
        with Image.open(card) as image:
            pixels_only = image.convert("RGB")  # no text chunk: the pixel strips alone
            preview = Image.open(result.log_directory / "images" / f"cardemb-{image_step}.png")
            assert image.width > preview.width and image.height == preview.height  # strips left and right
        assert torch.equal(formats.embedding_from_data(image_embedding.extract_pixel_data(pixels_only), "x",
                                                       "x.png").vectors, copy["string_to_param"]["*"])
    embedding_trainer.create_embedding(state, "plainemb", 1)
    plain = embedding_trainer.train_embedding(state, "plainemb", settings(
        data, steps=2, save_every=1, create_image_every=1, save_image_with_stored_embedding=False))
    assert (plain.log_directory / "images" / "plainemb-2.png").is_file()
    assert not (plain.log_directory / "image_embeddings").exists()


def test_default_preview_is_a1111s_first_prompt_at_20_steps_and_the_training_size(state, tmp_path: Path) -> None:
    """Without "Read parameters from txt2img": the batch's first prompt, 20 steps, DPM++ 2M (Karras), CFG 7, a
    random seed, the training size — whatever the preview_* fields say."""
    from modules import infotext

    data = red_dataset(tmp_path / "red")
    hypernetwork_trainer.create_hypernetwork(state, "prevhn", ["32"])
    result = hypernetwork_trainer.train_hypernetwork(state, "prevhn", settings(
        data, steps=2, create_image_every=2, preview_prompt="ignored", preview_steps=3, preview_width=128))
    with Image.open(result.log_directory / "images" / "prevhn-2.png") as image:
        assert image.size == (SIZE, SIZE)
        fields = infotext.parse(infotext.read_from_image(image))
    assert "prevhn" in fields["Prompt"] and "red scene, tinted" in fields["Prompt"]  # a line of the template
    assert (fields["Steps"], fields["Sampler"], fields["Schedule type"], fields["Size-1"], fields["Size-2"]) == (
        "20", "DPM++ 2M", "Karras", str(SIZE), str(SIZE))
    assert float(fields["CFG scale"]) == 7.0 and int(fields["Seed"]) >= 0


@pytest.mark.parametrize(("changes", "message"), [
    (dict(preview_width=100), "width must be a multiple of 8"),
    (dict(preview_sampler_name="No Such Sampler"), "No Such Sampler"),
    (dict(preview_steps=0), "steps"),
])
def test_impossible_preview_parameters_fail_before_training(state, tmp_path: Path, changes, message) -> None:
    data = red_dataset(tmp_path / "red")
    embedding_trainer.create_embedding(state, "badprev", 1)
    path = state.paths.embeddings_dir / "badprev.pt"
    before = path.read_bytes()
    with pytest.raises(runner.TrainingError, match="previews cannot be made with the txt2img parameters") as error:
        embedding_trainer.train_embedding(state, "badprev", settings(
            data, create_image_every=1, preview_from_txt2img=True, **{"preview_width": 64, "preview_height": 64,
                                                                       **changes}))
    assert message in str(error.value)
    assert path.read_bytes() == before
    # The same values are not used (and not checked) without previews, or without "from txt2img".
    embedding_trainer.train_embedding(state, "badprev", settings(data, steps=1, preview_from_txt2img=True, **changes))
    embedding_trainer.train_embedding(state, "badprev", settings(data, steps=2, create_image_every=0, **changes))


def test_train_lora_writes_kohya_file_read_by_our_loader_and_diffusers(state, tmp_path: Path,
                                                                       tiny_checkpoint: Path) -> None:
    data = red_dataset(tmp_path / "red")
    before = eval_loss(state, "a photo of a red scene, tinted", data)
    original = weights(state)
    result = lora_trainer.train_lora(state, "redlora", settings(data, learn_rate="0.005", steps=24),
                                     lora_trainer.LoraOptions(rank=4, alpha=2, text_encoder_lr=0.001))
    assert all(torch.equal(v, original[k]) for k, v in weights(state).items()), "base weights changed"
    after = eval_loss(state, "a photo of a red scene, tinted <lora:redlora:1>", data)
    assert after < before * 0.95, (before, after)

    with safe_open(str(result.final_path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_network_dim"] == "4"
    assert meta["ss_network_alpha"] == "2.0" and meta["ss_output_name"] == "redlora"
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_steps"] == "24"
    assert json.loads(meta["ss_tag_frequency"]) == {"red": {"red scene": 4, "tinted": 4}}
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    assert "redlora" in [e.name for e in state.libraries["lora"].entries()]

    # Our loader (merge into the weights) and diffusers' kohya converter + fuse give the same weights.
    pipe = state.models.current.pipe
    ctx = ActivationContext(model=state.models.current, opts=state.opts.snapshot())
    with state.networks.activated(ctx, parse_prompt("x <lora:redlora:1>")[1]):
        ours = {**{f"unet.{k}": v.clone() for k, v in pipe.unet.state_dict().items()},
                **{f"text_encoder.{k}": v.clone() for k, v in pipe.text_encoder.state_dict().items()}}
    reference = model_loading.build_pipeline(model_loading.read_state_dict(tiny_checkpoint),
                                             model_loading.read_sidecar_config(tiny_checkpoint), "reference")
    reference.load_lora_weights(str(result.final_path.parent), weight_name=result.final_path.name, adapter_name="r")
    reference.fuse_lora(lora_scale=1.0, components=["unet", "text_encoder"])
    reference.unload_lora_weights()
    theirs = {**{f"unet.{k}": v for k, v in reference.unet.state_dict().items()},
              **{f"text_encoder.{k}": v for k, v in reference.text_encoder.state_dict().items()}}
    changed = [k for k in ours if k in original and not torch.equal(ours[k], original[k])]
    assert len(changed) >= 40
    for key in ours:
        assert torch.allclose(ours[key], theirs[key], atol=1e-6), key


def test_interrupt_keeps_the_saved_file_usable(state, tmp_path: Path) -> None:
    data = red_dataset(tmp_path / "red")
    hypernetwork_trainer.create_hypernetwork(state, "stop", ["32"])

    def interrupt_at_three(step: int, loss: float) -> None:
        if step == 3:
            state.job.interrupt()

    settings_ = settings(data, steps=50, save_every=2)
    trainable = hypernetwork_trainer.HypernetworkTrainable(
        Hypernetwork.load(state.paths.hypernetwork_dir / "stop.pt"), state.paths.hypernetwork_dir / "stop.pt", None)
    result = runner.train(state, trainable, settings_, on_step=interrupt_at_three)
    assert result.interrupted and result.steps_run == 3
    assert Hypernetwork.load(state.paths.hypernetwork_dir / "stop.pt").step == 3
    assert state.job.job == ""  # the job state was closed


# --- bad input ----------------------------------------------------------------------------------------------------

def test_bad_inputs_fail_clearly_and_write_nothing(state, tmp_path: Path) -> None:
    data = red_dataset(tmp_path / "red")
    embedding_trainer.create_embedding(state, "e", 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.png").write_bytes(b"not a png")
    mixed = red_dataset(tmp_path / "mixed", 2)
    red_dataset(tmp_path / "mixed2", 1, size=(SIZE, SIZE + 8))
    (tmp_path / "mixed2" / "00-red scene, tinted.png").rename(mixed / "99-other.png")
    before = files_under(state.paths.data_dir)
    cases = [
        (dict(data_root=str(empty)), DatasetError, "has no images"),
        (dict(data_root=str(tmp_path / "missing")), DatasetError, "does not exist"),
        (dict(data_root=str(tmp_path / "broken")), DatasetError, "no readable images"),
        (dict(learn_rate="0.01:abc"), ScheduleError, "Invalid learning rate schedule"),
        (dict(data_root=str(mixed), varsize=True), DatasetError, "different sizes"),
        (dict(clip_grad_mode="value", clip_grad_value="x"), ScheduleError, "Invalid"),
        (dict(template_file="../secrets.txt"), runner.TrainingError, "not found"),
        (dict(batch_size=9), DatasetError, "fewer than the batch size"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            embedding_trainer.train_embedding(state, "e", settings(data, **change))
    lora_trainer.train_lora(state, "e2", settings(data, steps=1), lora_trainer.LoraOptions())
    with pytest.raises(ValueError, match="already exists"):
        lora_trainer.train_lora(state, "e2", settings(data, steps=1), lora_trainer.LoraOptions())
    assert (state.paths.lora_dir / "e2.safetensors").is_file()
    assert files_under(state.paths.data_dir) - before <= {
        state.paths.lora_dir / "e2.safetensors", state.paths.lora_dir / "e2.safetensors.optim"}
    assert state.job.job == ""


def test_mixed_sizes_are_resized_without_varsize(state, tmp_path: Path) -> None:
    folder = red_dataset(tmp_path / "m", 2)
    Image.new("RGB", (100, 37), (255, 0, 0)).save(folder / "wide.png")
    ds = TrainingDataset(DatasetOptions(data_root=folder, width=SIZE, height=SIZE), state.models.current.pipe.vae)
    assert {tuple(e.latent.shape) for e in ds.entries} == {(4, SIZE // 8, SIZE // 8)}


def test_lowvram_training_is_refused(make_state, tmp_path: Path) -> None:
    state = make_state("--lowvram")
    embedding_trainer.create_embedding(state, "low", 1)
    with pytest.raises(ValueError, match="lowvram"):
        embedding_trainer.train_embedding(state, "low", settings(red_dataset(tmp_path / "r")))


@pytest.mark.parametrize("trainer", ["embedding", "lora"])
def test_medvram_training_runs_every_part_on_the_device(make_state, tmp_path: Path, trainer: str) -> None:
    """--medvram parks the parts in CPU memory between uses; a training run uses all three at every step (text
    encoder for the prompts, UNet, VAE for the dataset and previews), so the run keeps them on the device — not on
    the CPU, where the parked masters are — and parks them again after it. (On this CPU-only machine the "device"
    is CPU memory too: the manager's own bookkeeping says where each part is, as in tests/test_memory_modes.py.)"""
    from test_memory_modes import state_with

    state = state_with(make_state, memory_mode="medvram")
    model = state.models.current
    seen: dict[str, set[str]] = {"text_encoder": set(), "unet": set(), "vae": set()}
    handles = [getattr(model.pipe, name).register_forward_pre_hook(
        lambda module, args, name=name: seen[name].add(model.offload.residency()[name])) for name in seen]
    handles += [model.pipe.vae.encoder.register_forward_pre_hook(lambda m, a: seen["vae"].add(
        model.offload.residency()["vae"])), model.pipe.vae.decoder.register_forward_pre_hook(
        lambda m, a: seen["vae"].add(model.offload.residency()["vae"]))]
    original = weights(state)
    data = red_dataset(tmp_path / "red")
    try:
        if trainer == "embedding":
            embedding_trainer.create_embedding(state, "medemb", 1)
            embedding_trainer.train_embedding(state, "medemb", settings(data, steps=2, create_image_every=2))
        else:
            lora_trainer.train_lora(state, "medlora", settings(data, learn_rate="0.001", steps=2,
                                                               create_image_every=2),
                                    lora_trainer.LoraOptions(rank=2, alpha=1, text_encoder_lr=0.001))
    finally:
        for handle in handles:
            handle.remove()
    assert seen == {"text_encoder": {"device"}, "unet": {"device"}, "vae": {"device"}}, seen
    assert model.offload.residency() == {"text_encoder": "cpu", "unet": "cpu", "vae": "cpu"}
    assert all(torch.equal(v, original[k]) for k, v in weights(state).items()), "base weights changed"


# --- dataset and preprocessing --------------------------------------------------------------------------------------

def test_captions_templates_and_tags(state, tmp_path: Path) -> None:
    import random

    folder = tmp_path / "d"
    folder.mkdir()
    Image.new("RGB", (SIZE, SIZE)).save(folder / "0012-a cat, blue.png")
    Image.new("RGB", (SIZE, SIZE)).save(folder / "x.png")
    (folder / "x.txt").write_text("from text file\n")
    assert caption_for(folder / "0012-a cat, blue.png") == "a cat, blue"
    assert caption_for(folder / "x.png") == "from text file"
    options = DatasetOptions(data_root=folder, width=SIZE, height=SIZE, template_lines=("art by [name] of [filewords]",),
                             placeholder="zzz", shuffle_tags=True)
    ds = TrainingDataset(options, state.models.current.pipe.vae)
    cat = next(e for e in ds.entries if e.path.name.startswith("0012"))
    prompts = {ds.prompt(cat, random.Random(seed)) for seed in range(20)}
    assert prompts == {"art by zzz of a cat, blue", "art by zzz of  blue,a cat"}
    dropping = TrainingDataset(DatasetOptions(**{**options.__dict__, "tag_drop_out": 0.5, "shuffle_tags": False}),
                               state.models.current.pipe.vae)
    dropped = {dropping.prompt(cat, random.Random(seed)) for seed in range(30)}
    assert "art by zzz of " in dropped and "art by zzz of a cat, blue" in dropped


def test_latent_sampling_methods(state, tmp_path: Path) -> None:
    import random

    folder = red_dataset(tmp_path / "r", 1)
    vae = state.models.current.pipe.vae

    def two_draws(method: str) -> tuple[torch.Tensor, torch.Tensor]:
        ds = TrainingDataset(DatasetOptions(data_root=folder, width=SIZE, height=SIZE, latent_sampling_method=method),
                             vae, torch.Generator().manual_seed(0))
        rng = random.Random(0)
        return next(ds.epoch(rng)).latents, next(ds.epoch(rng)).latents

    once, deterministic, rand = two_draws("once"), two_draws("deterministic"), two_draws("random")
    assert torch.equal(*once) and torch.equal(*deterministic) and not torch.equal(*rand)
    assert not torch.equal(once[0], deterministic[0])
    with pytest.raises(DatasetError, match="latent sampling"):
        DatasetOptions(data_root=folder, latent_sampling_method="sometimes").validate()


def test_preprocess_crops_flips_and_copies_captions(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    image = Image.new("RGB", (120, 60), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 60, 60))  # left half red
    image.save(src / "half.png")
    (src / "half.txt").write_text("red left, blue right")
    Image.new("RGB", (30, 90)).save(src / "tall.jpg")
    written = preprocess.preprocess(preprocess.PreprocessOptions(src, tmp_path / "dst", 32, 32, "copy", flip=True))
    assert [p.name for p in written] == ["00000-0-half.png", "00000-1-half.png", "00001-0-tall.png", "00001-1-tall.png"]
    assert all(Image.open(p).size == (32, 32) for p in written)
    first, mirrored = (np.asarray(Image.open(p)).astype(int) for p in written[:2])
    assert first[:, :8, 0].mean() > 200 and mirrored[:, -8:, 0].mean() > 200  # centre crop keeps both halves
    assert (tmp_path / "dst" / "00000-1-half.txt").read_text() == "red left, blue right"
    assert caption_for(tmp_path / "dst" / "00001-0-tall.png") == "tall"
    with pytest.raises(DatasetError, match="does not exist"):
        preprocess.preprocess(preprocess.PreprocessOptions(tmp_path / "dst2", tmp_path / "x"))


def test_training_on_a_compiled_unet_compiles_nothing(make_state, tmp_path: Path) -> None:
    """With --opt-compile, training (gradients, the trained hypernetwork's processors, the previews) runs the UNet
    uncompiled: those graphs would be compiled for one job and never used again. The next generation compiles."""
    from test_memory_modes import BASE, CountingBackend, state_with

    from modules.processing import process
    from modules.processing_params import GenerationParams

    backend = CountingBackend()
    compiled = state_with(make_state, compile=True, compile_backend=backend)
    torch._dynamo.reset()
    data = red_dataset(tmp_path / "red")
    hypernetwork_trainer.create_hypernetwork(compiled, "comp", ["32", "64"])
    result = hypernetwork_trainer.train_hypernetwork(compiled, "comp", settings(data, steps=4, create_image_every=4))
    assert result.steps_run == 4 and (result.log_directory / "images" / "comp-4.png").is_file()
    assert (backend.graphs, backend.calls) == (0, 0)
    process(compiled, GenerationParams(**{**BASE, "steps": 2}))
    assert backend.graphs >= 1 and backend.calls >= 2
