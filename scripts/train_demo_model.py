"""Train the demo model (a tiny SD1.5-layout checkpoint) on synthetic coloured shapes and write it to models/demo/.

    python scripts/train_demo_model.py                 # the shipped model: ~28 min on an idle 2-core CPU
    python scripts/train_demo_model.py --quick --out /tmp/q.safetensors   # a smoke run, seconds

Writes ``<out>.safetensors`` (fp16, single-file LDM layout), ``<out>.yaml`` (sidecar config) and
``<out>.safetensors.sha256``. The seed is fixed; see modules/training/base_model.py for what is trained how.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "models" / "demo" / "demo-shapes-sd15.safetensors"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint path (.safetensors)")
    parser.add_argument("--quick", action="store_true", help="a few dozen steps (smoke test, not a usable model)")
    parser.add_argument("--seed", type=int, default=None, help="override the fixed seed")
    parser.add_argument("--steps", type=int, default=None, help="override the UNet+text-encoder steps")
    parser.add_argument("--vae-steps", type=int, default=None, help="override the VAE steps")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default 2, the 2-core budget; 1 on a busy machine, see docs/demo_model.md)")
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights instead of fp16")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Train, write the files, print a short report."""
    args = parse_args(argv)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import torch

    from modules.training import base_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = base_model.QUICK if args.quick else base_model.TrainConfig()
    overrides = {"seed": args.seed, "steps": args.steps, "vae_steps": args.vae_steps, "threads": args.threads}
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    report, _ = base_model.train(cfg, args.out, torch.float32 if args.fp32 else torch.float16)
    seconds = report.seconds
    print(f"torch {torch.__version__}, {cfg.threads} threads, seed {cfg.seed}")
    print(f"VAE: {cfg.vae_steps} steps (batch {cfg.vae_batch}), {seconds['vae']:.0f} s, "
          f"probe loss {report.vae_probe[0]:.4f} -> {report.vae_probe[1]:.4f}")
    print(f"encode {cfg.scenes} scenes: {seconds['encode']:.0f} s; latent scale factor {report.scale_factor}")
    print(f"UNet+CLIP: {cfg.steps} steps (batch {cfg.batch}), {seconds['diffusion']:.0f} s, "
          f"probe loss {report.diffusion_probe[0]:.4f} -> {report.diffusion_probe[1]:.4f}")
    print(f"total {seconds['total']:.0f} s; wrote {report.path} ({report.path.stat().st_size / 1e6:.1f} MB), "
          f"sha256 {report.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
