"""The Extra Networks panel in a real browser: Debian's Chromium driven by Playwright against webui.py.

Two servers start together for the module: the main one (tiny and second checkpoints, real kohya LoRA files,
an embedding, a hypernetwork file) and one whose LoRA folder holds 10 000 small LoRA files. Screenshots go to
``<pytest tmp dir>/test-artifacts`` (``en-*.png``). Timings are the benchmark's business
(``benchmarks/extra_networks.py``); here only behaviour and counts are checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save, save_file

from browser_support import new_page, require_browser
from browser_support import shot as save_shot
from conftest import install_checkpoint
from modules import demo_model, infotext
from test_api_server import Server, spawn_server, stop_server, wait_up

pytestmark = [pytest.mark.browser, pytest.mark.slow]
pytest_plugins = ["browser_support"]  # the browser and artifacts fixtures

BIG = 10_000
TE_KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
sync_api = require_browser()
expect = sync_api.expect


# ------------------------------------------------------------------------------------------------------ fixtures
def kohya_lora(path: Path, seed: int, **metadata: str) -> Path:
    """A real kohya LoRA for the tiny model: one text-encoder projection, rank 2, non-zero."""
    g = torch.Generator().manual_seed(seed)
    tensors = {f"{TE_KEY}.lora_down.weight": torch.randn(2, 32, generator=g),
               f"{TE_KEY}.lora_up.weight": torch.randn(32, 2, generator=g), f"{TE_KEY}.alpha": torch.tensor(2.0)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata or None)
    return path


def write_many_loras(folder: Path, count: int, start: int = 0) -> None:
    """``count`` small valid LoRA files in 100 sub-folders (each with a few keys and kohya metadata)."""
    tensor = {f"{TE_KEY}.lora_down.weight": torch.zeros(1, 32), f"{TE_KEY}.lora_up.weight": torch.zeros(32, 1)}
    for i in range(start, start + count):
        sub = folder / f"set{i % 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        meta = {"ss_output_name": f"many{i}", "ss_network_module": "networks.lora"}
        (sub / f"lora{i:05d}.safetensors").write_bytes(save(tensor, metadata=meta))


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, artifacts: Path) -> Iterator[dict]:
    data = tmp_path_factory.mktemp("webui-en")
    ckpts = data / "models" / "Stable-diffusion"
    install_checkpoint(tiny_checkpoint, ckpts)
    demo_model.write_checkpoint(ckpts / "second.safetensors", seed=5)
    lora = data / "models" / "Lora"
    kohya_lora(lora / "plain.safetensors", 1)
    kohya_lora(lora / "styles" / "inkstyle.safetensors", 2, ss_output_name="inkAlias",
               ss_tag_frequency=json.dumps({"5_ink": {"ink wash": 12, "monochrome": 7, "brush": 3}}))
    (lora / "styles" / "inkstyle.json").write_text(json.dumps({"activation text": "ink wash"}), encoding="utf-8")
    kohya_lora(lora / "styles" / "deep" / "negly.safetensors", 3)
    (lora / "styles" / "deep" / "negly.json").write_text(json.dumps({"negative text": "blurry"}), encoding="utf-8")
    (lora / "styles" / "deep" / "negly.txt").write_text("softens everything", encoding="utf-8")
    for i, name in enumerate(("plain", "styles/inkstyle", "styles/deep/negly")):  # oldest first: plain
        os.utime(lora / f"{name}.safetensors", (1_600_000_000 + i * 1000,) * 2)
    (data / "embeddings").mkdir()
    save_file({"emb_params": torch.randn(1, 32)}, str(data / "embeddings" / "easyneg.safetensors"))
    (data / "models" / "hypernetworks").mkdir(parents=True)
    (data / "models" / "hypernetworks" / "hyperdrive.pt").write_bytes(b"listed, never loaded here")
    big = tmp_path_factory.mktemp("webui-en-big")
    install_checkpoint(tiny_checkpoint, big / "models" / "Stable-diffusion")
    write_many_loras(big / "models" / "Lora", BIG)
    started = {"main": spawn_server(data, "--ckpt", str(ckpts / "tiny.safetensors")),
               "big": spawn_server(big, "--skip-load-model-at-start")}
    yield started
    for name, server in started.items():
        stop_server(server)
        shutil.copyfile(server.log, artifacts / f"en-server-{name}.log")


@pytest.fixture(scope="module")
def server(spawned: dict) -> Server:
    return wait_up(spawned["main"], timeout=400)


@pytest.fixture(scope="module")
def big_server(spawned: dict) -> Server:
    return wait_up(spawned["big"], timeout=400)


def open_page(browser, url: str):
    return new_page(browser, url, ".en-tab[data-page=lora]")


@pytest.fixture
def page(browser, server: Server) -> Iterator[object]:
    page = open_page(browser, server.url)
    yield page
    page.context.close()


# ------------------------------------------------------------------------------------------------------- helpers
def open_tab(page, tab: str) -> None:
    page.locator(f".en-tab[data-page={tab}]").click()
    page.wait_for_selector(".en-root[data-stats] .en-window .card")
    expect(page.locator(".en-tab.selected")).to_have_attribute("data-page", tab)


def card(page, name: str):
    return page.locator(f'.en-window .card[data-name="{name}"]')


def shown_names(page) -> list[str]:
    return page.locator(".en-window .card").evaluate_all("cards => cards.map(c => c.dataset.name)")


def prompt(page):
    return page.locator("#txt2img_prompt textarea")


def negative(page):
    return page.locator("#txt2img_neg_prompt textarea")


def shot(page, artifacts: Path, name: str) -> None:
    save_shot(page, artifacts, f"en-{name}")


# --------------------------------------------------------------------------------------------------------- tests
def test_lora_card_inserts_alias_and_activation_text_then_removes_them(page, artifacts: Path) -> None:
    prompt(page).fill("a cat")
    open_tab(page, "lora")
    card(page, "inkstyle").click()
    expect(prompt(page)).to_have_value("a cat <lora:inkAlias:1> ink wash")  # JS formatting: 1, not 1.0
    shot(page, artifacts, "01-lora-inserted")
    card(page, "inkstyle").click()
    expect(prompt(page)).to_have_value("a cat")
    card(page, "plain").click()
    expect(prompt(page)).to_have_value("a cat <lora:plain:1>")
    card(page, "negly").click()  # negative text goes to the negative prompt as (text:1)
    expect(prompt(page)).to_have_value("a cat <lora:plain:1> <lora:negly:1>")
    expect(negative(page)).to_have_value(" (blurry:1)")
    card(page, "negly").click()
    expect(negative(page)).to_have_value("")
    expect(prompt(page)).to_have_value("a cat <lora:plain:1>")


def test_the_img2img_tab_has_its_own_panel_inserting_into_its_own_prompt(page) -> None:
    """As in A1111, each generation tab has the panel; a card on the img2img tab's writes to the img2img prompt and
    leaves txt2img's alone."""
    page.locator("#tabs button[role=tab]", has_text="img2img").click()
    panel = page.locator("#img2img_extra_networks")
    panel.locator(".en-tab[data-page=lora]").click()
    expect(panel.locator('.en-window .card[data-name="plain"]')).to_be_visible()
    page.locator("#img2img_prompt textarea").fill("a cat")
    panel.locator('.en-window .card[data-name="plain"]').click()
    expect(page.locator("#img2img_prompt textarea")).to_have_value("a cat <lora:plain:1>")
    panel.locator('.en-window .card[data-name="negly"]').click()  # negative text: the img2img negative prompt
    expect(page.locator("#img2img_neg_prompt textarea")).to_have_value(" (blurry:1)")
    expect(prompt(page)).to_have_value("")
    expect(negative(page)).to_have_value("")


