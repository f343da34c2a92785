"""The search page in headless Chromium against a live server on loopback (Debian's chromium and
chromium-driver; skips where they or selenium are missing)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from corpora import write_clip, write_photo

selenium = pytest.importorskip("selenium", reason="selenium is not installed")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="chromium and chromium-driver are not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serving(app):
    """``app`` served by uvicorn on a free loopback port, on a thread: yields its base URL."""
    port = _free_port()
    live = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not live.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        live.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory, encoder):
    from unite_search import Index
    from unite_search.ingestion import ingest
    from unite_search.server import create_app

    root = tmp_path_factory.mktemp("page") / "corpus"
    for i in range(4):
        write_photo(root / f"photos/p{i}.png", seed=10 + i, size=(160, 120))
    write_clip(root / "clips/long.mp4", 80, fps=8, seed=2)  # 10 s: 3 segments of 4 s
    write_clip(root / "clips/short.mp4", 16, fps=8, seed=3)
    write_clip(root.parent / "upload.mp4", 16, fps=8, seed=4)  # a query clip from outside the index
    (root / "clips/short.txt").write_text("a short clip of moving bars")  # with --pairs composed: video+text
    (root / "notes").mkdir()
    (root / "notes/fox.txt").write_text("A red fox crossed the snowy road at dawn.")
    index = root.parent / "index"
    report = ingest(root, index, encoder=encoder, segment_seconds=4.0, segment_overlap=1.0, pairs="composed")
    assert report.status == "ok" and "video+text" in report.shards
    with _serving(create_app(Index.open(index, encoder=encoder))) as base:
        yield base, root


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _search(driver, text: str | None = None, upload: Path | None = None, target: str | None = None):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    box = driver.find_element(By.ID, "q")
    box.clear()
    if text:
        box.send_keys(text)
    if upload is not None:
        driver.find_element(By.ID, "file").send_keys(str(upload))
    if target is not None:
        Select(driver.find_element(By.ID, "target")).select_by_value(target)
    driver.execute_script("document.body.dataset.state = ''")
    driver.find_element(By.ID, "search").click()
    WebDriverWait(driver, 60).until(
        lambda d: d.execute_script("return document.body.dataset.state") in ("done", "error")
    )
    state = driver.execute_script("return document.body.dataset.state")
    assert state == "done", driver.find_element(By.ID, "error").text
    return driver.find_elements(By.CSS_SELECTOR, "#results .hit")


def test_the_page_searches_composes_and_plays_a_segment(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, root = server
    browser.get(base + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "q"))
    # a text query: a grid of hits whose thumbnails load
    hits = _search(browser, "a striped picture", target="image")
    assert hits and all(h.get_attribute("data-shard") == "image" for h in hits)
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#results .hit img.thumb')]"
            ".every(i => i.complete && i.naturalWidth > 0)"
        )
    )
    # a composed query: an uploaded clip and an edit, routed to the video shard
    hits = _search(browser, "the same scene at night", upload=root.parent / "upload.mp4", target="video")
    assert hits and hits[0].get_attribute("data-shard") == "video"
    # a video hit plays its own segment in place: the last segment of the long clip starts at 6 s
    hit = next(h for h in hits if float(h.get_attribute("data-start") or 0) > 0)
    start = float(browser.execute_script("return arguments[0].dataset.start || 0", hit))
    hit.find_element(By.CSS_SELECTOR, "img.thumb").click()
    WebDriverWait(browser, 30).until(
        lambda d: d.execute_script(
            "const v = arguments[0].querySelector('video'); return v && v.readyState >= 2 && v.currentTime > 0",
            hit,
        )
    )
    now = browser.execute_script("return arguments[0].querySelector('video').currentTime", hit)
    assert now >= start - 0.05
    # "more like this" searches again from the hit
    hit.find_element(By.CSS_SELECTOR, ".more-like-this").click()
    WebDriverWait(browser, 60).until(lambda d: d.execute_script("return document.body.dataset.state") == "done")
    assert browser.find_elements(By.CSS_SELECTOR, "#results .hit")
    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("UNITE_SEARCH_SCREENSHOT"):  # the README's picture: UNITE_SEARCH_SCREENSHOT=docs/search-page.png
        browser.save_screenshot(os.environ["UNITE_SEARCH_SCREENSHOT"])


def test_a_page_the_server_refuses_says_so_before_any_search(server, browser, encoder):
    """With a token set and none saved in the page, reading the index failed with only a console line."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from unite_search import Index
    from unite_search.server import create_app

    _, root = server
    with _serving(create_app(Index.open(root.parent / "index", encoder=encoder), token="s3cret")) as base:
        browser.get(f"{base}/")
        error = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed()
                                                 and d.find_element(By.ID, "error"))  # fmt: skip
        assert error.text.startswith("could not read the index: unauthorized") and "HTTP 401" in error.text


