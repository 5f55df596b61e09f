"""The encoder's page in a real headless Chromium against real service processes (tiny profile).

Debian's ``chromium`` and ``chromium-driver`` packages (``.ci/run`` installs them), driven by Selenium with
both paths given, so nothing is downloaded at test time. One decoder (auth on) serves two encoders started
by their launchers: one without auth, one with a token. The page encodes a photo from examples/ and shows
its sketch, reconstruction and candidates, and the payload it offers for download is the one whose bytes
it shows; a non-image upload, a decoder refusal and a missing token each show the service's message
(images drawn here).

``TEXTSKETCH_PAGE_SCREENSHOT=docs/images/page.png`` also writes the first test's screenshot there (the
README's picture); it is always saved in the test's temporary folder.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image, ImageDraw

from services.bitstream.container import parse
from services.testing.servers import start_service
from tests.paths import EXAMPLES

CHROMIUM = os.environ.get("TEXTSKETCH_CHROMIUM") or next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)
CHROMEDRIVER = os.environ.get("TEXTSKETCH_CHROMEDRIVER") or shutil.which("chromedriver")

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found (Debian: apt-get install chromium "
                       "chromium-driver; .ci/run installs them; or set TEXTSKETCH_CHROMIUM)"),
    pytest.mark.skipif(CHROMIUM is not None and CHROMEDRIVER is None,
                       reason=f"chromium found at {CHROMIUM} but no chromedriver (Debian: apt-get install "
                       "chromium-driver; or set TEXTSKETCH_CHROMEDRIVER)"),
]

DECODER_TOKEN = "decoder-secret"
PAGE_TOKEN = "page-secret"
WAIT_S = 150  # one page run: encode (+ selection), inspect, sketch, decode (+ candidates) on a busy CPU
MAX_DECODER_OUTPUT = 384 * 256  # the decoder refuses larger outputs: the decoder-error path below


def scene(size: tuple[int, int]) -> Image.Image:
    """A small drawn landscape: sky, sun, hills, a house (edges for the sketch)."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(h):  # sky gradient
        t = y / h
        draw.line([(0, y), (w, y)], fill=(int(90 + 120 * t), int(150 + 70 * t), int(230 - 40 * t)))
    draw.ellipse((w * 0.72, h * 0.10, w * 0.86, h * 0.31), fill=(250, 210, 80))
    draw.polygon([(0, h * 0.72), (w * 0.35, h * 0.52), (w * 0.7, h * 0.7), (w, h * 0.58), (w, h), (0, h)],
                 fill=(70, 140, 70))
    draw.rectangle((w * 0.18, h * 0.48, w * 0.40, h * 0.78), fill=(200, 70, 50))
    draw.polygon([(w * 0.15, h * 0.50), (w * 0.29, h * 0.33), (w * 0.43, h * 0.50)], fill=(110, 50, 40))
    draw.rectangle((w * 0.26, h * 0.62, w * 0.31, h * 0.78), fill=(60, 40, 30))
    return image


