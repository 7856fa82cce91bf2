"""A live webui.py (subprocess, real HTTP) with LoRA, hypernetwork, embedding and styles files, driven as A1111
clients drive it: the unmodified PyPI client webuiapi, concurrent clients from threads, and progress polling."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
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
SMALL = {"steps": 3, "width": 64, "height": 64, "sampler_name": "Euler a"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Server]:
    import torch
    from safetensors.torch import save_file

    from modules import model_loading
    from modules.hypernetworks.hypernetwork import Hypernetwork
    from test_lora import kohya_state_dict

    data = tmp_path_factory.mktemp("webui-compat")
    folder = data / "models" / "Stable-diffusion"
    install_checkpoint(tiny_checkpoint, folder)
    demo_model.write_checkpoint(folder / "second.safetensors", seed=5)
    pipe = model_loading.build_pipeline(model_loading.read_state_dict(tiny_checkpoint),
                                        model_loading.read_sidecar_config(tiny_checkpoint), "tiny")
    (data / "models" / "Lora").mkdir(parents=True)
    save_file(kohya_state_dict(pipe, seed=1), str(data / "models" / "Lora" / "inkA.safetensors"),
              metadata={"ss_output_name": "ink_style"})
    save_file(kohya_state_dict(pipe, seed=2), str(data / "models" / "Lora" / "paperB.safetensors"))
    del pipe
    (data / "models" / "hypernetworks").mkdir(parents=True)
    Hypernetwork.create("glow", [32]).save(data / "models" / "hypernetworks" / "glow.pt")
    (data / "embeddings").mkdir()
    torch.save({"string_to_param": {"*": torch.randn(2, 32)}, "step": 3}, data / "embeddings" / "shiny.pt")
    (data / "styles.csv").write_text('name,prompt,negative_prompt\ncinema,"cinematic still, {prompt}",blurry\n'
                                     'sharp,"sharp focus",\n', encoding="utf-8")
    server = start_server(data, "--api", "--nowebui", "--ckpt", str(folder / "tiny.safetensors"))
    yield server
    stop_server(server)


def post(server: Server, route: str, payload: dict, **kwargs) -> requests.Response:
    return requests.post(server.api(route), json=payload, timeout=600, **kwargs)


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")).astype(np.int16)


def image_text(b64: str) -> str:
    return infotext.read_from_image(Image.open(io.BytesIO(base64.b64decode(b64)))) or ""


def test_webuiapi_client_against_the_live_server(server: Server) -> None:
    import webuiapi

    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))
    result = client.txt2img(prompt="a cat <lora:ink_style:0.8>", seed=11, **SMALL)
    text = result.info["infotexts"][0]
    assert "<lora:ink_style:0.8>" in text and 'Lora hashes: "ink_style: ' in text
    assert [(x["name"], x["alias"]) for x in client.get_loras()] == [("inkA", "ink_style"), ("paperB", "paperB")]
    assert [h["name"] for h in client.get_hypernetworks()] == ["glow"]
    assert client.get_embeddings()["loaded"]["shiny"]["vectors"] == 2
    assert {m["model_name"] for m in client.get_sd_models()} == {"tiny", "second"}
    client.refresh_checkpoints()
    client.util_set_model("second")
    assert client.util_get_current_model().startswith("second.safetensors")
    client.util_set_model("tiny")
    assert client.get_prompt_styles() == [{"name": "cinema", "prompt": "cinematic still, {prompt}", "negative_prompt": "blurry"},
                                          {"name": "sharp", "prompt": "sharp focus", "negative_prompt": ""}]
    info = client.png_info(result.image)  # webuiapi sends a data: URL
    assert info.info == text and info.json["parameters"]["Prompt"] == "a cat <lora:ink_style:0.8>"
    assert client.interrupt() is None and client.skip() is None  # nothing running: no effect, no error
    assert client.get_memory()["cuda"] == {"error": "unavailable"} or "system" in client.get_memory()["cuda"]
    assert [u["name"] for u in client.get_upscalers()] == ["None", "Lanczos", "Nearest"]
    scripts = ["x/y/z plot", "prompts from file or textbox"]
    assert client.get_scripts() == {"txt2img": scripts, "img2img": scripts}


def test_memory_extensions_and_empty_lists(server: Server) -> None:
    memory = requests.get(server.api("memory"), timeout=30).json()
    assert memory["ram"]["used"] > 0 and memory["ram"]["total"] >= memory["ram"]["used"]
    assert set(memory["cuda"]) in ({"error"}, {"system", "active", "allocated", "reserved", "inactive", "events"})
    assert requests.get(server.api("extensions"), timeout=30).json() == [
        {"name": "Lora", "remote": "", "branch": "", "commit_hash": "", "version": "", "commit_date": 0, "enabled": True}]
    for route in ("face-restorers", "realesrgan-models"):
        assert requests.get(server.api(route), timeout=30).json() == [], route


def test_every_listed_sampler_and_scheduler_generates(server: Server) -> None:
    """What /samplers and /schedulers list is what txt2img accepts (clients fill their menus from them)."""
    samplers = requests.get(server.api("samplers"), timeout=30).json()
    schedulers = requests.get(server.api("schedulers"), timeout=30).json()
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ SDE"} <= {s["name"] for s in samplers}
    assert all(set(s) == {"name", "aliases", "options"} for s in samplers)
    assert {"automatic": "Automatic", "karras": "Karras", "exponential": "Exponential"}.items() <= \
        {s["name"]: s["label"] for s in schedulers}.items()
    assert all(set(s) == {"name", "label", "aliases", "default_rho", "need_inner_model"} for s in schedulers)
    base = {"prompt": "a pond", "steps": 3, "width": 64, "height": 64, "seed": 8, "send_images": False}
    for sampler in samplers:
        reply = post(server, "txt2img", {**base, "sampler_name": sampler["name"]})
        assert reply.status_code == 200 and json.loads(reply.json()["info"])["sampler_name"] == sampler["name"], \
            (sampler["name"], reply.text)
        assert reply.json()["images"] is None  # send_images: false
    for scheduler in schedulers:
        reply = post(server, "txt2img", {**base, "sampler_name": "Euler", "scheduler": scheduler["label"]})
        assert reply.status_code == 200, (scheduler["name"], reply.text)
        schedule = json.loads(reply.json()["info"])["extra_generation_params"]["Schedule type"]
        assert schedule == scheduler["label"] or scheduler["name"] == "automatic", (scheduler, schedule)


def test_alwayson_scripts_are_reported_unknown_scripts_refused_and_cmd_flags_and_docs(server: Server) -> None:
    payload = {**SMALL, "prompt": "a kite", "seed": 9,
               "alwayson_scripts": {"ADetailer": {"args": [True]}, "ControlNet": {"args": []}}}
    body = post(server, "txt2img", payload).json()
    comments = json.loads(body["info"])["comments"]
    assert "scripts are not supported: ADetailer, ControlNet" in comments
    plain = post(server, "txt2img", {**SMALL, "prompt": "a kite", "seed": 9}).json()
    assert json.loads(plain["info"])["comments"] == ""
    assert np.array_equal(pixels(body["images"][0]), pixels(plain["images"][0]))  # the image is made all the same
    refused = post(server, "txt2img", {**SMALL, "script_name": "prompt matrix", "script_args": []})
    assert refused.status_code == 422 and "'prompt matrix' is not available here" in refused.json()["detail"]
    assert "prompts from file or textbox" in refused.json()["detail"]  # what is there is listed
    flags = requests.get(server.api("cmd-flags"), timeout=30).json()
    assert flags["api"] is True and flags["nowebui"] is True and flags["data_dir"] == str(server.data)
    assert flags["api_auth"] is None and flags["gradio_auth"] is None
    assert "/sdapi/v1/txt2img" in requests.get(f"{server.url}/openapi.json", timeout=30).json()["paths"]
    docs = requests.get(f"{server.url}/docs", timeout=30)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_override_settings_restore_afterwards(server: Server) -> None:
    def clip_skip() -> int:
        return requests.get(server.api("options"), timeout=30).json()["CLIP_stop_at_last_layers"]

    payload = {**SMALL, "prompt": "a lamp", "seed": 12, "override_settings": {"CLIP_stop_at_last_layers": 2}}
    assert clip_skip() == 1
    kept = post(server, "txt2img", payload).json()  # A1111's default: restored afterwards
    assert "Clip skip: 2" in image_text(kept["images"][0]) and clip_skip() == 1
    try:
        changed = post(server, "txt2img", {**payload, "override_settings_restore_afterwards": False}).json()
        assert "Clip skip: 2" in image_text(changed["images"][0]) and clip_skip() == 2  # the setting stays
        assert np.array_equal(pixels(changed["images"][0]), pixels(kept["images"][0]))
        after = post(server, "txt2img", {**SMALL, "prompt": "a lamp", "seed": 12}).json()
        assert "Clip skip: 2" in image_text(after["images"][0])  # later jobs use it
    finally:
        assert requests.post(server.api("options"), json={"CLIP_stop_at_last_layers": 1}, timeout=60).ok
    assert clip_skip() == 1


def test_styles_are_applied_first_and_show_in_the_infotext(server: Server) -> None:
    body = post(server, "txt2img", {**SMALL, "prompt": "a cat", "negative_prompt": "ugly", "seed": 3,
                                    "styles": ["cinema", "sharp"]}).json()
    text = image_text(body["images"][0])
    assert text.startswith("cinematic still, a cat, sharp focus\nNegative prompt: ugly, blurry\n")
    info = json.loads(body["info"])
    assert info["prompt"] == "a cat" and info["styles"] == ["cinema", "sharp"]
    assert info["all_prompts"] == ["cinematic still, a cat, sharp focus"]
    missing = post(server, "txt2img", {**SMALL, "prompt": "x", "styles": ["nope"]})
    assert missing.status_code == 404 and "'cinema'" in missing.json()["detail"]


def test_infotext_field_fills_only_what_the_request_did_not_set(server: Server) -> None:
    pasted = "a dog <lora:paperB:0.5>\nNegative prompt: rain\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 77, " \
             "Size: 64x64, Clip skip: 2, Model hash: 0123456789"
    body = post(server, "txt2img", {"infotext": pasted, "seed": 5, "steps": 3}).json()
    fields = infotext.parse(image_text(body["images"][0]))
    assert fields["Prompt"] == "a dog <lora:paperB:0.5>" and fields["Negative prompt"] == "rain"
    assert fields["Seed"] == "5" and fields["Steps"] == "3"  # set by the request: kept
    assert fields["Sampler"] == "Euler" and fields["CFG scale"] == "5.0" and fields["Size-1"] == "64"
    assert fields["Clip skip"] == "2"  # an override setting from the infotext
    assert body["parameters"]["override_settings"] == {"CLIP_stop_at_last_layers": 2}
    assert requests.get(server.api("options"), timeout=30).json()["CLIP_stop_at_last_layers"] == 1  # restored


def test_png_info_formats_and_lora_alias_fixup(server: Server) -> None:
    made = post(server, "txt2img", {**SMALL, "prompt": "cat <lora:paperB:1>", "seed": 4}).json()
    text = image_text(made["images"][0])
    shorthash = text.split('Lora hashes: "paperB: ')[1][:12]
    for image in (made["images"][0], "data:image/png;base64," + made["images"][0]):
        body = post(server, "png-info", {"image": image}).json()
        assert body["info"] == text and body["parameters"]["Seed"] == "4" and body["items"] == {}

    # A file renamed since the image was made: the hash finds the local network (A1111's paste hook).
    renamed = f'old <lora:oldname:0.5>\nSteps: 3, Sampler: Euler, Seed: 1, Lora hashes: "oldname: {shorthash}"'
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16)).save(jpeg, format="JPEG", exif=infotext.add_to_exif(renamed))
    body = post(server, "png-info", {"image": base64.b64encode(jpeg.getvalue()).decode()}).json()
    assert body["info"] == renamed and body["parameters"]["Prompt"] == "old <lora:paperB:0.5>"

    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    body = post(server, "png-info", {"image": base64.b64encode(plain.getvalue()).decode()}).json()
    assert body["info"] == "" and body["parameters"]["Prompt"] == ""
    for bad in ("", "!!!", base64.b64encode(b"not an image").decode(), "http://127.0.0.1:1/x.png"):
        reply = post(server, "png-info", {"image": bad})
        assert reply.status_code == 422 and {"error", "detail", "body", "errors"} <= reply.json().keys(), bad


def test_concurrent_clients_with_different_loras_each_get_their_solo_result(server: Server) -> None:
    requests_ = {
        "ink": {**SMALL, "prompt": "a house <lora:inkA:1>", "seed": 21},
        "paper": {**SMALL, "prompt": "a house <lora:paperB:0.7>", "seed": 22},
        "both": {**SMALL, "prompt": "a house <lora:inkA:0.5> <lora:paperB:0.5>", "seed": 23},
        "none": {**SMALL, "prompt": "a house", "seed": 21},
    }
    solo = {name: pixels(post(server, "txt2img", payload).json()["images"][0]) for name, payload in requests_.items()}
    assert np.abs(solo["ink"] - solo["none"]).max() > 0  # the LoRA does change the image

    order = ["ink", "paper", "none", "both", "paper", "ink", "both", "none"]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(order))

    def client(index: int, name: str) -> None:
        try:
            start.wait()
            reply = post(server, "txt2img", requests_[name])
            results[index] = pixels(reply.json()["images"][0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i, n)) for i, n in enumerate(order)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors
    for index, name in enumerate(order):
        assert np.array_equal(results[index], solo[name]), f"request {index} ({name}) differs from its solo run"


def internal_progress(server: Server, task: str, preview_id: int = -1) -> dict:
    return requests.post(f"{server.url}/internal/progress", json={"id_task": task, "id_live_preview": preview_id},
                         timeout=30).json()


def wait_for(condition, timeout: float = 180.0, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_queue_positions_live_preview_and_stop_only_the_running_job(server: Server, action: str) -> None:
    waiting_payload = {**SMALL, "prompt": "a queued tree", "seed": 31, "force_task_id": f"waiting-{action}"}
    solo = pixels(post(server, "txt2img", {k: v for k, v in waiting_payload.items() if k != "force_task_id"})
                  .json()["images"][0])
    replies: dict[str, requests.Response] = {}
    long_id = f"long-{action}"
    long_job = threading.Thread(target=lambda: replies.update(long=post(
        server, "txt2img", {**SMALL, "prompt": "a long job", "seed": 30, "steps": 1000, "force_task_id": long_id})))
    long_job.start()
    wait_for(lambda: internal_progress(server, long_id)["active"], what="the long job to run")
    queued = threading.Thread(target=lambda: replies.update(waiting=post(server, "txt2img", waiting_payload)))
    queued.start()

    place = wait_for(lambda: (p := internal_progress(server, f"waiting-{action}"))["queued"] and p, what="queued")
    assert place["textinfo"] == "In queue: 1/1" and not place["active"]
    assert requests.get(f"{server.url}/internal/pending-tasks", timeout=30).json() == {
        "size": 1, "tasks": [f"waiting-{action}"]}
    duplicate = post(server, "txt2img", {**SMALL, "prompt": "x", "force_task_id": f"waiting-{action}"})
    assert duplicate.status_code == 409

    progress = wait_for(lambda: (p := requests.get(server.api("progress"), timeout=30).json())["current_image"] and p,
                        what="a live preview")  # every show_progress_every_n_steps (10) steps
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.format == "PNG" and preview.size == (8, 8)  # the latent's size: 64 / 8
    assert progress["state"]["job"] == "txt2img" and 0 < progress["progress"] < 1
    assert requests.get(server.api("progress"), params={"skip_current_image": "true"},
                        timeout=30).json()["current_image"] is None
    live = internal_progress(server, long_id)
    assert live["active"] and live["live_preview"].startswith("data:image/png;base64,") and live["id_live_preview"] >= 1
    again = internal_progress(server, long_id, live["id_live_preview"])
    assert again["live_preview"] is None or again["id_live_preview"] > live["id_live_preview"]

    assert requests.post(server.api(action), timeout=30).status_code == 200
    long_job.join(timeout=300)
    queued.join(timeout=300)
    assert replies["long"].status_code == 200 and replies["waiting"].status_code == 200
    assert np.array_equal(pixels(replies["waiting"].json()["images"][0]), solo)  # the waiting job was untouched
    done = internal_progress(server, long_id)
    assert done["completed"] and not done["active"] and not done["queued"]


def test_seed_resize_fields_are_used(server: Server) -> None:
    """``seed_resize_from_w``/``_h`` (A1111's "Resize seed from") change the noise, are recorded in the infotext
    and in ``info``, and are not reported as unsupported; -1 (A1111's API default) is off."""
    base = {**SMALL, "prompt": "a kite", "seed": 9}
    off = post(server, "txt2img", {**base, "seed_resize_from_w": -1, "seed_resize_from_h": -1}).json()
    on = post(server, "txt2img", {**base, "seed_resize_from_w": 128, "seed_resize_from_h": 96}).json()
    info = json.loads(on["info"])
    assert info["comments"] == "" and (info["seed_resize_from_w"], info["seed_resize_from_h"]) == (128, 96)
    assert "Seed resize from: 128x96" in info["infotexts"][0]
    assert "Seed resize from" not in json.loads(off["info"])["infotexts"][0]
    assert not np.array_equal(pixels(on["images"][0]), pixels(off["images"][0]))


def test_hires_fix_through_the_webuiapi_client_and_infotext_replay(server: Server) -> None:
    """Hires. fix over the API as the PyPI client sends it: the image comes out at the hires size, with A1111's
    infotext fields and ``info``; the infotext alone reproduces the same pixels; a LoRA named only in the hires
    prompt changes the second pass and its hash joins the infotext."""
    import webuiapi

    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))
    result = client.txt2img(prompt="a lighthouse", seed=21, enable_hr=True, hr_scale=2,
                            hr_upscaler=webuiapi.HiResUpscaler.Latent, denoising_strength=0.55, **SMALL)
    assert result.image.size == (128, 128)
    info, text = result.info, result.info["infotexts"][0]
    assert "hr" not in info["comments"] and "hires" not in info["comments"]  # (webuiapi also sends eta, s_churn...)
    assert info["denoising_strength"] == 0.55 and (info["width"], info["height"]) == (64, 64)
    # hr_scale is a float field (as A1111's), so the API's 2 is written 2.0; the page's 2 stays 2
    assert "Size: 64x64" in text and "Denoising strength: 0.55, Hires upscale: 2.0, Hires upscaler: Latent" in text
    first_pass = client.txt2img(prompt="a lighthouse", seed=21, **SMALL).image
    assert first_pass.size == (64, 64)

    replay = post(server, "txt2img", {"infotext": text}).json()
    assert json.loads(replay["info"])["infotexts"][0] == text
    assert np.array_equal(pixels(replay["images"][0]), np.asarray(result.image.convert("RGB")).astype(np.int16))

    with_lora = post(server, "txt2img", {**SMALL, "prompt": "a lighthouse", "seed": 21, "enable_hr": True,
                                         "hr_scale": 2, "denoising_strength": 0.55,
                                         "hr_prompt": "a lighthouse <lora:ink_style:1>"}).json()
    lora_info = json.loads(with_lora["info"])
    lora_text = lora_info["infotexts"][0]
    assert 'Hires prompt: "a lighthouse <lora:ink_style:1>"' in lora_text and 'Lora hashes: "ink_style: ' in lora_text
    extra = lora_info["extra_generation_params"]  # A1111's dict of the infotext's extra fields
    assert extra["Hires prompt"] == "a lighthouse <lora:ink_style:1>" and extra["Lora hashes"].startswith("ink_style: ")
    assert extra["Denoising strength"] == 0.55 and extra["Hires upscale"] == 2.0 and "Schedule type" in extra
    assert np.abs(pixels(with_lora["images"][0]) - np.asarray(result.image.convert("RGB")).astype(np.int16)).max() > 10


