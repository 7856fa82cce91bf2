"""Hostile use of a live server: path escapes in every name field, links out of the data dir, code-carrying
pickles placed or posted (marker files prove the payload never ran), oversized and malformed bodies."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import install_checkpoint
from modules import demo_model, infotext
from test_api_server import Server, start_server, stop_server

pytestmark = pytest.mark.slow
SMALL = {"prompt": "a hostile cat", "steps": 2, "width": 64, "height": 64, "seed": 9}
ERROR_KEYS = {"error", "detail", "body", "errors"}


class Payload:
    """Unpickling this writes ``marker``: the code a malicious model file would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('payload ran')",)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[tuple[Server, Path]]:
    import torch

    root = tmp_path_factory.mktemp("hostile")
    data, outside = root / "data", root / "outside"
    outside.mkdir()
    markers = outside / "markers"
    markers.mkdir()
    ckpts = data / "models" / "Stable-diffusion"
    install_checkpoint(tiny_checkpoint, ckpts)
    demo_model.write_checkpoint(outside / "real.safetensors", seed=6)
    (outside / "real.vae.safetensors").write_bytes((outside / "real.safetensors").read_bytes())
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, outside / "emb.pt")
    # Links placed in the libraries, leading out of the data dir.
    (ckpts / "linked.safetensors").symlink_to(outside / "real.safetensors")
    for folder, name, target in (("models/VAE", "linked.vae.safetensors", "real.vae.safetensors"),
                                 ("models/Lora", "linked.safetensors", "real.safetensors"),
                                 ("models/hypernetworks", "linked.pt", "emb.pt"), ("embeddings", "linkedemb.pt", "emb.pt")):
        (data / folder).mkdir(parents=True, exist_ok=True)
        (data / folder / name).symlink_to(outside / target)
    # Code-carrying pickles, both torch's zip format and a bare pickle stream.
    torch.save({"state_dict": {"w": Payload(markers / "ckpt")}}, ckpts / "evil.ckpt")
    (ckpts / "evil2.ckpt").write_bytes(pickle.dumps({"state_dict": Payload(markers / "ckpt2")}))
    torch.save({"lora_up.weight": Payload(markers / "lora")}, data / "models" / "Lora" / "evil.pt")
    torch.save({"string_to_param": {"*": Payload(markers / "embedding")}}, data / "embeddings" / "evilemb.pt")
    torch.save({320: Payload(markers / "hypernet"), "name": "evilhn"}, data / "models" / "hypernetworks" / "evilhn.pt")
    torch.save({"encoder.x": Payload(markers / "vae")}, data / "models" / "VAE" / "evil.vae.pt")
    server = start_server(data, "--api", "--nowebui", "--ckpt", str(ckpts / "tiny.safetensors"))
    yield server, outside
    stop_server(server)
    assert not list(markers.iterdir()), "a pickle payload ran"


def post(server: Server, route: str, payload: object, **kwargs) -> requests.Response:
    return requests.post(server.api(route), json=payload, timeout=300, **kwargs)


def test_the_marker_payload_really_runs_when_unpickled(tmp_path: Path) -> None:
    """Positive control: the same payload, unpickled by plain ``pickle``, does write its marker."""
    marker = tmp_path / "control"
    data = pickle.dumps(Payload(marker))
    subprocess.run([sys.executable, "-c", "import pickle,sys; pickle.loads(sys.stdin.buffer.read())"], input=data,
                   check=True, timeout=60)
    assert marker.read_text() == "payload ran"


def escapes(outside: Path, target: str) -> list[str]:
    """Every shape of "a file outside": relative, absolute, NUL, URL-encoded, double-encoded."""
    return [f"../../../outside/{target}", str(outside / target), f"{target}\x00.safetensors",
            f"..%2F..%2F..%2Foutside%2F{target}", f"%2e%2e/%2e%2e/%2e%2e/outside/{target}",
            f"%252e%252e%252f%252e%252e%252foutside%252f{target}", f"sub\\..\\..\\..\\outside\\{target}"]


def assert_refused(reply: requests.Response, what: str) -> None:
    assert 400 <= reply.status_code < 500, f"{what}: {reply.status_code} {reply.text[:300]}"
    assert ERROR_KEYS <= reply.json().keys(), what