def test_embedding_goes_to_the_focused_box_and_hypernetwork_tag(page) -> None:
    open_tab(page, "textual_inversion")
    negative(page).fill("lowres")
    negative(page).focus()
    card(page, "easyneg").click()
    expect(negative(page)).to_have_value("lowres easyneg")
    prompt(page).fill("a dog")
    prompt(page).focus()
    card(page, "easyneg").click()
    expect(prompt(page)).to_have_value("a dog easyneg")
    expect(negative(page)).to_have_value("lowres easyneg")
    open_tab(page, "hypernetworks")
    card(page, "hyperdrive").click()
    expect(prompt(page)).to_have_value("a dog easyneg <hypernet:hyperdrive:1>")


def test_a1111_insert_and_removal_rules_and_their_quirks(page) -> None:
    cases = [  # (prompt, clicked text, negative box, expected)
        ("a <lora:x:1> act, b", "<lora:x:1> act", False, "a, b"),
        ("a <lora:x:0.5>", "<lora:x:1>", False, "a"),  # removed whatever the weight
        ("a <lora:x:-1>", "<lora:x:1>", False, "a <lora:x:-1> <lora:x:1>"),  # negative weights never match
        ("a <lora:x:1:te=0.5>", "<lora:x:1>", False, "a <lora:x:1:te=0.5> <lora:x:1>"),  # nor named args
        ("easynegative, easynegativeV2", "easynegative", False, ",V2"),  # plain text: substrings go too
        ("", "<lora:x:1>", False, " <lora:x:1>"),  # the separator comes first even in an empty box
        ("(ugly:1), x", "(ugly:1)", True, ", x"),
        ("bad(", "bad(", False, "bad( bad("),  # an invalid regex removes nothing (A1111 throws)
    ]
    for value, text, is_neg, wanted in cases:
        got = page.evaluate("([v, t, n]) => window.extraNetworks.togglePrompt(v, t, n, ' ')", [value, text, is_neg])
        assert got == wanted, (value, text)
    assert page.evaluate("() => window.extraNetworks.toggleTag('a, ink wash', 'ink wash')") == "a"
    assert page.evaluate("() => window.extraNetworks.toggleTag('', 'ink')") == "ink"