def test_hires_sizes_legacy_first_pass_and_hires_checkpoint(server: Server) -> None:
    """``hr_resize_x/y`` crop to the asked size; the old API's ``firstphase_width/height`` is the first pass;
    ``hr_checkpoint_name`` runs the second pass on that checkpoint (recorded as A1111's short title), after which
    the job's checkpoint is current again; an unknown one is refused before the job runs."""
    both = post(server, "txt2img", {**SMALL, "width": 64, "height": 96, "enable_hr": True, "hr_resize_x": 128,
                                    "hr_resize_y": 128, "hr_upscaler": "Nearest", "hr_second_pass_steps": 2}).json()
    assert Image.open(io.BytesIO(base64.b64decode(both["images"][0]))).size == (128, 128)
    text = json.loads(both["info"])["infotexts"][0]
    assert "Hires resize: 128x128, Hires steps: 2, Hires upscaler: Nearest" in text and "Size: 64x96" in text
    job = {**SMALL, "prompt": "a dune", "seed": 4, "width": 256, "height": 256, "enable_hr": True,
           "firstphase_width": 64, "firstphase_height": 64}
    legacy = post(server, "txt2img", {**job, "hr_checkpoint_name": "second"}).json()
    info = json.loads(legacy["info"])
    assert Image.open(io.BytesIO(base64.b64decode(legacy["images"][0]))).size == (128, 128)
    second = next(m for m in requests.get(server.api("sd-models"), timeout=30).json() if m["model_name"] == "second")
    assert f"Hires checkpoint: second [{second['hash']}]" in info["infotexts"][0], info["infotexts"][0]
    assert "Size: 64x64" in info["infotexts"][0] and "Model: tiny" in info["infotexts"][0]
    assert requests.get(server.api("options"), timeout=30).json()["sd_model_checkpoint"].startswith("tiny")
    same = post(server, "txt2img", job).json()
    assert np.abs(pixels(same["images"][0]) - pixels(legacy["images"][0])).max() > 10  # another UNet, other pixels
    replay = post(server, "txt2img", {"infotext": info["infotexts"][0]}).json()
    assert np.array_equal(pixels(replay["images"][0]), pixels(legacy["images"][0]))
    unknown = post(server, "txt2img", {**job, "hr_checkpoint_name": "ghost"})
    assert unknown.status_code == 404 and "ghost" in unknown.json()["detail"]
    modes = requests.get(server.api("latent-upscale-modes"), timeout=30).json()
    assert [m["name"] for m in modes][:2] == ["Latent", "Latent (antialiased)"] and len(modes) == 6


