"""API throughput: a live ``webui.py --api --nowebui`` on the tiny model, driven over HTTP by concurrent clients.

The server is started as a subprocess on a generated data folder (the tiny demo checkpoint, nothing downloaded)
and answers ``POST /sdapi/v1/txt2img`` with the same small request throughout. Measured:

1. **direct**: the same generation called in-process (``processing.process`` on an AppState built as webui.py
   builds it, same thread count as the server), no HTTP, no queue. The baseline.
2. **solo**: one client, one request at a time; end-to-end latency. ``solo − direct`` is what one job costs
   outside generation when nothing else waits: HTTP, JSON, request validation, the queue hand-off, PNG + base64
   encoding of the answer.
3. **concurrent**: ``--clients`` clients (threads, one HTTP session each), each sending ``--requests`` requests
   back to back. Requests/s over the whole run, p50/p95 latency per request (a request waits for the jobs queued
   before it: one worker owns the model), and the queue overhead per job under load:
   ``wall time / jobs − direct``, the time per job the worker is not generating.

Both run with ``--threads`` torch threads (default 1). Solo requests and in-process runs alternate (the server is
idle while the baseline runs), so load from other work on a shared machine weighs on both alike; a few more
in-process runs follow the concurrent phase.

Usage::

    python benchmarks/api.py --write-docs                 # 4 clients x 10 requests, 10 solo, 15 direct
    python benchmarks/api.py --quick                      # smoke run: 4 clients x 2 requests, 2 solo, 2 direct
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make ``benchmarks`` and ``modules`` importable
    sys.path.insert(0, str(REPO))

from benchmarks.common import append_to_docs, count_at_least, cpu_model, load_average, setup  # noqa: E402

logger = logging.getLogger("benchmarks.api")
DOCS_HEADING = "## API throughput (`benchmarks/api.py`)"
START_TIMEOUT_S = 300
REQUEST_TIMEOUT_S = 600


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run measures."""

    clients: int
    requests: int  # per client, in the concurrent phase
    solo: int
    direct: int
    warmup: int
    steps: int
    size: int
    threads: int

    def payload(self, seed: int) -> dict[str, object]:
        """The txt2img request (A1111 field names); ``send_images`` on, as clients use it."""
        return {"prompt": "a lighthouse on a cliff at dusk", "negative_prompt": "blurry", "steps": self.steps,
                "width": self.size, "height": self.size, "sampler_name": "Euler a", "cfg_scale": 7.0,
                "seed": seed, "send_images": True}


@dataclass
class Results:
    """Seconds, per phase."""

    direct: list[float] = field(default_factory=list)
    solo: list[float] = field(default_factory=list)
    concurrent: list[float] = field(default_factory=list)  # per-request latency
    concurrent_wall: float = 0.0
    server_start: float = 0.0


# -- in-process baseline -------------------------------------------------------------------------------------------

class Direct:
    """The same generation in-process: an AppState built as webui.py builds it, ``processing.process`` called."""

    def __init__(self, data: Path, plan: Plan) -> None:
        import torch

        from modules import cmd_args, initialize
        from modules.processing_params import GenerationParams

        torch.set_num_threads(plan.threads)
        self.state = initialize.build_state(cmd_args.parse_args(["--data-dir", str(data), "--use-cpu", "all"]))
        info = self.state.models.checkpoints[0]
        self.state.opts.set("sd_model_checkpoint", info.name, run_callbacks=False, internal=True)
        self.state.models.load(info)
        body = plan.payload(seed=1)
        self.params = GenerationParams(prompt=str(body["prompt"]), negative_prompt=str(body["negative_prompt"]),
                                       steps=plan.steps, width=plan.size, height=plan.size, sampler_name="Euler a",
                                       cfg_scale=7.0, seed=1, save_images=False).validate()

    def run(self) -> float:
        """One generation; its seconds."""
        from modules import processing

        start = time.perf_counter()
        processing.process(self.state, self.params)
        return time.perf_counter() - start

    def close(self) -> None:
        self.state.queue.shutdown()


