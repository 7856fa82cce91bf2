"""The page's own JavaScript and CSS (modules/ui/static/), delivered through a page-load event.

Gradio 6 takes ``js=``/``css=``/``head=`` at ``launch()`` or ``mount_gradio_app()``, not in ``gr.Blocks``; a
page-load event with a JS function keeps the UI self-contained (webui.py only mounts it). The CSS travels inside
the script and is added to ``<head>`` once.
"""

from __future__ import annotations

import json
from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"

# settings the script reads (window.webuiOpts)
JS_OPTIONS = ("keyedit_precision_attention", "keyedit_precision_extra", "keyedit_delimiters")


def load_js() -> str:
    """A JS function (for ``demo.load(None, js=...)``) that installs the keyboard handlers and the styles."""
    script = (STATIC / "webui.js").read_text(encoding="utf-8")
    css = (STATIC / "webui.css").read_text(encoding="utf-8")
    return f"() => {{\nconst WEBUI_CSS = {json.dumps(css)};\n{script}\n}}"


_ASSIGN_OPTIONS = "window.webuiOpts = Object.assign(window.webuiOpts || {}, values || {});"
SET_OPTIONS_JS = f"(values) => {{ {_ASSIGN_OPTIONS} }}"

#: Run once the page-load event has filled the controls with the stored values: sets the options, then marks the
#: page loaded (``<body data-webui-loaded="true">``) and fires ``webui-loaded`` on ``document`` (A1111's
#: ``onUiLoaded`` moment). Scripts — and the browser tests — wait for it: a control edited before the load event's
#: reply arrives would be overwritten by it.
LOADED_JS = (f"(values) => {{ {_ASSIGN_OPTIONS} document.body.dataset.webuiLoaded = 'true';"
             " document.dispatchEvent(new Event('webui-loaded')); }")


def js_options(opts) -> dict[str, object]:
    """The settings the script needs, for a hidden JSON component."""
    return {key: opts[key] for key in JS_OPTIONS}
