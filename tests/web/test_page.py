"""The page at / in a real browser: Playwright driving Debian's Chromium
(Playwright's own browser download needs the internet). Screenshots go to
the test's tmp dir."""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ODD, Stack
from tests.web.conftest import Web, photo_folder

CHROMIUM = os.environ.get("CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no Chromium here (make install puts Debian's chromium in when root and apt "
        "exist; or set CHROMIUM to a Chromium/Chrome executable)",
    ),
]

DROP = """async ([b64, name, type, how]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type }));
  if (how === "drop") {
    const zone = document.getElementById("drop-zone");
    zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true, cancelable: true }));
    zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
  } else {
    document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: data, bubbles: true }));
  }
}"""


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], timeout=60_000
        )
        yield browser
        browser.close()


def give(page, path: Path, how: str, name: str | None = None, type: str = "image/jpeg") -> None:
    b64 = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(DROP, [b64, name or path.name, type, how])


def test_the_page_indexes_searches_and_reports_errors(
    browser, web: Web, stack: Stack, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    folder, photos = photo_folder(stack.tmp, 12)
    shutil.copy(ODD / "bmp_b_shortfile.bmp", folder / "truncated.bmp")  # fails alone
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(web.url + "/")
    expect(page.locator("#count")).to_have_text("empty")

    # Index a server folder: the bar reaches 100%.
    page.fill("#folder", str(folder))
    page.click("#start-job")
    expect(page.locator("#job-text")).to_have_attribute("data-state", "succeeded", timeout=300_000)
    bar = page.locator("#job-bar")
    assert bar.evaluate("b => [b.value, b.max]") == [13, 13]
    expect(page.locator("#job-text")).to_contain_text("13 / 13 files (100%)")
    expect(page.locator("#job-text")).to_contain_text("12 indexed, 0 duplicates, 1 failed")
    # The file that failed, and why, under the bar.
    expect(page.locator("#job-errors li")).to_have_count(1)
    expect(page.locator("#job-errors li")).to_be_visible()
    expect(page.locator("#job-errors li")).to_contain_text("truncated.bmp")
    expect(page.locator("#message")).to_contain_text("1 file failing")
    expect(page.locator("#count")).to_have_text("12 images")
    # mobilenet_v2 cannot compose: no "and change it" box to type into.
    expect(page.locator("#compose-text")).to_be_hidden()
    page.screenshot(path=str(tmp_path / "indexed.png"), full_page=True)

    # Drop a query image: 5 thumbnails, the image itself first.
    page.select_option("#topk", "5")
    give(page, photos[4], "drop", name="query.jpg")
    hits = page.locator("#results .hit")
    expect(hits).to_have_count(5, timeout=60_000)
    expect(hits.first).to_have_attribute("data-path", str(photos[4]))
    expect(hits.first.locator(".score")).to_contain_text("#1 · score 1.000")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img.thumb')]"
        ".every((img) => img.complete && img.naturalWidth > 0)",
        timeout=30_000,
    )
    assert page.locator("#results img.thumb").count() == 5
    page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

    # Paste works too, and so does the file picker.
    give(page, photos[7], "paste", name="pasted.jpg")
    expect(hits.first).to_have_attribute("data-path", str(photos[7]), timeout=60_000)
    page.set_input_files("#file-input", str(photos[9]))
    expect(hits.first).to_have_attribute("data-path", str(photos[9]), timeout=60_000)

    # Not an image: a clear message, whether the browser or the server finds out.
    notes = tmp_path / "notes.txt"
    notes.write_text("just some text")
    give(page, notes, "drop", type="text/plain")
    expect(page.locator("#message")).to_contain_text("notes.txt is not an image")
    fake = tmp_path / "fake.jpg"
    fake.write_bytes(b"not a jpeg at all")
    page.set_input_files("#file-input", str(fake))
    expect(page.locator("#message")).to_contain_text("Search failed: 400")
    expect(page.locator("#message")).to_contain_text("not an image")
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)

    # A folder outside the allowed roots: the gateway's sentence, shown.
    page.fill("#folder", "/etc")
    page.click("#start-job")
    expect(page.locator("#message")).to_contain_text("403")

    # Delete by prefix (confirmed), then drop (confirmed).
    page.fill("#prefix", str(photos[0]))
    page.click("#delete-prefix")
    expect(page.locator("#message")).to_contain_text("Deleted 1 image (1 path)")
    expect(page.locator("#count")).to_have_text("11 images")
    page.click("#drop-collection")
    expect(page.locator("#message")).to_contain_text("Dropped images")
    expect(page.locator("#count")).to_have_text("empty")
    assert problems == []

    # Usable on a phone: nothing wider than the screen.
    phone = browser.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
    phone.goto(web.url + "/")
    expect(phone.locator("#drop-zone")).to_be_visible()
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)


def test_the_page_searches_by_words(browser, words_web: Web) -> None:
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.goto(words_web.url + "/")
    page.fill("#collection", "clothes")
    page.select_option("#topk", "5")
    page.fill("#words", "shoes")
    page.press("#words", "Enter")
    hits = page.locator("#results .hit")
    expect(hits).to_have_count(5, timeout=60_000)
    paths = hits.evaluate_all("items => items.map((li) => li.dataset.path)")
    assert sum("/Shoes/" in p for p in paths) >= 4, paths
    page.fill("#collection", "nothing_here")
    page.press("#words", "Enter")
    expect(page.locator("#message")).to_contain_text("Search failed: 404")
    assert problems == []
