"""What the benchmark scripts share: start-up, argument types, the machine's description, and the docs writer.

Every benchmark reports into ``docs/benchmarks.md``; :func:`append_to_docs` appends a dated subsection, under a
``## `` heading of its own when one is given (created the first time), so runs of one benchmark stay together.
Importing this module does nothing beyond defining these helpers.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCS_FILE = REPO / "docs" / "benchmarks.md"

logger = logging.getLogger("benchmarks")


def setup(verbose: bool = False) -> None:
    """Logging (INFO, or DEBUG with ``verbose``), offline HuggingFace libraries, and the repository importable."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def count_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer ``>= minimum`` (a clear error names the bound and the value)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number; got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}; got {value}")
        return value
    return parse


def cuda_unavailable(device: str) -> bool:
    """True (after explaining on stderr) when ``device`` is ``cuda`` and this torch cannot use CUDA."""
    import torch

    if device != "cuda" or torch.cuda.is_available():
        return False
    sys.stderr.write(f"error: --device cuda, but CUDA is not available here (torch {torch.__version__}, "
                     f"CUDA build: {torch.version.cuda or 'none'}). Run it on a machine with an NVIDIA GPU "
                     "and a CUDA build of torch, or use --device cpu.\n")
    return True


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """``"load average (1, 5, 15 min): a, b, c"`` — how busy a shared machine was — or ``""`` where unknown."""
    if not hasattr(os, "getloadavg"):
        return ""
    return "load average (1, 5, 15 min): " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def append_to_docs(section: str, path: Path = DOCS_FILE, heading: str | None = None) -> None:
    """Append ``section`` to the benchmarks document (created with a title if missing).

    With ``heading`` (a ``## ...`` line), the section goes at the end of that part of the document, before the
    next ``## `` heading; the heading is appended first when the document does not have it yet.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    section = section.strip("\n")
    if heading is None:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    else:
        if not heading.startswith("## "):
            raise ValueError(f"heading must be a level-2 markdown heading ('## ...'); got {heading!r}")
        lines = text.rstrip("\n").split("\n")
        if heading not in lines:
            lines += ["", heading]
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        body_end = end
        while body_end > start + 1 and not lines[body_end - 1].strip():
            body_end -= 1
        lines[body_end:end] = ["", section, ""] if end < len(lines) else ["", section]
        text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")
    logger.info("Appended results to %s", path)
