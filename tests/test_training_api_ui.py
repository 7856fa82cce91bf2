"""A1111's training API on a live server (create/train embedding and hypernetwork, progress while training) and the
Train tab in the Gradio page."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch
from conftest import install_checkpoint
from test_api_server import Server, start_server, stop_server
from test_training_trainers import red_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("webui-train")
    install_checkpoint(tiny_checkpoint, data / "models" / "Stable-diffusion")
    red_dataset(data / "dataset")
    server = start_server(data, "--api", "--nowebui")
    yield server
    stop_server(server)


def train_body(server: Server, **changes) -> dict:
    body = {"learn_rate": "0.005", "batch_size": 1, "gradient_step": 1, "data_root": str(server.data / "dataset"),
            "log_directory": "textual_inversion", "training_width": 64, "training_height": 64, "varsize": False,
            "steps": 6, "clip_grad_mode": "norm", "clip_grad_value": "1.0", "shuffle_tags": False,
            "tag_drop_out": 0, "latent_sampling_method": "once", "use_weight": False, "create_image_every": 0,
            "template_filename": "subject_filewords.txt", "preview_from_txt2img": False, "preview_prompt": ""}
    return {**body, **changes}


def test_create_and_train_embedding(server: Server) -> None:
    r = requests.post(server.api("create/embedding"),
                      json={"name": "apiemb", "num_vectors_per_token": 2, "overwrite_old": False, "init_text": "red"})
    assert r.status_code == 200
    path = server.data / "embeddings" / "apiemb.pt"
    assert r.json() == {"info": f"create embedding filename: {path}"}
    again = requests.post(server.api("create/embedding"), json={"name": "apiemb", "num_vectors_per_token": 1})
    assert again.status_code == 200 and again.json()["info"].startswith("create embedding error:")
    assert "already exists" in again.json()["info"]
    assert requests.get(server.api("embeddings")).json()["loaded"]["apiemb"]["vectors"] == 2

    r = requests.post(server.api("train/embedding"),
                      json=train_body(server, embedding_name="apiemb", save_embedding_every=3))
    assert r.status_code == 200
    assert r.json()["info"] == f"train embedding complete: filename: {path} error: None"
    assert torch.load(path, weights_only=True)["step"] == 6
    assert requests.get(server.api("embeddings")).json()["loaded"]["apiemb"]["step"] == 6
    copies = sorted(p.name for p in (server.data / "textual_inversion").rglob("apiemb-*.pt"))
    assert copies == ["apiemb-3.pt", "apiemb-6.pt"]


def test_create_and_train_hypernetwork_with_progress(server: Server) -> None:
    r = requests.post(server.api("create/hypernetwork"),
                      json={"name": "apihn", "enable_sizes": [32, 64], "layer_structure": "1, 2, 1",
                            "activation_func": "relu", "weight_init": "Normal", "add_layer_norm": False,
                            "use_dropout": False, "overwrite_old": False})
    path = server.data / "models" / "hypernetworks" / "apihn.pt"
    assert r.json() == {"info": f"create hypernetwork filename: {path}"}
    assert {"name": "apihn", "path": str(path)} in requests.get(server.api("hypernetworks")).json()

    seen: list[dict] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            seen.append(requests.get(server.api("progress"), params={"skip_current_image": True}).json())
            time.sleep(0.2)

    watcher = threading.Thread(target=poll)
    watcher.start()
    try:
        r = requests.post(server.api("train/hypernetwork"),
                          json=train_body(server, hypernetwork_name="apihn", steps=40, learn_rate="0.001:20, 1e-4"))
    finally:
        done.set()
        watcher.join()
    assert r.json()["info"] == f"train hypernetwork complete: filename: {path} error: None"
    assert torch.load(path, weights_only=True)["step"] == 40
    training = [s for s in seen if s["state"]["job"] == "train_hypernetwork"]
    assert training, f"no progress seen while training: {seen[:3]}"
    assert any("loss:" in (s["textinfo"] or "") and "ETA" in (s["textinfo"] or "") for s in training)
    assert any(0 < s["progress"] < 1 for s in training)


def test_training_errors_are_reported_in_info_and_bad_names_refused(server: Server) -> None:
    bad = requests.post(server.api("train/hypernetwork"),
                        json=train_body(server, hypernetwork_name="apihn-missing", learn_rate="0.1:x"))
    assert bad.status_code == 200
    assert "error: Invalid learning rate schedule" in bad.json()["info"] or "not found" in bad.json()["info"]
    missing = requests.post(server.api("train/embedding"), json=train_body(server, embedding_name="nope"))
    assert "error:" in missing.json()["info"] and "not found" in missing.json()["info"]
    empty = server.data / "empty"
    empty.mkdir(exist_ok=True)
    requests.post(server.api("create/embedding"), json={"name": "e2"})
    no_images = requests.post(server.api("train/embedding"), json=train_body(server, embedding_name="e2",
                                                                          data_root=str(empty)))
    assert "has no images" in no_images.json()["info"]
    traversal = requests.post(server.api("train/embedding"), json=train_body(server, embedding_name="../../x"))
    assert traversal.status_code == 422
    outside = requests.post(server.api("train/embedding"),
                            json=train_body(server, embedding_name="e2", log_directory="/tmp/elsewhere"))
    assert outside.status_code == 403
    unknown = requests.post(server.api("create/embedding"), json={"name": "x", "colour": "red"})
    assert unknown.status_code == 422 and "colour" in unknown.json()["detail"]


def test_previews_follow_a1111s_preview_keys(server: Server) -> None:
    """A1111 clients send every ``preview_*`` key; with ``preview_from_txt2img`` they make the preview (its PNG
    carries them in the infotext), without it the batch's first prompt at 20 steps is used; impossible values are
    refused before any step, in ``info``."""
    from PIL import Image

    from modules import infotext

    requests.post(server.api("create/embedding"), json={"name": "apiprev", "num_vectors_per_token": 1})
    preview = {"preview_from_txt2img": True, "preview_prompt": "an apiprev cat", "preview_negative_prompt": "dog",
               "preview_steps": 3, "preview_sampler_name": "Euler", "preview_cfg_scale": 4.5, "preview_seed": 77,
               "preview_width": 64, "preview_height": 72, "create_image_every": 2, "steps": 2}
    for from_txt2img in (True, False):
        r = requests.post(server.api("train/embedding"), json=train_body(
            server, embedding_name="apiprev", **{**preview, "preview_from_txt2img": from_txt2img,
                                                 "steps": preview["steps"] + (0 if from_txt2img else 2)}))
        assert r.json()["info"].endswith("error: None"), r.json()
        step = 2 if from_txt2img else 4
        [png] = (server.data / "textual_inversion").rglob(f"images/apiprev-{step}.png")
        with Image.open(png) as image:
            size, fields = image.size, infotext.parse(infotext.read_from_image(image))
        if from_txt2img:
            assert size == (64, 72)
            assert (fields["Prompt"], fields["Negative prompt"], fields["Steps"], fields["Sampler"], fields["Seed"]) \
                == ("an apiprev cat", "dog", "3", "Euler", "77")
            assert float(fields["CFG scale"]) == 4.5
        else:
            assert size == (64, 64) and fields["Steps"] == "20" and fields["Sampler"] == "DPM++ 2M"
            assert "apiprev" in fields["Prompt"] and "cat" not in fields["Prompt"]
    bad = requests.post(server.api("train/embedding"), json=train_body(
        server, embedding_name="apiprev", **{**preview, "steps": 10, "preview_sampler_name": "Nope"}))
    assert "error: previews cannot be made with the txt2img parameters" in bad.json()["info"]
    assert "Nope" in bad.json()["info"]
    assert torch.load(server.data / "embeddings" / "apiprev.pt", weights_only=True)["step"] == 4


def test_train_tab_has_a1111_sub_tabs_and_fields(make_state) -> None:
    from modules.ui import txt2img

    state = make_state()
    demo = txt2img.create_ui(state)
    config = demo.config
    labels = {c["props"].get("label") for c in config["components"]}
    elem_ids = {c["props"].get("elem_id"): c["props"] for c in config["components"]}
    for tab in ("Train", "Create embedding", "Create hypernetwork", "Preprocess images", "Train LoRA"):
        assert tab in labels, tab
    assert elem_ids["train_embedding_learn_rate"]["value"] == "0.005"
    assert elem_ids["train_hypernetwork_learn_rate"]["value"] == "0.00001"
    assert elem_ids["train_log_directory"]["value"] == "textual_inversion"
    assert elem_ids["train_template_file"]["value"] == "style_filewords.txt"
    assert elem_ids["train_steps"]["value"] == 100000
    assert elem_ids["train_latent_sampling_method"]["value"] == "once"
    assert elem_ids["train_new_hypernetwork_layer_structure"]["value"] == "1, 2, 1"
    assert elem_ids["train_new_hypernetwork_sizes"]["value"] == ["768", "320", "640", "1280"]
    assert "32" in [c[0] if isinstance(c, (list, tuple)) else c
                    for c in elem_ids["train_new_hypernetwork_sizes"]["choices"]]  # the loaded model's widths
    assert elem_ids["train_initialization_text"]["value"] == "*"
    api_names = {d.get("api_name") for d in config["dependencies"]}
    assert {"create_embedding", "create_hypernetwork", "train_embedding", "train_hypernetwork", "train_lora"} <= api_names
    # "Read parameters (prompt, etc...) from txt2img tab when making previews": the training buttons read the
    # txt2img tab's controls.
    assert elem_ids["train_save_image_with_stored_embedding"]["value"] is True
    checkbox = elem_ids["train_preview_from_txt2img"]
    assert checkbox["label"].startswith("Read parameters (prompt, etc...) from txt2img tab") and checkbox["value"] is False
    ids = {c["props"].get("elem_id"): c["id"] for c in config["components"]}
    txt2img_controls = {ids[name] for name in ("txt2img_prompt", "txt2img_neg_prompt", "txt2img_steps",
                                                "txt2img_sampling", "txt2img_scheduler", "txt2img_cfg_scale",
                                                "txt2img_seed", "txt2img_width", "txt2img_height")}
    for name, checkbox in (("train_embedding", "train_preview_from_txt2img"),
                           ("train_hypernetwork", "train_preview_from_txt2img"),
                           ("train_lora", "train_lora_preview_from_txt2img")):
        [dependency] = [d for d in config["dependencies"] if d.get("api_name") == name]
        assert txt2img_controls <= set(dependency["inputs"]), name
        assert ids[checkbox] in dependency["inputs"], name
    # Element ids are unique on the page: the Train LoRA sub-tab's copies of the common fields have their own.
    all_ids = [c["props"]["elem_id"] for c in config["components"] if c["props"].get("elem_id")]
    assert len(all_ids) == len(set(all_ids)), sorted({i for i in all_ids if all_ids.count(i) > 1})
    assert {"use_weight", "train_batch_size", "train_lora_batch_size", "train_lora_use_weight"} <= set(all_ids)


def test_train_tab_passes_the_txt2img_values_to_the_right_preview_fields() -> None:
    """The training buttons' inputs end with the txt2img controls named by ``PREVIEW_PARAMS``; each lands in its
    own ``preview_*`` setting."""
    from modules.ui import train

    common = ["disabled", "0.1", 1, 1, "/data", "textual_inversion", "style_filewords.txt", 64, 64, False, 10, 5, 5,
              False, False, True, False, 0.0, "once"]
    txt2img = {"prompt": "a cat", "negative": "a dog", "steps": 7, "sampler": "Euler a", "schedule": "Uniform",
               "cfg_scale": 4.5, "seed": 1234, "width": 96, "height": 72}
    assert set(txt2img) == set(train.PREVIEW_PARAMS)
    s = train._settings("0.01", (*common, *(txt2img[name] for name in train.PREVIEW_PARAMS)))
    assert s.preview_from_txt2img is True and s.save_image_with_stored_embedding is False
    assert s.create_image_every == 5 and s.width == 64
    assert (s.preview_prompt, s.preview_negative_prompt, s.preview_steps, s.preview_sampler_name, s.preview_scheduler,
            s.preview_cfg_scale, s.preview_seed, s.preview_width, s.preview_height) == (
        "a cat", "a dog", 7, "Euler a", "Uniform", 4.5, 1234, 96, 72)
    assert s.preview_params("ignored").prompt == "a cat"