def test_unload_and_reload_checkpoint(server: Server) -> None:
    """A1111's POST /unload-checkpoint and /reload-checkpoint answer ``{}``; the model waits in RAM in between (the
    server says so), the next job brings it back by itself, and images — a LoRA's included — do not change."""
    payload = {**SMALL, "prompt": "a house <lora:inkA:0.9>", "seed": 41}
    before = pixels(post(server, "txt2img", payload).json()["images"][0])
    log_start = len(server.log.read_text(errors="replace"))
    for route in ("unload-checkpoint", "unload-checkpoint"):
        reply = post(server, route, {})
        assert reply.status_code == 200 and reply.json() == {}, reply.text
    assert server.log.read_text(errors="replace")[log_start:].count("Checkpoint unloaded to RAM: tiny") == 1
    assert np.array_equal(pixels(post(server, "txt2img", payload).json()["images"][0]), before)
    log_start = len(server.log.read_text(errors="replace"))
    post(server, "unload-checkpoint", {})
    reply = post(server, "reload-checkpoint", {})
    assert reply.status_code == 200 and reply.json() == {}, reply.text
    assert "Checkpoint back on cpu: tiny" in server.log.read_text(errors="replace")[log_start:]
    assert np.array_equal(pixels(post(server, "txt2img", payload).json()["images"][0]), before)


