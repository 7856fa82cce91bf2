"""Access flags on a live server: --listen/--port (checked on the listening socket), --gradio-auth over HTTP,
--cors-allow-origins preflight, credentials on A1111's /internal routes and hidden from /cmd-flags."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from conftest import install_checkpoint
from test_api_server import listening, port_of, start_server, stop_server

pytestmark = pytest.mark.slow


def test_listen_gradio_auth_cors_and_internal_routes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    install_checkpoint(tiny_checkpoint, tmp_path / "data" / "models" / "Stable-diffusion")
    server = start_server(tmp_path / "data", "--listen", "--api", "--gradio-auth", "alice:pw,bob:x:y",
                          "--cors-allow-origins", "http://good.example,http://also.example")
    try:
        assert listening(server) == {("0.0.0.0", port_of(server))}  # --listen: every interface, on --port

        # --gradio-auth: the UI's API refuses until the login form sets the session cookie.
        assert requests.get(f"{server.url}/config", timeout=30).status_code == 401
        session = requests.Session()
        assert session.post(f"{server.url}/login", data={"username": "alice", "password": "nope"},
                            timeout=30).status_code == 400
        assert session.get(f"{server.url}/config", timeout=30).status_code == 401
        login = session.post(f"{server.url}/login", data={"username": "bob", "password": "x:y"}, timeout=30)
        assert login.status_code == 200 and login.json() == {"success": True}
        assert session.get(f"{server.url}/config", timeout=30).status_code == 200

        # A1111's /sdapi/v1 is not behind --gradio-auth (only --api-auth protects it) ...
        assert requests.get(f"{server.url}/sdapi/v1/sd-models", timeout=30).status_code == 200
        # ... so /cmd-flags, open to anyone here, shows the flags but never the UI's passwords.
        flags = requests.get(f"{server.url}/sdapi/v1/cmd-flags", timeout=30)
        assert flags.json()["gradio_auth"] == "<hidden>" and flags.json()["api_auth"] is None
        assert flags.json()["listen"] is True and flags.json()["port"] == port_of(server)
        assert flags.json()["cors_allow_origins"] == "http://good.example,http://also.example"
        assert "x:y" not in flags.text and "alice:pw" not in flags.text
        # ... but /internal shows jobs and previews: it takes the UI's credentials as HTTP Basic.
        internal = f"{server.url}/internal/progress"
        refused = requests.post(internal, json={"id_task": "x"}, timeout=30)
        assert refused.status_code == 401 and {"error", "detail", "body", "errors"} <= refused.json().keys()
        assert requests.post(internal, json={"id_task": "x"}, auth=("alice", "pw"), timeout=30).json()["textinfo"] \
            == "Waiting..."
        assert requests.get(f"{server.url}/internal/pending-tasks", auth=("bob", "x:y"), timeout=30).json() == {
            "size": 0, "tasks": []}

        # --cors-allow-origins: a preflight from an allowed origin is answered for it, others are not.
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
        allowed = requests.options(f"{server.url}/sdapi/v1/txt2img", headers={"Origin": "http://also.example", **preflight},
                                   timeout=30)
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://also.example"
        assert "POST" in allowed.headers["access-control-allow-methods"]
        other = requests.options(f"{server.url}/sdapi/v1/txt2img", headers={"Origin": "http://evil.example", **preflight},
                                 timeout=30)
        assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
        simple = requests.get(f"{server.url}/sdapi/v1/samplers", headers={"Origin": "http://good.example"}, timeout=30)
        assert simple.headers["access-control-allow-origin"] == "http://good.example"
        too_big = requests.post(f"{server.url}/sdapi/v1/png-info", headers={"Origin": "http://good.example"},
                                data=b"x" * (51 * 1024 * 1024), timeout=60)  # refusals carry CORS headers too
        assert too_big.status_code == 413 and too_big.headers["access-control-allow-origin"] == "http://good.example"
    finally:
        stop_server(server)
