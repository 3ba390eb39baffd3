"""Headless Chromium for the page tests: Debian's `chromium` and `chromium-driver` packages
(`.ci/run` installs them), driven through Selenium. Nothing is downloaded: the driver is given
by path, so Selenium Manager never runs, and every host name but the loopback's fails to
resolve, so a page that reached outside would show it in `outside_requests`."""

from __future__ import annotations

import json
import os
import shutil
from urllib.parse import urlparse

import pytest

CHROMIUM = os.environ.get("MIRRORGAN_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MIRRORGAN_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
# For a closed network: no first-run, sync, component or background fetches, no QUIC, no proxy.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--no-proxy-server",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def headless_chromium(user_data_dir: str, width: int = 1280, height: int = 1400):
    """A Selenium Chrome driver on a fresh profile in `user_data_dir`, logging network events.
    Fails the test, naming the packages, when Chromium or its driver is not installed."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            pytest.fail(f"{path} not found: the page tests need Debian's {package} "
                        "(apt-get install chromium chromium-driver; .ci/run installs it)")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS + [f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def outside_requests(driver) -> list[str]:
    """The http(s) and ws(s) URLs the browser asked for, since the last call, outside the
    loopback (Chromium's own chrome:// and data: URLs are not requests to anyone)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            url = message["params"].get("request", message["params"]).get("url", "")
            parsed = urlparse(url)
            if parsed.scheme in ("http", "https", "ws", "wss") and parsed.hostname not in LOCAL_HOSTS:
                urls.append(url)
    return urls
