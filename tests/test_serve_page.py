"""serve.py's web page in a real browser: headless Chromium, driven by Selenium, against serve.py
on 127.0.0.1. The page must show the astronaut's one box and the emotion the API gives, a file
that is not an image as an error in words, and results for frames of Chromium's fake webcam.

Skips when Chromium, its driver or Selenium is not installed (`.ci/run` installs them:
apt-get install chromium chromium-driver). The screenshot goes to the test's tmp folder; with
FER_PAGE_SCREENSHOT=docs/serve_page.png the page serves the default model and a small copy of the
screenshot is written there too (the README's picture).
"""
import os
import re
import shutil
from pathlib import Path

import pytest
import requests
from PIL import Image

from helpers import ROOT
from inference.server import serve_process

ASTRONAUT = ROOT / "Data" / "samples" / "astronaut.jpg"
WAIT_S = 30


@pytest.fixture
def browser():
    """Headless Chromium, or a skip (before the model is made) when it is not installed."""
    chrome = launch()
    yield chrome
    chrome.quit()


def launch(*flags):
    """Headless Chromium with a fake webcam (a test pattern, or `--use-file-for-fake-video-capture`)."""
    webdriver = pytest.importorskip("selenium.webdriver")
    binary = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if binary is None or driver is None:
        pytest.skip("Chromium or chromedriver is not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1200,700", "--disable-extensions",
                 "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", *flags):
        options.add_argument(flag)
    # The explicit driver path keeps Selenium Manager from looking for (and downloading) one.
    return webdriver.Chrome(options=options, service=Service(driver))


def write_y4m(path: Path, frames) -> Path:
    """RGB frames (H, W, 3) -> an uncompressed 4:2:0 Y4M clip, the file format Chromium's fake webcam plays."""
    import cv2

    h, w = frames[0].shape[:2]
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            f.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())
    return path


def settled(browser):
    """Waits until the page has shown a result or an error; returns which."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, WAIT_S).until(
        lambda b: b.find_element("tag name", "body").get_attribute("data-state") in ("done", "error"))
    return browser.find_element("tag name", "body").get_attribute("data-state")


def small_png(src: Path, dst: Path) -> None:
    """The screenshot in 256 colours: the README's copy stays small."""
    Image.open(src).convert("RGB").quantize(256).save(dst, optimize=True)


def test_page_shows_the_faces_the_api_gives(browser, served_model, tmp_path):
    screenshot_to = os.environ.get("FER_PAGE_SCREENSHOT")
    checkpoint, cache = served_model
    model = [] if screenshot_to else ["--checkpoint", str(checkpoint), "--cache-dir", str(cache)]
    with serve_process(*model, log=tmp_path / "serve.log", timeout=120) as (url, _):
        for _ in range(4):  # also warms every worker up, so the page shows a warm time
            api = requests.post(url + "predict", data=ASTRONAUT.read_bytes(), timeout=30,
                                headers={"Content-Type": "image/jpeg"}).json()
        assert len(api["faces"]) == 1

        browser.get(url)
        browser.find_element("id", "file").send_keys(str(ASTRONAUT))
        assert settled(browser) == "done", browser.find_element("id", "error").text
        boxes = browser.find_elements("css selector", "#stage .box")
        cards = browser.find_elements("css selector", "#faces .face")
        emotion = api["faces"][0]["emotion"]
        assert len(boxes) == 1 and len(cards) == 1
        assert boxes[0].get_attribute("data-emotion") == emotion and boxes[0].text.split()[1] == emotion
        assert cards[0].get_attribute("data-emotion") == emotion and f"Face 1: {emotion}" in cards[0].text
        assert browser.find_element("id", "status").text.startswith("1 face")
        assert browser.find_element("id", "error").text == ""
        loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert all(name.startswith(url) for name in loaded), loaded  # nothing from elsewhere: works offline
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        if screenshot_to:
            small_png(tmp_path / "serve_page.png", ROOT / screenshot_to)

        text = tmp_path / "notes.jpg"
        text.write_text("not a photo")
        browser.execute_script("document.body.dataset.state = ''")
        browser.find_element("id", "file").send_keys(str(text))
        assert settled(browser) == "error"
        assert "not an image" in browser.find_element("id", "error").text
        assert browser.find_elements("css selector", "#stage .box") == []

        # the page worked above under its Content-Security-Policy; the browser saw no violation of it
        policy = browser.execute_script("return fetch('/').then(r => r.headers.get('content-security-policy'))")
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
        console = [entry["message"] for entry in browser.get_log("browser")]
        assert not [m for m in console if "Content Security Policy" in m], console
        # a page of another origin cannot read the API (no --cors-origin); the server's own 403 for its
        # POST is checked in test_serve.py, where the answer can be read
        status = browser.execute_script(
            "return fetch(arguments[0] + 'predict', {method: 'POST', body: new Blob(['x'], {type: 'image/jpeg'})})"
            ".then(r => r.status).catch(e => 'blocked')", url.replace("127.0.0.1", "localhost"))
        assert status == "blocked"

        browser.execute_script("document.body.dataset.state = ''")
        browser.find_element("id", "camera").click()  # Chromium's fake webcam: frames of a test pattern
        assert settled(browser) == "done", browser.find_element("id", "error").text
        assert re.match(r"\d+ faces? · 640x480 ·", browser.find_element("id", "status").text)
        browser.find_element("id", "camera").click()
        assert browser.find_element("id", "status").text == "webcam off"
    assert (tmp_path / "serve_page.png").stat().st_size > 10_000


def test_webcam_faces_are_followed_and_smoothed(served_model, tmp_path):
    """The fake webcam plays the sample head drifting (a clip made here): the page sends its frames
    with a session id, and shows the face by its track (#1) with the smoothed emotion."""
    from benchmarks.clips import astronaut_head, drifting, render

    frames, _ = render(drifting(astronaut_head(300), frames=30), 30)
    clip = write_y4m(tmp_path / "webcam.y4m", frames)
    browser = launch(f"--use-file-for-fake-video-capture={clip}")
    checkpoint, cache = served_model
    try:
        with serve_process("--checkpoint", str(checkpoint), "--cache-dir", str(cache), log=tmp_path / "serve.log",
                           timeout=120) as (url, _):
            browser.get(url)
            browser.find_element("id", "camera").click()
            from selenium.webdriver.support.ui import WebDriverWait
            # the second answer at least: the first frame of a session is its own average
            WebDriverWait(browser, WAIT_S).until(lambda b: len([e for e in b.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name)") if "predict?session=" in e]) >= 2
                and b.find_elements("css selector", "#stage .box"))
            box = browser.find_element("css selector", "#stage .box")
            card = browser.find_element("css selector", "#faces .face")
            emotion = box.get_attribute("data-emotion")
            assert box.text.startswith(f"#1 {emotion} ")
            assert card.text.startswith(f"Face #1: {emotion} (over 0.5 s)")
            sent = [e for e in browser.execute_script("return performance.getEntriesByType('resource')"
                                                       ".map(e => e.name)") if "predict" in e]
            ids = {e.split("session=")[1] for e in sent}
            assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{32}", ids.pop())  # one session for this webcam start
            browser.find_element("id", "camera").click()
    finally:
        browser.quit()
