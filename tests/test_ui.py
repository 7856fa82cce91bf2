"""The first Gradio txt2img page, driven over its real HTTP API with gradio's own client."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from conftest import install_checkpoint
from modules import infotext
from test_api_server import start_server, stop_server

pytestmark = pytest.mark.slow


def test_generate_from_the_page(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from gradio_client import Client

    install_checkpoint(tiny_checkpoint, tmp_path / "data" / "models" / "Stable-diffusion")
    server = start_server(tmp_path / "data")
    try:
        client = Client(server.url + "/", verbose=False)
        gallery, info = client.predict(  # the seeds go to a gr.State, which the HTTP API does not return
            "a green triangle", "", "Euler a", "Automatic", 3, 64, 64, 1, 2, 7.0, 77, -1, 0.0, 1, api_name="/run")
        assert len(gallery) == 3  # grid + two images
        with Image.open(gallery[1]["image"]) as first:
            assert first.size == (64, 64)
        assert "Seed: 77" in info and "Sampler: Euler a" in info and "Model: tiny" in info
        saved = sorted((tmp_path / "data" / "outputs" / "txt2img-images").rglob("*.png"))
        assert [p.name for p in saved] == ["00000-77.png", "00001-78.png"]  # the UI saves, as A1111's does
        with Image.open(saved[0]) as image:
            assert infotext.parse(infotext.read_from_image(image))["Seed"] == "77"
        with pytest.raises(Exception, match="multiple of 8"):
            client.predict("x", "", "Euler a", "Automatic", 3, 68, 64, 1, 1, 7.0, 1, -1, 0.0, 1, api_name="/run")
    finally:
        stop_server(server)
