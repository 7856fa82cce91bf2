"""Prompt → conditioning on the tiny model: chunks, BREAK, comma backtrack, emphasis formulas, schedules, AND,
textual-inversion vectors, the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from modules import conditioning, prompt_parser, sampling
from modules.processing import process
from modules.processing_params import GenerationParams
from modules.prompt_encoder import CHUNK, EncoderOptions, PromptEncoder

BASE = dict(negative_prompt="", steps=4, width=64, height=64, seed=99, save_images=False, sampler_name="Euler")


@pytest.fixture
def state(make_state):
    return make_state()


@pytest.fixture
def pipe(state):
    return state.models.current.pipe


def encoder_for(pipe, embeddings=None, **options) -> PromptEncoder:
    return PromptEncoder(pipe.text_encoder, pipe.tokenizer, embeddings, EncoderOptions(**options))


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[result.index_of_first_image]).astype(np.int16)


def words(n: int) -> str:
    """``n`` one-token words (checked below)."""
    return " ".join(["cat"] * n)


def test_chunking_rules(pipe) -> None:
    enc = encoder_for(pipe)
    assert len(enc.tokenize_segments([words(10)])[0]) == 10
    for text, chunks, count in [("", 1, 0), (words(75), 1, 75), (words(76), 2, 76), (words(150), 2, 150),
                                ("a BREAK b", 2, 76), ("BREAK a", 2, 76)]:
        got, n = enc.tokenize_line(text)
        assert (len(got), n) == (chunks, count), text
        assert all(len(c.tokens) == CHUNK + 2 and c.tokens[0] == pipe.tokenizer.bos_token_id
                   and c.tokens[-1] == pipe.tokenizer.eos_token_id for c in got)
    first, _ = enc.tokenize_line("BREAK a")
    assert first[0].tokens[1:] == [pipe.tokenizer.eos_token_id] * (CHUNK + 1)  # an all-padding first chunk
    none, _ = encoder_for(pipe, emphasis="None").tokenize_line("a BREAK b")
    assert len(none) == 1  # with emphasis "None" BREAK is a word


def test_comma_backtrack_moves_the_tail_after_the_last_comma(pipe) -> None:
    text = words(70) + ", " + words(10)  # the comma is token 71; the chunk fills at 75
    chunks, _ = encoder_for(pipe).tokenize_line(text)
    comma = pipe.tokenizer.get_vocab()[",</w>"]
    assert chunks[0].tokens[71] == comma and chunks[0].tokens[72:] == [pipe.tokenizer.eos_token_id] * 5
    assert chunks[1].tokens[1:11] == pipe.tokenizer(words(10), add_special_tokens=False)["input_ids"]
    plain, _ = encoder_for(pipe, comma_padding_backtrack=0).tokenize_line(text)
    assert plain[0].tokens[72] != pipe.tokenizer.eos_token_id  # without backtrack the chunk is simply full


def _raw(pipe, chunk_tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return pipe.text_encoder(input_ids=torch.tensor([chunk_tokens])).last_hidden_state


@pytest.mark.parametrize("mode", ["Original", "No norm", "Ignore"])
def test_emphasis_formulas(pipe, mode: str) -> None:
    text = "a (red:1.5) [cat]"
    enc = encoder_for(pipe, emphasis=mode)
    chunks, _ = enc.tokenize_line(text)
    weights = torch.tensor(chunks[0].multipliers)
    assert 1.5 in weights.tolist() and pytest.approx(1 / 1.1) in weights.tolist()
    z = _raw(pipe, chunks[0].tokens)
    if mode == "Ignore":
        expected = z
    else:
        expected = z * weights[None, :, None]
        if mode == "Original":
            expected = expected * (z.mean() / expected.mean())
    got, _ = enc.encode([text])
    assert torch.allclose(got, expected, atol=1e-6)


def test_segments_are_tokenised_separately(pipe) -> None:
    enc = encoder_for(pipe)
    assert enc.tokenize_line("(red)cat")[0][0].tokens != enc.tokenize_line("redcat")[0][0].tokens


def test_schedule_edges_give_exact_images(state) -> None:
    def run(prompt: str) -> np.ndarray:
        return pixels(process(state, GenerationParams(prompt=prompt, **BASE)))

    red, blue = run("a red cat"), run("a blue cat")
    assert np.array_equal(run("a [red:blue:0] cat"), blue)  # [a:b:0] is b from the start
    assert np.array_equal(run("a [red:blue:99] cat"), red)  # beyond the last step: never switches
    assert np.array_equal(run("a [red:blue:1.0] cat"), red)  # a fraction of 1.0 never switches (A1111 quirk)
    switched = run("a [red:blue:2] cat")
    assert not np.array_equal(switched, red) and not np.array_equal(switched, blue)


def test_guidance_switches_at_a1111s_step(pipe) -> None:
    enc = encoder_for(pipe)
    multi = conditioning.multicond_learned_conditioning(enc, ["a [red:blue:2] cat"], 4, None)
    uncond = conditioning.learned_conditioning(enc, [""], 4, None)
    red, _ = enc.encode(["a red cat"])
    blue, _ = enc.encode(["a blue cat"])
    guidance = sampling.Guidance(multi, uncond, 7.0)
    for step, expected in [(0, red), (1, red), (2, red), (3, blue)]:  # step <= 2 is "red": 3 calls, as A1111
        assert torch.allclose(guidance.at(step, torch.float32).cond[0], expected[0], atol=1e-6), step


def test_second_order_samplers_count_steps_twice(state) -> None:
    """With Heun, A1111 schedules over steps·2 denoiser calls: [a:b:0.5] switches halfway through the calls."""
    heun = dict(BASE, sampler_name="Heun")
    half = pixels(process(state, GenerationParams(prompt="a [red:blue:0.5] cat", **heun)))
    absolute = pixels(process(state, GenerationParams(prompt="a [red:blue:4] cat", **heun)))  # int(0.5·8) = 4
    assert np.array_equal(half, absolute)


def test_alternation_and_and(state) -> None:
    one_step = dict(BASE, steps=1)
    red = pixels(process(state, GenerationParams(prompt="a red cat", **one_step)))
    assert np.array_equal(pixels(process(state, GenerationParams(prompt="a [red|blue] cat", **one_step))), red)
    plain = pixels(process(state, GenerationParams(prompt="a red cat", **BASE)))
    both = pixels(process(state, GenerationParams(prompt="a red cat AND a blue dog", **BASE)))
    zero = pixels(process(state, GenerationParams(prompt="a red cat AND a blue dog :0", **BASE)))
    assert np.abs(both - plain).max() > 0
    assert np.abs(zero - plain).max() <= 1  # a 0-weight part only changes the UNet batch size (float noise)


def test_negative_prompt_is_not_split_on_and(state, pipe) -> None:
    enc = encoder_for(pipe)
    assert prompt_parser.get_multicond_prompt_list(["x AND y"])[1] == ["x", " y"]  # A1111 keeps leading spaces
    literal = conditioning.learned_conditioning(enc, ["x AND y"], 4, None)[0]
    direct, _ = enc.encode(["x AND y"])
    assert torch.allclose(literal.conds[0], direct[0])


def test_long_prompts_and_different_lengths(state) -> None:
    long = ", ".join(["a very detailed red cat"] * 30)  # several chunks
    result = process(state, GenerationParams(prompt=long, **{**BASE, "negative_prompt": "blurry"}))
    assert pixels(result).std() > 1
    assert process(state, GenerationParams(prompt="x AND " + long, **BASE)).images


def test_cache_hits_for_an_unchanged_prompt(state) -> None:
    cache = state.models.current.cond_cache
    process(state, GenerationParams(prompt="a cached cat", **BASE))
    hits = cache.hits
    process(state, GenerationParams(prompt="a cached cat", **{**BASE, "seed": 100}))
    assert cache.hits == hits + 2  # prompt and negative prompt both came from the cache
    misses = cache.misses
    process(state, GenerationParams(prompt="a cached cat", clip_skip=2, **BASE))
    assert cache.misses == misses + 2  # another clip skip is another encoding


def test_token_counter(pipe) -> None:
    enc = encoder_for(pipe)
    assert conditioning.token_counter(enc, "", 20) == (0, 75)
    assert conditioning.token_counter(enc, words(80), 20) == (80, 150)
    assert conditioning.token_counter(enc, "<lora:x:1> " + words(3), 20) == (3, 75)  # tags do not count
    assert conditioning.token_counter(enc, words(3) + " AND " + words(5), 20) == (5, 75)  # the longest part
    assert conditioning.token_counter(enc, f"[{words(3)}:{words(9)}:5]", 20) == (9, 75)  # the longest schedule


# -- textual inversion ---------------------------------------------------------------------------------------------


def _token_vectors(pipe, text: str) -> torch.Tensor:
    ids = pipe.tokenizer(text, add_special_tokens=False)["input_ids"]
    return pipe.text_encoder.get_input_embeddings().weight[ids].detach().clone()  # (n, C)


def _write_pt(path: Path, vectors: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_param": {"*": vectors}, "name": "ignored", "step": 5}, path)


def test_embedding_vectors_replace_token_embeddings(state, pipe) -> None:
    """An embedding whose vectors are the token embeddings of "red cat" must encode exactly like "red cat"."""
    _write_pt(state.paths.embeddings_dir / "sub" / "RedCat.pt", _token_vectors(pipe, "red cat"))
    state.embeddings.refresh(pipe.text_encoder.config.hidden_size)
    enc = PromptEncoder(pipe.text_encoder, pipe.tokenizer, state.embeddings)
    got, used = enc.encode(["a redcat on a mat"])  # matched case-insensitively by tokens
    expected, _ = enc.encode(["a red cat on a mat"])
    assert [e.name for e in used] == ["RedCat"]
    assert torch.allclose(got, expected, atol=1e-6)


def test_embedding_is_never_split_across_chunks(state, pipe) -> None:
    _write_pt(state.paths.embeddings_dir / "pair.pt", _token_vectors(pipe, "red cat"))
    state.embeddings.refresh(pipe.text_encoder.config.hidden_size)
    chunks, _ = PromptEncoder(pipe.text_encoder, pipe.tokenizer, state.embeddings).tokenize_line(words(74) + " pair")
    assert len(chunks) == 2 and chunks[0].fixes == [] and chunks[1].fixes[0][0] == 0


def test_embeddings_change_images_in_both_prompts_and_are_hashed(state, pipe) -> None:
    vectors = torch.randn(2, pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(0))
    _write_pt(state.paths.embeddings_dir / "style.pt", vectors)
    wrong = state.paths.embeddings_dir / "wide.pt"
    _write_pt(wrong, torch.randn(1, 1024))  # an SD2-width embedding: skipped, not loaded
    plain = process(state, GenerationParams(prompt="a cat style", **BASE))  # first job loads the folder
    assert "style" in state.embeddings.loaded and "wide" in state.embeddings.skipped
    without = process(state, GenerationParams(prompt="a cat", **BASE))
    assert np.abs(pixels(plain) - pixels(without)).max() > 0
    import hashlib

    short = hashlib.sha256((state.paths.embeddings_dir / "style.pt").read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "style: {short}"' in plain.infotexts[0]
    negative = process(state, GenerationParams(prompt="a cat", **{**BASE, "negative_prompt": "style"}))
    assert np.abs(pixels(negative) - pixels(without)).max() > 0
    assert f'TI hashes: "style: {short}"' in negative.infotexts[0]
