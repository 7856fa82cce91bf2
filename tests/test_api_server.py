"""webui.py as a real subprocess on a free port, driven over HTTP (and by the PyPI A1111 client webuiapi)."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from PIL import Image

from conftest import REPO, free_port, install_checkpoint
from modules import demo_model, infotext

pytestmark = pytest.mark.slow
SMALL = {"prompt": "a red circle", "steps": 3, "width": 64, "height": 64, "seed": 42}


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    data: Path
    log: Path

    def api(self, path: str) -> str:
        return f"{self.url}/sdapi/v1/{path}"


def spawn_server(data: Path, *flags: str) -> Server:
    """Start ``webui.py --data-dir data --port <free port> flags`` in the background (see :func:`wait_up`).

    Several servers can be spawned first and waited for afterwards, so that their start-ups overlap.
    """
    port = free_port()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "server.log"
    env = {**os.environ, "COMMANDLINE_ARGS": "", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "webui.py", "--data-dir", str(data), "--port", str(port), *flags],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(f"http://127.0.0.1:{port}", process, data, log)


def wait_up(server: Server, timeout: float = 300) -> Server:
    """Wait until the server logs that it listens; a server that exits or stays silent fails with its log."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = server.log.read_text(errors="replace")
        if server.process.poll() is not None:
            raise AssertionError(f"webui.py exited with {server.process.returncode}:\n{text}")
        if "Running on local URL" in text:
            return server
        time.sleep(0.3)
    server.process.kill()
    raise AssertionError(f"webui.py did not start in {timeout}s:\n{server.log.read_text(errors='replace')}")


def start_server(data: Path, *flags: str, timeout: float = 240) -> Server:
    """Spawn a server and wait until it listens."""
    return wait_up(spawn_server(data, *flags), timeout)


def listening(server: Server) -> set[tuple[str, int]]:
    """The (address, port) pairs the server process listens on, read from the OS (no connection is made)."""
    import psutil

    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(server.process.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("webui-api")
    folder = data / "models" / "Stable-diffusion"
    install_checkpoint(tiny_checkpoint, folder)
    demo_model.write_checkpoint(folder / "second.safetensors", seed=5)
    (folder / "broken.safetensors").write_bytes(b"\x00" * 64)
    server = start_server(data, "--api", "--nowebui", "--ckpt", str(folder / "tiny.safetensors"))
    yield server
    stop_server(server)


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def test_txt2img_returns_png_with_infotext_naming_the_model_hash(api_server: Server, tiny_checkpoint: Path) -> None:
    import hashlib

    reply = requests.post(api_server.api("txt2img"), json=SMALL, timeout=300)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    image = decode(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)
    text = infotext.read_from_image(image)
    fields = infotext.parse(text)
    assert fields["Model hash"] == hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:10]
    assert fields["Sampler"] == "Euler" and fields["Steps"] == "3" and fields["Seed"] == "42"  # API default sampler
    info = __import__("json").loads(body["info"])
    assert info["infotexts"][0] == text and info["all_seeds"] == [42] and body["parameters"]["prompt"] == "a red circle"
    assert not (api_server.data / "outputs" / "txt2img-images").exists()  # the API does not save by default


def test_models_and_option_switch(api_server: Server) -> None:
    titles = [m["title"] for m in requests.get(api_server.api("sd-models"), timeout=30).json()]
    assert {t.split(" [")[0] for t in titles} == {"broken.safetensors", "second.safetensors", "tiny.safetensors"}
    first = requests.post(api_server.api("txt2img"), json=SMALL, timeout=300).json()["images"][0]
    assert requests.post(api_server.api("options"), json={"sd_model_checkpoint": "second.safetensors"},
                         timeout=300).status_code == 200
    assert requests.get(api_server.api("options"), timeout=30).json()["sd_model_checkpoint"] == "second.safetensors"
    second = requests.post(api_server.api("txt2img"), json=SMALL, timeout=300).json()
    assert "Model: second" in infotext.read_from_image(decode(second["images"][0]))
    assert second["images"][0] != first
    requests.post(api_server.api("options"), json={"sd_model_checkpoint": "tiny.safetensors"}, timeout=300)


