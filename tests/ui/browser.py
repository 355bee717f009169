"""A real headless Chromium for UI tests: Debian's `chromium` and `chromium-driver`, never a download.

Missing packages are installed with apt-get when running as root (as CI does); otherwise the test
fails and says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def ensure_chromium() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"the dashboard tests need Debian's chromium and chromium-driver: run `sudo {INSTALL}`")
    started = time.monotonic()
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(["sh", "-c", INSTALL + " >/dev/null"], env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0 or not os.path.exists(CHROMEDRIVER):
        raise RuntimeError(f"installing chromium failed ({INSTALL}):\n{done.stderr[-2000:]}")
    print(f"installed chromium and chromium-driver in {time.monotonic() - started:.0f}s")


def start_browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    ensure_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1500",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    return driver


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
