"""The page in a real browser: Debian's Chromium driven by Playwright against webui.py on the tiny model.

Two servers run for the module (started together): the main one, and one with ``--freeze-settings``.
Screenshots of the main flows go to ``<pytest tmp dir>/test-artifacts`` (the path is printed at the end).
Chromium, Playwright and the shared fixtures: :mod:`browser_support`.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, PngImagePlugin

from browser_support import TIMEOUT_MS, new_page, require_browser, shot
from conftest import install_checkpoint
from modules import demo_model, infotext
from test_api_server import Server, spawn_server, stop_server, wait_up

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest_plugins = ["browser_support"]  # the browser and artifacts fixtures

SMALL = {"txt2img_steps": 4, "txt2img_width": 64, "txt2img_height": 64}
sync_api = require_browser()


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path,
            artifacts: Path) -> Iterator[dict[str, Server]]:
    """The main server (tiny + second checkpoints, a styles.csv, the API on) and a --freeze-settings one, started
    together."""
    data = tmp_path_factory.mktemp("webui-browser")
    folder = data / "models" / "Stable-diffusion"
    install_checkpoint(tiny_checkpoint, folder)
    demo_model.write_checkpoint(folder / "second.safetensors", seed=5)
    with open(data / "styles.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["name", "prompt", "negative_prompt"], ["vivid", "{prompt}, vivid colors", "dull"]])
    frozen_data = tmp_path_factory.mktemp("webui-frozen")
    install_checkpoint(tiny_checkpoint, frozen_data / "models" / "Stable-diffusion")
    started = {"main": spawn_server(data, "--api", "--ckpt", str(folder / "tiny.safetensors")),  # --api: settle()
               "frozen": spawn_server(frozen_data, "--freeze-settings", "--skip-load-model-at-start")}
    yield started
    for name, server in started.items():
        stop_server(server)
        shutil.copyfile(server.log, artifacts / f"server-{name}.log")


@pytest.fixture(scope="module")
def server(spawned: dict[str, Server]) -> Server:
    return wait_up(spawned["main"])


@pytest.fixture(scope="module")
def frozen_server(spawned: dict[str, Server]) -> Server:
    return wait_up(spawned["frozen"])


def open_page(browser, url: str):
    return new_page(browser, url, "#txt2img_generate", accept_downloads=True)


def settle(server: Server, within: float = 120) -> None:
    """Interrupt whatever the server is running or has queued, and return once it is idle.

    A test that fails half way leaves its job running (a 40-batch job would keep the one worker busy for minutes);
    without this, the next tests would wait behind it and time out too.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pending = requests.get(f"{server.url}/internal/pending-tasks", timeout=30).json()["size"]
        state = requests.get(server.api("progress"), timeout=30).json()["state"]
        if not pending and not state["job"] and not state["job_count"]:
            return
        requests.post(server.api("interrupt"), timeout=30)
        time.sleep(0.2)
    raise AssertionError(f"the server at {server.url} was still busy after {within:.0f} s")


