"""Label tasks on a real server (SQLite, then PostgreSQL): what an operator may publish, what agents
may answer, and that scoring agents never receive a label unit."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select
from tests.platform_live import InThreadServer, admin_headers

from vlcurate.server import db

CLASSES = [{"name": "red", "description": "a red square"}, {"name": "blue"}]


def _png(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _body(**over: Any) -> dict[str, Any]:
    images = [{"uid": f"i{k}", "image": _png((255, 0, 0) if k % 2 else (0, 0, 255))} for k in range(8)]
    checks = [{"uid": f"i{k}", "label": 0 if k % 2 else 1, "source": "builder"} for k in (0, 1, 4, 5)]
    return {"name": "shapes", "classes": CLASSES, "images": images, "checks": checks, "unit_size": 4} | over


def _agent(url: str, name: str, host: str) -> httpx.Client:
    """An agent token whose requests leave from `host` (its own 127.0.0.x, so links can be seen)."""
    r = httpx.post(f"{url}/api/v1/agents", json={"contributor": name}, headers=admin_headers(), timeout=30)
    r.raise_for_status()
    return httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {r.json()['token']}"},
        timeout=30,
        transport=httpx.HTTPTransport(local_address=host),
    )


def _colour_labels(agent: httpx.Client, lease: dict[str, Any]) -> list[dict[str, Any]]:
    """Honest answers: the colour decides (red = 0)."""
    out = []
    for i in lease["items"]:
        data = agent.get(i["image_url"]).content
        red = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))[0] > 128
        out.append({"item_id": i["item_id"], "label": 0 if red else 1})
    return out


# SQLite runs the same queries end to end in tests/builder/test_crowd.py
@pytest.mark.parametrize("platform_db", ["postgresql"], indirect=True)
def test_publishing_answering_and_reading_back_labels(platform_db: str) -> None:
    with InThreadServer(platform_db, sweep_seconds=0.2, link_loopback=True) as server:
        url, admin = server.url, admin_headers()
        post = lambda body, h=admin: httpx.post(f"{url}/api/v1/label-tasks", json=body, headers=h, timeout=30)  # noqa: E731
        # bad input: one clear message each, nothing made
        bad = _body(checks=[{"uid": "i0", "label": 0, "source": "builder"}])
        assert (
            post(bad).status_code == 422 and "every unit needs a hidden check" in post(bad).json()["detail"]
        )
        r = post(_body(checks=[{"uid": "nope", "label": 0, "source": "builder"}] * 2))
        assert r.status_code == 422 and "not one of the images" in r.json()["detail"]
        r = post(_body(checks=[{"uid": f"i{k}", "label": 5, "source": "dataset"} for k in (0, 4)]))
        assert r.status_code == 422 and "not one of the 2 classes" in r.json()["detail"]
        r = post(_body(classes=[{"name": "red"}, {"name": "red"}]))
        assert r.status_code == 422 and "unique" in r.json()["detail"]
        r = post(
            _body(
                images=[{"uid": "i0", "image": "@@not base64@@"}],
                checks=[{"uid": "i0", "label": 0, "source": "builder"}],
            )
        )
        assert r.status_code == 422 and "base64" in r.json()["detail"]
        assert post(_body(), h={}).status_code == 403
        made = post(_body())
        assert made.status_code == 201, made.text
        task = made.json()
        assert (task["n_items"], task["n_units"], task["n_checks"]) == (8, 2, 4)
        assert post(_body()).status_code == 409
        # a scoring agent asking for any work never gets a label unit
        scorer_agent = _agent(url, "scorer", "127.0.0.2")
        assert scorer_agent.post("/api/v1/leases").status_code == 204
        # a label agent asks for the task by id and sees its classes
        agent = _agent(url, "labeller", "127.0.0.3")
        lease = agent.post("/api/v1/leases", json={"task_id": task["id"]}).json()
        assert [c["name"] for c in lease["task"]["classes"]] == ["red", "blue"] and len(lease["items"]) == 4
        items = lease["items"]
        sub = lambda results: agent.post(  # noqa: E731
            f"/api/v1/leases/{lease['lease_id']}/submit",
            json={"idempotency_key": "k-12345678", "model_fingerprint": "mine", "results": results},
        )
        r = sub([{"item_id": i["item_id"], "score": 0.3} for i in items])
        assert r.status_code == 422 and "send `label`" in r.json()["detail"]
        r = sub([{"item_id": i["item_id"], "label": 7} for i in items])
        assert r.status_code == 422 and "not one of the task's 2 classes" in r.json()["detail"]
        r = sub(_colour_labels(agent, lease))
        assert r.status_code == 200 and r.json()["state"] == "pending", r.text
        got = httpx.get(f"{url}/api/v1/label-tasks/{task['id']}/labels", headers=admin, timeout=30).json()
        assert got["units"] == 2 and got["units_verified"] == 0 and not got["done"]
        assert {v["state"] for v in got["labels"]} == {"open"} and sum(v["check"] for v in got["labels"]) == 4

        def second(name: str, host: str) -> httpx.Response:
            """Another contributor leases the same unit (it takes both units) and agrees."""
            other = _agent(url, name, host)
            mine = [other.post("/api/v1/leases", json={"task_id": task["id"]}).json() for _ in range(2)]
            same = next(x for x in mine if x["unit_id"] == lease["unit_id"])
            return other.post(
                f"/api/v1/leases/{same['lease_id']}/submit",
                json={
                    "idempotency_key": f"k-{name}-12345678",
                    "model_fingerprint": "another-model",
                    "results": _colour_labels(other, same),
                },
            )

        # a second account from the labeller's own address is the same voice: no quorum yet
        r = second("sock", "127.0.0.3")
        assert r.status_code == 200 and r.json()["state"] == "pending", r.text
        # an independent contributor agrees: verified by majority label; the linked pair is paid once
        r = second("labeller2", "127.0.0.4")
        assert r.status_code == 200 and r.json()["state"] == "valid" and r.json()["points_credited"] == 4.0, (
            r.text
        )
        with server.engine.connect() as conn:
            paid = dict(
                conn.execute(
                    select(db.contributors.c.name, db.contributors.c.points).where(
                        db.contributors.c.name.in_(["labeller", "sock", "labeller2"])
                    )
                ).all()
            )
        assert paid == {"labeller": 4.0, "sock": 0.0, "labeller2": 4.0}
        got = httpx.get(f"{url}/api/v1/label-tasks/{task['id']}/labels", headers=admin, timeout=30).json()
        done = [v for v in got["labels"] if v["state"] == "verified"]
        assert got["units_verified"] == 1 and len(done) == 4
        assert all(v["label"] == int(v["uid"][1:]) % 2 ^ 1 for v in done)  # odd uids are red (0)
        # the operator's uploaded images stay off the public feed and its image route
        public = httpx.get(f"{url}/api/v1/feed", params={"limit": 500}, timeout=30).json()
        assert public == []
        assert {httpx.get(f"{url}/feed/images/{k}", timeout=30).status_code for k in range(1, 9)} == {404}
        # reading labels back: operators only, label tasks only
        assert httpx.get(f"{url}/api/v1/label-tasks/{task['id']}/labels", timeout=30).status_code == 403
        r = httpx.get(f"{url}/api/v1/label-tasks/999/labels", headers=admin, timeout=30)
        assert r.status_code == 404
