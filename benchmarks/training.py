"""CPU training speed of the three trainers on the tiny test model: optimizer steps per second at 64×64, batch 1.

Run ``python benchmarks/training.py``; it prints one Markdown table row per trainer (device, torch version) to paste
under "## Training speed (CPU)" in docs/benchmarks.md. No previews or copies are written during the timed run, and
the first steps (dataset encoding, warm-up) are excluded: the speed is taken between step ``WARMUP`` and the end.
"""

from __future__ import annotations

import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

STEPS, WARMUP = 40, 5
logger = logging.getLogger("benchmarks.training")


def main() -> None:
    import torch
    from conftest import install_checkpoint
    from test_training_trainers import red_dataset

    from modules import cmd_args, demo_model, initialize
    from modules.training import embedding_trainer, hypernetwork_trainer, lora_trainer, runner

    tmp = Path(tempfile.mkdtemp())
    checkpoint = demo_model.write_checkpoint(tmp / "ckpt" / "tiny.safetensors")
    install_checkpoint(checkpoint, tmp / "data" / "models" / "Stable-diffusion")
    state = initialize.build_state(cmd_args.parse_args(["--data-dir", str(tmp / "data")]))
    state.models.load(state.models.checkpoints[0])
    data = red_dataset(tmp / "dataset", 8)
    widths = [str(w) for w in hypernetwork_trainer.context_widths(state.models.current)]
    embedding_trainer.create_embedding(state, "bench", 2)
    hypernetwork_trainer.create_hypernetwork(state, "bench", widths)

    def settings(lr: str) -> runner.TrainSettings:
        return runner.TrainSettings(learn_rate=lr, data_root=str(data), width=64, height=64, steps=STEPS,
                                    save_every=0, create_image_every=0, template_file="subject_filewords.txt", seed=0)

    runs = {
        "embedding": lambda cb: runner.train(state, _embedding(state, embedding_trainer), settings("0.005"),
                                             on_step=cb),
        "hypernetwork": lambda cb: runner.train(state, _hypernetwork(state, hypernetwork_trainer), settings("1e-5"),
                                                on_step=cb),
        "LoRA (rank 4, UNet + text encoder)": lambda cb: _lora(state, lora_trainer, settings("1e-4"), cb),
    }
    print("| trainer | steps/s | device | torch | threads |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        marks: dict[int, float] = {}
        run(lambda step, loss: marks.__setitem__(step, time.perf_counter()))
        rate = (STEPS - WARMUP) / (marks[STEPS] - marks[WARMUP])
        print(f"| {name} | {rate:.2f} | CPU ({platform.processor() or platform.machine()}) | {torch.__version__} "
              f"| {torch.get_num_threads()} |", flush=True)


def _embedding(state, embedding_trainer):
    entry = state.embeddings.loaded["bench"]
    return embedding_trainer.EmbeddingTrainable("bench", entry.vectors, 0, state.paths.embeddings_dir / "bench.pt",
                                                (None, None))


def _hypernetwork(state, hypernetwork_trainer):
    from modules.hypernetworks.hypernetwork import Hypernetwork

    path = state.paths.hypernetwork_dir / "bench.pt"
    return hypernetwork_trainer.HypernetworkTrainable(Hypernetwork.load(path), path, None)


def _lora(state, lora_trainer, settings, callback):
    model = state.models.current
    options = lora_trainer.LoraOptions(rank=4, alpha=4, text_encoder_lr=5e-5)
    modules = lora_trainer.target_modules(model, True)
    trainable = lora_trainer.LoraTrainable("bench", modules, options, state.paths.lora_dir / "bench.safetensors",
                                           {}, 1e-4, None)
    from modules.training import runner

    return runner.train(state, trainable, settings, on_step=callback)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
