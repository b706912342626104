"""The console screenshots of docs/serving.md: a real `morlaif serve` on the default adapters, the "harmful request"
example scored in Debian's chromium, written to docs/console.png; and the Live tab with the PPO demo run of
docs/ppo-demo (its metrics.jsonl), written to docs/console-live.png.

    .venv/bin/python scripts/console_screenshot.py [--adapter-root adapters] [--port 8795]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter-root", type=Path, default=Path("adapters"))
    ap.add_argument("--port", type=int, default=8795)
    ap.add_argument("--out", type=Path, default=Path("docs/console.png"))
    ap.add_argument("--runs-dir", type=Path, default=Path("docs"), help="where the run to show lives")
    ap.add_argument("--run", default="ppo-demo")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("error: Debian's chromium is not installed (apt-get install chromium)")
    url = f"http://127.0.0.1:{args.port}"
    cmd = [sys.executable, "-m", "morlaif", "serve", "--insecure-dev", "--port", str(args.port)]
    cmd += ["--adapter-root", str(args.adapter_root), "--runs-dir", str(args.runs_dir), "--log-level", "warning"]
    weights = args.adapter_root / "weights.json"
    if weights.is_file():
        cmd += ["--scalarizer-file", str(weights)]
    server = subprocess.Popen(cmd, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                sys.exit("error: the PM server did not become ready")
            time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 980}, device_scale_factor=1)
            page.goto(url + "/")
            expect(page.locator("#weights input[type=range]").first).to_be_visible(timeout=30_000)
            page.select_option("#example", label="harmful request")
            page.click("#score-btn")
            expect(page.locator("#results .reward[data-value]")).to_have_count(2, timeout=60_000)
            page.screenshot(path=str(args.out), full_page=True)
            page.click('nav .tab[data-tab="live"]')
            expect(page.locator("#histograms [data-histogram]").first).to_be_visible(timeout=30_000)
            expect(page.locator('[data-stat="rate"] b')).not_to_have_text("–", timeout=30_000)  # two polls
            page.select_option("#run", args.run)
            expect(page.locator("#run-charts path[data-series]").first).to_be_attached(timeout=30_000)
            live = args.out.with_name(args.out.stem + "-live.png")
            page.screenshot(path=str(live), full_page=True)
            browser.close()
        print(f"wrote {args.out} and {live}")
    finally:
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