def test_search_sort_and_folders_filter_the_cards(page, artifacts: Path) -> None:
    open_tab(page, "lora")
    count = page.locator(".en-count")
    expect(count).to_have_attribute("data-total", "3")
    page.locator(".en-search").fill("soften")  # the description is searched too
    expect(count).to_have_attribute("data-shown", "1")
    assert shown_names(page) == ["negly"]
    page.locator(".en-search").fill("styles/")
    expect(count).to_have_attribute("data-shown", "2")
    page.locator(".en-search").fill("")
    expect(count).to_have_attribute("data-shown", "3")
    assert shown_names(page) == ["plain", "negly", "inkstyle"]  # Path: Lora/plain < Lora/styles/deep < Lora/styles/ink
    page.locator(".en-sort").select_option("name")
    expect(page.locator(".en-window .card").first).to_have_attribute("data-name", "inkstyle")
    page.locator(".en-sort-dir").click()
    assert shown_names(page) == ["plain", "negly", "inkstyle"]
    page.locator(".en-sort").select_option("date_modified")
    page.locator(".en-sort-dir").click()  # ascending again: oldest first
    assert shown_names(page) == ["plain", "inkstyle", "negly"]
    page.locator('.en-dirs button[data-path="Lora/styles/deep"]').click()  # Dirs view (A1111's default)
    expect(count).to_have_attribute("data-shown", "1")
    expect(page.locator(".en-search")).to_have_value("Lora/styles/deep/")
    page.locator('.en-dirs button[data-path=""]').click()
    expect(count).to_have_attribute("data-shown", "3")
    page.locator(".en-tree-style").select_option("Tree")
    page.locator('.en-tree-node[data-path="Lora"] .en-tree-label').click()
    page.locator('.en-tree-node[data-path="Lora/styles"] .en-tree-label').click()
    expect(count).to_have_attribute("data-shown", "2")
    shot(page, artifacts, "02-tree-filter")
    page.locator('.en-tree-node[data-path="Lora/styles"] .en-tree-label').click()  # again: unselected
    expect(count).to_have_attribute("data-shown", "3")


def test_editor_saves_the_sidecar_and_it_survives_a_reload(page, server: Server, artifacts: Path) -> None:
    open_tab(page, "lora")
    card(page, "plain").hover()
    card(page, "plain").locator(".en-edit").click()
    dialog = page.locator(".en-dialog")
    dialog.locator('[data-key="description"]').fill("Plain and <simple>")
    dialog.locator('[data-key="activation text"]').fill("")
    dialog.locator('[data-key="preferred weight"]').evaluate(  # a range input: Playwright cannot fill() it
        "el => { el.value = '0.6'; el.dispatchEvent(new Event('input')); }")
    dialog.locator('[data-key="notes"]').fill("ünïcode notes")
    shot(page, artifacts, "03-editor")
    dialog.locator(".en-save").click()
    expect(page.locator(".en-modal")).to_be_hidden()
    expect(card(page, "plain").locator(".description")).to_have_text("Plain and <simple>")  # escaped, shown as text
    sidecar = server.data / "models" / "Lora" / "plain.json"
    saved = json.loads(sidecar.read_text(encoding="utf-8"))
    assert saved["preferred weight"] == 0.6 and saved["notes"] == "ünïcode notes"
    assert "ünïcode" in sidecar.read_text(encoding="utf-8")  # ensure_ascii=False, as A1111
    page.reload()
    page.wait_for_selector(".en-tab[data-page=lora]")
    open_tab(page, "lora")
    expect(card(page, "plain").locator(".description")).to_have_text("Plain and <simple>")
    card(page, "plain").click()
    expect(prompt(page)).to_have_value(" <lora:plain:0.6>")  # the preferred weight
    card(page, "inkstyle").hover()
    card(page, "inkstyle").locator(".en-edit").click()
    activation = page.locator('.en-dialog [data-key="activation text"]')
    expect(activation).to_have_value("ink wash")
    page.locator('.en-tag[data-tag="monochrome"]').click()  # training tags toggle in the activation text
    expect(activation).to_have_value("ink wash, monochrome")
    page.locator('.en-tag[data-tag="ink wash"]').click()
    expect(activation).to_have_value("monochrome")
    page.locator(".en-dialog .en-cancel").click()
    card(page, "inkstyle").hover()
    card(page, "inkstyle").locator(".en-meta").click()  # the raw metadata table
    expect(page.locator(".en-metadata")).to_contain_text("ss_tag_frequency")
    expect(page.locator(".en-metadata")).to_contain_text("inkAlias")


