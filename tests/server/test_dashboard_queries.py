"""The dashboard's read side: progress, reputation, ledger paging, the feed's ids (every item of a
verified unit alike, check items included), change tokens, image serving and HTML escaping (through
FastAPI's TestClient)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.server.conftest import insert_task

from vlcurate.server import db, queries
from vlcurate.server.dashboard import mount_static, router, visible
from vlcurate.server.routers import public
from vlcurate.server.routers.images import image_media_type

# The world is built by conftest.build_world (fixture `dash_world`); it carries the hostile strings.
DashWorld = Any
XSS_CAPTION = '<script>alert("xss")</script> a red circle & "quotes"'
XSS_NAME = "bob<img src=x onerror=alert(1)>"
PAUSE_REASON = "failed 3 of 4 hidden checks (max error 0.41)"


def dash_app(world: DashWorld) -> FastAPI:
    app = FastAPI()
    app.state.engine = world.engine
    app.include_router(public.router)
    app.include_router(router)
    mount_static(app)
    return app


@pytest.fixture()
def dash_client(dash_world: DashWorld) -> TestClient:
    return TestClient(dash_app(dash_world))


def read(world: DashWorld, fn):  # type: ignore[no-untyped-def]
    with queries.read_connection(world.engine) as conn:
        return fn(conn)


# ---- queries ----------------------------------------------------------------------------------


def test_world_strings_match(dash_world: DashWorld) -> None:
    assert (dash_world.xss_caption, dash_world.xss_name, dash_world.pause_reason) == (
        XSS_CAPTION,
        XSS_NAME,
        PAUSE_REASON,
    )


def test_reputation_is_laplace_smoothed() -> None:
    assert queries.reputation(0, 0, 0, 0) == 0.5
    assert queries.reputation(4, 0, 5, 0) == pytest.approx(10 / 11)
    assert queries.reputation(0, 3, 0, 1) == pytest.approx(1 / 6)


def test_contributors_reputation_and_trust(dash_world: DashWorld) -> None:
    got = {c.name: c for c in read(dash_world, queries.contributors)}
    assert list(got) == ["alice", XSS_NAME, "carol"]  # most points first
    alice, bob = got["alice"], got[XSS_NAME]
    assert alice.reputation == pytest.approx(10 / 11) and alice.trusted  # streak 5 >= trust_after 3
    assert alice.points == 8.0 and alice.valid_results == 5
    assert bob.reputation == pytest.approx(0.5) and not bob.trusted
    assert bob.points == 4.0  # two credits of 4, one reversed


def test_trust_threshold_defaults_to_10_without_a_task(tmp_path: Path) -> None:
    engine = db.make_engine(str(tmp_path / "empty.db"))
    db.metadata.create_all(engine)
    with queries.read_connection(engine) as conn:
        assert queries.trust_threshold(conn) == 10
        assert queries.stats(conn).datasets == []
        assert queries.feed(conn) == [] and queries.ledger(conn) == [] and queries.contributors(conn) == []
    engine.dispose()


def test_stats_progress(dash_world: DashWorld) -> None:
    st = read(dash_world, queries.stats)
    assert st.pairs_verified == 8 and st.contributors == 3 and st.agents == 3
    assert st.ledger_points == pytest.approx(12.0)
    (ds,) = st.datasets
    assert (ds.name, ds.n_items, ds.n_verified, ds.units_total) == ("coco-mini", 12, 8, 3)
    assert ds.units_by_state.model_dump() == {"open": 1, "verified": 2, "inconclusive": 0, "other": 0}
    (task,) = ds.tasks
    assert (task.name, task.n_items, task.n_verified, task.trust_after) == ("score-coco", 12, 8, 3)


def test_flagged_lists_paused_with_reason(dash_world: DashWorld) -> None:
    (carol,) = read(dash_world, queries.flagged)
    assert carol.name == "carol" and carol.paused and carol.pause_reason == PAUSE_REASON


def test_feed_newest_first_check_items_alike(dash_world: DashWorld) -> None:
    entries = read(dash_world, queries.feed)
    assert [e.item_id for e in entries] == [8, 7, 6, 5, 4, 3, 2, 1]  # item 6 (a check) too
    ids = [e.id for e in entries]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert all(e.id < 2**53 for e in entries)
    by_item = {e.item_id: e for e in entries}
    assert by_item[8].score == pytest.approx(0.33) and by_item[8].unit_id == 2
    assert by_item[1].score == pytest.approx(float(np.float32(0.31)))
    assert by_item[4].score is None and by_item[4].status == "decode_error"
    assert by_item[3].caption == XSS_CAPTION  # raw in JSON; escaping is the template's job
    assert by_item[5].image_url == "/feed/images/5" and by_item[5].verified_at.tzinfo is not None


def test_feed_after_id_returns_only_newer_pairs(dash_world: DashWorld) -> None:
    first = read(dash_world, queries.feed)
    newest = first[0].id
    assert read(dash_world, lambda c: queries.feed(c, after_id=newest)) == []
    # the cursor can sit inside a unit: after item 5's entry come items 6, 7 and 8 of the same unit
    item5 = next(e.id for e in first if e.item_id == 5)
    assert [e.item_id for e in read(dash_world, lambda c: queries.feed(c, after_id=item5))] == [8, 7, 6]
    assert [e.item_id for e in read(dash_world, lambda c: queries.feed(c, limit=2))] == [8, 7]

    dash_world.verify_unit(3, [0.4, 0.2, float("nan"), 0.35])
    new = read(dash_world, lambda c: queries.feed(c, after_id=newest))
    assert [e.item_id for e in new] == [12, 11, 10, 9]  # item 10 (a check) too
    assert all(e.id > newest for e in new)
    # ids already handed out do not move when a later unit is verified
    again = {e.item_id: e.id for e in read(dash_world, lambda c: queries.feed(c, limit=100))}
    assert all(again[e.item_id] == e.id for e in first)


def test_feed_shows_check_items_as_any_other(dash_world: DashWorld) -> None:
    """A unit's checks are its own items: leaving them out of the feed (or refusing their images)
    would tell everyone which items of a unit are the checks."""
    with dash_world.engine.begin() as conn:
        t2 = insert_task(conn, dataset_id=1, name="second", model="m", model_fingerprint="fp2")
        conn.execute(db.gold.insert().values(task_id=t2, item_id=7, score=0.5, source="server"))
    entries = {e.item_id: e for e in read(dash_world, queries.feed)}
    assert 6 in entries and 7 in entries
    assert set(entries[6].model_dump()) == set(entries[5].model_dump())  # nothing marks a check
    for item in (5, 6, 7):
        assert read(dash_world, lambda c, i=item: queries.public_image(c, i)) is not None


def test_ledger_paging_filters_and_reversal(dash_world: DashWorld) -> None:
    rows = read(dash_world, queries.ledger)
    assert [r.id for r in rows] == [5, 4, 3, 2, 1]
    rev = rows[0]
    assert (rev.kind, rev.points, rev.reverses_id, rev.contributor) == ("reversal", -4.0, 4, XSS_NAME)
    assert rev.submission_id == rows[1].submission_id
    assert [r.id for r in read(dash_world, lambda c: queries.ledger(c, before_id=3))] == [2, 1]
    assert [r.id for r in read(dash_world, lambda c: queries.ledger(c, after_id=3))] == [5, 4]
    assert [r.id for r in read(dash_world, lambda c: queries.ledger(c, limit=2))] == [5, 4]
    assert [r.id for r in read(dash_world, lambda c: queries.ledger(c, contributor="alice"))] == [3, 1]
    assert read(dash_world, lambda c: queries.ledger(c, contributor="nobody")) == []


def test_change_token_moves_only_the_parts_that_changed(dash_world: DashWorld) -> None:
    before = read(dash_world, queries.change_token)
    assert before == read(dash_world, queries.change_token)

    dash_world.verify_unit(3, [0.1, 0.2, 0.3, 0.4], credit_to=[])
    after_verify = read(dash_world, queries.change_token)
    changed = {k for k in before if before[k] != after_verify[k]}
    assert changed == {"stats", "feed"}

    dash_world.credit(dash_world.alice, 3, 4.0)
    after_credit = read(dash_world, queries.change_token)
    assert {k for k in before if after_verify[k] != after_credit[k]} == {"stats", "ledger", "contributors"}

    dash_world.pause(dash_world.bob, "too many disagreements")
    after_pause = read(dash_world, queries.change_token)
    assert {k for k in before if after_credit[k] != after_pause[k]} == {"contributors", "flagged"}


def test_feed_drops_a_reopened_unit_and_relists_it_with_new_ids(dash_world: DashWorld) -> None:
    first = {e.item_id: e.id for e in read(dash_world, queries.feed)}
    newest = max(first.values())
    dash_world.reopen_unit(2)
    after_reopen = {e.item_id: e.id for e in read(dash_world, queries.feed)}
    assert sorted(after_reopen) == [1, 2, 3, 4]
    assert all(after_reopen[i] == first[i] for i in after_reopen)  # ids of other units do not move
    assert read(dash_world, lambda c: queries.public_image(c, 5)) is None

    dash_world.verify_unit(2, [0.21, 0.9, 0.26, 0.34], credit_to=[dash_world.carol])
    again = read(dash_world, lambda c: queries.feed(c, after_id=newest))
    assert [e.item_id for e in again] == [8, 7, 6, 5]
    assert all(e.id > newest for e in again) and again[0].score == pytest.approx(0.34)


def test_verified_unit_without_credit_is_not_listed(dash_world: DashWorld) -> None:
    dash_world.verify_unit(3, [0.1, 0.2, 0.3, 0.4], credit_to=[])
    assert 12 not in [e.item_id for e in read(dash_world, queries.feed)]


def test_public_image_only_for_verified_units(dash_world: DashWorld) -> None:
    got = read(dash_world, lambda c: queries.public_image(c, 5))
    assert got is not None and got[0][:3] == b"\xff\xd8\xff"
    assert read(dash_world, lambda c: queries.public_image(c, 6)) is not None  # a check, verified unit
    for item in (9, 10, 999):  # open unit, a check in an open unit, unknown
        assert read(dash_world, lambda c, i=item: queries.public_image(c, i)) is None
    dash_world.verify_unit(3, [0.1, 0.2, 0.3, 0.4])
    assert read(dash_world, lambda c: queries.public_image(c, 9)) is not None
    assert read(dash_world, lambda c: queries.public_image(c, 10)) is not None


def test_image_media_type_sniffs_bytes_not_extension() -> None:
    assert image_media_type(b"\xff\xd8\xff\xe0rest", "png") == "image/jpeg"
    assert image_media_type(b"\x89PNG\r\n\x1a\n...", None) == "image/png"
    assert image_media_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ", None) == "image/webp"
    assert image_media_type(b"????", "JPG") == "image/jpeg"
    assert image_media_type(b"<svg onload=alert(1)>", "svg") == "application/octet-stream"
    assert image_media_type(b"<html>", None) == "application/octet-stream"


# ---- HTTP -------------------------------------------------------------------------------------


def test_json_endpoints(dash_client: TestClient) -> None:
    st = dash_client.get("/api/v1/stats").json()
    assert st["pairs_verified"] == 8 and st["datasets"][0]["units_by_state"]["verified"] == 2
    feed = dash_client.get("/api/v1/feed", params={"limit": 3}).json()
    assert [e["item_id"] for e in feed] == [8, 7, 6]
    assert set(feed[0]) >= {
        "id",
        "item_id",
        "uid",
        "caption",
        "score",
        "unit_id",
        "task_id",
        "verified_at",
        "image_url",
    }
    assert dash_client.get("/api/v1/feed", params={"after_id": feed[0]["id"]}).json() == []
    nan_entry = next(e for e in dash_client.get("/api/v1/feed").json() if e["item_id"] == 4)
    assert nan_entry["score"] is None  # NaN never reaches JSON
    ledger = dash_client.get("/api/v1/ledger", params={"before_id": 5, "limit": 2}).json()
    assert [r["id"] for r in ledger] == [4, 3]
    assert [r["id"] for r in dash_client.get("/api/v1/ledger", params={"contributor": "alice"}).json()] == [
        3,
        1,
    ]
    assert [c["name"] for c in dash_client.get("/api/v1/flagged").json()] == ["carol"]
    contributors = dash_client.get("/api/v1/contributors").json()
    assert contributors[0]["name"] == "alice" and contributors[0]["trusted"] is True
    assert dash_client.get("/api/v1/ledger", params={"limit": 0}).status_code == 422
    assert dash_client.get("/api/v1/feed", params={"after_id": -1}).status_code == 422


def test_feed_images_endpoint(dash_client: TestClient) -> None:
    r = dash_client.get("/feed/images/5")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["x-content-type-options"] == "nosniff"
    r = dash_client.get("/feed/images/4")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert dash_client.get("/feed/images/6").status_code == 200  # a check of a verified unit
    for item in (9, 10, 999):
        assert dash_client.get(f"/feed/images/{item}").status_code == 404, item
    assert dash_client.get("/feed/images/abc").status_code == 422


def test_html_escapes_captions_names_and_reasons(dash_client: TestClient) -> None:
    r = dash_client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert "&lt;script&gt;alert(&#34;xss&#34;)&lt;/script&gt; a red circle &amp; &#34;quotes&#34;" in html
    assert '<script>alert("xss")' not in html
    assert "bob&lt;img src=x onerror=alert(1)&gt;" in html and "<img src=x" not in html
    assert "reversed: &lt;b&gt;failed&lt;/b&gt;" in html
    assert PAUSE_REASON in html
    assert 'data-item="6"' in html and "/feed/images/6" in html  # a check is shown like the rest
    assert "/submissions/" in html and "/static/htmx.min.js" in html


def test_partials_and_pages(dash_client: TestClient, dash_world: DashWorld) -> None:
    for name in ("stats", "feed", "contributors", "flagged", "ledger"):
        r = dash_client.get(f"/partials/{name}")
        assert r.status_code == 200, name
        assert "<html" not in r.text  # a fragment, not a page
    assert "8 / 12 pairs verified" in " ".join(dash_client.get("/partials/stats").text.split()).replace(
        "<b>", ""
    ).replace("</b>", "")
    assert dash_client.get("/partials/nope").status_code == 404
    page = dash_client.get(f"/contributors/{dash_world.bob}")
    assert page.status_code == 200 and "bob&lt;img" in page.text and "hash0" not in page.text
    assert dash_client.get("/contributors/999").status_code == 404
    sub = dash_client.get("/submissions/4")
    assert sub.status_code == 200 and "reversal" in sub.text
    assert dash_client.get("/submissions/999").status_code == 404
    only_alice = dash_client.get("/ledger", params={"contributor": "alice"}).text
    assert 'data-ledger="3"' in only_alice and 'data-ledger="2"' not in only_alice
    bob_ledger = dash_client.get("/partials/ledger", params={"contributor": XSS_NAME}).text
    assert 'data-ledger="5"' in bob_ledger and 'data-ledger="3"' not in bob_ledger


def test_static_assets(dash_client: TestClient) -> None:
    htmx = dash_client.get("/static/htmx.min.js")
    assert htmx.status_code == 200 and "htmx" in htmx.text[:300] and "0BSD" in htmx.text[:300]
    assert dash_client.get("/static/dashboard.js").status_code == 200
    assert dash_client.get("/static/dashboard.css").status_code == 200


def test_nan_is_never_a_score() -> None:
    assert math.isnan(float(np.frombuffer(np.float32("nan").tobytes(), "<f4")[0]))


HOSTILE = "cat\u202egpj.exe\x00 \u2066x\u2069\u200f\u061c\ufeff\x1b[2J\x85\x7f ok\tend"
SHOWN = "cat\\u202egpj.exe\\u0000 \\u2066x\\u2069\\u200f\\u061c\\ufeff\\u001b[2J\\u0085\\u007f ok\tend"


def test_visible_writes_out_control_and_bidi_characters() -> None:
    assert visible(HOSTILE) == SHOWN
    assert visible("plain text, tabs\tand\nnewlines stay; é, 日本, emoji 🙂 too") == (
        "plain text, tabs\tand\nnewlines stay; é, 日本, emoji 🙂 too"
    )


def test_html_shows_control_and_bidi_characters_escaped(
    dash_client: TestClient, dash_world: DashWorld
) -> None:
    from sqlalchemy import update

    with dash_world.engine.begin() as conn:
        conn.execute(update(db.items).where(db.items.c.id == 1).values(caption=HOSTILE))
    dash_world.pause(dash_world.bob, f"reason with {HOSTILE}")
    pages = [dash_client.get(path).text for path in ("/", "/partials/feed", "/partials/flagged")]
    pages.append(dash_client.get(f"/contributors/{dash_world.bob}").text)
    for html in pages:
        assert not any(ch in html for ch in "\u202e\x00\u2066\u2069\u200f\u061c\ufeff\x1b\x85\x7f")
    assert SHOWN in pages[1] and SHOWN in pages[2] and SHOWN in pages[3]
    # The JSON API carries the data as it is; only what the dashboard shows is escaped.
    feed = dash_client.get("/api/v1/feed", params={"limit": 100}).json()
    assert next(e["caption"] for e in feed if e["item_id"] == 1) == HOSTILE


@pytest.mark.parametrize(
    ("model", "public"),
    [
        ("tiny-synth", "tiny-synth"),
        ("local-dir:/srv/models/clip-b32", "local-dir:clip-b32"),
        ("/srv/models/clip-b32/", "clip-b32"),
        ("open_clip:ViT-B-32:/ckpt/epoch_32.pt", "open_clip:ViT-B-32:epoch_32.pt"),
        ("open_clip:ViT-B-32:openai", "open_clip:ViT-B-32:openai"),
        ("hf-clip:openai/clip-vit-base-patch32", "hf-clip:openai/clip-vit-base-patch32"),
        ("hf-clip:/srv/models/hf-clip", "hf-clip:hf-clip"),
        ("random:ViT-B-32", "random:ViT-B-32"),
    ],
)
def test_public_model_shows_no_server_path(model: str, public: str) -> None:
    assert queries.public_model(model) == public