def encoded_picture(width: int = 64, height: int = 64, fmt: str = "PNG") -> str:
    from test_img2img import picture

    buffer = io.BytesIO()
    picture(width, height).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_img2img_through_the_webuiapi_client_and_infotext_replay(server: Server) -> None:
    """The PyPI client's ``img2img`` (it sends PIL pictures as base64 and A1111's img2img fields): the image starts
    from the picture, is reproduced by its infotext alone (with a LoRA and a noise multiplier), and the response
    leaves the init pictures out unless asked."""
    import webuiapi

    from test_img2img import picture

    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]), sampler="Euler a", steps=6)
    result = client.img2img(images=[picture()], prompt="a house <lora:inkA:0.8>", seed=77, width=64, height=64,
                            denoising_strength=0.6, cfg_scale=6, resize_mode=1)
    text = result.info["infotexts"][0]
    assert text.startswith("a house <lora:inkA:0.8>\nSteps: 6, Sampler: Euler a,") and "Denoising strength: 0.6" in text
    assert 'Lora hashes: "inkA: ' in text and result.image.size == (64, 64)
    assert result.parameters["init_images"] is None  # not sent back unless include_init_images

    txt2img = client.txt2img(prompt="a house <lora:inkA:0.8>", seed=77, width=64, height=64, cfg_scale=6)
    assert np.abs(pixels(encode_b64(result.image)) - pixels(encode_b64(txt2img.image))).mean() > 5

    replay = post(server, "img2img", {"init_images": [encoded_picture()], "infotext": text,
                                      "include_init_images": True})
    assert replay.status_code == 200, replay.text
    assert np.array_equal(pixels(replay.json()["images"][0]), pixels(encode_b64(result.image)))
    assert replay.json()["parameters"]["init_images"] == [encoded_picture()]

    quieter = post(server, "img2img", {**SMALL, "init_images": [encoded_picture()], "initial_noise_multiplier": 0.5,
                                       "denoising_strength": 0.5, "seed": 5}).json()
    quieter_text = image_text(quieter["images"][0])
    assert "Noise multiplier: 0.5" in quieter_text
    again = post(server, "img2img", {"init_images": [encoded_picture()], "infotext": quieter_text}).json()
    assert np.array_equal(pixels(again["images"][0]), pixels(quieter["images"][0]))


