"""Make docs/serve-page.png, the README's picture of `velo serve`'s page.

    .venv/bin/python scripts/serve_screenshot.py      # needs redis-server, chromium, chromium-driver

In a scratch folder: the demo's model and data, plus one file without a feature column, a
private redis-server, `velo serve` with it, one batch dispatched (with --stats: its row links its drift
report) and scored by a worker; then
headless chromium takes the page once the batch shows finished.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="velo-shot-")) / "demo"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo.py"), str(work)], check=True)
    data = work / "data"
    (data / "c").mkdir()
    lines = (data / "a" / "1.csv").read_text().splitlines()[:50]
    header = lines[0].split(",")
    drop = header.index("f2")
    (data / "c" / "broken.csv").write_text(
        "\n".join(",".join(v for i, v in enumerate(line.split(",")) if i != drop) for line in lines) + "\n"
    )
    redis_port, http_port = free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    env = {**os.environ, "VELO_STATE_DIR": str(work / "state"), "VELO_MODEL_CACHE": str(work / "cache")}
    procs = [subprocess.Popen(["redis-server", "--port", str(redis_port), "--save", "", "--appendonly", "no"])]
    try:
        time.sleep(0.5)
        model = str(work / "model.joblib")
        procs.append(
            subprocess.Popen(
                [BIN / "velo", "serve", "--model", model, "--redis", redis_url, "--port", str(http_port)], env=env
            )
        )
        base = f"http://127.0.0.1:{http_port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(base + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        subprocess.run(
            [BIN / "velo", "dispatch", data, "--model", model, "--redis", redis_url, "--stats"], env=env, check=True
        )
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "chromium"
        for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,700"):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
        try:
            browser.get(base + "/")  # the page first: its chart then draws the batch being scored
            time.sleep(3)
            subprocess.run([BIN / "velo", "worker", "--burst", "--redis", redis_url], env=env, check=True)
            time.sleep(3)
            browser.save_screenshot(str(ROOT / "docs" / "serve-page.png"))
        finally:
            browser.quit()
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(10)
        shutil.rmtree(work.parent, ignore_errors=True)
    print(f"wrote {ROOT / 'docs' / 'serve-page.png'}")


if __name__ == "__main__":
    main()