def test_checkpoint_and_vae_names_stay_in_their_libraries(setup) -> None:
    server, outside = setup
    baseline = post(server, "txt2img", SMALL).json()["images"][0]
    for name in [*escapes(outside, "real.safetensors"), "linked.safetensors"]:
        assert_refused(post(server, "options", {"sd_model_checkpoint": name}), f"options checkpoint {name!r}")
        assert_refused(post(server, "txt2img", {**SMALL, "override_settings": {"sd_model_checkpoint": name}}),
                       f"override checkpoint {name!r}")
    linked = post(server, "options", {"sd_model_checkpoint": "linked.safetensors"})
    assert linked.status_code == 403 and "outside the data dir" in linked.json()["detail"]
    for name in [*escapes(outside, "real.vae.safetensors"), "linked.vae.safetensors"]:
        assert_refused(post(server, "options", {"sd_vae": name}), f"options VAE {name!r}")
        assert_refused(post(server, "txt2img", {**SMALL, "override_settings": {"sd_vae": name}}), f"override VAE {name!r}")
    for field in ("hr_checkpoint_name", "refiner_checkpoint"):
        for name in escapes(outside, "real.safetensors"):
            assert_refused(post(server, "txt2img", {**SMALL, field: name}), f"{field} {name!r}")
    for name in [*escapes(outside, "real.safetensors"), "linked.safetensors"]:  # used: the hires pass loads it
        assert_refused(post(server, "txt2img", {**SMALL, "enable_hr": True, "hr_checkpoint_name": name}),
                       f"hires checkpoint {name!r}")
    options = requests.get(server.api("options"), timeout=30).json()
    assert options["sd_model_checkpoint"].startswith("tiny") and options["sd_vae"] == "Automatic"
    assert post(server, "txt2img", SMALL).json()["images"][0] == baseline  # same model, same VAE, same image


def test_network_style_and_embedding_names_stay_in_their_libraries(setup) -> None:
    server, outside = setup
    for kind in ("lora", "lyco", "hypernet"):
        for name in [*escapes(outside, "real"), "linked"]:
            reply = post(server, "txt2img", {**SMALL, "prompt": f"a cat <{kind}:{name}:1>"})
            assert_refused(reply, f"<{kind}:{name}>")
    assert post(server, "txt2img", {**SMALL, "prompt": "<lora:linked:1>"}).status_code == 403
    embedded = post(server, "txt2img", {**SMALL, "prompt": "a cat, linkedemb"})
    assert embedded.status_code == 403 and "linkedemb" in embedded.json()["detail"]
    for name in [*escapes(outside, "styles.csv"), "nope"]:
        assert_refused(post(server, "txt2img", {**SMALL, "styles": [name]}), f"style {name!r}")
    pasted = "x <lora:../../../outside/real:1>\nSteps: 2, Sampler: Euler, Seed: 1, VAE: ../../x"
    without_prompt = {k: v for k, v in SMALL.items() if k != "prompt"}  # the infotext's prompt is used
    assert_refused(post(server, "txt2img", {**without_prompt, "infotext": pasted}), "infotext")
    refused = [str(p) for p in ("../outside", str(outside), "a/../../../outside")]
    for value in refused:
        assert post(server, "options", {"outdir_samples": value}).status_code == 403
        assert post(server, "txt2img", {**SMALL, "save_images": True,
                                        "override_settings": {"outdir_txt2img_samples": value}}).status_code == 403
    assert_refused(post(server, "options", {"outdir_samples": "out\x00put"}), "NUL folder")
    assert sorted(p.name for p in outside.rglob("*")) == ["emb.pt", "markers", "real.safetensors", "real.vae.safetensors",
                                                          "real.yaml"]  # nothing was written outside


def test_url_encoded_traversal_in_the_path_is_a_404(setup) -> None:
    server, _ = setup
    host, port = server.url.rsplit("/", 1)[1].split(":")
    for path in ("/sdapi/v1/..%2F..%2F..%2Fetc%2Fpasswd", "/sdapi/v1/%2e%2e/%2e%2e/etc/passwd", "/../../etc/passwd",
                 "/sdapi/v1/sd-models%00"):
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        connection.request("GET", path)
        reply = connection.getresponse()
        body = reply.read()
        assert reply.status == 404 and b"root:" not in body, path