def save_png(image: Image.Image, path: Path) -> Path:
    image.save(path, format="PNG")
    return path


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """A decoder with auth on, an encoder without auth and one with a token, all ready."""
    cache = tmp_path_factory.mktemp("page-cache")
    logs = tmp_path_factory.mktemp("page-logs")
    common = {"TEXTSKETCH_PROFILE": "tiny", "TEXTSKETCH_CACHE_DIR": str(cache)}
    decoder = start_service("decoder_service", {
        **common,
        "TEXTSKETCH_MAX_OUTPUT_PIXELS": str(MAX_DECODER_OUTPUT),
        "TEXTSKETCH_DECODER_AUTH_TOKEN": DECODER_TOKEN,
        "TEXTSKETCH_DECODER_MAX_BATCH_SIZE": "2",
        "TEXTSKETCH_DECODER_MAX_CANDIDATES": "2",
        "TEXTSKETCH_DECODER_WARMUP_BATCH_SIZES": "[1]",
    }, logs)
    started = [decoder]
    try:
        decoder.wait_ready(300)
        encoder_env = {**common, "TEXTSKETCH_PROMPT_SOURCE": "given",
                       "TEXTSKETCH_ENCODER_DECODER_URL": decoder.url, "TEXTSKETCH_ENCODER_DECODER_TOKEN": DECODER_TOKEN,
                       "TEXTSKETCH_ENCODER_SELECTION_CLIP_MODEL": "tiny", "TEXTSKETCH_ENCODER_MAX_CANDIDATES": "2"}
        open_encoder = start_service("encoder_service", encoder_env, logs)
        started.append(open_encoder)
        secured = start_service("encoder_service", {**encoder_env, "TEXTSKETCH_ENCODER_AUTH_TOKEN": PAGE_TOKEN}, logs)
        started.append(secured)
        open_encoder.wait_ready(180)
        secured.wait_ready(180)
        yield {"decoder": decoder, "encoder": open_encoder, "secured": secured}
    finally:
        for service in started:
            service.stop()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()  # both paths given: Selenium Manager (downloads) is never asked
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1360,1000", "--no-first-run", "--disable-extensions", "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The encoder's page in the browser, by element id."""

    def __init__(self, driver, url: str) -> None:
        self.driver = driver
        driver.get(url)
        assert driver.title.startswith("textsketch")

    def el(self, element_id: str):
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def text(self, element_id: str) -> str:
        return self.el(element_id).text

    def choose(self, path: Path) -> None:
        self.el("file").send_keys(str(path))

    def select(self, element_id: str, value: str) -> None:
        from selenium.webdriver.support.select import Select

        Select(self.el(element_id)).select_by_value(value)

    def type(self, element_id: str, value: str) -> None:
        field = self.el(element_id)
        field.clear()
        field.send_keys(value)

    def run(self) -> str:
        """Click Encode and decode; the page's final state (done or error)."""
        from selenium.webdriver.support.ui import WebDriverWait

        def state(driver) -> str:
            return driver.find_element("tag name", "body").get_attribute("data-state")

        self.el("encode").click()
        WebDriverWait(self.driver, WAIT_S, poll_frequency=0.2).until(lambda d: state(d) in ("done", "error"))
        return state(self.driver)

    def blob(self, url: str) -> bytes:
        """The bytes behind one of the page's blob: URLs, read inside the page."""
        encoded = self.driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            fetch(arguments[0]).then((r) => r.arrayBuffer()).then((buffer) => {
              let text = ""; for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
              done(btoa(text));
            }).catch((e) => done("ERROR " + e));""", url)
        assert not encoded.startswith("ERROR"), encoded
        return base64.b64decode(encoded)

    def image(self, element_id: str) -> Image.Image:
        return Image.open(io.BytesIO(self.blob(self.el(element_id).get_attribute("src"))))

    def screenshot(self, path: Path) -> None:
        """The whole page: the window grown until it holds all of it (at most 2400 px high)."""
        for _ in range(3):
            inner, height = self.driver.execute_script(
                "return [window.innerHeight, document.documentElement.scrollHeight]")
            if height <= inner:
                break
            size = self.driver.get_window_size()
            self.driver.set_window_size(size["width"], min(size["height"] + height - inner, 2400))
        self.driver.save_screenshot(str(path))


def test_the_page_encodes_shows_the_payload_and_decodes_through_the_encoder(services, browser, tmp_path):
    start = time.monotonic()
    page = Page(browser, services["encoder"].url)
    page.choose(EXAMPLES / "kodim23.png")  # 384x256
    page.select("prompt-source", "given")
    page.type("text", "two colorful parrots on a branch")
    page.select("candidates", "2")
    state = page.run()
    assert state == "done", page.text("error")

    # the byte count shown is the length of the payload the page offers for download
    payload_data = page.blob(page.el("download").get_attribute("href"))
    payload = parse(payload_data)
    shown = int(page.el("payload-bytes").get_attribute("data-bytes"))
    assert shown == len(payload_data) and page.text("payload-bytes") == f"{len(payload_data):,}"
    assert page.text("prompt-bytes") == f"{len(payload.prompt)} B"
    assert page.text("sketch-bytes") == f"{len(payload.sketch)} B"
    overhead = len(payload_data) - len(payload.prompt) - len(payload.sketch)
    assert page.text("overhead-bytes") == f"{overhead} B"
    assert page.text("bpp") == f"{len(payload_data) * 8 / (384 * 256):.5f}"
    assert page.text("prompt-text") == "two colorful parrots on a branch"
    assert page.el("download").get_attribute("download") == "kodim23.tsk"

    # the sketch at the working size, the reconstruction at the original size, both candidates, the chosen one
    assert page.image("sketch").size == (768, 512)
    reconstruction = page.image("reconstruction")
    assert reconstruction.size == (384, 256)
    assert payload.candidate in (1, 2) and page.text("candidate") == str(payload.candidate)
    figures = page.el("candidate-list").find_elements("tag name", "figure")
    assert [f.get_attribute("data-index") for f in figures] == ["1", "2"]
    chosen = [f.get_attribute("data-index") for f in figures if "chosen" in f.get_attribute("class")]
    assert chosen == [str(payload.candidate)]

    # the forwarded decode is the decoder's own answer
    direct = httpx.post(f"{services['decoder'].url}/decode", content=payload_data, timeout=120,
                        headers={"Content-Type": "application/msgpack", "Authorization": f"Bearer {DECODER_TOKEN}"})
    assert direct.status_code == 200
    assert page.blob(page.el("reconstruction").get_attribute("src")) == direct.content

    # the page stored nothing
    assert browser.execute_script("return [localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]
    screenshot = tmp_path / "page.png"
    page.screenshot(screenshot)
    assert Image.open(screenshot).size[0] >= 1000
    if os.environ.get("TEXTSKETCH_PAGE_SCREENSHOT"):  # the README's copy: 256 colours, a third of the bytes
        with Image.open(screenshot) as shot:
            shot.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
                os.environ["TEXTSKETCH_PAGE_SCREENSHOT"], optimize=True)
    print(f"screenshot: {screenshot}; page run {time.monotonic() - start:.1f} s")


def test_errors_of_either_service_are_shown_as_their_messages(services, browser, tmp_path):
    page = Page(browser, services["encoder"].url)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    page.choose(notes)
    assert page.run() == "error"
    message = page.text("error")
    assert message.startswith("The encoder answered 415 unsupported_media to /encode: ")
    assert "send the image as its own content type" in message and "text/plain" in message
    assert page.el("payload").get_attribute("hidden") is not None  # nothing half-shown

    # the encoder codes it, the decoder (a tighter output limit) refuses it: its message, through the encoder
    page.choose(save_png(scene((768, 512)), tmp_path / "large.png"))
    page.select("prompt-source", "given")
    page.type("text", "a house")
    assert page.run() == "error"
    message = page.text("error")
    assert message.startswith("The decoder answered 422 invalid_payload to /decode: "), message
    assert f"over this decoder's {MAX_DECODER_OUTPUT}-pixel limit" in message
    assert page.el("payload").get_attribute("hidden") is None  # what the encoder did is still shown
    assert page.el("reconstruction").get_attribute("hidden") is not None


def test_with_auth_on_the_page_works_with_the_token_and_says_401_without(services, browser, tmp_path):
    page = Page(browser, services["secured"].url)
    page.choose(save_png(scene((192, 128)), tmp_path / "small.png"))
    page.select("prompt-source", "given")
    page.type("text", "a small house")
    page.select("mode", "pic")
    assert page.run() == "error"
    message = page.text("error")
    assert message.startswith("The encoder answered 401 unauthorized to /encode: missing or wrong bearer token")
    assert "Type the services' token into the Token field." in message

    page.type("token", PAGE_TOKEN)
    assert page.run() == "done", page.text("error")
    assert page.image("reconstruction").size == (192, 128)
    assert page.text("sketch-note") == "none: PIC sends the prompt only"
    assert browser.execute_script("return [localStorage.length, document.cookie]") == [0, ""]
