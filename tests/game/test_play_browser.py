"""GAP's `/play` page in a real browser: Debian's Chromium (driven by Playwright) against a real
uvicorn server and the bundled offline VLM. A guest logs in, asks (and sees the answer stream in),
flags with the keyboard, asks a question carrying HTML (shown as text), moves on, lets an image's
timer run out, reads the summary and the leaderboard; on a phone-sized viewport in dark mode and a
desktop one in light mode.

`VLCURATE_SCREENSHOTS=1` also writes docs/play-phone.png and docs/play-desktop.png."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import select
from tests.game.conftest import BOT_TOKEN, Game, Pools, make_game
from tests.platform_live import InThreadServer
from tests.vlm_live import VLMServer

from vlcurate.server import db
from vlcurate.server.game import telegram

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[2] / "docs"
SECONDS = 8  # per image: the API's floor is 5; enough to ask and flag on a loaded machine
XSS = "<img src=x onerror=alert(1)> how many?"
NAME = "ann <i>x</i>"
DESCRIBE = "Describe the picture in one sentence."
# Every text the first answer shows, as it changes (the answer streams in).
WATCH_ANSWER = """() => {
  window.seenAnswers = [];
  new MutationObserver(() => {
    const a = document.querySelector("#answers li .a");
    if (a) window.seenAnswers.push(a.textContent);
  }).observe(document.getElementById("answers"), { subtree: true, childList: true, characterData: true });
}"""


@pytest.fixture()
def live_game(tmp_path: Path, pools: Pools, vlm: VLMServer) -> Iterator[tuple[Game, str]]:
    # Every image tainted, so the flag pays at the end of the session and the leaderboard shows it.
    g = make_game(str(tmp_path / "play.db"), pools, vlm, n_images=3, n_tainted=3, seconds_per_image=SECONDS)
    with InThreadServer(app=g.app) as server:
        yield g, server.url
    g.engine.dispose()


def test_play_page_is_served(live_game: tuple[Game, str]) -> None:
    g, _ = live_game
    r = g.client().get("/play")
    assert r.status_code == 200
    assert "/static/play.js" in r.text and "telegram-web-app.js" in r.text  # the server has a bot token
    csp = r.headers["content-security-policy"]
    assert "script-src 'self' https://telegram.org;" in csp
    assert "frame-ancestors https://web.telegram.org" in csp
    for asset in ("/static/play.js", "/static/play.css"):
        assert g.client().get(asset).status_code == 200
    script = g.client().get("/static/play.js").text
    assert not re.search(r"\.(inner|outer)HTML|insertAdjacentHTML|document\.write", script)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shot", "width", "height", "scheme"),
    [("phone", 390, 844, "dark"), ("desktop", 1280, 800, "light")],
)
def test_play_session_in_chromium(
    live_game: tuple[Game, str], shot: str, width: int, height: int, scheme: str
) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    g, url = live_game
    dialogs: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height}, color_scheme=scheme)
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            # offline: Telegram's script cannot load, and the page must not need it
            page.route("https://telegram.org/**", lambda route: route.abort())
            page.goto(url + "/play")

            # guest login, the game picker
            page.fill("#name", NAME)
            page.click("#login-btn")
            expect(page.locator("#who")).to_have_text(NAME)
            assert page.locator("#who i").count() == 0
            page.click("button[data-game='g1']")

            # image 1: the picture, the server's clock, a question (Enter), a flag (W)
            expect(page.locator("#play")).to_be_visible()
            expect(page.locator("#progress")).to_have_text("Image 1 of 3")
            expect(page.locator("#timer")).to_contain_text("s left")
            page.wait_for_function("() => document.getElementById('image').naturalWidth > 0", timeout=10_000)
            # a description streams in word by word: the page shows the answer growing
            page.evaluate(WATCH_ANSWER)
            page.fill("#question", DESCRIBE)
            page.press("#question", "Enter")
            described = page.locator("#answers li[data-question]")
            expect(described).to_have_count(1)
            final = described.locator(".a").inner_text()
            seen = [t for t in page.evaluate("window.seenAnswers") if t not in ("…", final)]
            assert len(set(seen)) >= 2 and all(final.startswith(t.strip()) for t in seen), (seen, final)
            assert int(described.get_attribute("data-chunks") or 0) == len(final.split())
            page.fill("#question", "How many objects are there?")
            page.press("#question", "Enter")
            first = page.locator("#answers li[data-question]")
            expect(first).to_have_count(2)
            expect(first.nth(1).locator(".a")).not_to_have_text("…")
            first.nth(1).locator("input.corrected").fill("one")
            page.keyboard.press("Escape")  # leave the text box; W and N work outside it
            page.keyboard.press("w")
            expect(page.locator("#answers li.flagged")).to_have_count(1)
            expect(page.locator("#status")).to_contain_text("Flagged")
            focused = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
            assert focused == "solid"  # the Next button, focused, shows its outline

            # image 2: HTML in a question stays text
            page.keyboard.press("n")
            expect(page.locator("#progress")).to_have_text("Image 2 of 3")
            page.fill("#question", XSS)
            page.keyboard.press("Enter")
            asked = page.locator("#answers li[data-question]")
            expect(asked).to_have_count(1)
            expect(asked.locator(".q")).to_have_text(XSS)
            assert page.locator("#play img").count() == 1  # the game image only
            if os.environ.get("VLCURATE_SCREENSHOTS") == "1":
                page.screenshot(path=str(DOCS / f"play-{shot}.png"))

            # image 3: the clock runs out; the page says so and moves on, which ends the session
            page.keyboard.press("Escape")
            page.keyboard.press("n")
            expect(page.locator("#progress")).to_have_text("Image 3 of 3")
            expect(page.locator("#status")).to_contain_text("Time is up", timeout=(SECONDS + 5) * 1000)
            summary = page.locator("#summary")
            expect(summary).to_be_visible(timeout=10_000)
            expect(summary).to_contain_text("Answers flagged")
            expect(summary.locator("dd").nth(2)).to_have_text("1")  # flagged
            expect(summary.locator("dd").nth(3)).to_have_text("20")  # points this session

            page.click("#board-btn")
            board = page.locator("#board-list")
            expect(board).to_contain_text(NAME)
            expect(board).to_contain_text("20 pts")
            assert board.locator("i").count() == 0
            page.close()
        finally:
            browser.close()
    assert dialogs == [], "an injected script ran"
    assert errors == []
    SI = db.game_session_images
    with g.engine.connect() as conn:
        outcomes = [o for (o,) in conn.execute(select(SI.c.outcome).order_by(SI.c.position)).all()]
    assert outcomes == ["flagged", "skipped", "timeout"]


@pytest.mark.slow
def test_telegram_mini_app_login_in_chromium(live_game: tuple[Game, str]) -> None:
    """Inside Telegram (its script defines a non-empty `Telegram.WebApp.initData`) the page logs in
    with the signed data instead of asking for a name."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    fields = {
        "auth_date": str(int(time.time())),
        "user": json.dumps({"id": 7, "first_name": "Tg <b>Ann</b>"}),
    }
    fields["hash"] = telegram.sign(fields, BOT_TOKEN)
    init_data = json.dumps(urlencode(fields))
    stub = f"window.Telegram = {{WebApp: {{initData: {init_data}, ready() {{}}, expand() {{}}}}}};"
    _, url = live_game
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route(
                "https://telegram.org/**",
                lambda route: route.fulfill(status=200, content_type="text/javascript", body=stub),
            )
            page.goto(url + "/play")
            sync_api.expect(page.locator("#who")).to_have_text("Tg <b>Ann</b>")
            sync_api.expect(page.locator("#picker")).to_be_visible()
            assert page.locator("#login").is_hidden()
        finally:
            browser.close()
    assert errors == []