def test_code_carrying_pickles_are_refused_and_never_run(setup) -> None:
    server, outside = setup
    markers = outside / "markers"
    for name in ("evil.ckpt", "evil2.ckpt"):
        reply = post(server, "options", {"sd_model_checkpoint": name})
        assert reply.status_code == 400 and "Nothing in it was executed" in reply.json()["detail"], reply.text
        assert post(server, "txt2img", {**SMALL, "override_settings": {"sd_model_checkpoint": name}}).status_code == 400
    assert post(server, "options", {"sd_vae": "evil.vae.pt"}).status_code == 400
    assert requests.get(server.api("options"), timeout=30).json()["sd_vae"] == "Automatic"
    lora = post(server, "txt2img", {**SMALL, "prompt": "a cat <lora:evil:1> <hypernet:evilhn:1>"})
    assert lora.status_code == 200
    comments = json.loads(lora.json()["info"])["comments"]
    assert "evil" in comments and "evilhn" in comments
    assert requests.post(server.api("refresh-embeddings"), timeout=60).status_code == 200
    assert "evilemb" not in requests.get(server.api("embeddings"), timeout=60).json()["loaded"]
    for path in sorted((outside.parent / "data").rglob("evil*")):
        encoded = base64.b64encode(path.read_bytes()).decode()
        for image in (encoded, "data:image/png;base64," + encoded):
            assert post(server, "png-info", {"image": image}).status_code == 422
    assert not list(markers.iterdir())


def raw_request(server: Server, method: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    host, port = server.url.rsplit("/", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    connection.putrequest(method, path)
    for key, value in headers.items():
        connection.putheader(key, value)
    connection.endheaders()
    if body:
        connection.send(body)
    reply = connection.getresponse()
    raw = reply.read()
    return reply.status, json.loads(raw) if reply.getheader("content-type", "").startswith("application/json") else {}


def test_oversized_bodies_are_refused_with_413(setup) -> None:
    server, _ = setup
    status, body = raw_request(server, "POST", "/sdapi/v1/png-info", b"",
                               {"Content-Type": "application/json", "Content-Length": str(10**12)})
    assert status == 413 and ERROR_KEYS <= body.keys()

    def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes are counted as they arrive
        yield b'{"image": "'
        for _ in range(52):
            yield b"A" * (1 << 20)
        yield b'"}'

    for route in ("png-info", "txt2img"):
        reply = requests.post(server.api(route), data=chunks(), headers={"Content-Type": "application/json"}, timeout=120)
        assert reply.status_code == 413 and ERROR_KEYS <= reply.json().keys()
    status, _ = raw_request(server, "POST", "/sdapi/v1/txt2img", b"{}",
                            {"Content-Type": "application/json", "Content-Length": "12abc"})
    assert status == 400  # uvicorn refuses it before the app sees it


@pytest.mark.parametrize(("body", "content_type"), [
    (b'{"prompt": "x", ', "application/json"),  # truncated
    (b"\xff\xfe\x00{", "application/json"),  # not UTF-8
    (b'{"prompt": "x"}', "text/plain"),  # wrong content type
    (b"prompt=x&steps=2", "application/x-www-form-urlencoded"),
    (b"[" * 100 + b"]" * 100, "application/json"),  # too deep for the guard
    (b"[" * 200_000 + b"]" * 200_000, "application/json"),  # deeper than Python's recursion limit
    (b'{"override_settings": {"a": ' + b"[" * 60 + b"]" * 60 + b"}, \"steps\": NaN}", "application/json"),
    (b'{"cfg_scale": Infinity, "steps": 2, "width": 64, "height": 64}', "application/json"),
    (b'{"steps": 1e400}', "application/json"),
    (b'{"seed": 123456789012345678901234567890, "steps": 2}', "application/json"),
    (b'"just a string"', "application/json"),
    (b"null", "application/json"),
])
def test_malformed_bodies_get_a1111_error_json(setup, body: bytes, content_type: str) -> None:
    server, _ = setup
    reply = requests.post(server.api("txt2img"), data=body, headers={"Content-Type": content_type}, timeout=120)
    assert 400 <= reply.status_code < 500, reply.text[:300]
    assert ERROR_KEYS <= reply.json().keys()


def test_settings_that_cannot_be_stored_are_refused_and_the_server_keeps_serving(setup) -> None:
    server, _ = setup
    reply = requests.post(server.api("options"), data=b'{"a1111_only": NaN}',
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == 422
    assert requests.get(server.api("options"), timeout=30).status_code == 200
    reply = post(server, "txt2img", SMALL)
    assert reply.status_code == 200
    text = infotext.read_from_image(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))))
    assert "Model: tiny" in text
    assert np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0])))).shape == (64, 64, 3)
    assert os.path.getsize(server.log) > 0