def test_composed_hits_play_in_place_and_more_like_this_keeps_the_other_fields(server, browser):
    """A video+text hit opened the whole file in a new tab and showed no text; "more like this" with an
    instruction typed was refused (400); k=0 became 12."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = server
    browser.get(base + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#target option[value='video+text']"))
    (hit,) = _search(browser, "moving bars", target="video+text")
    assert hit.find_element(By.CSS_SELECTOR, ".caption").text == "a short clip of moving bars"
    hit.find_element(By.CSS_SELECTOR, "button.media").click()  # plays here: no link to a new tab
    WebDriverWait(browser, 30).until(lambda d: hit.find_elements(By.TAG_NAME, "video"))
    assert len(browser.window_handles) == 1
    browser.find_element(By.CSS_SELECTOR, "details.more summary").click()
    browser.find_element(By.ID, "instruction").send_keys("Find a similar clip.")
    hit.find_element(By.CSS_SELECTOR, ".more-like-this").click()
    state = "return document.body.dataset.state"
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(state) in ("done", "error"))
    assert browser.execute_script(state) == "done", browser.find_element(By.ID, "error").text
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("0")
    browser.find_element(By.ID, "search").click()
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(state) == "error")
    assert "k must be a positive integer" in browser.find_element(By.ID, "error").text
    k.clear()
    k.send_keys("12")
    browser.find_element(By.ID, "instruction").clear()


def test_the_page_under_a_path_prefix_with_a_token_follows_the_index(browser, encoder, tmp_path):
    """Mounted under /us, the page asked for /static/app.js and /info at the site root (404: a blank page),
    and with a token even /us/healthz and the page answered 401; a token set after the page said it could
    not read the index left that message up; a shard published later never reached the target list."""
    import urllib.request

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from starlette.applications import Starlette
    from starlette.routing import Mount

    from unite_search import Index
    from unite_search.ingestion import ingest
    from unite_search.server import create_app

    corpus, index = tmp_path / "corpus", tmp_path / "index"
    for i in range(2):
        write_photo(corpus / f"photos/p{i}.png", seed=20 + i, size=(160, 120))
    assert ingest(corpus, index, encoder=encoder, pairs="composed").status == "ok"
    outer = Starlette(routes=[Mount("/us", app=create_app(Index.open(index, encoder=encoder), token="s3cret"))])
    with _serving(outer) as root_url:
        base = root_url + "/us"
        with urllib.request.urlopen(base + "/healthz") as r:  # open, as at the root
            assert r.status == 200
        browser.get(base + "/")  # a new origin (port): no token saved for it
        error = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").is_displayed()
                                                 and d.find_element(By.ID, "error"))  # fmt: skip
        assert "HTTP 401" in error.text
        browser.find_element(By.CSS_SELECTOR, "details.settings summary").click()
        box = browser.find_element(By.ID, "token")
        box.send_keys("s3cret")
        box.send_keys("\t")  # a change event
        WebDriverWait(browser, 30).until(lambda d: not d.find_element(By.ID, "error").is_displayed())
        assert not [o for o in browser.find_elements(By.CSS_SELECTOR, "#target option") if o.get_attribute("value")
                    == "image+text"]  # fmt: skip
        (corpus / "photos/p0.txt").write_text("a photo with a caption")  # a new shard: image+text
        assert "image+text" in ingest(corpus, index, encoder=encoder).shards
        assert _search(browser, "a striped picture", target="image")
        WebDriverWait(browser, 30).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#target option[value='image+text']")
        )
