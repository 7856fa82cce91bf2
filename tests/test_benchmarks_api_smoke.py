"""The API benchmark runs end to end (``--quick``: a live server on the tiny model, 4 clients) and prints its table.

No timing is asserted: timings live in ``docs/benchmarks.md``. What is checked is that every phase ran (the
rows and their counts are there, the numbers are numbers) and that bad flags fail with a clear message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "api.py"


def _run(*flags: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *flags], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


def _rows(stdout: str) -> dict[str, list[str]]:
    """The markdown table's body rows, by their first cell."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|")]
    return {row[0]: row[1:] for row in rows[2:]}


@pytest.mark.slow
def test_quick_benchmark_measures_every_phase_against_a_live_server() -> None:
    result = _run("--quick", "--steps", "2", "--solo", "2", "--warmup", "1")
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    rows = _rows(result.stdout)
    assert set(rows) == {"direct: `processing.process` in-process (baseline)", "solo: 1 client, end-to-end",
                         "4 clients: latency p50", "4 clients: throughput"}, result.stdout
    assert "3 runs" in rows["direct: `processing.process` in-process (baseline)"][2]  # 2 interleaved + 1 after
    assert "8 requests" in rows["4 clients: latency p50"][2]  # 4 clients x 2 requests (--quick)
    requests_per_s = float(rows["4 clients: throughput"][0].removesuffix(" req/s"))
    p50 = float(rows["4 clients: latency p50"][0])
    p95 = float(rows["4 clients: latency p50"][1].removeprefix("p95 "))
    assert requests_per_s > 0 and 0 < p50 <= p95
    assert re.search(r"overhead outside generation: \*\*-?\d+ ms\*\* per job", result.stdout)
    assert re.search(r"queue overhead under load: \*\*-?\d+ ms\*\* per job", result.stdout)
    assert "- Command: `python benchmarks/api.py --quick --steps 2 --solo 2 --warmup 1`" in result.stdout


def test_bad_flags_fail_clearly() -> None:
    result = _run("--size", "65", timeout=120)
    assert result.returncode != 0 and "--size must be a multiple of 8; got 65" in result.stderr
    result = _run("--clients", "0", timeout=120)
    assert result.returncode == 2 and "must be at least 1; got 0" in result.stderr


def test_docs_writer_keeps_each_benchmark_under_its_own_heading(tmp_path: Path) -> None:
    from benchmarks.common import append_to_docs

    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## txt2img\n\nold text\n\n## Other\n\nmore\n", encoding="utf-8")
    append_to_docs("### run 1\n| a |", docs, heading="## API throughput")
    append_to_docs("### run 2\n| b |", docs, heading="## API throughput")
    append_to_docs("### run 3\n| c |", docs, heading="## txt2img")
    assert docs.read_text(encoding="utf-8") == (
        "# Benchmarks\n\n## txt2img\n\nold text\n\n### run 3\n| c |\n\n## Other\n\nmore\n\n"
        "## API throughput\n\n### run 1\n| a |\n\n### run 2\n| b |\n")
    with pytest.raises(ValueError, match="level-2 markdown heading"):
        append_to_docs("x", docs, heading="API")