def encode_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.mark.parametrize(("payload", "fragment"), [
    ({}, "init_images is empty"),
    ({"init_images": ["bm90IGFuIGltYWdl"]}, "init_images[0]: image is not a picture"),
    ({"init_images": [""]}, "init_images[0] is empty"),
    ({"init_images": ["TRUNCATED"]}, "init_images[0]: the picture cannot be decoded"),
    ({"init_images": ["OK"], "mask": "TRUNCATED"}, "mask: the picture cannot be decoded"),
    ({"init_images": ["OK"], "mask": "OK", "latent_mask": "OK"}, "latent_mask is not supported"),
    ({"init_images": ["OK"], "mask": "OK", "inpainting_fill": 5}, "inpainting_fill must be from 0 to 3"),
    ({"init_images": ["OK"], "mask": "OK", "infotext": "x\nSteps: 4, Sampler: Euler, Size: 64x64, Masked content: "
      "bogus"}, "Masked content must be one of fill, original"),
    ({"init_images": ["OK"], "resize_mode": 7}, "resize_mode must be from 0 to 3"),
    ({"init_images": ["OK"], "denoising_strength": 1.5}, "denoising_strength must be from 0 to 1"),
    ({"init_images": ["OK", "OK"], "batch_size": 1}, "2 init images were sent for a batch of 1"),
])
def test_img2img_bad_input_is_refused_and_the_server_keeps_serving(server: Server, payload: dict,
                                                                    fragment: str) -> None:
    good = encoded_picture()
    truncated = base64.b64encode(base64.b64decode(good)[:200]).decode("ascii")
    swap = {"OK": good, "TRUNCATED": truncated}
    body = {**SMALL, **{k: ([swap.get(x, x) for x in v] if isinstance(v, list) else swap.get(v, v))
                        for k, v in payload.items()}}
    reply = post(server, "img2img", body)
    assert reply.status_code == 422 and fragment in reply.text, reply.text
    assert post(server, "img2img", {**SMALL, "init_images": [good]}).status_code == 200


