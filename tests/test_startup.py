"""Start-up checkpoint choice: A1111's SD1.5 download offer, and the demo-model fallback when it cannot work."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import free_port, install_checkpoint
from modules import cmd_args, initialize


class _Server:
    """A real HTTP server on localhost that serves one file and counts requests."""

    def __init__(self, payload: bytes) -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/v1-5-pruned-emaonly.safetensors"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@pytest.fixture
def server(tiny_checkpoint: Path) -> Iterator[_Server]:
    s = _Server(tiny_checkpoint.read_bytes())
    yield s
    s.close()


def _state(tmp_path: Path, *flags: str):
    return initialize.build_state(cmd_args.parse_args(["--data-dir", str(tmp_path / "data"), *flags]))


def test_unreachable_download_falls_back_to_the_demo_with_a_notice(tmp_path: Path) -> None:
    state = _state(tmp_path)
    closed = f"http://127.0.0.1:{free_port()}/v1-5-pruned-emaonly.safetensors"
    info = initialize.choose_startup_checkpoint(state, download_url=closed)
    assert info.name == "demo-shapes-sd15.safetensors"
    assert info.path.with_suffix(".yaml").exists()
    assert len(state.notices) == 1 and "could not be downloaded" in state.notices[0]
    assert (state.paths.lora_dir / "demo-stars.safetensors").is_file() and "demo-stars" in state.notices[0]
    assert {n["name"] for n in state.libraries["lora"].api_list()} >= {"demo-stars"}  # listed without a refresh
    assert not list(state.paths.ckpt_dir.glob("*.part"))  # no partial download left behind


def test_no_download_flag_never_asks_the_network(tmp_path: Path, server: _Server) -> None:
    state = _state(tmp_path, "--no-download-sd-model")
    info = initialize.choose_startup_checkpoint(state, download_url=server.url)
    assert info.name == "demo-shapes-sd15.safetensors" and server.hits == 0
    assert "--no-download-sd-model" in state.notices[0]


def test_download_is_used_when_it_works_and_is_verified(tmp_path: Path, server: _Server, tiny_checkpoint: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    expected = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:10]
    monkeypatch.setattr(initialize, "SD15_SHORTHASH", expected)  # our server serves the tiny model, not SD1.5
    state = _state(tmp_path)
    info = initialize.choose_startup_checkpoint(state, download_url=server.url)
    assert info.name == "v1-5-pruned-emaonly.safetensors" and server.hits == 1 and not state.notices
    assert (state.paths.ckpt_dir / info.name).read_bytes() == tiny_checkpoint.read_bytes()


def test_download_with_the_wrong_hash_is_discarded(tmp_path: Path, server: _Server) -> None:
    state = _state(tmp_path)
    info = initialize.choose_startup_checkpoint(state, download_url=server.url)  # tiny bytes ≠ SD1.5's hash
    assert info.name == "demo-shapes-sd15.safetensors"
    assert "expected 6ce0161689" in state.notices[0]
    assert not (state.paths.ckpt_dir / "v1-5-pruned-emaonly.safetensors").exists()


def test_existing_checkpoint_wins_and_demo_flag_forces_the_demo(tmp_path: Path, tiny_checkpoint: Path,
                                                              server: _Server) -> None:
    install_checkpoint(tiny_checkpoint, tmp_path / "data" / "models" / "Stable-diffusion", "mine.safetensors")
    assert initialize.choose_startup_checkpoint(_state(tmp_path), server.url).name == "mine.safetensors"
    demo = _state(tmp_path, "--demo")
    assert initialize.choose_startup_checkpoint(demo, server.url).name == "demo-shapes-sd15.safetensors"
    assert server.hits == 0 and "--demo" in demo.notices[0]


def test_ckpt_flag_outside_the_folder(tmp_path: Path, tiny_checkpoint: Path) -> None:
    elsewhere = install_checkpoint(tiny_checkpoint, tmp_path / "elsewhere", "outside.safetensors")
    state = _state(tmp_path, "--ckpt", str(elsewhere))
    info = initialize.choose_startup_checkpoint(state)
    assert info.path == elsewhere and info.name == "outside.safetensors"


def test_demo_generator_is_deterministic_across_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    from conftest import REPO
    from modules import demo_model

    a = demo_model.write_checkpoint(tmp_path / "a" / "m.safetensors")
    b = tmp_path / "b" / "m.safetensors"
    code = f"from pathlib import Path; from modules import demo_model; demo_model.write_checkpoint(Path({str(b)!r}))"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True)
    assert a.read_bytes() == b.read_bytes()
    assert a.stat().st_size < 20_000_000