@pytest.fixture(autouse=True)
def idle_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test that used the main server leaves it idle for the next one (see :func:`settle`)."""
    yield
    if "server" in request.fixturenames:
        settle(request.getfixturevalue("server"))


@pytest.fixture
def page(browser, server: Server) -> Iterator[object]:
    page = open_page(browser, server.url)
    yield page
    page.context.close()


# ------------------------------------------------------------------------------------------------------- helpers
def set_number(page, elem_id: str, value: float) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def set_numbers(page, values: dict[str, float]) -> None:
    for elem_id, value in values.items():
        set_number(page, elem_id, value)


def number(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def choose(page, elem_id: str, option: str) -> None:
    page.locator(f"#{elem_id} input").click()
    page.locator(f"#{elem_id} [role=option][aria-label={json.dumps(option)}]").click()


def text_of(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def generate(page, timeout: float = TIMEOUT_MS) -> str:
    """Click Generate on a page whose gallery is empty; wait for the image; return the infotext shown."""
    assert page.locator("#txt2img_gallery img").count() == 0
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_gallery img, .toast-body.error", timeout=timeout)
    errors = page.locator(".toast-body.error")
    assert errors.count() == 0, errors.first.inner_text()
    sync_api.expect(page.locator("#html_info_txt2img textarea")).not_to_have_value("", timeout=timeout)
    return text_of(page, "html_info_txt2img")


def gallery_png(page) -> bytes:
    """The bytes the gallery serves for its first image (what "download" saves)."""
    src = page.locator("#txt2img_gallery img").first.get_attribute("src")
    reply = page.request.get(src)
    assert reply.ok, src
    return reply.body()


# --------------------------------------------------------------------------------------------------------- tests
def test_prompt_counter_generate_and_download_keep_the_infotext(page, server: Server, artifacts: Path) -> None:
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red circle")
    sync_api.expect(page.locator("#txt2img_token_counter")).to_have_text("3/75")
    prompt.fill("a red circle on a green square")
    sync_api.expect(page.locator("#txt2img_token_counter")).to_have_text("7/75")
    set_numbers(page, {**SMALL, "txt2img_seed": 4242})
    prompt.press("Control+Enter")  # A1111's shortcut
    page.wait_for_selector("#txt2img_gallery img")
    sync_api.expect(page.locator("#html_info_txt2img textarea")).not_to_have_value("")
    text = text_of(page, "html_info_txt2img")
    assert text.startswith("a red circle on a green square\nSteps: 4, Sampler: DPM++ 2M, Schedule type: Karras, "
                           "CFG scale: 7, Seed: 4242, Size: 64x64,"), text
    assert "Model: tiny" in text
    shot(page, artifacts, "01-generate")

    served = gallery_png(page)
    saved = sorted((server.data / "outputs" / "txt2img-images").rglob("*-4242.png"))
    assert saved and served == saved[-1].read_bytes()  # the saved PNG itself, byte for byte
    with Image.open(BytesIO(served)) as image:
        assert image.format == "PNG" and infotext.read_from_image(image) == text

    page.locator("#txt2img_gallery img").first.click()  # preview mode, then the download button
    with page.expect_download() as download:
        page.locator("#txt2img_gallery button[aria-label='Download'], #txt2img_gallery a[download]").first.click()
    assert Path(download.value.path()).read_bytes() == served


def test_ctrl_up_down_edits_the_emphasis_of_the_selection(page) -> None:
    box = page.locator("#txt2img_prompt textarea")
    box.fill("a red cat, sitting <lora:thing:0.8>")
    box.evaluate("area => area.setSelectionRange(6, 9)")  # "cat"
    box.press("Control+ArrowUp")
    sync_api.expect(box).to_have_value("a red (cat:1.1), sitting <lora:thing:0.8>")
    box.press("Control+ArrowUp")
    sync_api.expect(box).to_have_value("a red (cat:1.2), sitting <lora:thing:0.8>")
    assert box.evaluate("a => a.value.slice(a.selectionStart, a.selectionEnd)") == "cat"
    box.press("Control+ArrowDown")
    box.press("Control+ArrowDown")
    sync_api.expect(box).to_have_value("a red cat, sitting <lora:thing:0.8>")  # weight 1: parentheses gone
    box.evaluate("area => area.setSelectionRange(13, 13)")  # the cursor in "sitting", nothing selected
    box.press("Control+ArrowDown")
    sync_api.expect(box).to_have_value("a red cat, (sitting:0.9) <lora:thing:0.8>")
    box.evaluate("area => area.setSelectionRange(area.value.length - 3, area.value.length - 3)")  # in the tag
    box.press("Control+ArrowUp")
    sync_api.expect(box).to_have_value("a red cat, (sitting:0.9) <lora:thing:0.85>")
    # the server sees the edited text (the style editor copies the prompt box's value)
    page.locator("#txt2img_styles_editor").click()
    page.locator("#txt2img_edit_style_copy").click()
    sync_api.expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value(
        "a red cat, (sitting:0.9) <lora:thing:0.85>")


def test_seed_buttons_reuse_the_last_seed(page, artifacts: Path) -> None:
    page.locator("#txt2img_prompt textarea").fill("seed test")
    set_numbers(page, {**SMALL, "txt2img_seed": -1})
    text = generate(page)
    seed = int(infotext.parse(text)["Seed"])
    page.locator("#txt2img_reuse_seed").click()
    sync_api.expect(page.locator("#txt2img_seed input")).to_have_value(str(seed))
    page.locator("#txt2img_random_seed").click()
    sync_api.expect(page.locator("#txt2img_seed input")).to_have_value("-1")
    shot(page, artifacts, "02-seed-reuse")


def test_swap_then_batch_count_times_batch_size_fill_the_gallery(page, server: Server, artifacts: Path) -> None:
    page.locator("#txt2img_prompt textarea").fill("a batch of four")
    set_numbers(page, {"txt2img_steps": 2, "txt2img_width": 72, "txt2img_height": 64, "txt2img_seed": 500,
                       "txt2img_batch_count": 2, "txt2img_batch_size": 2})
    page.locator("#txt2img_res_switch_btn").click()  # ⇅ swaps width and height
    sync_api.expect(page.locator("#txt2img_width input[type=number]")).to_have_value("64")
    sync_api.expect(page.locator("#txt2img_height input[type=number]")).to_have_value("72")
    text = generate(page)
    assert "Seed: 500, Size: 64x72," in text, text
    thumbnails = page.locator("#txt2img_gallery img")
    sync_api.expect(thumbnails).to_have_count(5)  # the grid first, then 2 batches x 2 images
    with Image.open(BytesIO(gallery_png(page))) as grid:
        assert grid.size == (2 * 64, 2 * 72)
    texts = [_png_text(f) for f in (server.data / "outputs" / "txt2img-images").rglob("*.png")]
    saved = sorted(int(infotext.parse(t)["Seed"]) for t in texts if t.startswith("a batch of four\n"))
    assert saved == [500, 501, 502, 503]  # one image per seed, seed + i across both batches
    shot(page, artifacts, "02b-batch-gallery")
    thumbnails.nth(4).click()  # the last sample: its own infotext, and ♻️ reuses its seed
    sync_api.expect(page.locator("#html_info_txt2img textarea")).to_have_value(re.compile(r"Seed: 503, Size: 64x72"))
    page.locator("#txt2img_reuse_seed").click()
    sync_api.expect(page.locator("#txt2img_seed input")).to_have_value("503")


def test_progress_queue_and_interrupt(browser, server: Server, artifacts: Path) -> None:
    url = server.url
    first = open_page(browser, url)
    second = None
    try:
        first.locator("#txt2img_prompt textarea").fill("a long job")
        set_numbers(first, {**SMALL, "txt2img_steps": 150, "txt2img_batch_count": 40})  # minutes if not stopped
        first.locator("#txt2img_generate").click()
        first.wait_for_selector("#txt2img_progress .webui-progress-fill")
        first.wait_for_selector("#txt2img_progress img.webui-live-preview")  # every 10 steps (the default)
        sync_api.expect(first.locator("#txt2img_progress")).to_contain_text("ETA")
        shot(first, artifacts, "03-progress-live-preview")

        second = open_page(browser, url)  # a second tab sees the running job, then queues behind it
        second.wait_for_selector("#txt2img_progress .webui-progress-fill")
        second.locator("#txt2img_prompt textarea").fill("queued behind")
        set_numbers(second, SMALL)
        second.locator("#txt2img_generate").click()
        sync_api.expect(second.locator("#txt2img_progress")).to_contain_text("In queue: 1 job ahead", timeout=20_000)
        shot(second, artifacts, "04-second-tab-queued")

        first.locator("#txt2img_interrupt").click()
        started = time.monotonic()
        first.wait_for_selector("#txt2img_gallery img", timeout=30_000)
        assert time.monotonic() - started < 30
        text = text_of(first, "html_info_txt2img")
        assert text.startswith("a long job\nSteps: 150,")
        second.wait_for_selector("#txt2img_gallery img", timeout=30_000)
        assert text_of(second, "html_info_txt2img").startswith("queued behind\nSteps: 4,")
        assert first.locator("#txt2img_progress .webui-progress").count() == 0  # the bar is gone
        shot(first, artifacts, "05-interrupted")
    finally:
        first.context.close()
        if second is not None:
            second.context.close()


def _batch_and_step(page) -> tuple[int, int]:
    """(batch, step) from the progress text "Batch b/n, step s/m"."""
    match = re.search(r"Batch (\d+)/\d+, step (\d+)/", page.locator("#txt2img_progress").inner_text())
    assert match, page.locator("#txt2img_progress").inner_text()
    return int(match.group(1)), int(match.group(2))


def test_alt_enter_skips_to_the_next_batch_and_keeps_the_skipped_image(page, artifacts: Path) -> None:
    """A1111's Alt+Enter in the prompt is Skip: the running batch stops early, the job goes on with the next batch
    (and keeps the skipped batch's image); Interrupt then ends it."""
    steps = 150  # the slider's maximum
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("skip me")
    set_numbers(page, {"txt2img_steps": steps, "txt2img_width": 256, "txt2img_height": 256, "txt2img_batch_count": 3})
    page.locator("#txt2img_generate").click()
    progress = page.locator("#txt2img_progress")
    sync_api.expect(progress).to_contain_text("Batch 1/3, step")
    batch, step = _batch_and_step(page)
    assert batch == 1 and step < steps / 2, (batch, step)
    prompt.press("Alt+Enter")
    pressed = time.monotonic()
    sync_api.expect(progress).to_contain_text("Batch 2/3, step", timeout=15_000)
    switch = time.monotonic() - pressed
    _, first = _batch_and_step(page)  # the sampling rate, read from batch 2
    measured_from = time.monotonic()
    time.sleep(2)
    _, second = _batch_and_step(page)
    rate = (second - first) / (time.monotonic() - measured_from)
    assert rate > 0
    # Batch 1 had at least steps/2 steps to go: unskipped it would have needed that long. The skip took far less.
    assert switch * rate < steps / 4, (switch, rate)
    shot(page, artifacts, "05b-skipped-to-batch-2")
    page.locator("#txt2img_interrupt").click()
    page.wait_for_selector("#txt2img_gallery img", timeout=30_000)
    assert text_of(page, "html_info_txt2img").startswith(f"skip me\nSteps: {steps},")
    images = page.locator("#txt2img_gallery img").count()
    assert images >= 2, images  # the skipped batch's image and the interrupted one (plus a grid, if shown)


def test_png_info_round_trip_restores_every_field(browser, server: Server, artifacts: Path, tmp_path: Path) -> None:
    url = server.url
    source = open_page(browser, url)
    fields = {"txt2img_steps": 6, "txt2img_width": 72, "txt2img_height": 64, "txt2img_cfg_scale": 5.5,
              "txt2img_seed": 31337, "txt2img_subseed": 17, "txt2img_subseed_strength": 0.25, "txt2img_clip_skip": 2}
    try:
        source.locator("#txt2img_prompt textarea").fill("a blue square, (soft:1.2)")
        source.locator("#txt2img_neg_prompt textarea").fill("blurry")
        choose(source, "txt2img_sampling", "Euler")
        choose(source, "txt2img_scheduler", "Exponential")
        set_numbers(source, fields)
        original = generate(source)
        png = tmp_path / "made.png"
        png.write_bytes(gallery_png(source))
    finally:
        source.context.close()
    assert "Sampler: Euler, Schedule type: Exponential, CFG scale: 5.5, Seed: 31337, Size: 72x64" in original
    assert "Variation seed: 17, Variation seed strength: 0.25, Clip skip: 2" in original

    page = open_page(browser, url)
    try:
        choose(page, "setting_sd_model_checkpoint", _title_starting(page, "second"))
        _wait_for_log(server, "Loaded checkpoint: title=second")  # the paste must switch back to tiny
        page.locator("#tabs button[role=tab]", has_text="PNG Info").click()
        page.locator("#pnginfo_image input[type=file]").set_input_files(str(png))
        sync_api.expect(page.locator("#pnginfo_generation_info textarea")).to_have_value(original)
        sync_api.expect(page.locator("#pnginfo_html")).to_contain_text("Seed: 31337")
        shot(page, artifacts, "06-png-info")
        page.locator("#pnginfo_send_to_txt2img").click()
        sync_api.expect(page.locator("#txt2img_prompt textarea")).to_have_value("a blue square, (soft:1.2)")
        sync_api.expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(
            _title_starting(page, "tiny"))
        assert text_of(page, "txt2img_neg_prompt") == "blurry"
        assert text_of(page, "txt2img_sampling") == "Euler" and text_of(page, "txt2img_scheduler") == "Exponential"
        assert {k: number(page, k) for k in fields} == {k: float(v) for k, v in fields.items()}
        shot(page, artifacts, "07-sent-to-txt2img")
        again = generate(page)  # the restored fields make the same picture
        assert again == original
        with Image.open(png) as a, Image.open(BytesIO(gallery_png(page))) as b:
            assert a.tobytes() == b.tobytes()

        def send_infotext(name: str, text: str, shown: str) -> None:
            """Drop an 8x8 PNG carrying ``text`` on PNG Info, wait for ``shown`` there, send it to txt2img."""
            path = tmp_path / name
            info = PngImagePlugin.PngInfo()
            info.add_text("parameters", text)
            Image.new("RGB", (8, 8)).save(path, pnginfo=info)
            page.locator("#tabs button[role=tab]", has_text="PNG Info").click()
            page.locator("#pnginfo_image button[aria-label='Remove Image']").click()
            page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
            sync_api.expect(page.locator("#pnginfo_generation_info textarea")).to_have_value(re.compile(shown))
            page.locator("#pnginfo_send_to_txt2img").click()

        # settings an infotext overrides appear as "Override settings"
        send_infotext("overrides.png", "x\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x64, RNG: CPU, ENSD: 31337",
                      "RNG: CPU")
        overrides = page.locator("#txt2img_override_settings")
        sync_api.expect(overrides).to_contain_text("RNG: CPU")
        sync_api.expect(overrides).to_contain_text("ENSD: 31337")
        assert text_of(page, "txt2img_sampling") == "Euler" and number(page, "txt2img_clip_skip") == 1

        # a hires infotext turns Hires. fix on, opens it and fills it (its checkpoint named as A1111 does, by stem)
        send_infotext("hires.png", "x\nSteps: 3, Sampler: Euler, Seed: 5, Size: 64x96, Denoising strength: 0.45, "
                                   "Hires upscale: 1.5, Hires steps: 2, Hires upscaler: Lanczos, "
                                   "Hires checkpoint: second", "Hires upscale")
        sync_api.expect(page.locator("#txt2img_hr-checkbox input[type=checkbox]")).to_be_checked()
        sync_api.expect(page.locator("#txt2img_hr_finalres")).to_have_text("from 64x96 to 96x144")
        assert text_of(page, "txt2img_hr_upscaler") == "Lanczos"
        assert text_of(page, "hr_checkpoint") == _title_starting(page, "second")
        assert {k: number(page, k) for k in ("txt2img_denoising_strength", "txt2img_hr_scale", "txt2img_hires_steps")} \
            == {"txt2img_denoising_strength": 0.45, "txt2img_hr_scale": 1.5, "txt2img_hires_steps": 2}
        shot(page, artifacts, "07b-hires-sent-to-txt2img")
    finally:
        page.context.close()


def test_hires_fix_makes_the_image_at_the_upscaled_size(page, artifacts: Path) -> None:
    """Opening "Hires. fix" turns it on (as in A1111); the image comes out at the "to WxH" size shown, and the
    infotext names the hires fields the page sent."""
    page.locator("#txt2img_prompt textarea").fill("a red circle on a blue background")
    set_numbers(page, {**SMALL, "txt2img_seed": 77})
    checkbox = page.locator("#txt2img_hr-checkbox input[type=checkbox]")
    page.locator("#txt2img_hr .label-wrap").first.click()  # closed, its controls are not on the page yet
    sync_api.expect(checkbox).to_be_checked()
    assert text_of(page, "hr_checkpoint") == "Use same checkpoint"  # the second pass on the job's checkpoint
    set_numbers(page, {"txt2img_hires_steps": 3, "txt2img_hr_scale": 2})
    sync_api.expect(page.locator("#txt2img_hr_finalres")).to_have_text("from 64x64 to 128x128")
    text = generate(page)
    with Image.open(BytesIO(gallery_png(page))) as image:
        assert image.size == (128, 128)
        assert infotext.read_from_image(image) == text
    assert "Size: 64x64," in text and "Denoising strength: 0.7," in text, text
    assert "Hires upscale: 2," in text and "Hires steps: 3," in text and "Hires upscaler: Latent" in text, text
    shot(page, artifacts, "05c-hires-fix")
    page.locator("#txt2img_hr .label-wrap").first.click()  # closing it turns it off again
    sync_api.expect(checkbox).not_to_be_checked()
    sync_api.expect(page.locator("#txt2img_hr_finalres")).to_have_text("")


def _png_text(path: Path) -> str:
    with Image.open(path) as image:
        return infotext.read_from_image(image) or ""


def _options(page, elem_id: str) -> list[str]:
    page.locator(f"#{elem_id} input").click()
    labels = page.locator(f"#{elem_id} [role=option]").evaluate_all("els => els.map(e => e.getAttribute('aria-label'))")
    page.locator(f"#{elem_id} input").press("Escape")
    page.locator(f"#{elem_id} input").blur()  # so that the next click opens the list again
    return labels


def _wait_for_log(server: Server, text: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while text not in server.log.read_text(errors="replace"):
        assert time.time() < deadline, f"{text!r} not in the server log after {timeout}s"
        time.sleep(0.2)


def _title_starting(page, prefix: str) -> str:
    return next(t for t in _options(page, "setting_sd_model_checkpoint") if t.startswith(prefix))


def test_img2img_tab_generates_from_the_picture_as_the_api_does(page, server: Server, artifacts: Path,
                                                                   tmp_path: Path) -> None:
    """A1111's img2img tab: drop a picture, pick a resize mode and a denoising strength, Ctrl+Enter in its prompt;
    the image equals the one ``POST /sdapi/v1/img2img`` makes from the same picture and settings, and the
    infotext says ``Denoising strength``. Without a picture the page says what to do."""
    import base64

    from test_img2img import picture

    source = tmp_path / "start.png"
    picture(96, 64).save(source)
    page.locator("#tabs button[role=tab]", has_text="img2img").click()
    page.locator("#img2img_generate").click()
    sync_api.expect(page.locator(".toast-body.error")).to_contain_text("Put a picture in the img2img image box")
    page.locator("#img2img_image input[type=file]").set_input_files(str(source))
    page.locator("#resize_mode label", has_text="Crop and resize").click()
    set_numbers(page, {"img2img_steps": 6, "img2img_width": 64, "img2img_height": 64, "img2img_seed": 99,
                       "img2img_denoising_strength": 0.6})
    choose(page, "img2img_sampling", "Euler a")
    prompt = page.locator("#img2img_prompt textarea")
    prompt.fill("a sunny field")
    prompt.press("Control+Enter")
    page.wait_for_selector("#img2img_gallery img", timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("#html_info_img2img textarea")).not_to_have_value("")
    text = text_of(page, "html_info_img2img")
    assert text.startswith("a sunny field\nSteps: 6, Sampler: Euler a,") and "Denoising strength: 0.6" in text
    shot(page, artifacts, "07b-img2img")
    src = page.locator("#img2img_gallery img").first.get_attribute("src")
    shown = Image.open(BytesIO(page.request.get(src).body())).convert("RGB")
    payload = {"prompt": "a sunny field", "steps": 6, "width": 64, "height": 64, "seed": 99, "cfg_scale": 7,
               "sampler_name": "Euler a", "denoising_strength": 0.6, "resize_mode": 1,
               "init_images": [base64.b64encode(source.read_bytes()).decode("ascii")]}
    reply = requests.post(server.api("img2img"), json=payload, timeout=300)
    assert reply.status_code == 200, reply.text
    api_image = Image.open(BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB")
    assert shown.size == (64, 64) and np.array_equal(np.asarray(shown), np.asarray(api_image))
    assert page.locator("#txt2img_gallery img").count() == 0  # the txt2img tab's results are its own


def _left_mask(path: Path) -> Path:
    mask = Image.new("L", (64, 64))
    mask.paste(255, (0, 0, 28, 64))
    mask.save(path)
    return path


def test_inpaint_upload_redraws_only_the_mask_as_the_api_does(page, server: Server, tmp_path: Path,
                                                             artifacts: Path) -> None:
    """A1111's *Inpaint upload*: the picture and a mask; the inpainting settings appear on this sub-tab only;
    outside the mask the result is the picture itself, and it equals ``/sdapi/v1/img2img`` with the same mask."""
    import base64

    from test_img2img import picture

    source, mask = tmp_path / "start.png", _left_mask(tmp_path / "mask.png")
    picture().save(source)
    page.locator("#tabs button[role=tab]", has_text="img2img").click()
    sync_api.expect(page.locator("#inpaint_controls")).to_be_hidden()
    page.locator("#mode_img2img button[role=tab]", has_text="Inpaint upload").click()
    sync_api.expect(page.locator("#inpaint_controls")).to_be_visible()
    page.locator("#img_inpaint_base input[type=file]").set_input_files(str(source))
    page.locator("#img_inpaint_mask input[type=file]").set_input_files(str(mask))
    sync_api.expect(page.locator("#img_inpaint_mask img")).to_have_count(1)
    set_numbers(page, {"img2img_steps": 5, "img2img_width": 64, "img2img_height": 64, "img2img_seed": 12,
                       "img2img_denoising_strength": 0.9})
    choose(page, "img2img_sampling", "Euler")
    page.locator("#img2img_prompt textarea").fill("a blue sky")
    page.locator("#img2img_generate").click()
    page.wait_for_selector("#img2img_gallery img", timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("#html_info_img2img textarea")).to_have_value(re.compile("Mask blur: 4"))
    shot(page, artifacts, "07d-inpaint-upload")
    src = page.locator("#img2img_gallery img").first.get_attribute("src")
    shown = np.asarray(Image.open(BytesIO(page.request.get(src).body())).convert("RGB")).astype(np.int16)
    original = np.asarray(Image.open(source).convert("RGB")).astype(np.int16)
    assert np.array_equal(shown[:, 40:], original[:, 40:]) and np.abs(shown[:, :20] - original[:, :20]).mean() > 5
    encoded = {name: base64.b64encode(path.read_bytes()).decode("ascii") for name, path in (("i", source), ("m", mask))}
    reply = requests.post(server.api("img2img"), timeout=300, json={
        "prompt": "a blue sky", "steps": 5, "width": 64, "height": 64, "seed": 12, "cfg_scale": 7,
        "sampler_name": "Euler", "denoising_strength": 0.9, "init_images": [encoded["i"]], "mask": encoded["m"],
        "mask_blur": 4,
        "inpainting_fill": 1, "inpaint_full_res": False, "inpaint_full_res_padding": 32})
    assert reply.status_code == 200, reply.text
    api = np.asarray(Image.open(BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB")).astype(np.int16)
    assert np.array_equal(shown, api)
    page.locator("#mode_img2img button[role=tab]", has_text="img2img").click()
    sync_api.expect(page.locator("#inpaint_controls")).to_be_hidden()


def test_inpaint_with_a_painted_mask(page, tmp_path: Path, artifacts: Path) -> None:
    """A1111's *Inpaint* sub-tab: paint over part of the picture with the brush; that part is redrawn, the rest of
    the picture comes back to the pixel."""
    from test_img2img import picture

    source = tmp_path / "start.png"
    picture().save(source)
    page.locator("#tabs button[role=tab]", has_text="img2img").click()
    page.locator("#mode_img2img button[role=tab]", has_text="Inpaint").first.click()
    sync_api.expect(page.locator("#inpaint_controls")).to_be_visible()
    _inpaint_the_left_edge(page, "img2maskimg", source, artifacts, "07e-inpaint-painted")


def _inpaint_the_left_edge(page, editor: str, source: Path, artifacts: Path, name: str) -> None:
    """Put ``source`` in ``editor``, stroke down its left edge, generate: the stroke is redrawn, the right of the
    picture comes back to the pixel."""
    page.locator(f"#{editor} input[type=file]").set_input_files(str(source))
    _stroke_down_the_left_edge(page, editor)
    shot(page, artifacts, name)
    shown = _generate_img2img(page)
    sync_api.expect(page.locator("#html_info_img2img textarea")).to_have_value(re.compile("Mask blur: 4"))
    original = np.asarray(Image.open(source).convert("RGB")).astype(np.int16)
    assert np.array_equal(shown[:, 44:], original[:, 44:])
    assert np.abs(shown[:, :6] - original[:, :6]).mean() > 5


def _settled_zoom(page, editor: str) -> float:
    """Wait until the editor shows its new picture at a steady zoom (it zooms a new picture in); the zoom."""
    zoom_text = page.locator(f"#{editor}").get_by_text(re.compile(r"^\d+%$"))
    sync_api.expect(zoom_text).to_be_visible()  # the picture is shown, centred, at this zoom; the brush is selected
    page.locator(f"#{editor}").scroll_into_view_if_needed()  # the mouse works in the viewport
    readings = [zoom_text.inner_text()]
    while len(readings) < 4 or len(set(readings[-4:])) > 1:
        page.wait_for_timeout(250)
        readings.append(zoom_text.inner_text())
        assert len(readings) < 80, readings
    page.wait_for_timeout(500)  # and the value has reached the server's copy of the page
    return float(readings[-1].rstrip("%")) / 100


def _stroke_down_the_left_edge(page, editor: str) -> None:
    """Draw with the editor's selected brush down the left edge of the 64x64 picture it holds."""
    scale = _settled_zoom(page, editor)
    box = page.locator(f"#{editor} canvas").first.bounding_box()
    left = box["x"] + box["width"] / 2 - 32 * scale
    top = box["y"] + box["height"] / 2 - 32 * scale
    page.mouse.move(left + 4 * scale, top + 2 * scale)
    page.mouse.down()
    for y in range(6, 64, 4):
        page.mouse.move(left + 4 * scale, top + y * scale, steps=2)
    page.mouse.up()


def _generate_img2img(page) -> np.ndarray:
    """Generate on the img2img tab (64x64, 5 steps, seed 3, strength 0.9); the first picture shown."""
    set_numbers(page, {"img2img_steps": 5, "img2img_width": 64, "img2img_height": 64, "img2img_seed": 3,
                       "img2img_denoising_strength": 0.9})
    page.locator("#img2img_prompt textarea").fill("a blue sky")
    before = page.locator("#img2img_gallery img").first.get_attribute("src") if \
        page.locator("#img2img_gallery img").count() else None
    page.locator("#img2img_generate").click()
    page.wait_for_function(
        "([before]) => { const img = document.querySelector('#img2img_gallery img');"
        " return document.querySelector('.toast-body.error') || (img && img.getAttribute('src') !== before); }",
        arg=[before], timeout=TIMEOUT_MS)
    assert page.locator(".toast-body.error").count() == 0, page.locator(".toast-body.error").first.inner_text()
    src = page.locator("#img2img_gallery img").first.get_attribute("src")
    return np.asarray(Image.open(BytesIO(page.request.get(src).body())).convert("RGB")).astype(np.int16)


def test_sketch_and_inpaint_sketch(page, server: Server, tmp_path: Path, artifacts: Path) -> None:
    """*Sketch*: without a stroke the job is img2img of the picture (equal to the API's); a stroke changes it.
    *Inpaint sketch*: a stroke down the left edge is redrawn, the right of the picture comes back to the pixel."""
    import base64

    from test_img2img import picture

    source = tmp_path / "start.png"
    picture().save(source)
    page.locator("#tabs button[role=tab]", has_text="img2img").click()
    page.locator("#mode_img2img button[role=tab]", has_text=re.compile("^Sketch$")).click()
    sync_api.expect(page.locator("#inpaint_controls")).to_be_hidden()
    page.locator("#img2img_sketch input[type=file]").set_input_files(str(source))
    _settled_zoom(page, "img2img_sketch")
    untouched = _generate_img2img(page)
    payload = {"prompt": "a blue sky", "steps": 5, "width": 64, "height": 64, "seed": 3, "cfg_scale": 7,
               "sampler_name": "DPM++ 2M", "denoising_strength": 0.9,
               "init_images": [base64.b64encode(source.read_bytes()).decode("ascii")]}
    reply = requests.post(server.api("img2img"), json=payload, timeout=300)
    assert reply.status_code == 200, reply.text
    api_image = np.asarray(Image.open(BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB"))
    assert np.array_equal(untouched, api_image.astype(np.int16))
    _stroke_down_the_left_edge(page, "img2img_sketch")
    shot(page, artifacts, "07f-sketch")
    stroked = _generate_img2img(page)
    assert np.abs(stroked - untouched).max() > 0
    assert "Mask blur" not in text_of(page, "html_info_img2img")

    page.locator("#mode_img2img button[role=tab]", has_text="Inpaint sketch").click()
    sync_api.expect(page.locator("#img2img_mask_alpha")).to_be_visible()
    _inpaint_the_left_edge(page, "inpaint_sketch", source, artifacts, "07g-inpaint-sketch")


def test_send_to_img2img_from_the_txt2img_results_and_from_png_info(page, artifacts: Path, tmp_path: Path) -> None:
    """A1111's 🖼️ under the gallery and PNG Info's "Send to img2img": the picture lands in the img2img image box
    and its infotext fills the img2img controls (prompt, sampler, steps, size, seed, CFG); the tab switches."""
    page.locator("#txt2img_prompt textarea").fill("a send test")
    set_numbers(page, {**SMALL, "txt2img_seed": 4242, "txt2img_cfg_scale": 6.5})
    choose(page, "txt2img_sampling", "Heun")
    generate(page)
    page.locator("#txt2img_send_to_img2img").click()
    sync_api.expect(page.locator("#tab_img2img")).to_be_visible()
    sync_api.expect(page.locator("#img2img_prompt textarea")).to_have_value("a send test")
    sync_api.expect(page.locator("#img2img_image img")).to_have_count(1)
    assert number(page, "img2img_seed") == 4242 and number(page, "img2img_steps") == 4
    assert number(page, "img2img_cfg_scale") == 6.5 and number(page, "img2img_width") == 64
    assert page.locator("#img2img_sampling input").input_value() == "Heun"
    shot(page, artifacts, "07c-sent-to-img2img")
    page.locator("#img2img_generate").click()  # the sent picture is usable as it is
    page.wait_for_selector("#img2img_gallery img", timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("#html_info_img2img textarea")).to_have_value(re.compile(
        r"^a send test\nSteps: 4, Sampler: Heun, .*Seed: 4242, .*Denoising strength: 0.75"))

    made = tmp_path / "made.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a pasted picture\nNegative prompt: dull\nSteps: 7, Sampler: Euler, CFG scale: 5, "
                                "Seed: 31, Size: 64x64, Denoising strength: 0.35, Mask blur: 8, "
                                "Masked content: fill")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(made, pnginfo=info)
    page.locator("#tabs button[role=tab]", has_text="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(made))
    sync_api.expect(page.locator("#pnginfo_generation_info textarea")).to_have_value(re.compile("a pasted picture"))
    page.locator("#pnginfo_send_to_img2img").click()
    sync_api.expect(page.locator("#img2img_prompt textarea")).to_have_value("a pasted picture")
    sync_api.expect(page.locator("#img2img_neg_prompt textarea")).to_have_value("dull")
    assert number(page, "img2img_steps") == 7 and number(page, "img2img_denoising_strength") == 0.35
    sync_api.expect(page.locator("#img2img_image img")).to_have_count(1)
    page.locator("#mode_img2img button[role=tab]", has_text="Inpaint upload").click()  # its settings show there
    sync_api.expect(page.locator("#img2img_mask_blur input[type=number]")).to_have_value("8")  # pasted too
    assert page.locator("#img2img_inpainting_fill input[value='fill']").is_checked()
    assert page.locator("#img2img_inpaint_full_res input[value='Whole picture']").is_checked()


def test_settings_are_saved_and_survive_a_reload(page, server: Server, artifacts: Path) -> None:
    page.locator("#tabs button[role=tab]", has_text="Settings").click()
    page.locator("#settings_sections button[role=tab]", has_text="User interface").click()
    set_number(page, "setting_show_progress_every_n_steps", 5)
    page.locator("#settings_sections button[role=tab]", has_text="Extra Networks").click()
    set_number(page, "setting_extra_networks_default_multiplier", 0.7)
    page.locator("#setting_lora_add_hashes_to_infotext input[type=checkbox]").uncheck()
    page.locator("#settings_submit").click()
    sync_api.expect(page.locator("#settings_result")).to_contain_text("3 settings changed")
    shot(page, artifacts, "08-settings")
    config = json.loads((server.data / "config.json").read_text())
    assert config["show_progress_every_n_steps"] == 5 and config["extra_networks_default_multiplier"] == 0.7
    assert config["lora_add_hashes_to_infotext"] is False

    page.reload()
    page.locator("#tabs button[role=tab]", has_text="Settings").click()
    page.locator("#settings_sections button[role=tab]", has_text="Extra Networks").click()
    sync_api.expect(page.locator("#setting_extra_networks_default_multiplier input[type=number]")).to_have_value("0.7")
    assert not page.locator("#setting_lora_add_hashes_to_infotext input[type=checkbox]").is_checked()
    page.locator("#settings_sections button[role=tab]", has_text="User interface").click()
    assert number(page, "setting_show_progress_every_n_steps") == 5
    assert page.evaluate("() => window.webuiOpts.keyedit_precision_attention") == 0.1


def test_settings_actions_unload_the_checkpoint_to_ram_and_back(page, server: Server) -> None:
    """A1111's Settings → Actions buttons: the model leaves the GPU and comes back (here the device is the CPU, so
    what is checked is the round trip and its messages); a job after an unload brings the model back by itself."""
    page.locator("#tabs button[role=tab]", has_text="Settings").click()
    page.locator("#settings_sections button[role=tab]", has_text="Actions").click()
    page.locator("#sett_unload_sd_model").click()
    sync_api.expect(page.locator("#settings_result")).to_contain_text("Unloaded to RAM: tiny.safetensors")
    page.locator("#sett_reload_sd_model").click()
    sync_api.expect(page.locator("#settings_result")).to_contain_text("Loaded to cpu: tiny.safetensors")
    page.locator("#sett_unload_sd_model").click()
    sync_api.expect(page.locator("#settings_result")).to_contain_text("Unloaded to RAM")
    page.locator("#tabs button[role=tab]", has_text="txt2img").click()
    set_numbers(page, SMALL)
    assert generate(page).startswith("Steps: 4,")  # an empty prompt: the parameters line only
    assert "Checkpoint back on cpu: tiny" in server.log.read_text(errors="replace")


def test_freeze_settings_blocks_edits(browser, frozen_server: Server, artifacts: Path) -> None:
    from gradio_client import Client

    frozen = frozen_server
    page = open_page(browser, frozen.url)
    try:
        page.locator("#tabs button[role=tab]", has_text="Settings").click()
        sync_api.expect(page.locator("#settings_result")).to_contain_text("frozen")
        assert page.locator("#settings_submit").is_disabled()
        page.locator("#settings_sections button[role=tab]", has_text="User interface").click()
        assert page.locator("#setting_show_progress_every_n_steps input[type=number]").is_disabled()
        assert page.locator("#setting_sd_model_checkpoint input").is_disabled()
        shot(page, artifacts, "09-frozen-settings")
    finally:
        page.context.close()
    client = Client(frozen.url + "/", verbose=False)  # the handler refuses too, whatever the page allows
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/apply_settings"]["parameters"]
    values = [p["parameter_default"] for p in parameters]  # the values shown, so only the freeze can refuse
    with pytest.raises(Exception, match="frozen"):
        client.predict(*values, api_name="/apply_settings")
    assert not (frozen.data / "config.json").exists()


def test_styles_apply_and_save(page, server: Server, artifacts: Path) -> None:
    page.locator("#txt2img_prompt textarea").fill("a house")
    choose(page, "txt2img_styles", "vivid")
    page.locator("#txt2img_style_apply").click()
    sync_api.expect(page.locator("#txt2img_prompt textarea")).to_have_value("a house, vivid colors")
    sync_api.expect(page.locator("#txt2img_neg_prompt textarea")).to_have_value("dull")

    page.locator("#txt2img_styles_editor").click()
    name = page.locator("#txt2img_edit_style_name input")
    name.fill("mine")
    name.press("Enter")
    page.locator("#txt2img_edit_style_copy").click()
    sync_api.expect(page.locator("#txt2img_edit_style_prompt textarea")).to_have_value("a house, vivid colors")
    page.locator("#txt2img_edit_style_save").click()
    sync_api.expect(page.get_by_text("Style 'mine' saved")).to_be_visible()
    rows = list(csv.DictReader(open(server.data / "styles.csv", encoding="utf-8-sig")))
    assert {"name": "mine", "prompt": "a house, vivid colors", "negative_prompt": "dull"} in rows
    assert "mine" in _options(page, "txt2img_styles")
    shot(page, artifacts, "10-styles")


def test_refresh_lists_new_files_and_the_vae_dropdown_applies(page, server: Server, artifacts: Path,
                                                              tmp_path: Path) -> None:
    """Files dropped in while the page is open appear after 🔄; a VAE chosen at the top is used and named."""
    from safetensors.torch import save_file

    from modules import model_loading

    folder = server.data / "models" / "Stable-diffusion"
    assert not any(t.startswith("late") for t in _options(page, "setting_sd_model_checkpoint"))  # not there yet
    assert "late-vae.safetensors" not in _options(page, "setting_sd_vae")
    demo_model.write_checkpoint(folder / "late.safetensors", seed=9)
    source = demo_model.write_checkpoint(tmp_path / "vae-src.safetensors", seed=3)
    vae = {k[len("first_stage_model."):]: v for k, v in model_loading.read_state_dict(source).items()
           if k.startswith("first_stage_model.")}
    (server.data / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    save_file(vae, str(server.data / "models" / "VAE" / "late-vae.safetensors"))
    page.locator("#refresh_sd_model_checkpoint").click()
    deadline = time.time() + 30
    # titled without a hash until it is first loaded, as A1111 (hashing 4 GB files just to list them is slow)
    while "late.safetensors" not in _options(page, "setting_sd_model_checkpoint"):
        assert time.time() < deadline, f"the new checkpoint never appeared after refresh: {_options(page, 'setting_sd_model_checkpoint')}"
        time.sleep(0.5)
    assert "late-vae.safetensors" in _options(page, "setting_sd_vae")
    before = text_of(page, "setting_sd_vae")
    choose(page, "setting_sd_vae", "late-vae.safetensors")
    _wait_for_saved(server, "sd_vae", "late-vae.safetensors")
    try:
        page.locator("#txt2img_prompt textarea").fill("a vae test")
        set_numbers(page, SMALL)
        text = generate(page)
        assert "VAE: late-vae" in text, text
        shot(page, artifacts, "11-vae-chosen")
    finally:
        choose(page, "setting_sd_vae", before)
        _wait_for_saved(server, "sd_vae", before)


def _wait_for_saved(server: Server, key: str, value: object, timeout: float = 30) -> None:
    """Wait until the server's config.json holds ``key: value`` (a quicksetting is saved when it is applied)."""
    path, deadline = server.data / "config.json", time.time() + timeout
    while not (path.exists() and json.loads(path.read_text(encoding="utf-8") or "{}").get(key) == value):
        assert time.time() < deadline, f"{key}={value!r} was not saved to {path} within {timeout}s"
        time.sleep(0.2)


def test_xyz_plot_from_the_page_equals_the_api_and_pastes_back(page, server: Server, artifacts: Path,
                                                               tmp_path: Path) -> None:
    """Script → X/Y/Z plot: CFG Scale across, samplers down (📒 fills every sampler into the dropdown; "Use text
    inputs" turns them into text, edited to two). The grid equals the API's for the same ``script_args``; its PNG
    sent back from PNG Info sets the plot up again."""
    from modules import samplers

    set_numbers(page, {**SMALL, "txt2img_seed": 5})
    page.locator("#txt2img_prompt textarea").fill("a lighthouse")
    plot = "script_txt2img_xyz_plot_"
    sync_api.expect(page.locator(f"#{plot}x_type")).to_be_hidden()
    choose(page, "txt2img_script_list", "X/Y/Z plot")
    choose(page, plot + "x_type", "CFG Scale")
    page.locator(f"#{plot}x_values textarea, #{plot}x_values input").first.fill("4, 8")
    choose(page, plot + "y_type", "Sampler")
    sync_api.expect(page.locator(f"#{plot}y_values_dropdown")).to_be_visible()
    sync_api.expect(page.locator(f"#{plot}y_values")).to_be_hidden()
    page.locator("#xyz_grid_fill_y_tool_button_txt2img").click()
    sync_api.expect(page.locator(f"#{plot}y_values_dropdown .token")).to_have_count(len(samplers.SAMPLERS))
    page.locator(f"#{plot}csv_mode input").check()
    every = page.locator(f"#{plot}y_values textarea, #{plot}y_values input").first
    sync_api.expect(every).to_have_value(",".join(s.name for s in samplers.SAMPLERS))  # CSV, as A1111 writes it
    every.fill("Euler, Heun")
    text = generate(page)
    assert 'Script: X/Y/Z plot, X Type: CFG Scale, X Values: "4, 8", Y Type: Sampler, Y Values: "Euler, Heun"' in text
    shot(page, artifacts, "08-xyz-plot")
    grid_png = tmp_path / "grid.png"
    grid_png.write_bytes(gallery_png(page))
    args = ["CFG Scale", "4, 8", [], "Sampler", "Euler, Heun", [], "Nothing", "", [], True, False, False, False,
            False, False, False, 0, True]
    reply = requests.post(server.api("txt2img"), json={
        "prompt": "a lighthouse", "steps": 4, "width": 64, "height": 64, "seed": 5, "sampler_name": "DPM++ 2M",
        "cfg_scale": 7, "script_name": "x/y/z plot", "script_args": args}, timeout=300)
    assert reply.status_code == 200, reply.text
    import base64

    api_grid = Image.open(BytesIO(base64.b64decode(reply.json()["images"][0]))).convert("RGB")
    with Image.open(grid_png) as shown:
        assert shown.size == api_grid.size and shown.width > 128 and shown.height > 128
        assert np.array_equal(np.asarray(shown.convert("RGB")), np.asarray(api_grid))

    page.reload()
    page.wait_for_selector("#txt2img_prompt textarea")
    page.locator("#tabs button[role=tab]", has_text="PNG Info").click()
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(grid_png))
    sync_api.expect(page.locator("#pnginfo_generation_info textarea")).to_have_value(re.compile("X Type: CFG Scale"))
    page.locator("#pnginfo_send_to_txt2img").click()
    sync_api.expect(page.locator("#txt2img_script_list input")).to_have_value("X/Y/Z plot")
    sync_api.expect(page.locator(f"#{plot}x_type input")).to_have_value("CFG Scale")
    assert text_of(page, plot + "x_values") == "4, 8" and text_of(page, plot + "y_type") == "Sampler"
    sync_api.expect(page.locator(f"#{plot}y_values_dropdown .token")).to_have_count(2)  # the page's dropdown mode
    shot(page, artifacts, "08b-xyz-plot-pasted")
    page.locator("#tabs button[role=tab]", has_text="txt2img").click()
    pasted = generate(page)
    assert pasted == text.replace('"Euler, Heun"', '"Euler,Heun"')  # a dropdown's list is written as CSV (A1111)
    with Image.open(grid_png) as first, Image.open(BytesIO(gallery_png(page))) as again:
        assert first.tobytes() == again.tobytes()


def test_prompts_from_file_runs_a_dropped_list(page, tmp_path: Path, artifacts: Path) -> None:
    """Script → Prompts from file or textbox: a file dropped on "Upload prompt inputs" fills the list; Generate
    makes one job per line, every picture in the gallery with its own infotext."""
    listing = tmp_path / "prompts.txt"
    listing.write_text('a kite\n--prompt "a boat" --steps 3\n', encoding="utf-8")
    set_numbers(page, {**SMALL, "txt2img_seed": 8})
    page.locator("#txt2img_prompt textarea").fill("at sea")
    choose(page, "txt2img_script_list", "Prompts from file or textbox")
    prefix = "script_txt2img_prompts_from_file_or_textbox_"
    page.locator(f"#{prefix}file input[type=file]").set_input_files(str(listing))
    sync_api.expect(page.locator(f"#{prefix}prompt_txt textarea")).to_have_value(listing.read_text())
    page.locator(f"#{prefix}checkbox_iterate input").check()
    text = generate(page)
    sync_api.expect(page.locator("#txt2img_gallery img")).to_have_count(2)
    assert text.startswith("a kite at sea\nSteps: 4,") and "Seed: 8," in text
    page.locator("#txt2img_gallery img").nth(1).click()
    sync_api.expect(page.locator("#html_info_txt2img textarea")).to_have_value(re.compile(r"^a boat at sea\nSteps: 3,.*Seed: 9,"))
    shot(page, artifacts, "09-prompts-from-file")
