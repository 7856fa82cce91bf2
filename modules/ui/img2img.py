"""The img2img tab's own controls (A1111 1.10's layout and element ids): the picture to start from — plain, drawn on
(*Sketch*), painted with a mask (*Inpaint*), drawn on in colour as the mask (*Inpaint sketch*), or with an uploaded
mask (*Inpaint upload*) —, the resize mode, the inpainting settings (shown on the inpaint sub-tabs) and the
denoising strength. The rest of the tab is txt2img's (:func:`modules.ui.txt2img._generation_tab`); this module turns
these controls into the job's parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from modules import img2img, masking
from modules.processing_params import GenerationParams
from modules.state import AppState

#: The sub-tabs, in order: what the ``mode`` state holds (A1111's order and numbers; no Batch sub-tab here).
MODES = ("img2img", "Sketch", "Inpaint", "Inpaint sketch", "Inpaint upload")
MODE_TAB_IDS = ("img2img_img2img_tab", "img2img_img2img_sketch_tab", "img2img_inpaint_tab",
                "img2img_inpaint_sketch_tab", "img2img_inpaint_upload_tab")
SKETCH, INPAINT, INPAINT_SKETCH, INPAINT_UPLOAD = 1, 2, 3, 4
SKETCH_COLORS = ["#ffffff", "#000000", "#ff0000", "#ffa500", "#ffff00", "#00ff00", "#0000ff", "#800080"]


@dataclass
class Img2ImgControls:
    """The picture boxes, the sub-tab in use, the resize mode, the inpainting settings and the denoising
    strength. :meth:`job_inputs` lists them in :func:`build_params`' argument order."""

    modes: gr.Tabs
    mode: gr.State  # index into MODES
    image: gr.Image
    sketch: gr.ImageEditor  # "Inpaint": the picture with the mask painted on a layer
    base: gr.Image  # "Inpaint upload"
    mask: gr.Image
    resize_mode: gr.Radio
    inpaint_controls: gr.Column
    mask_blur: gr.Slider
    mask_alpha: gr.Slider  # "Inpaint sketch": the mask's transparency
    mask_mode: gr.Radio
    inpainting_fill: gr.Radio
    inpaint_area: gr.Radio
    padding: gr.Slider
    drawing: gr.ImageEditor | None = None  # "Sketch": the picture drawn on in colour
    color_sketch: gr.ImageEditor | None = None  # "Inpaint sketch": drawn on in colour; the strokes are the mask
    denoising_strength: gr.Slider | None = None  # made later, under CFG Scale (A1111's place)

    def job_inputs(self) -> list[gr.components.Component]:
        return [self.mode, self.image, self.sketch, self.base, self.mask, self.resize_mode, self.mask_blur,
                self.mask_mode, self.inpainting_fill, self.inpaint_area, self.padding, self.denoising_strength,
                self.drawing, self.color_sketch, self.mask_alpha]


