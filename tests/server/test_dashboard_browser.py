"""The dashboard over real HTTP: a uvicorn server in a thread, the SSE stream read with httpx, and
Debian's Chromium (driven by Playwright) watching the page update live as rows land in the database."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from tests.platform_live import InThreadServer

from vlcurate.server import dashboard
from vlcurate.server.dashboard import mount_static, router
from vlcurate.server.routers import public

CHROMIUM = "/usr/bin/chromium"
DashWorld = Any  # conftest.DashWorld, from the `dash_world` fixture


class DashServer(InThreadServer):
    """A real uvicorn server on a free port, in a background thread, serving the test's app."""

    def __init__(self, app: FastAPI) -> None:
        super().__init__(app=app)

    def __enter__(self) -> str:  # type: ignore[override]
        super().__enter__()
        return self.url


@pytest.fixture()
def dash_server(dash_world: DashWorld) -> Iterator[tuple[str, FastAPI]]:
    # The public reads and the dashboard on their own app (no agents, no operators).
    app = FastAPI()
    app.state.engine = dash_world.engine
    app.include_router(public.router)
    app.include_router(router)
    mount_static(app)
    with DashServer(app) as url:
        yield url, app


def sse_events(response: httpx.Response) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of a text/event-stream; comment lines (keep-alives) are skipped."""
    event, data = "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_sse_stream_pushes_changes(dash_world: DashWorld, dash_server: tuple[str, FastAPI]) -> None:
    url, app = dash_server
    with (
        httpx.Client(base_url=url, timeout=httpx.Timeout(15.0)) as client,
        client.stream("GET", "/api/v1/events") as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
        name, first = next(events)
        assert name == "stats" and first["pairs_verified"] == 8
        assert app.state.dashboard_streams["open"] == 1

        (credit,) = dash_world.verify_unit(3, [0.4, 0.2, float("nan"), 0.35])
        seen: dict[str, Any] = {}
        deadline = time.monotonic() + 10
        while not {"feed", "stats", "ledger"} <= seen.keys() and time.monotonic() < deadline:
            name, data = next(events)
            seen[name] = data
        new_items = [e["item_id"] for e in seen["feed"]]
        assert new_items == [12, 11, 10, 9]  # only the new pairs, check item 10 among them
        assert seen["stats"]["pairs_verified"] == 12
        assert [e["id"] for e in seen["ledger"]] == [credit]  # only the new entry

        dash_world.pause(dash_world.bob, "too many disagreements")
        seen = {}
        deadline = time.monotonic() + 10
        while not {"flagged", "contributors"} <= seen.keys() and time.monotonic() < deadline:
            name, data = next(events)
            seen[name] = data
        assert {c["name"] for c in seen["flagged"]} == {"carol", dash_world.xss_name}
        assert "feed" not in seen and "ledger" not in seen
    # the server notices the client went away and ends the stream
    deadline = time.monotonic() + 10
    while app.state.dashboard_streams["open"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.state.dashboard_streams["open"] == 0


def test_event_streams_end_for_shutdown_and_after_max_age(
    dash_server: tuple[str, FastAPI], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, app = dash_server

    def read_until_end(client: httpx.Client) -> list[str]:
        with client.stream("GET", "/api/v1/events") as r:
            return [name for name, _ in sse_events(r)]

    with httpx.Client(base_url=url, timeout=httpx.Timeout(15.0)) as client:
        # a stream ends by itself after MAX_STREAM_SECONDS (the browser reconnects)
        monkeypatch.setattr(dashboard, "MAX_STREAM_SECONDS", 1.5)
        t0 = time.monotonic()
        assert read_until_end(client) == ["stats"]
        assert time.monotonic() - t0 < 6
        # close_event_streams ends an open stream within a poll interval, so shutdown does not hang
        monkeypatch.setattr(dashboard, "MAX_STREAM_SECONDS", 600.0)
        threading.Timer(1.0, dashboard.close_event_streams, args=(app,)).start()
        t0 = time.monotonic()
        assert read_until_end(client) == ["stats"]
        assert time.monotonic() - t0 < 6


def test_feed_images_over_http_checks_alike(dash_world: DashWorld, dash_server: tuple[str, FastAPI]) -> None:
    """Images of verified units only; a check item's image is served like its neighbours' (a 404
    for checks alone would name them)."""
    url, _ = dash_server
    with httpx.Client(base_url=url, timeout=10) as client:
        feed = client.get("/api/v1/feed", params={"limit": 500}).json()
        assert feed and all(client.get(e["image_url"]).status_code == 200 for e in feed)
        assert client.get("/feed/images/6").status_code == 200  # a check of a verified unit
        for open_item in (9, 10):
            assert client.get(f"/feed/images/{open_item}").status_code == 404
        dash_world.verify_unit(3, [0.1, 0.2, 0.3, 0.4])
        assert client.get("/feed/images/9").status_code == 200
        assert client.get("/feed/images/10").status_code == 200


@pytest.mark.slow
def test_dashboard_updates_live_in_chromium(dash_world: DashWorld, dash_server: tuple[str, FastAPI]) -> None:
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    url, _ = dash_server
    dialogs: list[str] = []
    errors: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")

            stats, feed = page.locator("#stats-panel"), page.locator("#feed-panel")
            contributors, flagged = page.locator("#contributors-panel"), page.locator("#flagged-panel")
            ledger = page.locator("#ledger-panel")
            expect(stats).to_contain_text("coco-mini")
            expect(stats.locator(".task-count")).to_contain_text("8 / 12 pairs verified")
            expect(stats.locator("progress")).to_have_attribute("value", "8")
            expect(stats).to_contain_text("verified 2")
            expect(feed.locator(".card")).to_have_count(8)
            xss_card = feed.locator(".card[data-item='3']")
            expect(xss_card.locator(".caption")).to_have_text(dash_world.xss_caption)  # shown as text
            expect(feed.locator(".card[data-item='1'] .score")).to_have_text("0.310")
            expect(feed.locator(".card[data-item='4'] .score")).to_have_text("decode_error")
            expect(feed.locator(".card[data-item='6']")).to_have_count(1)  # a check, shown alike
            all_loaded = (
                "() => [...document.querySelectorAll('#feed-panel .card img')].every(i => i.naturalWidth)"
            )
            page.wait_for_function(all_loaded, timeout=10_000)  # thumbnails really decode
            expect(contributors).to_contain_text("alice")
            expect(contributors).to_contain_text(dash_world.xss_name)
            expect(contributors.locator("tr[data-contributor='1'] .badge")).to_have_text("trusted")
            expect(flagged).to_contain_text("carol")
            expect(flagged).to_contain_text(dash_world.pause_reason)
            expect(ledger.locator("tbody tr")).to_have_count(5)
            reversal = ledger.locator("tr[data-ledger='5']")
            expect(reversal).to_contain_text("reversal")
            expect(reversal).to_contain_text("of #4")
            expect(reversal).to_contain_text("reversed: <b>failed</b> a later hidden check")
            expect(reversal.locator("a[href^='/submissions/']")).to_have_count(1)
            expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=10_000)

            # live updates, no reload: a marker set on this document must survive
            page.evaluate("window.__dashMarker = 42")
            dash_world.verify_unit(3, [0.4, 0.2, float("nan"), 0.35], at=dt.datetime.now(dt.timezone.utc))
            expect(feed.locator(".card").first).to_have_attribute("data-item", "12", timeout=10_000)
            expect(feed.locator(".card[data-item='10']")).to_have_count(1)
            expect(stats.locator(".task-count")).to_contain_text("12 / 12 pairs verified", timeout=10_000)

            expect(ledger.locator("tr[data-ledger='6']")).to_contain_text("alice", timeout=10_000)
            expect(contributors.locator("tr[data-contributor='1']")).to_contain_text("12.00", timeout=10_000)

            # a ledger-only change: bob's credit 2 is reversed
            rev = dash_world.credit(
                dash_world.bob,
                1,
                -4.0,
                kind="reversal",
                reverses_id=2,
                submission_id=dash_world.submission_of(2),
                reason="reversed: contributor paused",
            )
            expect(ledger.locator(f"tr[data-ledger='{rev}']")).to_contain_text("of #2", timeout=10_000)
            expect(contributors.locator(f"tr[data-contributor='{dash_world.bob}']")).to_contain_text(
                "0.00", timeout=10_000
            )

            dash_world.pause(dash_world.bob, "disagreed with quorum on 5 of 6 units")
            expect(flagged).to_contain_text("disagreed with quorum on 5 of 6 units", timeout=10_000)
            expect(flagged).to_contain_text(dash_world.xss_name)
            expect(contributors.locator(f"tr[data-contributor='{dash_world.bob}'] .badge")).to_have_text(
                "paused", timeout=10_000
            )
            assert page.evaluate("window.__dashMarker") == 42

            # the contributor page renders the hostile name as text too
            page.goto(f"{url}/contributors/{dash_world.bob}")
            expect(page.locator("h2").first).to_contain_text(dash_world.xss_name)
            expect(page.locator("#ledger-panel tbody tr")).to_have_count(4)
            page.close()
        finally:
            browser.close()
    assert dialogs == [], "an injected script ran"
    assert errors == []
