"""No server paths in public responses: the dataset list omits `source` and a task's model given as a
path shows only its last part, in the JSON API and on the dashboard alike; the operator's token
still sees both in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from tests.platform_live import admin_headers

from vlcurate.models.registry import TINY_SYNTH_DIR


def test_public_lists_show_no_server_paths(live_platform: Any, small_pool: Path) -> None:
    url, h = live_platform.url, admin_headers()
    model = f"local-dir:{TINY_SYNTH_DIR}"
    r = httpx.post(
        f"{url}/api/v1/datasets", json={"name": "pool", "source": str(small_pool)}, headers=h, timeout=120
    )
    assert r.status_code == 201 and r.json()["source"] == str(small_pool)
    body = {"name": "t", "dataset": "pool", "model": model, "unit_size": 100, "gold_per_unit": 2}
    r = httpx.post(f"{url}/api/v1/tasks", json=body, headers=h, timeout=300)
    assert r.status_code == 201, r.text

    pages = ("/api/v1/datasets", "/api/v1/tasks", "/api/v1/stats", "/", "/partials/stats")
    public = {path: httpx.get(url + path, timeout=30) for path in pages}
    # A token that is not the operator's (an agent's, a guess) sees what the public sees.
    guess = httpx.get(f"{url}/api/v1/datasets", headers={"Authorization": "Bearer guess"}).json()
    for path, r in public.items():
        assert r.status_code == 200, path
        for secret in (str(small_pool), str(small_pool.parent), str(TINY_SYNTH_DIR)):
            assert secret not in r.text, (path, secret)
    (ds,) = public["/api/v1/datasets"].json()
    assert "source" not in ds and ds["name"] == "pool" and ds["n_items"] == 300
    assert guess == [ds]
    (task,) = public["/api/v1/tasks"].json()
    assert task["model"] == f"local-dir:{TINY_SYNTH_DIR.name}"
    assert public["/api/v1/stats"].json()["datasets"][0]["tasks"][0]["model"] == task["model"]
    # The operator sees where the data and the model are.
    (ds,) = httpx.get(f"{url}/api/v1/datasets", headers=h).json()
    assert ds["source"] == str(small_pool)
    (task,) = httpx.get(f"{url}/api/v1/tasks", headers=h).json()
    assert task["model"] == model
