"""The img2img tab's own controls (A1111 1.10's layout and element ids): the picture to start from — plain, painted
with a mask (*Inpaint*), or with an uploaded mask (*Inpaint upload*) —, the resize mode, the inpainting settings
(shown on the inpaint sub-tabs) and the denoising strength. The rest of the tab is txt2img's
(:func:`modules.ui.txt2img._generation_tab`); this module turns these controls into the job's parameters.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
from PIL import Image

from modules import img2img, masking
from modules.processing_params import GenerationParams
from modules.state import AppState

#: The sub-tabs, in order: what the ``mode`` state holds (A1111 numbers its five sub-tabs otherwise; this one has
#: no Sketch, Inpaint sketch or Batch).
MODES = ("img2img", "Inpaint", "Inpaint upload")
MODE_TAB_IDS = ("img2img_img2img_tab", "img2img_inpaint_tab", "img2img_inpaint_upload_tab")


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
    mask_mode: gr.Radio
    inpainting_fill: gr.Radio
    inpaint_area: gr.Radio
    padding: gr.Slider
    denoising_strength: gr.Slider | None = None  # made later, under CFG Scale (A1111's place)

    def job_inputs(self) -> list[gr.components.Component]:
        return [self.mode, self.image, self.sketch, self.base, self.mask, self.resize_mode, self.mask_blur,
                self.mask_mode, self.inpainting_fill, self.inpaint_area, self.padding, self.denoising_strength]


def create_inputs() -> Img2ImgControls:
    """The sub-tabs with their picture boxes, then the resize mode and the inpainting settings (hidden on the plain
    img2img sub-tab), at the top of the img2img settings as in A1111."""
    picture = dict(type="pil", image_mode="RGBA", sources=["upload", "clipboard"], height=360)
    mode = gr.State(0)
    with gr.Tabs(elem_id="mode_img2img") as modes:
        with gr.Tab("img2img", id=MODE_TAB_IDS[0], elem_id=MODE_TAB_IDS[0]) as plain_tab:
            image = gr.Image(label="Image for img2img", elem_id="img2img_image", **picture)
        with gr.Tab("Inpaint", id=MODE_TAB_IDS[1], elem_id=MODE_TAB_IDS[1]) as inpaint_tab:
            sketch = gr.ImageEditor(label="Image for inpainting with mask", elem_id="img2maskimg", type="pil",
                                    image_mode="RGBA", sources=["upload", "clipboard"], height=420, format="png",
                                    layers=False, transforms=(), eraser=gr.Eraser(),
                                    brush=gr.Brush(colors=["#ffffff"], color_mode="fixed", default_size=24))
        with gr.Tab("Inpaint upload", id=MODE_TAB_IDS[2], elem_id=MODE_TAB_IDS[2]) as upload_tab:
            base = gr.Image(label="Image for img2img", elem_id="img_inpaint_base", **picture)
            mask = gr.Image(label="Mask", elem_id="img_inpaint_mask", **picture)
    resize_mode = gr.Radio(label="Resize mode", choices=list(img2img.RESIZE_MODES), value=img2img.RESIZE_MODES[0],
                           elem_id="resize_mode")
    with gr.Column(elem_id="inpaint_controls", visible=False) as inpaint_controls:
        mask_blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
        mask_mode = gr.Radio(label="Mask mode", choices=list(masking.MASK_MODES), value=masking.MASK_MODES[0],
                             elem_id="img2img_mask_mode")
        inpainting_fill = gr.Radio(label="Masked content", choices=list(masking.MASKED_CONTENT),
                                   value=masking.MASKED_CONTENT[1], elem_id="img2img_inpainting_fill")
        with gr.Row():
            inpaint_area = gr.Radio(label="Inpaint area", choices=list(masking.INPAINT_AREAS),
                                    value=masking.INPAINT_AREAS[0], elem_id="img2img_inpaint_full_res")
            padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                elem_id="img2img_inpaint_full_res_padding")
    for index, tab in enumerate((plain_tab, inpaint_tab, upload_tab)):
        tab.select(lambda i=index: (i, gr.update(visible=i > 0)), outputs=[mode, inpaint_controls], queue=False,
                   api_visibility="private")
    return Img2ImgControls(modes, mode, image, sketch, base, mask, resize_mode, inpaint_controls, mask_blur,
                           mask_mode, inpainting_fill, inpaint_area, padding)


def denoising_slider() -> gr.Slider:
    return gr.Slider(0.0, 1.0, value=0.75, step=0.01, label="Denoising strength",
                     elem_id="img2img_denoising_strength")


def show_plain(controls: Img2ImgControls) -> list[tuple[gr.components.Component, Callable[[], object]]]:
    """What "Send to img2img" sets besides the picture: the plain img2img sub-tab, selected and in use (the values
    are made when sent: a ``gr.Tabs`` made while the page is built would be another component on the page)."""
    return [(controls.modes, lambda: gr.Tabs(selected=MODE_TAB_IDS[0])), (controls.mode, lambda: 0),
            (controls.inpaint_controls, lambda: gr.update(visible=False))]


def picture_and_mask(mode: int, image, sketch, base, mask) -> tuple[Image.Image, Image.Image | None]:
    """The picture (and mask) of the sub-tab in use; ``gr.Error`` says what is missing.

    *Inpaint*: the editor's background is the picture and what was painted on its layer (its opacity) the mask.
    """
    if mode == 1:
        background = (sketch or {}).get("background") if isinstance(sketch, dict) else None
        if background is None:
            raise gr.Error("Put a picture in the Inpaint box first, then paint the part to redraw")
        layers = [layer for layer in sketch.get("layers") or [] if layer is not None]
        painted = Image.new("RGBA", background.size, (0, 0, 0, 0))
        for layer in layers:
            painted.alpha_composite(layer.convert("RGBA").resize(background.size))
        return background, painted
    if mode == 2:
        if base is None or mask is None:
            raise gr.Error("Inpaint upload needs both the picture and its mask (white where it is redrawn)")
        return base, mask
    if image is None:
        raise gr.Error("Put a picture in the img2img image box first (drop, paste or click to upload)")
    return image, None


def build_params(state: AppState, mode: int, image, sketch, base, mask, resize_mode: str, mask_blur: float,
                 mask_mode: str, inpainting_fill: str, inpaint_area: str, padding: float, denoising_strength: float,
                 *values) -> GenerationParams:
    """The img2img job the controls describe: txt2img's values (``values``, in
    :func:`modules.ui.txt2img.build_params`' order) with the picture, mask and settings of the sub-tab in use;
    ``gr.Error`` names what is missing or wrong."""
    from modules.ui import txt2img

    picture, painted = picture_and_mask(int(mode or 0), image, sketch, base, mask)
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
