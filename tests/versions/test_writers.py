"""Two writers at once: both succeed (no ref) or one fails cleanly (same ref); a failure leaves nothing."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path
from typing import Any

import pytest
from tests.versions.conftest import sample

from vlcurate.versions.errors import ConcurrentUpdateError, StoreLockedError
from vlcurate.versions.lock import store_lock
from vlcurate.versions.store import VersionStore


def _writer(root: str, parent: str, tag: str, ref: str | None, barrier: Any, out: Any) -> None:
    samples = [sample(i, f"/img/{tag}.png", answer=f"{tag} {i}") for i in range(3000)]
    barrier.wait()
    try:
        info = VersionStore(root).commit(samples, parent=parent, message=tag, ref=ref)
        out.put((tag, "ok", info.id))
    except ConcurrentUpdateError as exc:
        out.put((tag, "conflict", str(exc)))


def _race(root: Path, parent: str, ref: str | None) -> list[tuple[str, str, str]]:
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(root), parent, t, ref, barrier, out)) for t in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return sorted(out.get(timeout=5) for _ in procs)


def test_two_writers_on_one_ref_one_wins_the_other_fails_cleanly(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "vs")
    v1 = store.commit([sample(0, "/img/x.png")], parent=None, message="base", ref="main").id
    results = _race(tmp_path / "vs", v1, "main")
    status = [r[1] for r in results]
    assert sorted(status) == ["conflict", "ok"], results
    winner = next(r for r in results if r[1] == "ok")
    loser = next(r for r in results if r[1] == "conflict")
    assert "another writer committed first" in loser[2]
    assert store.head("main") == winner[2]
    # Only the winner's version was published; every version verifies; no staging left behind.
    assert sorted(store.ids()) == sorted([v1, winner[2]])
    assert all(store.verify(v).ok for v in store.ids())
    assert list((tmp_path / "vs" / "tmp").iterdir()) == []


def test_two_writers_without_a_ref_both_succeed(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "vs")
    v1 = store.commit([sample(0, "/img/x.png")], parent=None, message="base").id
    results = _race(tmp_path / "vs", v1, None)
    assert [r[1] for r in results] == ["ok", "ok"]
    assert len(store.ids()) == 3 and all(store.verify(v).ok for v in store.ids())
    assert store.read_samples(results[0][2]).num_rows == 3000


def test_a_writer_that_fails_midway_leaves_no_version(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "vs")

    def broken() -> Any:
        yield sample(1, "/img/x.png")
        raise OSError("disk went away")

    with pytest.raises(OSError, match="disk went away"):
        store.commit(broken(), parent=None, message="half")
    assert store.ids() == [] and list((tmp_path / "vs" / "tmp").iterdir()) == []


def test_a_held_lock_times_out_with_a_clear_error(tmp_path: Path) -> None:
    store = VersionStore(tmp_path / "vs")
    store.commit([sample(0, "/img/x.png")], parent=None, message="base")
    with store_lock(tmp_path / "vs" / "lock"):
        ctx = mp.get_context("fork")
        q = ctx.Queue()

        def other() -> None:
            try:
                VersionStore(tmp_path / "vs").commit(
                    [sample(1, "/img/y.png")], parent=None, message="x", lock_timeout=0.3
                )
                q.put("ok")
            except StoreLockedError as exc:
                q.put(str(exc))

        p = ctx.Process(target=other)
        p.start()
        p.join(30)
        assert "another writer held the version store's lock" in q.get(timeout=5)
    assert len(store.ids()) == 1