def create_inputs() -> Img2ImgControls:
    """The sub-tabs with their picture boxes, then the resize mode and the inpainting settings (hidden on the plain
    img2img sub-tab), at the top of the img2img settings as in A1111."""
    picture = dict(type="pil", image_mode="RGBA", sources=["upload", "clipboard"], height=360)
    mode = gr.State(0)
    def editor(elem_id: str, label: str, brush: gr.Brush) -> gr.ImageEditor:  # each with its own settings objects
        return gr.ImageEditor(label=label, elem_id=elem_id, type="pil", image_mode="RGBA",
                              sources=["upload", "clipboard"], height=420, format="png", layers=False, transforms=(),
                              eraser=gr.Eraser(), brush=brush)

    with gr.Tabs(elem_id="mode_img2img") as modes:
        with gr.Tab("img2img", id=MODE_TAB_IDS[0], elem_id=MODE_TAB_IDS[0]) as plain_tab:
            image = gr.Image(label="Image for img2img", elem_id="img2img_image", **picture)
        with gr.Tab("Sketch", id=MODE_TAB_IDS[1], elem_id=MODE_TAB_IDS[1]) as sketch_tab:
            drawing = editor("img2img_sketch", "Image for img2img",
                             gr.Brush(colors=list(SKETCH_COLORS), color_mode="defaults", default_size=12))
        with gr.Tab("Inpaint", id=MODE_TAB_IDS[2], elem_id=MODE_TAB_IDS[2]) as inpaint_tab:
            sketch = editor("img2maskimg", "Image for inpainting with mask",
                            gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24))
        with gr.Tab("Inpaint sketch", id=MODE_TAB_IDS[3], elem_id=MODE_TAB_IDS[3]) as inpaint_sketch_tab:
            color_sketch = editor("inpaint_sketch", "Color sketch inpainting",
                                  gr.Brush(colors=list(SKETCH_COLORS), color_mode="defaults", default_size=12))
        with gr.Tab("Inpaint upload", id=MODE_TAB_IDS[4], elem_id=MODE_TAB_IDS[4]) as upload_tab:
            base = gr.Image(label="Image for img2img", elem_id="img_inpaint_base", **picture)
            mask = gr.Image(label="Mask", elem_id="img_inpaint_mask", **picture)
    resize_mode = gr.Radio(label="Resize mode", choices=list(img2img.RESIZE_MODES), value=img2img.RESIZE_MODES[0],
                           elem_id="resize_mode")
    with gr.Column(elem_id="inpaint_controls", visible=False) as inpaint_controls:
        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
        mask_alpha = gr.Slider(0, 100, value=0, step=1, label="Mask transparency", visible=False,
                               elem_id="img2img_mask_alpha")
        mask_mode = gr.Radio(label="Mask mode", choices=list(masking.MASK_MODES), value=masking.MASK_MODES[0],
                             elem_id="img2img_mask_mode")
        inpainting_fill = gr.Radio(label="Masked content", choices=list(masking.MASKED_CONTENT),
                                   value=masking.MASKED_CONTENT[1], elem_id="img2img_inpainting_fill")
        with gr.Row():
            inpaint_area = gr.Radio(label="Inpaint area", choices=list(masking.INPAINT_AREAS),
                                    value=masking.INPAINT_AREAS[0], elem_id="img2img_inpaint_full_res")
            padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                elem_id="img2img_inpaint_full_res_padding")
    for index, tab in enumerate((plain_tab, sketch_tab, inpaint_tab, inpaint_sketch_tab, upload_tab)):
        tab.select(lambda i=index: (i, gr.update(visible=i >= INPAINT), gr.update(visible=i == INPAINT_SKETCH)),
                   outputs=[mode, inpaint_controls, mask_alpha], queue=False, api_visibility="private")
    return Img2ImgControls(modes, mode, image, sketch, base, mask, resize_mode, inpaint_controls, mask_blur,
                           mask_alpha, mask_mode, inpainting_fill, inpaint_area, padding, drawing, color_sketch)


def denoising_slider() -> gr.Slider:
    return gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                     elem_id="img2img_denoising_strength")


def show_plain(controls: Img2ImgControls) -> list[tuple[gr.components.Component, Callable[[], object]]]:
    """What "Send to img2img" sets besides the picture: the plain img2img sub-tab, selected and in use (the values
    are made when sent: a ``gr.Tabs`` made while the page is built would be another component on the page)."""
    return [(controls.modes, lambda: gr.Tabs(selected=MODE_TAB_IDS[0])), (controls.mode, lambda: 0),
            (controls.inpaint_controls, lambda: gr.update(visible=False))]


def _drawn(editor: object, what: str) -> tuple[Image.Image, Image.Image]:
    """An image editor's ``(background, what was drawn on it)``, both RGBA at the background's size."""
    background = editor.get("background") if isinstance(editor, dict) else None
    if background is None:
        raise gr.Error(f"Put a picture in the {what} box first, then draw on it")
    background = background.convert("RGBA")
    drawn = Image.new("RGBA", background.size, (0, 0, 0, 0))
    for layer in [layer for layer in editor.get("layers") or [] if layer is not None]:
        drawn.alpha_composite(layer.convert("RGBA").resize(background.size))
    return background, drawn


