"""The Prompts from file or textbox script: A1111's line syntax (shlex-quoted ``--tag value`` pairs), how a line's
prompts join the page's, the seed options, and whole lists run on the tiny model, each job checked against the same
job run on its own. The API (``script_name`` from the PyPI client) is in ``test_api_compat.py``."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from conftest import run_and_interrupt_after_first_batch
from modules import infotext, prompts_from_file
from modules.processing import process
from modules.processing_params import GenerationParams
from modules.prompts_from_file import PromptsError, PromptsSettings

BASE = dict(prompt="", negative_prompt="", steps=3, width=64, height=64, seed=50, save_images=False,
            sampler_name="Euler")


@pytest.fixture
def state(make_state):
    return make_state()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_a_line_is_a_prompt_or_a1111_options() -> None:
    assert prompts_from_file.parse_line("a cat, sitting", 1) == {"prompt": "a cat, sitting"}
    line = ('--prompt "a cat, sitting" --negative_prompt \'blurry, dog\' --steps 30 --cfg_scale 6.5 --seed 5 '
            '--sampler_name "Euler a" --width 96 --do_not_save_samples true --restore_faces false')
    assert prompts_from_file.parse_line(line, 3) == {
        "prompt": "a cat, sitting", "negative_prompt": "blurry, dog", "steps": 30, "cfg_scale": 6.5, "seed": 5,
        "sampler_name": "Euler a", "width": 96, "do_not_save_samples": True, "restore_faces": False}


@pytest.mark.parametrize(("line", "said"), [
    ("--prompt cat --colour red", "line 7: unknown option --colour"),
    ("--prompt cat --steps", "line 7: --steps has no value"),
    ("--steps many", "line 7: --steps: invalid literal for int"),
    ("--prompt \"a cat", "line 7: No closing quotation"),
    ("--prompt a cat", "line 7: 'cat' is not a --option"),
    ("--tiling yes", "line 7: --tiling: expected true or false"),
])
def test_a_bad_line_is_named(line: str, said: str) -> None:
    with pytest.raises(PromptsError, match=said):
        prompts_from_file.parse_line(line, 7)


def test_prompts_join_the_pages_at_the_start_or_the_end(state) -> None:
    page = GenerationParams(**{**BASE, "prompt": "oil painting", "negative_prompt": "lowres"})
    text = 'a cat\n\n--prompt "a dog" --negative_prompt "blurry"\n--steps 4'
    start = prompts_from_file.plan(state, page, PromptsSettings(text=text))
    assert [(j.prompt, j.negative_prompt, j.steps) for j in start.jobs] == [
        ("a cat oil painting", "lowres", 3), ("a dog oil painting", "blurry lowres", 3), ("oil painting", "lowres", 4)]
    end = prompts_from_file.plan(state, page, PromptsSettings(position="end", text=text))
    assert [(j.prompt, j.negative_prompt) for j in end.jobs][:2] == [
        ("oil painting a cat", "lowres"), ("oil painting a dog", "lowres blurry")]
    bare = prompts_from_file.plan(state, GenerationParams(**BASE), PromptsSettings(text="a cat"))
    assert bare.jobs[0].prompt == "a cat"  # an empty page prompt: the line alone


def test_seed_options(state) -> None:
    page = GenerationParams(**{**BASE, "seed": 100, "batch_size": 2, "n_iter": 3})
    lines = "a\nb\n--prompt c --seed 7\nd"
    iterate = prompts_from_file.plan(state, page, PromptsSettings(iterate_seed=True, text=lines))
    assert [j.seed for j in iterate.jobs] == [100, 106, 7, 118]  # + batch size · batch count per line
    assert [j.seed for j in prompts_from_file.plan(state, page, PromptsSettings(text=lines)).jobs] == [100, 100, 7, 100]
    same = prompts_from_file.plan(state, GenerationParams(**{**BASE, "seed": -1}),
                                  PromptsSettings(same_random_seed=True, text="a\nb"))
    assert same.jobs[0].seed == same.jobs[1].seed != -1
    kept = prompts_from_file.plan(state, GenerationParams(**{**BASE, "seed": -1}), PromptsSettings(text="a\nb"))
    assert [j.seed for j in kept.jobs] == [-1, -1]  # each job draws its own, as in A1111


def test_checkpoints_styles_and_what_is_ignored(state) -> None:
    title = state.models.current.info.title
    plan = prompts_from_file.plan(state, GenerationParams(**BASE), PromptsSettings(
        text=f'--prompt a --sd_model "{state.models.current.info.name}" --restore_faces true --sampler_index 3'))
    assert plan.jobs[0].override_settings == {"sd_model_checkpoint": title}
    assert plan.ignored == ["line 1: --restore_faces is not supported here; ignored",
                            "line 1: --sampler_index is not used here; ignored (use --sampler_name for the sampler)"]
    for text, said in (("--prompt a --sd_model nothing", "line 1: --sd_model"),
                       ("a\n--prompt b --styles nope", "line 2: --styles: style 'nope' not found"),
                       ("a\n\n--prompt b --width 65", "line 3: width must be a multiple of 8"),
                       ("--prompt b --sampler_name Nope", "line 1: unknown sampler 'Nope'"),
                       (" \n ", "the list of prompt inputs is empty")):
        with pytest.raises(PromptsError, match=said):
            prompts_from_file.plan(state, GenerationParams(**BASE), PromptsSettings(text=text))


def test_every_line_is_the_job_run_on_its_own(state) -> None:
    page = GenerationParams(**{**BASE, "prompt": "a red circle", "batch_size": 2})
    text = 'on a lake\n--prompt "on a hill" --steps 4 --cfg_scale 5'
    result = prompts_from_file.run(state, prompts_from_file.plan(state, page, PromptsSettings(
        iterate_seed=True, text=text)))
    assert len(result.images) == len(result.infotexts) == len(result.all_seeds) == 4  # no per-job grids
    assert result.all_seeds == [50, 51, 52, 53] and result.index_of_first_image == 0
    first = process(state, GenerationParams(**{**BASE, "prompt": "on a lake a red circle", "batch_size": 2}))
    second = process(state, GenerationParams(**{**BASE, "prompt": "on a hill a red circle", "batch_size": 2,
                                                "steps": 4, "cfg_scale": 5, "seed": 52}))
    alone = first.images[1:] + second.images[1:]
    for made, expected in zip(result.images, alone):
        assert np.array_equal(pixels(made), pixels(expected))
    assert [infotext.parse(t)["Prompt"] for t in result.infotexts] == ["on a lake a red circle"] * 2 + \
        ["on a hill a red circle"] * 2


def test_an_interrupt_stops_the_list(state) -> None:
    plan = prompts_from_file.plan(state, GenerationParams(**{**BASE, "steps": 40}),
                                  PromptsSettings(text="a\nb\nc\nd"))
    result = run_and_interrupt_after_first_batch(state, prompts_from_file.run, plan)
    assert 1 <= len(result.images) < 4
    assert state.job.job_count == 0 and not state.job.outer
