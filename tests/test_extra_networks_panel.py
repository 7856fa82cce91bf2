"""The Extra Networks panel's server side: cards, incremental refresh, the public routes, the editor's writes.

No browser here (tests/test_browser_extra_networks.py drives the page). Routes are called through FastAPI's
TestClient on an app holding only the panel's router; the state is built by ``make_state`` as webui.py builds it.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from conftest import load_lora_package
from modules import infotext
from modules.ui import extra_networks_cards as en_cards
from modules.ui import extra_networks_panel, extra_networks_routes

TE_KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"


def write_lora(folder: Path, name: str, **metadata: str) -> Path:
    """A tiny kohya LoRA (one text-encoder module of the tiny model) with ``metadata``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file({f"{TE_KEY}.lora_down.weight": torch.zeros(2, 32), f"{TE_KEY}.lora_up.weight": torch.zeros(32, 2)},
              str(path), metadata=metadata or None)
    return path


def png_bytes(color: str = "red", text: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(out, format="PNG", pnginfo=infotext.add_to_png(text) if text else None)
    return out.getvalue()


@pytest.fixture
def state(make_state):
    return make_state(load=False)


@pytest.fixture
def client(state) -> TestClient:
    app = FastAPI()
    app.include_router(extra_networks_routes.create_router(state))
    return TestClient(app)


def cards_of(client: TestClient, page: str = "lora") -> dict[str, dict]:
    reply = client.get("/sd_extra_networks/cards", params={"page": page})
    assert reply.status_code == 200, reply.text
    return {card["name"]: card for card in reply.json()["cards"]}


# -- cards --------------------------------------------------------------------------------------------------------------

def test_lora_card_fields_follow_a1111(state, client) -> None:
    lora = state.paths.lora_dir
    write_lora(lora, "plain")
    write_lora(lora / "sub", "styled", ss_output_name="styleAlias",
               ss_tag_frequency=json.dumps({"10_x": {"red hair": 5, "smile": 2}}))
    (lora / "sub" / "styled.txt").write_text("from <txt>", encoding="utf-8")
    (lora / "sub" / "styled.preview.jpg").write_bytes(b"jpg")
    (lora / "sub" / "styled.webp").write_bytes(b"webp")  # <name>.<ext> of a later extension loses to png/jpg order
    (lora / "sub" / "styled.json").write_text(json.dumps(
        {"activation text": "red hair", "preferred weight": 0.8, "negative text": "blurry", "sd version": "SD1"}))
    write_lora(lora, "xl", ss_base_model_version="sdxl_base_v1-0")
    cards = cards_of(client)
    styled = cards["styled"]
    assert styled["rel"] == "Lora/sub/styled.safetensors" and styled["alias"] == "styleAlias"
    assert styled["desc"] == "from &lt;txt&gt;"  # HTML-escaped
    assert "sub/styled.preview.jpg" in styled["preview"] and "root=0" in styled["preview"]
    assert (styled["weight"], styled["activation"], styled["negative"]) == (0.8, "red hair", "blurry")
    assert styled["search"] == "lora/sub/styled.safetensors\n\nfrom <txt>"
    assert cards["plain"]["alias"] == "plain" and "preview" not in cards["plain"] and "search" not in cards["plain"]
    assert cards["xl"]["sd_version"] == "SDXL"  # the browser hides it on an SD1 model unless lora_show_all


def test_description_sources_and_override(state, client) -> None:
    lora = state.paths.lora_dir
    for name in ("a", "b", "c"):
        write_lora(lora, name)
    (lora / "a.description.txt").write_text("long form")
    (lora / "b.txt").write_text("text file")
    (lora / "b.json").write_text(json.dumps({"description": "sidecar <wins>"}))
    (lora / "c.txt").write_text("hidden by an empty sidecar description")
    (lora / "c.json").write_text(json.dumps({"description": ""}))
    cards = cards_of(client)
    assert cards["a"]["desc"] == "long form" and cards["b"]["desc"] == "sidecar &lt;wins&gt;"
    assert "desc" not in cards["c"]


def test_preview_prefers_png_then_cover_images(state, client) -> None:
    lora = state.paths.lora_dir
    write_lora(lora, "both")
    (lora / "both.png").write_bytes(png_bytes())
    (lora / "both.preview.png").write_bytes(png_bytes("blue"))
    cover = base64.b64encode(png_bytes("green")).decode()
    write_lora(lora, "covered", ssmd_cover_images=json.dumps([cover]))
    cards = cards_of(client)
    assert "filename=both.png" in cards["both"]["preview"]
    assert cards["covered"]["preview"] == "sd_extra_networks/cover-images?page=lora&item=covered&index=0"
    image = client.get("/" + cards["covered"]["preview"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(image.content)).getpixel((0, 0)) == (0, 128, 0)
    meta = json.loads(client.get("/sd_extra_networks/metadata", params={"page": "lora", "item": "covered"})
                      .json()["metadata"])
    assert "ssmd_cover_images" not in meta  # the info view leaves the pictures out, as A1111


def test_other_pages_list_their_libraries(state, client) -> None:
    from modules import demo_model

    (state.paths.hypernetwork_dir / "sub").mkdir(parents=True, exist_ok=True)
    (state.paths.hypernetwork_dir / "sub" / "hyper.pt").write_bytes(b"not parsed to list it")
    (state.paths.hypernetwork_dir / "sub" / "hyper.preview.png").write_bytes(png_bytes())
    save_file({"emb_params": torch.zeros(2, 32)}, str(state.paths.embeddings_dir / "easyneg.safetensors"))
    state.embeddings.refresh(32)
    demo_model.write_checkpoint(state.paths.ckpt_dir / "sub" / "other.safetensors", seed=3)
    state.models.refresh()
    assert cards_of(client, "textual_inversion")["easyneg"]["text"] == "easyneg"
    hyper = cards_of(client, "hypernetworks")["hyper"]
    assert hyper["rel"] == "hypernetworks/sub/hyper.pt" and "sub/hyper.preview.png" in hyper["preview"]
    checkpoint = cards_of(client, "checkpoints")["sub/other.safetensors"]
    assert checkpoint["label"] == "other" and checkpoint["checkpoint"].startswith("sub/other.safetensors")
    body = client.get("/sd_extra_networks/cards", params={"page": "lora"}).json()
    assert body["opts"]["extra_networks_default_multiplier"] == 1.0
    assert body["opts"]["extra_networks_add_text_separator"] == " "
    assert client.get("/sd_extra_networks/cards", params={"page": "nope"}).status_code == 404


def test_panel_reads_a1111_only_settings_from_config_json(state) -> None:
    state.opts.set_foreign("extra_networks_card_order", "Descending")
    assert en_cards.panel_options(state.opts)["extra_networks_card_order"] == "Descending"
    assert en_cards.panel_options(state.opts)["extra_networks_hidden_models"] == "When searched"


# -- incremental refresh ------------------------------------------------------------------------------------------------

def test_refresh_rebuilds_only_what_changed(state, client, monkeypatch) -> None:
    library_module = load_lora_package().library
    reads: list[str] = []
    original = library_module.read_safetensors_metadata
    monkeypatch.setattr(library_module, "read_safetensors_metadata", lambda p: reads.append(p.name) or original(p))
    lora = state.paths.lora_dir
    for i in range(20):
        write_lora(lora / ("deep" if i % 2 else ""), f"n{i}", ss_output_name=f"alias{i}")
    assert len(cards_of(client)) == 20 and len(reads) == 20
    reads.clear()
    write_lora(lora / "deep", "newcomer")
    body = client.post("/sd_extra_networks/refresh", params={"page": "lora"}).json()
    assert body["stats"]["listed"] == 21 and body["stats"]["built"] == 1 and body["stats"]["reused"] == 20
    assert reads == ["newcomer.safetensors"]  # one header read, one card built
    (lora / "n4.json").write_text(json.dumps({"activation text": "sparkles"}))
    body = client.post("/sd_extra_networks/refresh", params={"page": "lora"}).json()
    assert body["stats"]["built"] == 1 and reads == ["newcomer.safetensors"]  # a sidecar change reads no header
    assert {c["name"]: c for c in body["cards"]}["n4"]["activation"] == "sparkles"
    full = client.post("/sd_extra_networks/refresh", params={"page": "lora", "full": True}).json()
    assert full["stats"]["built"] == 21


# -- thumbnails: only preview files inside the library folders -------------------------------------------------------

def test_thumb_serves_previews_inside_the_folders_only(state, client, tmp_path) -> None:
    lora = state.paths.lora_dir
    write_lora(lora / "sub", "x")
    (lora / "sub" / "x.png").write_bytes(png_bytes())
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes("black"))
    (lora / "escape.png").symlink_to(secret)
    (lora / "linked").symlink_to(tmp_path, target_is_directory=True)

    def thumb(filename: str, page: str = "lora", root: int = 0) -> int:
        return client.get("/sd_extra_networks/thumb", params={"page": page, "root": root, "filename": filename,
                                                                 "mtime": 1}).status_code

    ok = client.get("/" + cards_of(client)["x"]["preview"])
    assert ok.status_code == 200 and ok.content == png_bytes() and "immutable" in ok.headers["cache-control"]
    assert thumb("sub/x.png") == 200
    assert thumb("../secret.png") == 403 and thumb("sub/../../secret.png") == 403
    assert thumb(str(secret)) == 403 and thumb(str(lora / "sub" / "x.png")) == 403  # absolute, even inside
    assert thumb("escape.png") == 403 and thumb("linked/secret.png") == 403  # symlinks leading out
    assert thumb("sub/x.safetensors") == 403 and thumb("sub/x.json") == 403  # not a preview extension
    assert thumb("sub/missing.png") == 404 and thumb("sub/x.png", root=7) == 404 and thumb("x.png", page="no") == 404
    assert thumb("C:\\Windows\\win.png") == 403


# -- the editor's writes ------------------------------------------------------------------------------------------------

def server_functions(state) -> dict:
    ui = en_cards.for_state(state)
    return {fn.__name__: fn for fn in extra_networks_panel.make_server_functions(state, ui)}


def test_editor_saves_a1111_sidecar_and_rebuilds_the_card(state, client) -> None:
    lora = state.paths.lora_dir
    write_lora(lora, "ed", ss_output_name="edAlias", ss_sd_model_name="v1-5", ss_clip_skip="2",
               ss_tag_frequency=json.dumps({"1_a": {"blue eyes": 4, "smile": 9}}))
    (lora / "ed.json").write_text(json.dumps({"vae": "keep.safetensors"}))  # a key the editor does not show
    fns = server_functions(state)
    info = fns["editor_info"]({"page": "lora", "name": "ed"})
    assert info["tags"] == [["smile", 9], ["blue eyes", 4]] or info["tags"] == [("smile", 9), ("blue eyes", 4)]
    rows = dict(info["rows"])
    assert rows["Filename:"] == "Lora/ed.safetensors" and rows["Model:"] == "v1-5" and rows["Clip skip:"] == "2"
    values = {"description": "Ünïcode <desc>", "sd version": "SD1", "activation text": "smile",
              "preferred weight": 3.5, "negative text": "lowres", "notes": "n"}
    reply = fns["save_user_metadata"]({"page": "lora", "name": "ed", "values": values})
    card = reply["card"]
    assert card["weight"] == 2.0 and card["activation"] == "smile" and card["desc"] == "Ünïcode &lt;desc&gt;"
    text = (lora / "ed.json").read_text(encoding="utf-8")
    assert text == json.dumps({"vae": "keep.safetensors", "description": "Ünïcode <desc>", "sd version": "SD1",
                               "activation text": "smile", "preferred weight": 2.0, "negative text": "lowres",
                               "notes": "n"}, indent=4, ensure_ascii=False)
    assert cards_of(client)["ed"]["weight"] == 2.0  # the page's cards carry the rebuilt card
    bad = fns["save_user_metadata"]({"page": "lora", "name": "ed", "values": {"sd version": "SD9"}})
    assert "sd version" in bad["error"]
    assert "error" in fns["editor_info"]({"page": "lora", "name": "missing"})
    single = client.get("/sd_extra_networks/get-single-card", params={"page": "lora", "name": "ed"})
    assert single.json()["card"]["negative"] == "lowres"


def test_replace_preview_writes_a1111_paths_with_the_infotext(state) -> None:
    lora = state.paths.lora_dir
    write_lora(lora, "pv")
    (state.paths.hypernetwork_dir / "hn.pt").write_bytes(b"x")
    fns = server_functions(state)
    image = "data:image/png;base64," + base64.b64encode(png_bytes("red", "a cat\nSteps: 3, Seed: 9")).decode()
    card = fns["replace_preview"]({"page": "lora", "name": "pv", "image": image, "infotext": "ignored"})["card"]
    assert "filename=pv.png" in card["preview"]
    with Image.open(lora / "pv.png") as saved:
        assert infotext.read_from_image(saved) == "a cat\nSteps: 3, Seed: 9"
    plain = "data:image/png;base64," + base64.b64encode(png_bytes("blue")).decode()
    card = fns["replace_preview"]({"page": "hypernetworks", "name": "hn", "image": plain, "infotext": "from box"})
    with Image.open(state.paths.hypernetwork_dir / "hn.preview.png") as saved:  # never a bare hn.png
        assert infotext.read_from_image(saved) == "from box"
    assert "error" in fns["replace_preview"]({"page": "lora", "name": "pv", "image": "data:,bm90IGFuIGltYWdl"})


def test_checkpoint_card_switches_the_model_like_the_dropdown(make_state) -> None:
    from modules import demo_model

    import webui

    state = make_state()
    webui.register_setting_callbacks(state)  # as webui.main does: setting the checkpoint loads it
    demo_model.write_checkpoint(state.paths.ckpt_dir / "second.safetensors", seed=5)
    state.models.refresh()
    second = next(i for i in state.models.checkpoints if i.name == "second.safetensors")
    update = extra_networks_panel.select_checkpoint(state, second.title)
    assert state.models.current.info.path == second.path and state.opts["sd_model_checkpoint"] == second.title
    assert update["value"] == state.models.current.info.title  # the dropdown shows it (with its hash now)
    assert json.loads(state.paths.settings_file.read_text())["sd_model_checkpoint"] == second.title


def test_create_panel_builds_inside_the_page(make_state) -> None:
    from modules.ui.txt2img import create_ui

    state = make_state(load=False)
    demo = create_ui(state)
    config = demo.get_config_file()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    assert {"txt2img_extra_networks", "txt2img_extra_networks_select_checkpoint"} <= ids
    assert os.path.isfile(extra_networks_routes.STATIC_DIR / "extra_networks.js")
