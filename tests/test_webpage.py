"""The page of `python -m gpt.serve` (gpt/serve/web/), used as a person uses it: a real headless Chromium, driven
through selenium, against real servers on two tiny models trained here (a base model and one tuned on
conversations). Each state is saved as a screenshot in the test's folder (and in $GPT_SCREENSHOT_DIR when set:
docs/serving-page.png is made so). Without Chromium and its driver (Debian: apt-get install chromium
chromium-driver) the module skips, saying so."""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import pytest

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e \".[dev]\"")
httpx = pytest.importorskip("httpx")

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
if not (BROWSER and DRIVER):
    pytest.skip("no Chromium with chromedriver on PATH for the browser tests (Debian: apt-get install chromium "
                "chromium-driver)", allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from test_serve import KEY, MODEL, chat_ckpt, ckpt, start_server  # noqa: E402,F401 (fixtures used by name)

WIDE, PHONE = (1200, 860), (390, 844)


@pytest.fixture(scope="module")
def base_server(ckpt, tmp_path_factory):  # noqa: F811
    running = start_server(ckpt, tmp_path_factory.mktemp("page_logs") / "base.log", "--max_tokens", "100000")
    yield running
    running.process.kill()
    running.process.wait()


@pytest.fixture(scope="module")
def chat_server(chat_ckpt, tmp_path_factory):  # noqa: F811
    running = start_server(chat_ckpt, tmp_path_factory.mktemp("page_logs") / "chat.log")
    yield running
    running.process.kill()
    running.process.wait()


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--disable-extensions", "--no-first-run", "--force-device-scale-factor=1",
                     "--force-prefers-reduced-motion", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    driver.set_window_size(*WIDE)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> "Shots":
    return Shots(tmp_path_factory.mktemp("screenshots"))


class Shots:
    """Screenshots of each state, in the test's folder; with GPT_SCREENSHOT_DIR set, also there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.also = Path(os.environ["GPT_SCREENSHOT_DIR"]) if os.environ.get("GPT_SCREENSHOT_DIR") else None

    def __call__(self, driver, name: str) -> Path:
        path = self.folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot for {name}"
        if self.also:
            self.also.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, self.also / path.name)
        return path


# ---------------------------------------------------------------------------------------------------
# Driving the page


def wait(driver, condition, timeout: float = 30, what: str = "the page"):
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d), message=f"waited for {what}")


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


STARTED = "return document.body.dataset.ready || (document.getElementById('key-dialog').open && 'asks for a key')"


def open_page(driver, server, query: str = "", key: str = KEY, fresh: bool = False) -> str:
    """Open the page; with fresh=True forget what this browser kept for the server first (its key and settings).
    Answers the key dialog when it asks; returns "yes" once the page is ready (or "asks for a key" again)."""
    if fresh:
        driver.get(server.url + "/health")
        js(driver, "localStorage.clear()")
    driver.get(server.url + "/" + query)
    if wait(driver, lambda d: js(d, STARTED), what="the page to start or ask for the key") == "asks for a key":
        driver.find_element(By.ID, "key-input").send_keys(key, Keys.ENTER)
        wait(driver, lambda d: not js(d, "return document.getElementById('key-dialog').open") or
             js(d, "return document.getElementById('key-problem').textContent"), what="the key to be taken")
    return wait(driver, lambda d: js(d, STARTED), what="the page to start")


def type_and_send(driver, box_id: str, text: str) -> None:
    box = driver.find_element(By.ID, box_id)
    box.clear()
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def last_answer(driver):
    """Wait for the last answer's figures line; returns (the answer's text, its token spans, the figures line)."""
    stats = wait(driver, lambda d: (d.find_elements(By.CSS_SELECTOR, ".stats") or [None])[-1], what="an answer")
    box = js(driver, "return arguments[0].previousElementSibling", stats)
    tokens = box.find_elements(By.CSS_SELECTOR, ".tok[data-step]")
    text = js(driver, "return [...arguments[0].querySelectorAll('.tok')].map(t => t.textContent).join('')", box)
    return text, tokens, stats


def inspector_rows(driver) -> list[dict]:
    wait(driver, lambda d: d.find_element(By.ID, "token-info").is_displayed(), what="the token's inspector")
    return js(driver, """return [...document.querySelectorAll('#token-info tr')].map(r => ({
        token: r.dataset.token, logprob: Number(r.dataset.logprob), picked: r.classList.contains('picked'),
        shown: r.querySelector('.p').textContent}))""")


def percent(logprob: float) -> str:
    p = math.exp(logprob)
    return "100%" if p >= 0.9995 else f"{100 * p:.1f}%" if p >= 0.001 else "<0.1%"


def error_text(driver) -> str:
    box = wait(driver, lambda d: d.find_element(By.ID, "error") if d.find_element(By.ID, "error").is_displayed()
               else None, what="an error")
    return box.text


# ---------------------------------------------------------------------------------------------------
# Chat


def test_chat_asks_for_the_key_once_streams_answers_and_shows_the_apis_probabilities(browser, chat_server, shots):
    # A wrong key is asked again, saying why; then the right one.
    assert open_page(browser, chat_server, fresh=True, key="not-the-key") == "asks for a key"
    problem = browser.find_element(By.ID, "key-problem").text
    assert "not accepted (401)" in problem and "Incorrect API key" in problem
    browser.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    wait(browser, lambda d: js(d, "return document.body.dataset.ready"))
    browser.refresh()  # asked once: the browser keeps the key
    wait(browser, lambda d: js(d, "return document.body.dataset.ready"))
    assert not js(browser, "return document.getElementById('key-dialog').open")
    assert browser.find_element(By.ID, "tab-chat").get_attribute("aria-selected") == "true"
    assert "tuned on conversations" in browser.find_element(By.ID, "mode-note").text

    # Settings from the URL, a system message, a message sent with Enter.
    open_page(browser, chat_server, "?temperature=1&seed=3&max_tokens=20&top_logprobs=4")
    assert browser.find_element(By.ID, "temperature-out").text == "1.00"
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "3"
    browser.find_element(By.CSS_SELECTOR, "#system-box summary").click()
    browser.find_element(By.ID, "system").send_keys("one word.")
    type_and_send(browser, "chat-input", "sky?")
    text, tokens, stats = last_answer(browser)

    messages = [{"role": "system", "content": "one word."}, {"role": "user", "content": "sky?"}]
    api = chat_server.client().chat.completions.create(model=MODEL, messages=messages, temperature=1, top_p=1,
                                                       seed=3, max_tokens=20, logprobs=True, top_logprobs=4)
    [choice] = api.choices
    assert text == choice.message.content and len(tokens) == len(choice.logprobs.content) > 1
    figures = stats.text
    assert f"{api.usage.completion_tokens} tokens in" in figures and "tokens/s" in figures
    assert f"prompt {api.usage.prompt_tokens} tokens" in figures and "seed 3" in figures
    assert "the model ended its turn" in figures
    shots(browser, "chat")

    # Point at each token: the alternatives and their probabilities are the API's for the same request and seed.
    for span, expected in zip(tokens, choice.logprobs.content):
        ActionChains(browser).move_to_element(span).perform()
        rows = inspector_rows(browser)
        assert [(r["token"], r["logprob"]) for r in rows] == [(t.token, t.logprob) for t in expected.top_logprobs]
        assert [r["shown"] for r in rows] == [percent(t.logprob) for t in expected.top_logprobs]
        assert [r["token"] for r in rows if r["picked"]] == [expected.token]
        assert float(span.get_attribute("data-logprob")) == expected.logprob
        head = browser.find_element(By.CSS_SELECTOR, "#token-info .info-head").text
        assert f"Token {int(span.get_attribute('data-step')) + 1}: the model drew" in head
    shots(browser, "chat-probabilities")

    # A follow-up too long for the model's 48 positions: the error in words, the message back in the box.
    type_and_send(browser, "chat-input", "grass? snow? sun? " * 2)
    message = error_text(browser)
    assert message.startswith("The server refused the request (400)") and "tokens long" in message
    assert browser.find_element(By.ID, "chat-input").get_attribute("value") == "grass? snow? sun? " * 2
    assert len(browser.find_elements(By.CSS_SELECTOR, ".message")) == 2  # the first exchange only
    shots(browser, "chat-error")

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".message") == [] and not browser.find_element(By.ID, "error").is_displayed()


# ---------------------------------------------------------------------------------------------------
# A base model: continue text


def test_a_base_model_continues_text_and_says_why_chat_is_off(browser, base_server, shots):
    open_page(browser, base_server, "?temperature=0&max_tokens=60", fresh=True)
    chat_tab = browser.find_element(By.ID, "tab-chat")
    assert chat_tab.get_attribute("aria-disabled") == "true"
    chat_tab.click()  # stays off
    assert not browser.find_element(By.ID, "chat-pane").is_displayed()
    assert "Chat is off" in browser.find_element(By.ID, "mode-note").text
    assert "no chat template" in browser.find_element(By.ID, "mode-note").text

    box = browser.find_element(By.ID, "prompt")
    box.send_keys("the", Keys.SHIFT, Keys.ENTER, Keys.SHIFT, "dog ")  # Shift+Enter: a new line, nothing sent
    assert box.get_attribute("value") == "the\ndog " and not browser.find_elements(By.CSS_SELECTOR, ".stats")
    type_and_send(browser, "prompt", "the dog ")
    text, tokens, stats = last_answer(browser)
    api = base_server.client().completions.create(model=MODEL, prompt="the dog ", max_tokens=60, temperature=0,
                                                  logprobs=5)
    [choice] = api.choices
    assert text == choice.text and len(tokens) == 60 and "maximum tokens reached" in stats.text
    assert browser.find_element(By.CSS_SELECTOR, "#completion .prompt-text").text == "the dog "
    for i in (0, 11, 59):
        ActionChains(browser).move_to_element(tokens[i]).perform()
        rows = inspector_rows(browser)
        expected = sorted(choice.logprobs.top_logprobs[i].items(), key=lambda kv: -kv[1])
        assert [(r["token"], r["logprob"]) for r in rows] == expected
        assert [r["token"] for r in rows if r["picked"]] == [choice.logprobs.tokens[i]]
    assert "Temperature 0" in browser.find_element(By.ID, "token-info").text
    shots(browser, "serving-page")  # the picture in docs/serving.md

    # With the keyboard alone: Tab to the answer, arrows walk its tokens.
    tokens[0].click()
    tokens[0].click()  # pinned, then let go
    browser.find_element(By.ID, "prompt").click()
    ActionChains(browser).send_keys(Keys.TAB * 3).perform()  # Continue, (Stop: off now), Use as prompt, the answer
    focused = js(browser, "return document.activeElement.classList.contains('tokens')")
    assert focused, js(browser, "return document.activeElement.outerHTML.slice(0, 80)")
    ActionChains(browser).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).perform()
    assert inspector_rows(browser)[0]["token"] == sorted(choice.logprobs.top_logprobs[2].items(), key=lambda kv: -kv[1])[0][0]
    browser.find_element(By.ID, "keep-text").send_keys(Keys.ENTER)
    assert browser.find_element(By.ID, "prompt").get_attribute("value") == "the dog " + choice.text


def test_a_long_answer_streams_in_and_stop_ends_it(browser, base_server, shots):
    open_page(browser, base_server, "?temperature=1&max_tokens=50000")
    type_and_send(browser, "prompt", "the ")
    count = lambda d: len(d.find_elements(By.CSS_SELECTOR, "#completion .tok"))  # noqa: E731
    wait(browser, lambda d: count(d) >= 5, what="the first tokens")
    seen = count(browser)
    wait(browser, lambda d: count(d) > seen + 5, what="more tokens, streamed in")
    assert browser.find_element(By.CSS_SELECTOR, "#text-pane .stop").is_enabled()
    shots(browser, "streaming")
    browser.find_element(By.CSS_SELECTOR, "#text-pane .stop").click()
    _, tokens, stats = last_answer(browser)
    assert "stopped by you" in stats.text and 5 < len(tokens) < 50000
    time.sleep(0.3)
    assert count(browser) == len(tokens)  # nothing more arrives
    deadline = time.time() + 15
    while base_server.health()["running_samples"] and time.time() < deadline:  # the server let go of the row
        time.sleep(0.05)
    assert base_server.health()["running_samples"] == 0


def test_a_bad_request_is_shown_in_words(browser, base_server, shots):
    open_page(browser, base_server)
    type_and_send(browser, "prompt", "Ω")  # a character the model's tokenizer never saw
    message = error_text(browser)
    assert message.startswith("The server refused the request (400): the prompt cannot be tokenized")
    assert "Ω" in message and not browser.find_element(By.ID, "completion").is_displayed()
    shots(browser, "error")


def test_settings_survive_a_reload_and_the_page_fits_a_phone(browser, base_server, shots):
    open_page(browser, base_server, fresh=True)
    seed = browser.find_element(By.ID, "seed")
    seed.send_keys("42")
    browser.find_element(By.ID, "shading").click()
    assert "seed=42" in browser.current_url and "shading=false" in browser.current_url
    open_page(browser, base_server)  # no query: what the browser kept
    assert browser.find_element(By.ID, "seed").get_attribute("value") == "42"
    assert not browser.find_element(By.ID, "shading").is_selected()
    assert "seed=42" in browser.current_url
    browser.find_element(By.ID, "shading").click()

    browser.set_window_size(*PHONE)
    try:
        open_page(browser, base_server, "?max_tokens=40")
        assert not js(browser, "return document.getElementById('settings-box').open")  # the answer first
        type_and_send(browser, "prompt", "the cat ")
        _, tokens, stats = last_answer(browser)
        assert "seed 42" in stats.text
        tokens[3].click()  # a tap
        rows = inspector_rows(browser)
        assert len(rows) == 5 and sum(r["picked"] for r in rows) <= 1
        info = browser.find_element(By.ID, "token-info").rect
        width = js(browser, "return document.documentElement.clientWidth")  # (less the scroll bar)
        assert info["x"] == 0 and info["width"] == pytest.approx(width, abs=1)  # a sheet at the bottom
        assert js(browser, "return document.documentElement.scrollWidth <= document.documentElement.clientWidth")  # no sideways scroll
        shots(browser, "phone")
    finally:
        browser.set_window_size(*WIDE)