def test_inpainting_through_the_webuiapi_client(server: Server) -> None:
    """The PyPI client's ``img2img`` with ``mask_image`` (it sends A1111's inpainting fields): outside the mask the
    picture comes back to the pixel, inside it is redrawn; the infotext has A1111's inpainting fields and
    reproduces the image with the same picture and mask."""
    import webuiapi
    from PIL import ImageDraw

    from test_img2img import picture

    source, mask = picture(), Image.new("L", (64, 64))
    ImageDraw.Draw(mask).rectangle((0, 0, 27, 63), fill=255)  # the left part, the blur stays inside x < 40
    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]), sampler="Euler a", steps=6)
    result = client.img2img(images=[source], mask_image=mask, prompt="a house", seed=8, width=64, height=64,
                            denoising_strength=0.9, inpainting_fill=1, inpaint_full_res=False, mask_blur=4)
    ours, original = np.asarray(result.image.convert("RGB")).astype(np.int16), np.asarray(source).astype(np.int16)
    assert np.array_equal(ours[:, 40:], original[:, 40:])
    assert np.abs(ours[:, :20] - original[:, :20]).mean() > 10
    text = result.info["infotexts"][0]
    assert "Denoising strength: 0.9, Mask blur: 4," in text and "Inpaint area" not in text
    # the infotext alone gives the inpainting settings back (A1111's defaults where it names none)
    replay = post(server, "img2img", {"init_images": [encode_b64(source)], "mask": encode_b64(mask), "infotext": text})
    assert np.array_equal(pixels(replay.json()["images"][0]), pixels(encode_b64(result.image)))
    boxed = post(server, "img2img", {**SMALL, "init_images": [encode_b64(source)], "mask": encode_b64(mask),
                                     "inpaint_full_res": True, "inpaint_full_res_padding": 8, "inpainting_fill": 0,
                                     "inpainting_mask_invert": 1, "mask_blur": 2, "denoising_strength": 0.7}).json()
    boxed_text = image_text(boxed["images"][0])
    assert "Mask mode: Inpaint not masked, Mask blur: 2, Inpaint area: Only masked, Masked area padding: 8, " \
           "Masked content: fill" in boxed_text
    again = post(server, "img2img", {"init_images": [encode_b64(source)], "mask": encode_b64(mask),
                                     "infotext": boxed_text}).json()
    assert np.array_equal(pixels(again["images"][0]), pixels(boxed["images"][0]))