@pytest.mark.parametrize(("payload", "status", "fragment"), [
    ({**SMALL, "width": 65}, 422, "multiple of 8"),
    ({**SMALL, "steps": 0}, 422, "steps must be from 1"),
    ({**SMALL, "sampler_name": "Nope"}, 422, "unknown sampler 'Nope'"),
    ({**SMALL, "steps": "many"}, 422, "steps"),
    ({**SMALL, "enable_hr": True, "hr_upscaler": "4x-UltraSharp"}, 422, "Latent (antialiased), Latent (bicubic)"),
    ({**SMALL, "enable_hr": True, "hr_scale": 100}, 422, "hr_scale"),
    ({**SMALL, "enable_hr": True, "hr_resize_x": 4096, "hr_resize_y": 8}, 422, "the hires pass would make"),
    ({**SMALL, "enable_hr": True, "denoising_strength": 1.5}, 422, "denoising_strength must be from 0 to 1"),
    ({**SMALL, "override_settings": {"sd_model_checkpoint": "ghost"}}, 404, "'ghost' not found"),
])
def test_bad_requests_get_a1111_error_json_and_the_server_keeps_serving(api_server: Server, payload: dict,
                                                                        status: int, fragment: str) -> None:
    reply = requests.post(api_server.api("txt2img"), json=payload, timeout=300)
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert {"error", "detail", "body", "errors"} <= body.keys()
    assert fragment in str(body["detail"])
    assert requests.post(api_server.api("txt2img"), json=SMALL, timeout=300).status_code == 200


def test_unusable_checkpoint_switch_is_refused_cleanly(api_server: Server) -> None:
    reply = requests.post(api_server.api("options"), json={"sd_model_checkpoint": "broken.safetensors"}, timeout=300)
    assert reply.status_code == 400 and "broken.safetensors" in reply.json()["detail"]
    assert requests.get(api_server.api("options"), timeout=30).json()["sd_model_checkpoint"] != "broken.safetensors"
    assert requests.post(api_server.api("txt2img"), json=SMALL, timeout=300).status_code == 200


def test_embeddings_routes(api_server: Server) -> None:
    import torch

    folder = api_server.data / "embeddings"
    folder.mkdir(exist_ok=True)
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "step": 12}, folder / "fresh.pt")
    torch.save({"string_to_param": {"*": torch.randn(1, 1024)}}, folder / "sd2only.pt")
    assert requests.post(api_server.api("refresh-embeddings"), timeout=60).status_code == 200
    body = requests.get(api_server.api("embeddings"), timeout=60).json()
    assert body["loaded"]["fresh"] == {"step": 12, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                       "shape": 32, "vectors": 2}
    assert body["skipped"]["sd2only"]["shape"] == 1024
    reply = requests.post(api_server.api("txt2img"), json={**SMALL, "prompt": "a fresh cat"}, timeout=300)
    assert "TI hashes" in infotext.read_from_image(decode(reply.json()["images"][0]))


def test_progress_and_interrupt(api_server: Server) -> None:
    result: dict = {}
    job = threading.Thread(target=lambda: result.update(reply=requests.post(
        api_server.api("txt2img"), json={**SMALL, "steps": 400}, timeout=600)))
    job.start()
    deadline = time.time() + 120
    progress = {}
    while time.time() < deadline:
        progress = requests.get(api_server.api("progress"), timeout=30).json()
        if progress["state"]["sampling_step"] >= 2:
            break
        time.sleep(0.05)
    assert progress["state"]["job"] == "txt2img" and progress["state"]["sampling_steps"] == 400
    assert 0 < progress["progress"] < 1
    assert requests.post(api_server.api("interrupt"), timeout=30).status_code == 200
    job.join(timeout=120)
    assert result["reply"].status_code == 200 and len(result["reply"].json()["images"]) == 1
    idle = requests.get(api_server.api("progress"), timeout=30).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0


