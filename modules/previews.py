"""Live previews of a running job: latents → a small RGB picture without running the VAE.

A1111's "Approx cheap" preview for SD1.x: every latent pixel's 4 channels go through one fixed 4×3 linear map
to RGB in [-1, 1], then to 8-bit like a decoded image (``(x + 1) / 2``, clamped, ``255·x`` truncated). The
picture has the latent's size (1/8 of the image's), costs one tiny matrix product, and needs no extra weights.
The coefficients are a published least-squares fit of SD1.x latents to their decoded colours; they are data
here, not code, so another model family can bring its own table.

Pure functions: nothing here knows about jobs or the app.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import torch
from PIL import Image

#: Rows: latent channels 0..3; columns: R, G, B contributions (A1111's "Approx cheap" table for SD1.x).
SD1_LATENT_RGB: tuple[tuple[float, float, float], ...] = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)


def latent_to_rgb(latent: torch.Tensor, table: tuple[tuple[float, ...], ...] = SD1_LATENT_RGB) -> np.ndarray:
    """One latent ``(C, h, w)`` → an ``(h, w, 3)`` uint8 array through the linear ``table`` (C rows × 3)."""
    if latent.dim() != 3 or latent.shape[0] != len(table):
        raise ValueError(f"expected a latent of shape ({len(table)}, h, w); got {tuple(latent.shape)}")
    coeffs = torch.tensor(table, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu(), coeffs)
    unit = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0)
    return (255.0 * unit.numpy()).astype(np.uint8)


def preview_image(latents: torch.Tensor, table: tuple[tuple[float, ...], ...] = SD1_LATENT_RGB) -> Image.Image:
    """A batch ``(B, C, h, w)`` (or one ``(C, h, w)`` latent) → one picture: a grid when B > 1 (A1111's default)."""
    from modules.images import image_grid

    batch = latents.unsqueeze(0) if latents.dim() == 3 else latents
    pictures = [Image.fromarray(latent_to_rgb(latent, table)) for latent in batch]
    return pictures[0] if len(pictures) == 1 else image_grid(pictures)


def png_base64(image: Image.Image) -> str:
    """The picture as base64 PNG text (what ``current_image`` carries)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