def test_xyz_plot_through_webuiapi_is_each_cell_run_alone(server: Server) -> None:
    """A LoRA-weight plot the way A1111 clients send it: ``script_args`` positional, axes by A1111's indices
    (6: CFG Scale, 7: Prompt S/R on txt2img). Every cell equals the same job sent on its own."""
    import webuiapi

    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))
    args = [6, "4, 8", [], 7, "inkA:0.5, inkA:1", [], 0, "", [], True, True, False, False, False, False, False, 0,
            False]
    result = client.txt2img(prompt="a kite <lora:inkA:0.5>", seed=31, script_name="X/Y/Z plot", script_args=args,
                            **SMALL)
    assert len(result.images) == 5 and result.info["index_of_first_image"] == 1
    grid, cells = result.images[0], result.images[1:]
    assert grid.width > 128 and grid.height > 128  # two by two cells and the legend
    for cell, (cfg, weight) in zip(cells, [(4, 0.5), (8, 0.5), (4, 1), (8, 1)]):
        alone = client.txt2img(prompt=f"a kite <lora:inkA:{weight}>", seed=31, cfg_scale=cfg, **SMALL).image
        assert np.array_equal(np.asarray(cell.convert("RGB")), np.asarray(alone.convert("RGB"))), (cfg, weight)
    fields = infotext.parse(result.info["infotexts"][0])
    assert (fields["Script"], fields["X Type"], fields["X Values"], fields["Y Type"], fields["Y Values"]) == \
        ("X/Y/Z plot", "CFG Scale", "4, 8", "Prompt S/R", "inkA:0.5, inkA:1")
    assert infotext.read_from_image(grid) == result.info["infotexts"][0]


