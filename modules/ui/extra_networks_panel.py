"""The Extra Networks panel under the prompts (A1111 1.10): Textual Inversion, Hypernetworks, Checkpoints, Lora.

How it is built, and why:

* One ``gr.HTML`` component, no Gradio component per card. Its ``head`` loads ``static/extra_networks.js`` and
  ``.css`` (served by :mod:`modules.ui.extra_networks_routes`; this is how the panel's JS is loaded — Gradio 6's
  component ``head``, deduplicated by ``src``); its ``js_on_load`` mounts the panel. The browser fetches a page's
  cards as JSON (``/sd_extra_networks/cards``) and draws only the rows in view (a virtualised grid), so a page of
  10 000 LoRAs opens as fast as one of 10.
* Writes go through Gradio, behind ``--gradio-auth``: the editor's save, "replace preview" and its info are the
  component's ``server_functions``; a checkpoint card clicks a hidden button whose handler switches the model
  exactly as the checkpoint dropdown does (``state.queue`` + ``opts.set("sd_model_checkpoint")``) and updates it.
* Click-to-insert, removal on a second click, search, sort and the folder tree are A1111's rules, in the JS.
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import json
import logging
import time
from typing import Any

import gradio as gr

from modules.ui import common
from modules.ui import extra_networks_cards as en_cards
from modules.ui.extra_networks_pages import SD_VERSIONS
from modules.ui.extra_networks_routes import static_version

logger = logging.getLogger(__name__)

MAX_PREVIEW_BYTES = 50 * 1024 * 1024
TOP_TAGS = 24


def create_panel(state: Any, prompt: Any, negative_prompt: Any, checkpoint: Any) -> None:
    """Build the panel inside the current Gradio Blocks context (called by ``ui.txt2img.create_ui``).

    Args:
        state: the AppState.
        prompt, negative_prompt: the txt2img prompt boxes cards insert into.
        checkpoint: the checkpoint dropdown a checkpoint card switches.
    """
    ui = en_cards.for_state(state)
    ui.warm()
    tab = (prompt.elem_id or "txt2img").split("_")[0]
    config = {
        "tab": tab, "prompt": prompt.elem_id, "negative": negative_prompt.elem_id,
        "gallery": f"{tab}_gallery", "info": f"html_info_{tab}",
        "checkpointButton": f"{tab}_extra_networks_select_checkpoint",
        "pages": [{"id": cards.page.id, "title": cards.page.title} for cards in ui.pages.values()],
        "opts": en_cards.panel_options(state.opts), "versions": list(SD_VERSIONS),
    }
    version = static_version()
    head = (f'<link rel="stylesheet" href="sd_extra_networks/static/extra_networks.css?v={version}">'
            f'<script src="sd_extra_networks/static/extra_networks.js?v={version}"></script>')
    functions = make_server_functions(state, ui)
    gr.HTML(f'<div class="en-root" data-config="{html.escape(json.dumps(config))}"></div>', head=head,
            js_on_load=MOUNT_JS, server_functions=functions, elem_id=f"{tab}_extra_networks", padding=False,
            apply_default_css=False)
    name_box = gr.Textbox(visible="hidden", elem_id=f"{tab}_extra_networks_checkpoint_name")
    button = gr.Button("select checkpoint", visible="hidden", elem_id=config["checkpointButton"])
    button.click(lambda title: select_checkpoint(state, title), inputs=name_box, outputs=checkpoint,
                 js="(x) => [window.extraNetworks ? window.extraNetworks.takeCheckpoint() : x]")


#: Waits for the panel's script (``head`` may still be loading it), then mounts the panel into ``element``.
MOUNT_JS = """
const mount = () => window.extraNetworks ? window.extraNetworks.mount(element, server) : setTimeout(mount, 20);
mount();
"""


def select_checkpoint(state: Any, title: str) -> Any:
    """Switch the model as the dropdown does; answers the dropdown's new choices and value."""
    common.switch_checkpoint(state, title)
    current = state.models.current
    return gr.update(choices=common.checkpoint_titles(state), value=current.info.title if current else None)