def test_generate_with_a_lora_names_its_hash_and_replaces_the_preview(page, server: Server, artifacts: Path) -> None:
    for elem_id, value in {"txt2img_steps": 3, "txt2img_width": 64, "txt2img_height": 64}.items():
        box = page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")
    prompt(page).fill("a lighthouse")
    open_tab(page, "lora")
    card(page, "inkstyle").click()
    expect(prompt(page)).to_have_value("a lighthouse <lora:inkAlias:1> ink wash")
    page.locator("#txt2img_generate").click()
    page.wait_for_selector("#txt2img_gallery img", timeout=180_000)
    info = page.locator("#html_info_txt2img textarea")
    expect(info).to_have_value(re.compile("Lora hashes"), timeout=180_000)
    fields = infotext.parse(info.input_value())
    assert fields["Lora hashes"].startswith("inkAlias: ")
    shot(page, artifacts, "04-generated-with-lora")
    card(page, "inkstyle").hover()
    card(page, "inkstyle").locator(".en-edit").click()
    page.locator(".en-dialog .en-replace-preview").click()
    expect(page.locator(".en-status")).to_have_text("Preview replaced.")
    preview = server.data / "models" / "Lora" / "styles" / "inkstyle.png"  # <path>.png for LoRA (A1111)
    from PIL import Image

    with Image.open(preview) as image:
        assert "Lora hashes" in (infotext.read_from_image(image) or "")
    page.locator(".en-dialog .en-cancel").click()
    expect(card(page, "inkstyle").locator("img.preview")).to_have_attribute("src", re.compile("thumb"))


def test_checkpoint_card_switches_the_model(page, server: Server, artifacts: Path) -> None:
    open_tab(page, "checkpoints")
    expect(card(page, "second.safetensors").locator(".name")).to_have_text("second")
    card(page, "second.safetensors").click()
    expect(page.locator("#setting_sd_model_checkpoint input")).to_have_value(
        re.compile(r"^second\.safetensors"), timeout=180_000)
    shot(page, artifacts, "05-checkpoint-switched")
    config = json.loads((server.data / "config.json").read_text(encoding="utf-8"))
    assert config["sd_model_checkpoint"].startswith("second.safetensors")


def test_ten_thousand_loras_open_and_refresh_incrementally(browser, big_server: Server, artifacts: Path) -> None:
    page = open_page(browser, big_server.url)
    try:
        open_tab(page, "lora")
        count = page.locator(".en-count")
        expect(count).to_have_attribute("data-total", str(BIG))
        assert page.locator(".en-window .card").count() < 200  # only the rows in view are in the DOM
        page.locator(".en-cards").evaluate("el => { el.scrollTop = el.scrollHeight; }")
        expect(card(page, "lora09999")).to_be_visible()  # the last one (path order) is reachable
        shot(page, artifacts, "06-ten-thousand")
        write_many_loras(big_server.data / "models" / "Lora", 1, start=BIG)
        page.locator(".en-refresh").click()
        expect(count).to_have_attribute("data-total", str(BIG + 1))
        stats = json.loads(page.locator(".en-root").get_attribute("data-stats"))
        assert stats["listed"] == BIG + 1 and stats["built"] == 1 and stats["reused"] == BIG
        page.locator(".en-search").fill("lora10000")
        expect(count).to_have_attribute("data-shown", "1")
    finally:
        page.context.close()