def test_xyz_plot_dropdown_values_no_legend_and_refusals(server: Server) -> None:
    base = {**SMALL, "prompt": "a boat", "seed": 4, "script_name": "x/y/z plot"}
    reply = post(server, "txt2img", {**base, "script_args": [9, "", ["Euler", "Heun"], 0, "", [], 0, "", [], False]})
    assert reply.status_code == 200, reply.text
    grid = pixels(reply.json()["images"][0])
    for i, sampler in enumerate(("Euler", "Heun")):
        alone = post(server, "txt2img", {**SMALL, "prompt": "a boat", "seed": 4, "sampler_name": sampler}).json()
        assert np.array_equal(grid[:, i * 64:(i + 1) * 64], pixels(alone["images"][0])), sampler
    for args, said in (([4, "2, x"], "Steps: 'x' is not a whole number"), (["Eta", "0, 1"], "not supported here"),
                       ([7, "dog, cat"], "Prompt S/R did not find dog"), ([1, "3", [], 99], "outside A1111's")):
        refused = post(server, "txt2img", {**base, "script_args": args})
        assert refused.status_code == 422 and said in refused.json()["detail"], (args, refused.text)
    info = requests.get(server.api("script-info"), timeout=30).json()
    txt2img = next(s for s in info if not s["is_img2img"] and s["name"] == "x/y/z plot")
    assert txt2img["name"] == "x/y/z plot" and len(txt2img["args"]) == 18
    assert txt2img["args"][0]["choices"][7] == "Prompt S/R" and txt2img["args"][16]["maximum"] == 500


def test_prompts_from_file_through_webuiapi(server: Server) -> None:
    """A1111's ``script_args`` for Prompts from file or textbox: iterate seed, same random seed, position, list."""
    import webuiapi

    client = webuiapi.WebUIApi(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]))
    text = 'a kite\n--prompt "a boat <lora:inkA:0.7>" --steps 4 --cfg_scale 5\n'
    result = client.txt2img(prompt="at sea", seed=12, script_name="prompts from file or textbox",
                            script_args=[True, False, "end", text], **SMALL)
    assert len(result.images) == 2 and result.info["all_seeds"] == [12, 13]
    texts = result.info["infotexts"]
    assert texts[0].startswith("at sea a kite\n") and texts[1].startswith("at sea a boat <lora:inkA:0.7>\n")
    assert 'Lora hashes: "inkA: ' in texts[1] and "Steps: 4," in texts[1]
    alone = client.txt2img(prompt="at sea a boat <lora:inkA:0.7>", seed=13, cfg_scale=5, **{**SMALL, "steps": 4})
    assert np.array_equal(np.asarray(result.images[1].convert("RGB")), np.asarray(alone.image.convert("RGB")))
    refused = post(server, "txt2img", {**SMALL, "script_name": "prompts from file or textbox",
                                       "script_args": [False, False, "start", "a\n--prompt b --colour red"]})
    assert refused.status_code == 422 and "line 2: unknown option --colour" in refused.json()["detail"]
    names = requests.get(server.api("scripts"), timeout=30).json()
    assert names["txt2img"] == ["x/y/z plot", "prompts from file or textbox"]
