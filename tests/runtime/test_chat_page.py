"""`modelyard chat` in a real headless Chromium (Debian's chromium + chromium-driver, driven by
selenium): a real accelerate server with an API key, the chat page in front of it, a message typed
into the page, the model's answer seen in the page. The screenshot is kept in
.work/artifacts/chat-page.png."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from modelyard.runtime.tiny import make_tiny_llama
from tests.runtime.accelerate_helpers import MODELYARD, Server, free_port, sample, scrape

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".work" / "artifacts"
KEY = "sk-chat-page-77ab"
CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-dev-shm-usage", "--disable-extensions", "--disable-sync", "--no-first-run",
                  "--window-size=1280,900"]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    base = make_tiny_llama(root / "tiny")
    (root / "keys").write_text(KEY + "\n")
    s = Server(["--engine", "accelerate", "--model", str(base), "--served-model-name", "tiny", "--precision", "float32",
                "--max-model-len", "256", "--api-key-file", str(root / "keys")], root / "serve.log")
    s.keys = root / "keys"
    yield s.wait_healthy(timeout=300)
    s.stop()


@pytest.fixture(scope="module")
def page(endpoint, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("chat-page") / "chat.log"
    proc = subprocess.Popen([MODELYARD, "chat", "--endpoint", endpoint.url + "/v1", "--api-key-file", str(endpoint.keys),
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None, f"modelyard chat exited:\n{log.read_text()}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"chat page not up:\n{log.read_text()}"
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "Debian's chromium and chromium-driver are missing: run scripts/install-tools.sh"
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    yield b
    b.quit()


def _bot_text(b) -> str:
    from selenium.webdriver.common.by import By

    for sel in ('[data-testid="bot"]', ".message.bot", ".bot"):
        texts = [e.text.strip() for e in b.find_elements(By.CSS_SELECTOR, sel)]
        if any(texts):
            return texts[-1]
    return ""


def _answered(endpoint, before) -> float:
    key = ("modelyard_requests_total", "tiny", "chat_completions", "200")
    now = sample(scrape(endpoint.url), key[0], model=key[1], endpoint=key[2], code=key[3])
    return now - sample(before, key[0], model=key[1], endpoint=key[2], code=key[3])


def test_the_chat_page_answers_a_typed_message(endpoint, page, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    before = scrape(endpoint.url)
    browser.get(page)
    box = WebDriverWait(browser, 60).until(lambda b: b.find_element(By.CSS_SELECTOR, "textarea"))
    box.send_keys("Hello, who are you?")
    box.send_keys(Keys.ENTER)
    # the answer came from our server, through the API key (a 200 streamed chat completion) ...
    WebDriverWait(browser, 180, poll_frequency=1).until(lambda b: _answered(endpoint, before) >= 1)
    # ... and the page shows it once it stops processing
    body = lambda b: b.find_element(By.TAG_NAME, "body").text  # noqa: E731
    WebDriverWait(browser, 60).until(lambda b: "processing" not in body(b) and _bot_text(b))
    answer = _bot_text(browser)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "chat-page.png"))
    assert answer.strip(" .\n") and "Hello, who are you?" in body(browser)
    assert "error" not in answer.lower()
    assert (ARTIFACTS / "chat-page.png").stat().st_size > 10_000


def test_chat_refuses_an_endpoint_that_wants_a_key_it_does_not_have(endpoint):
    r = subprocess.run([MODELYARD, "chat", "--endpoint", endpoint.url + "/v1", "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--api-key-file" in r.stderr
