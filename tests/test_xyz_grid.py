"""The X/Y/Z plot script: A1111's value syntax (worked by hand from its documented rules), its axis numbering, and
whole grids on the tiny model, each cell checked against the same job run on its own.

The API (``script_name``/``script_args`` from the PyPI client) is in ``test_api_compat.py``; the page in
``test_browser_ui.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import run_and_interrupt_after_first_batch
from modules import infotext, xyz_axes, xyz_grid
from modules.processing import process
from modules.processing_params import GenerationParams
from modules.xyz_axes import AxisError
from modules.xyz_grid import AxisSetting, XyzSettings

BASE = dict(prompt="a red circle on a blue background", negative_prompt="blurry", steps=3, width=64, height=64,
            seed=77, save_images=False, sampler_name="Euler")


@pytest.fixture
def state(make_state):
    return make_state()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def axis(label: str) -> xyz_axes.Axis:
    return xyz_axes.find_axis(label, "txt2img")


# ------------------------------------------------------------------------------------------------ value syntax

@pytest.mark.parametrize(("text", "expected"), [
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-9 (+2)", [1, 3, 5, 7, 9]),
    ("10-20 [3]", [10, 15, 20]),
    ("5-1 (-2)", [5, 3, 1]),
    ("3, 7,12", [3, 7, 12]),
    ("1-3, 8", [1, 2, 3, 8]),
    ("0-10 [4]", [0, 3, 6, 10]),  # linspace 0, 3.33, 6.67, 10 cut to whole numbers (A1111's int())
])
def test_whole_number_values_and_ranges(text: str, expected: list[int]) -> None:
    values = xyz_axes.parse_values(axis("Steps"), text)
    assert values == expected and all(type(v) is int for v in values)


@pytest.mark.parametrize(("text", "expected"), [
    ("0-1 (+0.25)", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0-1 [5]", [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("7.5, 3", [7.5, 3.0]),
    ("5-7", [5.0, 6.0, 7.0]),
])
def test_number_values_and_ranges(text: str, expected: list[float]) -> None:
    assert xyz_axes.parse_values(axis("CFG Scale"), text) == pytest.approx(expected)


def test_text_values_are_csv_with_quotes() -> None:
    assert xyz_axes.parse_values(axis("Prompt S/R"), '<lora:ink:0.5>, "<lora:ink:1>, sharp", x ') == \
        ["<lora:ink:0.5>", "<lora:ink:1>, sharp", "x"]
    assert xyz_axes.split_csv(xyz_axes.to_csv(["a, b", 'say "hi"', "c"])) == ["a, b", 'say "hi"', "c"]


def test_a_dropdown_list_wins_over_the_text() -> None:
    assert xyz_axes.parse_values(axis("Sampler"), "Euler", ["Heun", "DDIM"]) == ["Heun", "DDIM"]


@pytest.mark.parametrize(("label", "text", "said"), [
    ("Steps", "abc", "'abc' is not a whole number"),
    ("Steps", "7.5", "'7.5' is not a whole number"),
    ("CFG Scale", "much", "'much' is not a number"),
    ("Steps", " , ", "no values given"),
    ("Steps", "1-5 (+0)", "step of 0"),
])
def test_bad_values_name_the_axis(label: str, text: str, said: str) -> None:
    with pytest.raises(AxisError, match=label) as caught:
        xyz_axes.parse_values(axis(label), text)
    assert said in str(caught.value)


def test_prompt_order_puts_the_words_back_in_each_order() -> None:
    order = axis("Prompt order")
    values = xyz_axes.parse_values(order, "cat, big")
    assert values == [("cat", "big"), ("big", "cat")]
    params = GenerationParams(prompt="a cat, red, big, photo")
    assert [order.apply(None, params, v, values).prompt for v in values] == \
        ["a cat, red, big, photo", "a big, red, cat, photo"]
    assert len(xyz_axes.parse_values(order, "a, b, c")) == 6


def test_prompt_search_and_replace() -> None:
    sr = axis("Prompt S/R")
    params = GenerationParams(prompt="a <lora:ink:0.5> cat", negative_prompt="no ink")
    values = ["ink", "paper"]
    replaced = sr.apply(None, params, "paper", values)
    assert (replaced.prompt, replaced.negative_prompt) == ("a <lora:paper:0.5> cat", "no paper")
    with pytest.raises(AxisError, match="Prompt S/R did not find dog in prompt or negative prompt"):
        sr.apply(None, params, "cat", ["dog", "cat"])


# ----------------------------------------------------------------------------------------- A1111's numbering

@pytest.mark.parametrize(("mode", "index", "label"), [
    ("txt2img", 0, "Nothing"), ("txt2img", 1, "Seed"), ("txt2img", 4, "Steps"), ("txt2img", 5, "Hires steps"),
    ("txt2img", 6, "CFG Scale"), ("txt2img", 7, "Prompt S/R"), ("txt2img", 9, "Sampler"),
    ("txt2img", 10, "Hires sampler"), ("txt2img", 11, "Checkpoint name"),
    ("img2img", 5, "CFG Scale"), ("img2img", 7, "Prompt S/R"), ("img2img", 9, "Sampler"),
    ("img2img", 10, "Checkpoint name"), ("txt2img", "12", "Negative Guidance minimum sigma"),
    ("img2img", 27, "Cond. Image Mask Weight"),
])
def test_api_axis_indices_follow_a1111(mode: str, index: int | str, label: str) -> None:
    """The indices an A1111 client sends: the tab's part of A1111 1.10's list (counted by hand from it)."""
    if label == "Negative Guidance minimum sigma":  # one A1111 has that is not here: named, not ignored
        with pytest.raises(AxisError, match="'Negative Guidance minimum sigma' is not supported here"):
            xyz_axes.find_axis(index, mode)
        return
    assert xyz_axes.find_axis(index, mode).label == label


def test_unknown_axes_are_refused() -> None:
    with pytest.raises(AxisError, match="outside A1111's txt2img list"):
        xyz_axes.find_axis(99, "txt2img")
    with pytest.raises(AxisError, match="unknown X/Y/Z plot axis 'Colour'"):
        xyz_axes.find_axis("Colour", "txt2img")
    with pytest.raises(AxisError, match="'Hires steps' is for txt2img only"):
        xyz_axes.find_axis("Hires steps", "img2img")
    assert xyz_axes.find_axis("cfg scale", "img2img").label == "CFG Scale"


def test_script_args_positional_and_short() -> None:
    full = XyzSettings.from_script_args([6, "3,7", [], 4, "2,4", [], 0, "", [], False, True, False, True,
                                         True, False, False, 10, True])
    assert full == XyzSettings(AxisSetting(6, "3,7"), AxisSetting(4, "2,4"), AxisSetting(0, ""), False, True,
                               False, True, (True, False, False), 10, True)
    assert XyzSettings.from_script_args([9, "", ["Euler", "Heun"]]) == \
        XyzSettings(x=AxisSetting(9, "", ("Euler", "Heun")))
    with pytest.raises(AxisError, match="margin_size"):
        XyzSettings.from_script_args([1, "", [], 0, "", [], 0, "", [], True, False, False, False, False, False,
                                      False, 9000])


def test_the_costliest_axis_runs_outermost() -> None:
    base = GenerationParams(**BASE)
    nothing = xyz_grid.ResolvedAxis(axis("Nothing"), [0], "")
    steps = xyz_grid.ResolvedAxis(axis("Steps"), [1, 2], "1,2")
    checkpoints = xyz_grid.ResolvedAxis(axis("Checkpoint name"), ["a", "b", "c"], "a,b,c")
    plan = xyz_grid.Plan(base, XyzSettings(), (steps, checkpoints, nothing), [])
    assert plan.order() == [(0, 0, 0), (1, 0, 0), (0, 1, 0), (1, 1, 0), (0, 2, 0), (1, 2, 0)]  # Z, Y, X
    plan = xyz_grid.Plan(base, XyzSettings(), (checkpoints, steps, nothing), [])
    assert plan.order() == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (2, 0, 0), (2, 1, 0)]  # X outermost


def test_grid_infotext_fields_go_before_the_version() -> None:
    text = "cat\nNegative prompt: dog\nSteps: 3, Seed: 1, Version: v1.10.1"
    assert xyz_grid.add_fields(text, {"Script": "X/Y/Z plot", "X Values": "3,7"}) == \
        'cat\nNegative prompt: dog\nSteps: 3, Seed: 1, Script: X/Y/Z plot, X Values: "3,7", Version: v1.10.1'
    assert xyz_grid.add_fields("cat\nSteps: 3", {"Y Type": "Steps"}) == "cat\nSteps: 3, Y Type: Steps"


# ----------------------------------------------------------------------------------------------- whole grids

def run_grid(state, settings: XyzSettings, **params) -> object:
    plan = xyz_grid.plan(state, GenerationParams(**{**BASE, **params}), settings)
    return plan, xyz_grid.run(state, plan)


def test_each_cell_is_the_job_run_on_its_own(state) -> None:
    settings = XyzSettings(AxisSetting("CFG Scale", "3, 7"), AxisSetting("Steps", "2,4"), draw_legend=False,
                           include_lone_images=True)
    plan, result = run_grid(state, settings)
    assert len(result.images) == 1 + 4 and result.index_of_first_image == 1
    cells = result.images[1:]
    for (cfg, steps), cell in zip([(3, 2), (7, 2), (3, 4), (7, 4)], cells):  # X across, then Y down
        alone = process(state, GenerationParams(**{**BASE, "cfg_scale": cfg, "steps": steps}))
        assert np.array_equal(pixels(cell), pixels(alone.images[0])), (cfg, steps)
    grid = result.images[0]
    assert grid.size == (128, 128)
    for i, cell in enumerate(cells):
        box = (i % 2 * 64, i // 2 * 64, i % 2 * 64 + 64, i // 2 * 64 + 64)
        assert np.array_equal(pixels(grid.crop(box)), pixels(cell))
    assert len({hash(pixels(c).tobytes()) for c in cells}) == 4
    parsed = [infotext.parse(t) for t in result.infotexts[1:]]
    assert [(p["CFG scale"], p["Steps"]) for p in parsed] == [("3.0", "2"), ("7.0", "2"), ("3.0", "4"), ("7.0", "4")]


def test_the_legend_frames_the_cells_and_the_infotext_gives_the_plot_back(state) -> None:
    settings = XyzSettings(AxisSetting("Seed", "5, 6"), AxisSetting("Prompt S/R", "red, green"),
                           include_lone_images=True, margin_size=4)
    _, result = run_grid(state, settings)
    grid, cells = result.images[0], result.images[1:]
    left, top = grid.width - 2 * 64 - 4, grid.height - 2 * 64 - 4
    assert left > 0 and top > 0  # the row and column labels' bands
    for i, cell in enumerate(cells):
        x, y = left + i % 2 * 68, top + i // 2 * 68
        assert np.array_equal(pixels(grid.crop((x, y, x + 64, y + 64))), pixels(cell))
    legend = pixels(grid.crop((left, 0, grid.width, top)))
    assert legend.min() < 100  # text drawn in the top band
    fields = infotext.parse(result.infotexts[0])
    assert fields["Script"] == "X/Y/Z plot" and fields["X Type"] == "Seed" and fields["X Values"] == "5, 6"
    assert fields["Y Type"] == "Prompt S/R" and fields["Y Values"] == "red, green"
    assert fields["Fixed X Values"] == "5, 6" and fields["Seed"] == "5"
    assert "Z Type" not in fields
    cell_fields = [infotext.parse(t) for t in result.infotexts[1:]]
    assert [(f["Seed"], f["Prompt"]) for f in cell_fields] == [
        ("5", BASE["prompt"]), ("6", BASE["prompt"]), ("5", BASE["prompt"].replace("red", "green")),
        ("6", BASE["prompt"].replace("red", "green"))]
    assert all("X Type" not in t for t in result.infotexts[1:])  # only the grid carries the plot


def test_seeds_are_fixed_once_unless_kept_random(state) -> None:
    steps = XyzSettings(AxisSetting("Steps", "2,3"), include_lone_images=True, draw_legend=False)
    _, fixed = run_grid(state, steps, seed=-1)
    assert len(set(fixed.all_seeds)) == 1
    _, kept = run_grid(state, dataclasses.replace(steps, no_fixed_seeds=True), seed=-1)
    assert len(set(kept.all_seeds)) == 2
    _, varied = run_grid(state, dataclasses.replace(steps, y=AxisSetting("CFG Scale", "4,6"),
                                                    vary_seeds=(True, True, False)), seed=100)
    assert varied.all_seeds == [100, 101, 102, 103]  # seed + ix + iy * len(xs)
    plan, _ = run_grid(state, XyzSettings(AxisSetting("Seed", "-1, 8")), seed=3)
    first = plan.axes[0].values[0]
    assert first != -1 and plan.axes[0].values[1] == 8 and plan.cells[0][0][0].seed == first


def test_a_lora_weight_plot(state) -> None:
    from test_lora import kohya_state_dict, write_lora

    write_lora(state, "ink", kohya_state_dict(state.models.current.pipe, seed=3))
    settings = XyzSettings(AxisSetting("Prompt S/R", "<lora:ink:0>, <lora:ink:0.5>, <lora:ink:1>"),
                           include_lone_images=True, draw_legend=False)
    _, result = run_grid(state, settings, prompt=BASE["prompt"] + " <lora:ink:0>")
    plain = process(state, GenerationParams(**BASE))
    zero, half, full = (pixels(c) for c in result.images[1:])
    assert np.array_equal(zero, pixels(plain.images[0]))  # weight 0 is no network
    assert np.abs(half - zero).max() > 0 and np.abs(full - half).max() > 0
    assert 'Lora hashes: "ink: ' in result.infotexts[2]
    after = process(state, GenerationParams(**BASE))
    assert np.array_equal(pixels(after.images[0]), pixels(plain.images[0]))  # nothing left patched


def test_z_axis_makes_one_grid_per_value_side_by_side(state) -> None:
    settings = XyzSettings(AxisSetting("Steps", "2,3"), AxisSetting(), AxisSetting("CFG Scale", "4,8"),
                           draw_legend=False, include_sub_grids=True)
    _, result = run_grid(state, settings)
    main, first, second = result.images
    assert main.size == (256, 64) and first.size == second.size == (128, 64)
    assert np.array_equal(pixels(main), np.concatenate([pixels(first), pixels(second)], axis=1))
    assert infotext.parse(result.infotexts[0])["Z Type"] == "CFG Scale"
    assert "Z Type" not in infotext.parse(result.infotexts[1])
    assert infotext.parse(result.infotexts[2])["CFG scale"] == "8.0"


def test_checkpoint_axis_then_the_chosen_one_again(state, tiny_checkpoint) -> None:
    from conftest import install_checkpoint

    install_checkpoint(tiny_checkpoint, state.models.ckpt_dir, "second.safetensors")
    state.models.refresh()
    names = sorted(i.name for i in state.models.checkpoints)
    chosen = state.models.current.info
    settings = XyzSettings(AxisSetting("Steps", "2,3"), AxisSetting("Checkpoint name", ", ".join(names)),
                           include_lone_images=True, draw_legend=False)
    _, result = run_grid(state, settings)
    models = [infotext.parse(t)["Model"] for t in result.infotexts[1:]]
    assert models == [names[0].rsplit(".", 1)[0]] * 2 + [names[1].rsplit(".", 1)[0]] * 2
    assert state.models.current.info.path == chosen.path
    assert np.array_equal(pixels(result.images[1]), pixels(result.images[3]))  # the same weights in both files


@pytest.mark.parametrize(("settings", "said"), [
    (XyzSettings(AxisSetting("Sampler", "Euler, Nope")), "unknown sampler 'Nope'"),
    (XyzSettings(AxisSetting("Prompt S/R", "dog, cat")), "Prompt S/R did not find dog"),
    (XyzSettings(AxisSetting("Size", "64x68")), "height must be a multiple of 8"),
    (XyzSettings(AxisSetting("Checkpoint name", "missing")), "Checkpoint name"),
    (XyzSettings(AxisSetting("VAE", "nothing-like-it")), "VAE 'nothing-like-it' not found"),
    (XyzSettings(AxisSetting("Eta", "0,1")), "not supported here"),
    (XyzSettings(AxisSetting("Steps", "1-400"), AxisSetting("Seed", "1-400")), "too large"),
])
def test_bad_grids_are_refused_before_anything_runs(state, settings: XyzSettings, said: str) -> None:
    with pytest.raises(AxisError, match=said):
        xyz_grid.plan(state, GenerationParams(**BASE), settings)


def test_an_interrupt_stops_the_grid_and_keeps_what_was_done(state) -> None:
    settings = XyzSettings(AxisSetting("Seed", "1-4"), include_lone_images=True, draw_legend=False)
    plan = xyz_grid.plan(state, GenerationParams(**{**BASE, "steps": 40}), settings)
    result = run_and_interrupt_after_first_batch(state, xyz_grid.run, plan)
    cells = [pixels(c) for c in result.images[1:]]
    assert len(cells) == 4 and cells[0].max() > 0
    assert cells[-1].max() == 0  # not run: a black cell
    assert state.job.job_count == 0 and not state.job.outer  # the queue's next job starts fresh


def test_the_grid_is_saved_as_xyz_grid_with_its_infotext(state) -> None:
    settings = XyzSettings(AxisSetting("Steps", "2,3"))
    _, result = run_grid(state, settings, save_images=True)
    grids = sorted((state.paths.data_dir / "outputs" / "txt2img-grids").rglob("*.png"))
    samples = sorted((state.paths.data_dir / "outputs" / "txt2img-images").rglob("*.png"))
    assert [p.name for p in grids] == ["xyz_grid-0000.png"]
    assert len(samples) == 2  # each cell saved as a job's sample, as in A1111
    with Image.open(grids[0]) as saved:
        assert infotext.read_from_image(saved) == result.infotexts[0]
        assert np.array_equal(pixels(saved), pixels(result.images[0]))
    assert result.saved_paths == grids
    run_grid(state, settings, save_images=True)
    assert sorted(p.name for p in grids[0].parent.glob("xyz_grid-*.png")) == ["xyz_grid-0000.png", "xyz_grid-0001.png"]


def test_an_img2img_plot_of_denoising_strengths(state) -> None:
    from test_img2img import picture

    start = (picture(64, 64),)
    settings = XyzSettings(AxisSetting("Denoising", "0.3, 0.8"), include_lone_images=True, draw_legend=False)
    plan, result = run_grid(state, settings, init_images=start)
    assert plan.base.mode == "img2img" and [c.denoising_strength for c in plan.cells[0][0]] == [0.3, 0.8]
    for strength, cell in zip((0.3, 0.8), result.images[1:]):
        alone = process(state, GenerationParams(**{**BASE, "init_images": start, "denoising_strength": strength}))
        assert np.array_equal(pixels(cell), pixels(alone.images[0])), strength
    assert infotext.parse(result.infotexts[0])["X Type"] == "Denoising"
    with pytest.raises(AxisError, match="'Hires steps' is for txt2img only"):
        xyz_grid.plan(state, GenerationParams(**{**BASE, "init_images": start}), XyzSettings(AxisSetting("Hires steps", "2")))
