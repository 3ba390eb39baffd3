"""The demo page in a real browser: `python -m mirrorgan_tf.demo --run-dir` on the smoke run,
driven by headless Chromium. A caption typed and submitted gives exactly the pictures `sample`
writes for the same caption, number and seed; a caption with no known word gives the message,
not a traceback; neither the page nor the demo process asks anything of any host but the
loopback (the browser's requests from its log, the process's connections from Python's audit
hook)."""

import ast
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.browser import headless_chromium, outside_requests
from tests.conftest import REPO

CAPTION = "a huge blue racoon block at the top"
NUM, SEED = 3, 5
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# `python -m mirrorgan_tf.demo ARGS`, with every socket connection and name lookup of the process
# (Gradio's start-up included) written to the log.
AUDITED_DEMO = textwrap.dedent("""
    import runpy, sys
    def audit(event, args):
        if event in ("socket.connect", "socket.getaddrinfo"):
            address = args[1] if event == "socket.connect" else args[:2]
            print("AUDIT", event, repr(address), file=sys.__stderr__, flush=True)
    sys.addaudithook(audit)
    sys.argv = ["python -m mirrorgan_tf.demo", *sys.argv[1:]]
    runpy.run_module("mirrorgan_tf.demo", run_name="__main__", alter_sys=True)
""")


@dataclass
class Demo:
    url: str
    log: Path


@pytest.fixture(scope="module")
def demo(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    root = tmp_path_factory.mktemp("demo-page")
    log = root / "demo.log"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "GRADIO_TEMP_DIR": str(root / "gradio")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", AUDITED_DEMO, "--run-dir", str(run_dir), "--port", "0"],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while not (ready := re.search(r"demo: serving .* on (http://127\.0\.0\.1:\d+/)", log.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the demo did not start (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield Demo(ready[1], log)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = headless_chromium(str(tmp_path_factory.mktemp("chromium-profile")))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def open_page(browser, url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    return WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#caption textarea"))


def set_number(browser, css, value):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value), Keys.TAB)  # the page reads the value when the box loses focus


def submit_and_wait(browser, caption):
    """Type the caption, press Generate, wait for the answer; -> the message shown."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.CSS_SELECTOR, "#caption textarea").send_keys(caption)
    browser.find_element(By.ID, "generate").click()
    return WebDriverWait(browser, 60).until(
        lambda d: (text := d.find_element(By.ID, "message").text) and ("samples of" in text or "Error" in text) and text)


def fetch(url) -> np.ndarray:
    with NO_PROXY.open(url, timeout=30) as r:
        return np.asarray(Image.open(r).convert("RGB"))


def image_sources(browser, element_id) -> list[str]:
    from selenium.webdriver.common.by import By

    return [img.get_attribute("src") for img in browser.find_elements(By.CSS_SELECTOR, f"#{element_id} img")]


def test_the_page_draws_what_sample_draws(demo, browser, trained_run, tmp_path):
    from mirrorgan_tf.sample import sample

    open_page(browser, demo.url)
    set_number(browser, "#num input[type=number]", NUM)
    set_number(browser, "#seed input", SEED)
    message = submit_and_wait(browser, CAPTION)
    assert message.startswith(f"{NUM} samples of {CAPTION!r}, seed {SEED}, random condition"), message

    grid_path, attention_path = sample(str(trained_run[0]), [CAPTION], str(tmp_path), num=NUM, seed=SEED)
    grid, attention = np.asarray(Image.open(grid_path)), np.asarray(Image.open(attention_path))
    (stages_src,), (attention_src,) = image_sources(browser, "stages"), image_sources(browser, "attention")
    np.testing.assert_array_equal(fetch(stages_src), grid)  # every stage, as sample writes it
    np.testing.assert_array_equal(fetch(attention_src), attention)
    finals = [fetch(src) for src in image_sources(browser, "images")]
    size = grid.shape[0] // 3
    assert len(finals) == NUM
    for i, image in enumerate(finals):  # the final images are the last row of sample's picture
        np.testing.assert_array_equal(image, grid[-size:, i * size:(i + 1) * size])

    from selenium.webdriver.common.by import By

    words = browser.find_element(By.ID, "words").text
    assert words == "Words read: a huge blue block at the top\nIgnored as unknown: racoon"
    assert outside_requests(browser) == []


def test_a_caption_with_no_known_word_shows_the_message(demo, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, demo.url)
    message = submit_and_wait(browser, "racoon detective microscope")
    assert message == ("Error: no word of 'racoon detective microscope' is in the model's vocabulary, so there is "
                       "nothing to draw (ignored as unknown: racoon detective microscope)")
    assert image_sources(browser, "images") == [] and image_sources(browser, "stages") == []
    assert "Traceback" not in browser.find_element(By.TAG_NAME, "body").text
    assert outside_requests(browser) == []


def test_the_demo_process_connects_to_nothing_but_the_loopback(demo):
    """Runs after the two page tests: start-up and both requests are in the log by now."""
    events = [line.split(" ", 2)[1:] for line in demo.log.read_text().splitlines() if line.startswith("AUDIT ")]
    assert ("socket.connect", repr(("127.0.0.1", int(demo.url.rsplit(":", 1)[1].strip("/"))))) in \
        [tuple(e) for e in events]  # Gradio's own probe of its page: the hook sees connections
    addresses = [ast.literal_eval(address) for _, address in events]
    hosts = {a[0] for a in addresses if isinstance(a, tuple)}  # a str is a Unix socket: local
    assert hosts <= {"127.0.0.1", "localhost", "::1"}, hosts
