"""Prompt parsing + encoding cost: a ~300-token prompt with emphasis, a schedule and 5 embeddings, cold and cached.

Measured in one process against a baseline run side by side: the bare CLIP forward over the same number of
77-token chunks (the work no implementation can avoid). Reported as ratios:

* cold = ``PromptEncoder`` + schedules (parse, tokenise, match embeddings, encode every schedule variant) with
  an empty conditioning cache, over the baseline;
* cached = the same call when the prompt was encoded before (what a repeated job pays).

Text encoders: the tiny demo model's, and SD1.5's full-size one (123 M parameters, random weights, from
``configs/sd15``). Usage::

    python benchmarks/prompts.py --repeats 9 --write-docs
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

logger = logging.getLogger("benchmarks.prompts")

EMBEDDINGS = ("style-one", "bad-hands", "easynegative", "detail-tweak", "mycharacter")


def build_prompt() -> str:
    """About 300 CLIP tokens: emphasis, a prompt-editing schedule, BREAK and the 5 embeddings."""
    body = ", ".join(f"(detailed {w}:1.2)" for w in ("castle", "forest", "river", "mountain", "sky", "clouds",
                                                     "stone bridge", "village", "market", "lanterns"))
    parts = [f"masterpiece, best quality, {body}", "[sunset:night sky:10]", "BREAK",
             ", ".join(EMBEDDINGS), ", ".join(f"intricate ornament number {i}" for i in range(28))]
    return ", ".join(parts)


def text_encoder_and_tokenizer(size: str):
    """The tiny model's CLIP, or SD1.5's full-size CLIP with random weights."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from modules import demo_model, model_loading

    if size == "tiny":
        return demo_model.build_components()[2], model_loading.load_tokenizer()
    torch.manual_seed(0)
    config = CLIPTextConfig.from_pretrained(model_loading.SD15_CONFIG_DIR / "text_encoder")
    return CLIPTextModel(config).eval(), model_loading.load_tokenizer()


def write_embeddings(folder: Path, width: int) -> None:
    import torch

    for index, name in enumerate(EMBEDDINGS):
        vectors = torch.randn(1 + index % 3, width, generator=torch.Generator().manual_seed(index))
        torch.save({"string_to_param": {"*": vectors}}, folder / f"{name}.pt")


def measure(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(size: str, repeats: int) -> dict[str, object]:
    """Times (s) for the three variants, interleaved, and the chunk count."""
    import torch

    from modules import conditioning
    from modules.hashes import HashCache
    from modules.prompt_encoder import PromptEncoder
    from modules.textual_inversion.database import EmbeddingDatabase

    text_encoder, tokenizer = text_encoder_and_tokenizer(size)
    width = text_encoder.config.hidden_size
    with tempfile.TemporaryDirectory() as tmp:
        write_embeddings(Path(tmp), width)
        db = EmbeddingDatabase(Path(tmp), HashCache(None))
        db.refresh(width)
        encoder = PromptEncoder(text_encoder, tokenizer, db)
        prompt = build_prompt()
        chunks, tokens = encoder.tokenize_line(prompt)
        ids = torch.tensor([c.tokens for c in chunks])  # (k, 77)
        steps = 20
        cache = conditioning.ConditioningCache()
        schedules = conditioning.multicond_learned_conditioning(encoder, [prompt], steps, cache)
        used = schedules.embeddings
        variants = len(schedules.rows[0][0][0].ends)

        def baseline() -> None:  # the same number of chunk encodings, bare
            with torch.no_grad():
                for _ in range(variants):
                    text_encoder(input_ids=ids)

        def cold() -> None:
            cache.clear()
            conditioning.multicond_learned_conditioning(encoder, [prompt], steps, cache)

        def cached() -> None:
            conditioning.multicond_learned_conditioning(encoder, [prompt], steps, cache)

        for fn in (baseline, cold, cached):
            fn()  # warm-up
        times: dict[str, list[float]] = {"baseline": [], "cold": [], "cached": []}
        for _ in range(repeats):
            for name, fn in (("baseline", baseline), ("cold", cold), ("cached", cached)):
                times[name] += measure(fn, 1)
    return {"size": size, "tokens": tokens, "chunks": len(chunks), "variants": variants,
            "embeddings": len(used), "times": times}


def table(results: list[dict[str, object]]) -> str:
    lines = ["| text encoder | tokens / chunks / schedule variants / embeddings | bare CLIP (ms) | ours cold (ms) "
             "| ours cached (ms) | cold / bare | cached / bare |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        t = {k: statistics.median(v) for k, v in r["times"].items()}  # type: ignore[union-attr]
        lines.append(f"| {r['size']} | {r['tokens']} / {r['chunks']} / {r['variants']} / {r['embeddings']} | "
                     f"{1000 * t['baseline']:.1f} | {1000 * t['cold']:.1f} | {1000 * t['cached']:.3f} | "
                     f"{t['cold'] / t['baseline']:.2f} | {t['cached'] / t['baseline']:.4f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--write-docs", action="store_true", help="append the result to docs/benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run(size, args.repeats) for size in args.sizes]
    text = table(results)
    print(text)
    if args.write_docs:
        from benchmarks.common import append_to_docs, cpu_model

        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        import transformers

        section = "\n".join([
            f"### {date} — prompt parsing + encoding (CPU)", "",
            f"- CPU: {cpu_model()}, torch threads {torch.get_num_threads()}",
            f"- Versions: python {platform.python_version()}, torch {torch.__version__}, "
            f"transformers {transformers.__version__}",
            f"- Command: `{shlex.join(['python', 'benchmarks/prompts.py', *(argv or sys.argv[1:])])}`",
            f"- Method: medians of {args.repeats} interleaved runs after one warm-up. Bare CLIP = the text "
            "encoder's forward over the same chunks and schedule variants; cold = parse + tokenise + embedding "
            "matching + encoding with an empty cache; cached = the same prompt again.", "", text, ""])
        append_to_docs(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
