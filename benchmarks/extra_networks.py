"""The Extra Networks panel at scale: 10 000 LoRA files, measured in real Chromium and in-process.

A data folder is generated (the tiny model and ``--count`` small valid LoRA files in 100 sub-folders, kohya
metadata; every 50th with a preview picture and a sidecar ``.json``), webui.py is started on it as a subprocess,
and Debian's Chromium (Playwright, ``executable_path``; no browser download) opens the page. Measured:

1. **open**: from the click on the Lora tab to the cards painted (the panel's ``extra-networks:rendered`` event,
   then two animation frames). *Cold*: a fresh page, so the card JSON is fetched, parsed and drawn; *warm*: the
   tab closed and opened again (cards already in the page).
2. **refresh with one new file**: a new LoRA is written, then the refresh button is clicked; time until the new
   card count is painted. *Incremental* (the button: only the new card is built) against *full* (every card
   rebuilt: ``refresh?full=true``). The server's own time for each is reported too (``stats.seconds``).
3. **baseline, same page, same run**: all cards put in the DOM at once (what a panel without virtualisation does,
   e.g. A1111's server-rendered HTML), timed to paint — against our virtualised grid.
4. **in-process** (no browser): listing from nothing (a fresh LoRA library reads every header, every card built)
   against an incremental refresh with one new file, and the JSON payload's size.

Usage::

    python benchmarks/extra_networks.py --write-docs          # 10 000 files, 5 repeats, appends to docs
    python benchmarks/extra_networks.py --count 500 --repeats 2   # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium")
DOCS_HEADING = "## Extra Networks panel at scale (`benchmarks/extra_networks.py`)"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run", "--disable-sync", "--disable-quic"]
TE_KEY = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
GOAL_OPEN_S = 1.0

OPEN_JS = """async ([page, close]) => {
  const root = document.querySelector('.en-root');
  const tab = document.querySelector(`.en-tab[data-page=${page}]`);
  if (close) { tab.click(); }
  const done = new Promise(r => root.addEventListener('extra-networks:rendered', r, {once: true}));
  const t0 = performance.now();
  tab.click();
  await done;
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return (performance.now() - t0) / 1000;
}"""

REFRESH_JS = """async ([full, total]) => {
  const panel = window.extraNetworks.panels.txt2img, root = document.querySelector('.en-root');
  const count = root.querySelector('.en-count');
  const t0 = performance.now();
  const stats = full ? await panel.refresh(true) : await new Promise(resolve => {
    const check = () => count.dataset.total == String(total) ? resolve(JSON.parse(root.dataset.stats)) : setTimeout(check, 1);
    root.querySelector('.en-refresh').click(); check();
  });
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  if (count.dataset.total != String(total)) throw new Error('count ' + count.dataset.total);
  return [(performance.now() - t0) / 1000, stats];
}"""

ALL_IN_DOM_JS = """async () => {
  const panel = window.extraNetworks.panels.txt2img;
  const cards = panel.data.lora.cards, host = document.createElement('div');
  host.className = 'en-window'; host.style.position = 'static';
  host.style.gridTemplateColumns = panel.win.style.gridTemplateColumns;
  const esc = s => String(s).replace(/[&<>"']/g, ch => '&#' + ch.charCodeAt(0) + ';');
  const t0 = performance.now();
  let html = '';
  for (const c of cards) html += `<div class="card" data-name="${esc(c.name)}">` + (c.preview ? `<img class="preview" loading="lazy" src="${esc(c.preview)}">` : '<div class="no-preview"></div>') +
    `<div class="button-row"><button class="en-meta">i</button><button class="en-edit">e</button></div><div class="actions"><span class="name">${esc(c.name)}</span></div></div>`;
  host.innerHTML = html;
  panel.cards.appendChild(host);
  host.getBoundingClientRect();
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  const t = (performance.now() - t0) / 1000;
  host.remove();
  return t;
}"""


def make_library(data: Path, count: int) -> Path:
    """The tiny checkpoint and ``count`` LoRA files under ``data/models/Lora``; returns the Lora folder."""
    import io

    import torch
    from PIL import Image

    from modules import demo_model

    demo_model.write_checkpoint(data / "models" / "Stable-diffusion" / "tiny.safetensors")
    folder = data / "models" / "Lora"
    tensors = {f"{TE_KEY}.lora_down.weight": torch.zeros(1, 32), f"{TE_KEY}.lora_up.weight": torch.zeros(32, 1)}
    picture = io.BytesIO()
    Image.new("RGB", (64, 96), "teal").save(picture, format="PNG")
    for i in range(count):
        write_lora(folder, i, tensors)
        if i % 50 == 0:
            base = folder / f"set{i % 100:02d}" / f"lora{i:05d}"
            base.with_suffix(".png").write_bytes(picture.getvalue())
            base.with_suffix(".json").write_text(json.dumps({"activation text": f"trigger{i}", "description": "x"}))
    return folder


def write_lora(folder: Path, i: int, tensors: dict | None = None) -> Path:
    import torch
    from safetensors.torch import save

    tensors = tensors or {f"{TE_KEY}.lora_down.weight": torch.zeros(1, 32), f"{TE_KEY}.lora_up.weight": torch.zeros(32, 1)}
    sub = folder / f"set{i % 100:02d}"
    sub.mkdir(parents=True, exist_ok=True)
    path = sub / f"lora{i:05d}.safetensors"
    path.write_bytes(save(tensors, metadata={"ss_output_name": f"many{i}", "ss_network_module": "networks.lora"}))
    return path


def in_process(data: Path, repeats: int) -> dict[str, list[float] | float]:
    """Listing from nothing vs incremental refresh, without a browser (and the payload size)."""
    from modules import cmd_args, initialize
    from modules.ui.extra_networks_cards import PageCards
    from modules.ui.extra_networks_pages import LoraPage

    state = initialize.build_state(cmd_args.parse_args(["--data-dir", str(data)]))
    library_cls = type(state.libraries["lora"])
    full, incremental, payload = [], [], b""
    cards = None
    for _ in range(repeats):
        library = library_cls(state.libraries["lora"].dirs, state.hashes, state.opts)
        cards = PageCards(LoraPage(library), state.opts)
        start = time.perf_counter()
        cards.ensure_listed()
        payload = cards.payload()
        full.append(time.perf_counter() - start)
    folder = state.paths.lora_dir
    assert cards is not None
    for n in range(repeats):
        path = write_lora(folder, 900_000 + n)
        start = time.perf_counter()
        stats = cards.refresh()
        cards.payload()
        incremental.append(time.perf_counter() - start)
        assert stats.built == 1, stats
        path.unlink()
        cards.refresh()
    state.queue.shutdown()
    return {"full": full, "incremental": incremental, "payload_mb": len(payload) / 1e6}


def start_server(data: Path) -> tuple[subprocess.Popen, str]:
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import free_port

    port = free_port()
    log = open(data / "server.log", "wb")
    env = {**os.environ, "COMMANDLINE_ARGS": "", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "webui.py", "--data-dir", str(data), "--port", str(port),
                                "--skip-load-model-at-start"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600
    while "Running on local URL" not in (data / "server.log").read_text(errors="replace"):
        if process.poll() is not None or time.time() > deadline:
            raise RuntimeError((data / "server.log").read_text())
        time.sleep(0.3)
    import urllib.request

    urllib.request.urlopen(f"{url}/sd_extra_networks/cards?page=lora", timeout=600).read()  # listing done
    return process, url


def in_browser(data: Path, url: str, count: int, repeats: int) -> dict[str, list]:
    from playwright.sync_api import sync_playwright

    results: dict[str, list] = {"cold": [], "warm": [], "all_in_dom": [], "incremental": [], "full": []}
    folder = data / "models" / "Lora"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        total = count
        for _ in range(repeats):
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()
            page.set_default_timeout(600_000)
            page.goto(url)
            page.wait_for_selector(".en-tab[data-page=lora]")
            page.wait_for_function("() => window.extraNetworks && window.extraNetworks.panels.txt2img")
            results["cold"].append(page.evaluate(OPEN_JS, ["lora", False]))
            assert int(page.locator(".en-count").get_attribute("data-total")) == total
            results["warm"].append(page.evaluate(OPEN_JS, ["lora", True]))
            results["all_in_dom"].append(page.evaluate(ALL_IN_DOM_JS))
            for kind in ("incremental", "full"):
                write_lora(folder, 800_000 + total)
                total += 1
                seconds, stats = page.evaluate(REFRESH_JS, [kind == "full", total])
                results[kind].append((seconds, stats["seconds"], stats["built"]))
            context.close()
        browser.close()
    return results


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(count: int, repeats: int, local: dict, browser: dict) -> str:
    cold, warm, dom = median(browser["cold"]), median(browser["warm"]), median(browser["all_in_dom"])
    inc = [s for s, _, _ in browser["incremental"]]
    full = [s for s, _, _ in browser["full"]]
    inc_server = [s for _, s, _ in browser["incremental"]]
    full_server = [s for _, s, _ in browser["full"]]
    chromium = subprocess.run([str(CHROMIUM), "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"### {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — Extra Networks panel, {count} LoRA files",
        "",
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores (shared with other "
        f"work); {chromium}; python {platform.python_version()}",
        f"- Command: `python benchmarks/extra_networks.py --count {count} --repeats {repeats}`; medians of "
        f"{repeats} runs (browser: a fresh page each run; min–max in brackets)",
        f"- Goal: the Lora tab opens in under {GOAL_OPEN_S:g} s → **{'met' if cold < GOAL_OPEN_S else 'NOT met'}** "
        f"({cold:.3f} s cold)",
        "",
        "| Measurement | Median (s) | Range (s) | Notes |",
        "|---|---:|---:|---|",
        f"| open Lora tab, cold (fetch + parse + draw) | {cold:.3f} | {_range(browser['cold'])} | virtualised grid |",
        f"| open Lora tab, warm (cards in the page) | {warm:.3f} | {_range(browser['warm'])} | |",
        f"| baseline: all {count} cards put in the DOM | {dom:.3f} | {_range(browser['all_in_dom'])} | "
        f"same page and data, no virtualisation ({dom / max(warm, 1e-9):.0f}× the warm open) |",
        f"| refresh, 1 new file, incremental (button) | {median(inc):.3f} | {_range(inc)} | server "
        f"{median(inc_server):.3f} s; cards built: {sorted({b for _, _, b in browser['incremental']})} |",
        f"| refresh, 1 new file, full rebuild | {median(full):.3f} | {_range(full)} | server "
        f"{median(full_server):.3f} s; cards built: {sorted({b for _, _, b in browser['full']})} |",
        f"| in-process: list from nothing (every header read, every card built) | {median(local['full']):.3f} | "
        f"{_range(local['full'])} | payload {local['payload_mb']:.2f} MB JSON |",
        f"| in-process: incremental refresh, 1 new file | {median(local['incremental']):.3f} | "
        f"{_range(local['incremental'])} | {median(local['full']) / max(median(local['incremental']), 1e-9):.1f}× "
        f"faster than from nothing |",
        "",
    ]
    return "\n".join(lines)


def _range(values: list[float]) -> str:
    return f"{min(values):.3f}–{max(values):.3f}" if values else "—"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write-docs", action="store_true", help="append the table to docs/benchmarks.md")
    parser.add_argument("--keep", action="store_true", help="keep the generated data folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not CHROMIUM.exists():
        print(f"no Chromium at {CHROMIUM} (apt-get install chromium)", file=sys.stderr)
        return 2
    data = Path(tempfile.mkdtemp(prefix="en-bench-"))
    try:
        started = time.perf_counter()
        make_library(data, args.count)
        print(f"generated {args.count} LoRA files in {time.perf_counter() - started:.1f} s under {data}")
        local = in_process(data, args.repeats)
        process, url = start_server(data)
        try:
            browser = in_browser(data, url, args.count, args.repeats)
        finally:
            process.terminate()
            process.wait(timeout=60)
        text = report(args.count, args.repeats, local, browser)
        print(text)
        if args.write_docs:
            from benchmarks.common import append_to_docs

            append_to_docs(text, heading=DOCS_HEADING)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