def make_server_functions(state: Any, ui: en_cards.ExtraNetworksUI) -> list:
    """The functions the panel's JS calls through Gradio (``server.<name>(request)``); each answers a dict."""

    def guarded(fn):
        def call(request: dict) -> dict:
            try:
                cards = ui.get(str(request.get("page")))
                return fn(cards, cards.item(str(request.get("name"))), request)
            except (LookupError, ValueError, OSError) as e:
                logger.warning("Extra networks %s: %s", fn.__name__, e)
                return {"error": str(e)}

        call.__name__ = fn.__name__
        return call

    @guarded
    def editor_info(cards: en_cards.PageCards, item, request: dict) -> dict:
        return describe_item(cards, item)

    @guarded
    def save_user_metadata(cards: en_cards.PageCards, item, request: dict) -> dict:
        values = request.get("values")
        if not isinstance(values, dict):
            raise ValueError("values must be an object")
        path = en_cards.user_metadata_path(item)
        data = en_cards.read_user_metadata(path)
        data.update(clean_user_metadata(cards.page.editor_fields, values))
        en_cards.write_user_metadata(path, data)
        return {"card": cards.rebuild(item.name)}

    @guarded
    def replace_preview(cards: en_cards.PageCards, item, request: dict) -> dict:
        save_preview(en_cards.base_of(item.path), cards.page.preview_suffix, str(request.get("image") or ""),
                     str(request.get("infotext") or ""))
        return {"card": cards.rebuild(item.name)}

    return [editor_info, save_user_metadata, replace_preview]


def clean_user_metadata(fields: tuple[str, ...], values: dict) -> dict[str, object]:
    """The editor's values for this page's fields, typed as A1111 stores them."""
    out: dict[str, object] = {}
    for key in fields:
        if key not in values:
            continue
        value = values[key]
        if key == "preferred weight":
            try:
                out[key] = min(2.0, max(0.0, float(value)))
            except (TypeError, ValueError) as e:
                raise ValueError(f"preferred weight must be a number from 0 to 2, not {value!r}") from e
        elif key == "sd version":
            if value not in SD_VERSIONS:
                raise ValueError(f"sd version must be one of {', '.join(SD_VERSIONS)}")
            out[key] = value
        else:
            out[key] = "" if value is None else str(value)
    return out


def save_preview(base: Any, suffix: str, image_data: str, infotext: str) -> None:
    """Write a picture (a data URL or base64) as ``<base><suffix>`` PNG, with its infotext (or ``infotext``)."""
    from PIL import Image, UnidentifiedImageError

    from modules import infotext as infotext_module

    try:
        raw = base64.b64decode(image_data.split(",", 1)[-1], validate=False)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"the picture cannot be decoded ({e})") from e
    if not raw or len(raw) > MAX_PREVIEW_BYTES:
        raise ValueError("no picture was sent (generate an image first)" if not raw else "the picture is too large")
    try:
        with Image.open(io.BytesIO(raw)) as image:
            image.load()
            text = infotext_module.read_from_image(image) or infotext
            picture = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"that is not a picture ({e})") from e
    target = base.with_name(base.name + suffix)
    tmp = target.with_name(target.name + ".tmp")
    picture.save(tmp, format="PNG", pnginfo=infotext_module.add_to_png(text) if text else None)
    tmp.replace(target)


def describe_item(cards: en_cards.PageCards, item: Any) -> dict:
    """What the editor shows: the file's table, training tags, and the current user metadata."""
    page = cards.page
    card = cards.card(item.name)
    user = en_cards.read_user_metadata(en_cards.user_metadata_path(item))
    try:
        st = item.path.stat()
        size, modified = st.st_size, time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
    except OSError:
        size, modified = 0, ""
    full_hash = page.full_hash(item)
    rows = [("Filename:", html.escape(str(card["rel"]))), ("File size:", human_size(size)),
            ("Hash:", html.escape(full_hash[:10])), ("Modified:", modified)]
    values = {key: user.get(key, "") for key in page.editor_fields}
    if "description" not in user:
        values["description"] = html.unescape(str(card.get("desc", "")))
    if "sd version" in values and not values["sd version"]:
        values["sd version"] = card.get("sd_version", "Unknown")
    if "preferred weight" in values:
        values["preferred weight"] = en_cards_float(user.get("preferred weight"))
    return {"name": item.name, "label": card.get("label") or item.name, "page": page.id, "preview": card.get("preview", ""),
            "rows": rows + page.info_rows(item), "tags": page.tags(item)[:TOP_TAGS],
            "fields": list(page.editor_fields), "values": values}


def en_cards_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"