# -- the live server -----------------------------------------------------------------------------------------------

def start_server(data: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """``webui.py --api --nowebui`` on a free port; returns once it answers."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "COMMANDLINE_ARGS": "", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
           "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = data / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "webui.py", "--data-dir", str(data), "--port", str(port),
                                    "--api", "--nowebui", "--use-cpu", "all"],
                                   cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.time() + START_TIMEOUT_S
    while "Running on local URL" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            raise RuntimeError(f"webui.py did not start (exit {process.poll()}):\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    return process, f"http://127.0.0.1:{port}"


def post_txt2img(url: str, payload: dict[str, object]) -> float:
    """One request; its end-to-end seconds. A non-200 answer or an answer without an image is an error."""
    data = json.dumps(payload).encode()
    request = urllib.request.Request(f"{url}/sdapi/v1/txt2img", data=data,
                                     headers={"Content-Type": "application/json"}, method="POST")
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as reply:
            body = json.loads(reply.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"txt2img answered {e.code}: {e.read()[:500]!r}") from e
    seconds = time.perf_counter() - start
    if not body.get("images"):
        raise RuntimeError(f"txt2img answered without images: {str(body)[:500]}")
    return seconds


def measure_solo(url: str, plan: Plan, direct: Direct) -> tuple[list[float], list[float]]:
    """One request at a time, each followed by the same generation in-process (interleaved, so that whatever
    else loads the machine weighs on both alike); ``(solo latencies, direct times)`` after the warm-ups."""
    solo, direct_times = [], []
    for i in range(plan.warmup + plan.solo):
        latency = post_txt2img(url, plan.payload(seed=100 + i))
        seconds = direct.run()
        if i >= plan.warmup:
            solo.append(latency)
            direct_times.append(seconds)
    return solo, direct_times


def measure_concurrent(url: str, plan: Plan) -> tuple[list[float], float]:
    """``plan.clients`` threads send ``plan.requests`` each, back to back; (latencies, wall seconds)."""
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(plan.clients + 1)

    def client(index: int) -> None:
        barrier.wait()
        for i in range(plan.requests):
            try:
                seconds = post_txt2img(url, plan.payload(seed=1000 * (index + 1) + i))
            except BaseException as e:  # noqa: BLE001 - re-raised in the main thread
                errors.append(e)
                return
            with lock:
                latencies.append(seconds)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(plan.clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]}") from errors[0]
    return latencies, wall


# -- report --------------------------------------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def report(plan: Plan, results: Results, argv: Sequence[str]) -> str:
    """The dated markdown subsection: environment, then one table."""
    import diffusers
    import torch

    direct = statistics.median(results.direct)
    solo = statistics.median(results.solo)
    jobs = plan.clients * plan.requests
    per_job = results.concurrent_wall / jobs
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/api.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    rows = [
        ("direct: `processing.process` in-process (baseline)", f"{direct:.3f}",
         f"p95 {percentile(results.direct, 95):.3f}", f"{len(results.direct)} runs, no HTTP, no queue"),
        ("solo: 1 client, end-to-end", f"{solo:.3f}", f"p95 {percentile(results.solo, 95):.3f}",
         f"overhead outside generation: **{(solo - direct) * 1000:.0f} ms** per job ({solo / direct:.2f}× direct)"),
        (f"{plan.clients} clients: latency p50", f"{percentile(results.concurrent, 50):.3f}",
         f"p95 {percentile(results.concurrent, 95):.3f}",
         f"{jobs} requests; a request waits for the jobs queued before it (one worker)"),
        (f"{plan.clients} clients: throughput", f"{jobs / results.concurrent_wall:.2f} req/s",
         f"wall {results.concurrent_wall:.1f} s",
         f"{per_job:.3f} s per job; queue overhead under load: **{(per_job - direct) * 1000:.0f} ms** per job "
         f"({per_job / direct:.2f}× direct)"),
    ]
    lines = [
        f"### {date} — {plan.clients} concurrent clients, tiny model, {plan.size}×{plan.size}, {plan.steps} steps",
        "",
        f"- Device: CPU, {cpu_model()} ({os.cpu_count()} logical cores, shared with other work; "
        f"server and baseline with {plan.threads} torch thread(s)); {load_average()} at the end",
        f"- Versions: python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}",
        f"- Command: `{command}`",
        f"- Request: `POST /sdapi/v1/txt2img`, Euler a, CFG 7, batch 1, `send_images: true` (base64 PNG with its "
        f"infotext); {plan.warmup} untimed warm-up request(s) and in-process run(s) first. Server start-up: "
        f"{results.server_start:.1f} s (not counted).",
        "",
        "| Measurement | Median (s) | Spread | Notes |",
        "|---|---:|---:|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    return "\n".join(lines)


# -- entry point ---------------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The benchmark's flags."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=count_at_least(1), default=4, help="concurrent clients (default 4)")
    parser.add_argument("--requests", type=count_at_least(1), default=None,
                        help="requests per client in the concurrent phase (default 10; --quick: 2)")
    parser.add_argument("--solo", type=count_at_least(1), default=None, help="solo requests (default 10; --quick: 2)")
    parser.add_argument("--direct", type=count_at_least(1), default=None,
                        help="extra in-process runs after the concurrent phase (default 5; --quick: 1)")
    parser.add_argument("--warmup", type=count_at_least(0), default=2, help="untimed runs per phase (default 2)")
    parser.add_argument("--steps", type=count_at_least(1), default=None, help="sampling steps (default 20; --quick: 4)")
    parser.add_argument("--size", type=count_at_least(64), default=64, help="width = height, a multiple of 8 (default 64)")
    parser.add_argument("--threads", type=count_at_least(1), default=1, help="torch threads, server and baseline")
    parser.add_argument("--quick", action="store_true", help="smoke run: few requests and steps")
    parser.add_argument("--write-docs", action="store_true", help="append the results to docs/benchmarks.md")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def make_plan(args: argparse.Namespace) -> Plan:
    """Defaults filled in; a size that is not a multiple of 8 is refused (as the API would)."""
    if args.size % 8:
        raise SystemExit(f"error: --size must be a multiple of 8; got {args.size}")
    quick = args.quick
    return Plan(clients=args.clients, requests=args.requests or (2 if quick else 10), solo=args.solo or (2 if quick else 10),
                direct=args.direct or (1 if quick else 5), warmup=min(args.warmup, 1) if quick else args.warmup,
                steps=args.steps or (4 if quick else 20), size=args.size, threads=args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; print the markdown section (and append it to the docs with --write-docs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    plan = make_plan(args)
    setup(args.verbose)
    os.environ["OMP_NUM_THREADS"] = str(plan.threads)  # before torch is imported: as the server runs
    from modules import demo_model

    results = Results()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        data = Path(tmp) / "data"
        demo_model.write_checkpoint(data / "models" / "Stable-diffusion" / "tiny.safetensors")
        started = time.perf_counter()
        process, url = start_server(data, plan.threads)
        results.server_start = time.perf_counter() - started
        direct = Direct(data, plan)
        try:
            logger.info("server up at %s; solo requests interleaved with in-process runs", url)
            results.solo, results.direct = measure_solo(url, plan, direct)
            logger.info("%d clients x %d requests", plan.clients, plan.requests)
            results.concurrent, results.concurrent_wall = measure_concurrent(url, plan)
            logger.info("in-process runs after the concurrent phase")
            results.direct += [direct.run() for _ in range(plan.direct)]
        finally:
            direct.close()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
    section = report(plan, results, argv)
    print(section)
    if args.write_docs:
        append_to_docs(section, heading=DOCS_HEADING)
    return 0


if __name__ == "__main__":
    sys.exit(main())