def test_pypi_webuiapi_client(api_server: Server) -> None:
    """The unmodified PyPI A1111 client talks to us."""
    import webuiapi

    port = int(api_server.url.rsplit(":", 1)[1])
    client = webuiapi.WebUIApi(host="127.0.0.1", port=port)
    result = client.txt2img(prompt="a blue square", steps=3, width=64, height=64, seed=7, sampler_name="Euler a")
    assert result.image.size == (64, 64) and result.info["all_seeds"] == [7]
    assert "Sampler: Euler a" in result.info["infotexts"][0]
    models = client.get_sd_models()
    assert any(m["model_name"] == "tiny" for m in models)
    client.refresh_checkpoints()
    client.util_set_model("second")
    assert client.util_get_current_model().startswith("second.safetensors")
    client.util_set_model("tiny")


def test_ui_without_api_and_demo_fallback(tmp_path: Path) -> None:
    """No checkpoint + no download: the UI comes up on the demo model; without --api there is no /sdapi."""
    server = start_server(tmp_path / "data", "--no-download-sd-model")
    try:
        assert requests.get(server.url + "/", timeout=60).status_code == 200
        assert requests.get(server.url + "/sdapi/v1/sd-models", timeout=30).status_code == 404
        assert (tmp_path / "data" / "models" / "Stable-diffusion" / "demo-shapes-sd15.safetensors").exists()
        assert "demo model" in server.log.read_text()
    finally:
        stop_server(server)


def test_unknown_flag_is_a_clear_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "webui.py", "--data-dir", str(tmp_path), "--no-such-flag"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COMMANDLINE_ARGS": ""})
    assert done.returncode == 2 and "unknown command-line argument(s): --no-such-flag" in done.stderr


def test_api_auth(tmp_path: Path, tiny_checkpoint: Path) -> None:
    install_checkpoint(tiny_checkpoint, tmp_path / "data" / "models" / "Stable-diffusion")
    server = start_server(tmp_path / "data", "--nowebui", "--api-auth", "alice:s3cret:x,bob:pw")
    try:
        refused = requests.get(server.api("sd-models"), timeout=30)
        assert refused.status_code == 401 and refused.json()["detail"] == "Incorrect username or password"
        assert requests.get(server.api("sd-models"), auth=("alice", "wrong"), timeout=30).status_code == 401
        assert requests.get(server.api("sd-models"), auth=("alice", "s3cret:x"), timeout=30).status_code == 200
        reply = requests.post(server.api("txt2img"), json=SMALL, auth=("bob", "pw"), timeout=300)
        assert reply.status_code == 200
        assert listening(server) == {("127.0.0.1", port_of(server))}  # no --listen: localhost only
        for route in ("png-info", "txt2img", "options"):  # refused before the body is even looked at
            assert requests.post(server.api(route), json={"image": ""}, timeout=30).status_code == 401
        assert requests.post(server.api("png-info"), json={"image": ""}, auth=("bob", "pw"), timeout=30).status_code == 422
        assert requests.post(f"{server.url}/internal/progress", json={"id_task": "x"}, timeout=30).status_code == 401
        assert requests.post(f"{server.url}/internal/progress", json={"id_task": "x"}, auth=("bob", "pw"),
                             timeout=30).status_code == 200
        # A1111 leaves its LoRA routes open under --api-auth; every API route needs the credentials here
        assert requests.get(server.api("loras"), timeout=30).status_code == 401
        assert requests.post(server.api("refresh-loras"), timeout=30).status_code == 401
        assert requests.get(server.api("loras"), auth=("alice", "s3cret:x"), timeout=30).status_code == 200
    finally:
        stop_server(server)


def test_the_console_shows_no_library_chatter(api_server: Server) -> None:
    """Start-up output is ours: the libraries' notes about optional extras (transformers' "`CLIPImageProcessor`
    requires torchvision (not installed); falling back ...", printed when diffusers is imported) stay hidden at
    the default log level; the model load, which imports diffusers, has happened."""
    text = api_server.log.read_text(errors="replace")
    assert "Loaded checkpoint" in text
    assert "requires torchvision" not in text and "[transformers]" not in text, text