def sketch_inpainting(background: Image.Image, drawn: Image.Image, mask_blur: int,
                      mask_alpha: float) -> tuple[Image.Image, Image.Image]:
    """A1111's *Inpaint sketch*: the mask is where the sketch changed the picture, darkened by *Mask transparency*;
    the picture is the sketch, softened by *Mask blur* (PIL's Gaussian, as A1111), over the original through the
    blurred mask."""
    original = background.convert("RGB")
    sketched = Image.alpha_composite(background, drawn).convert("RGB")
    mask = Image.fromarray((np.asarray(drawn)[..., 3] > 0).astype(np.uint8) * 255, "L")
    mask = ImageEnhance.Brightness(mask).enhance(1 - mask_alpha / 100)
    blur = ImageFilter.GaussianBlur(mask_blur)
    return Image.composite(sketched.filter(blur), original, mask.filter(blur)), mask


def picture_and_mask(mode: int, image, sketch, base, mask, drawing=None, color_sketch=None, mask_blur: int = 4,
                     mask_alpha: float = 0) -> tuple[Image.Image, Image.Image | None]:
    """The picture (and mask) of the sub-tab in use; ``gr.Error`` says what is missing.

    *Sketch*: the picture with the drawing on it. *Inpaint*: the editor's background is the picture and what was
    painted on its layer (its opacity) the mask. *Inpaint sketch*: :func:`sketch_inpainting`.
    """
    if mode == SKETCH:
        background, drawn = _drawn(drawing, "Sketch")
        return Image.alpha_composite(background, drawn).convert("RGB"), None
    if mode == INPAINT:
        return _drawn(sketch, "Inpaint")
    if mode == INPAINT_SKETCH:
        return sketch_inpainting(*_drawn(color_sketch, "Inpaint sketch"), int(mask_blur), float(mask_alpha or 0))
    if mode == INPAINT_UPLOAD:
        if base is None or mask is None:
            raise gr.Error("Inpaint upload needs both the picture and its mask (white where it is redrawn)")
        return base, mask
    if image is None:
        raise gr.Error("Put a picture in the img2img image box first (drop, paste or click to upload)")
    return image, None


def build_params(state: AppState, mode: int, image, sketch, base, mask, resize_mode: str, mask_blur: float,
                 mask_mode: str, inpainting_fill: str, inpaint_area: str, padding: float, denoising_strength: float,
                 drawing, color_sketch, mask_alpha: float, *values) -> GenerationParams:
    """The img2img job the controls describe: txt2img's values (``values``, in
    :func:`modules.ui.txt2img.build_params`' order) with the picture, mask and settings of the sub-tab in use;
    ``gr.Error`` names what is missing or wrong."""
    from modules.ui import txt2img

    picture, painted = picture_and_mask(int(mode or 0), image, sketch, base, mask, drawing, color_sketch,
                                        int(mask_blur), mask_alpha)
    params = txt2img.build_params(state, *values)
    try:
        inpaint = {}
        if painted is not None:
            inpaint = dict(mask=painted, mask_blur_x=int(mask_blur), mask_blur_y=int(mask_blur),
                           inpainting_mask_invert=masking.MASK_MODES.index(mask_mode),
                           inpainting_fill=masking.MASKED_CONTENT.index(inpainting_fill),
                           inpaint_full_res=inpaint_area == masking.INPAINT_AREAS[1],
                           inpaint_full_res_padding=int(padding))
        return dataclasses.replace(params, init_images=(picture,), resize_mode=img2img.RESIZE_MODES.index(resize_mode),
                                   denoising_strength=txt2img.number_value(denoising_strength), **inpaint).validate()
    except (ValueError, TypeError) as e:
        raise gr.Error(str(e)) from e
