"""VersionStore: content addressing, dedup, lineage, diff by reason, attachments, and damage detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from tests.versions.conftest import sample

from vlcurate.versions.errors import (
    AmbiguousVersionError,
    AttachmentExistsError,
    CorruptVersionError,
    SampleFormatError,
    UnknownVersionError,
    VersionError,
)
from vlcurate.versions.model import LineageEvent
from vlcurate.versions.store import VersionStore, open_store


def _v2_events() -> list[LineageEvent]:
    return [
        LineageEvent(sample_id="s003", op="answer_agreement", reason="answer_mismatch", dropped=True),
        LineageEvent(sample_id="s007", op="teacher_behaviour", reason="refusal", dropped=True),
        LineageEvent(sample_id="s000", op="recaption", reason="low clip score", scores={"clip": 0.12}),
        *[
            LineageEvent(sample_id=f"s{100 + i:03d}", op="build", reason="plan p1: colour=red")
            for i in range(3)
        ],
    ]


def _two_versions(root: Path, images: dict[str, str]) -> tuple[VersionStore, list[str]]:
    """v1: 20 samples; v2: 2 dropped by a filter, 1 recaptioned, 3 added by plan p1."""
    store = VersionStore(root)
    base = [sample(i, images["red"] if i % 2 else images["blue"]) for i in range(20)]
    v1 = store.commit(
        base, parent=None, message="raw", events=[{"sample_id": s["id"], "op": "ingest"} for s in base]
    )
    kept = [s for s in base if s["id"] not in ("s003", "s007")]
    kept[0] = {
        **kept[0],
        "messages": [*kept[0]["messages"][:1], {"role": "assistant", "content": "It is blue."}],
    }
    added = [sample(100 + i, images["red"], plan="p1") for i in range(3)]
    v2 = store.commit([*kept, *added], parent=v1.id, message="filtered", plan_id="p1", events=_v2_events())
    return store, [v1.id, v2.id]


def test_commit_is_content_addressed_deduplicated_and_diffable(
    tmp_path: Path, images: dict[str, str]
) -> None:
    store, (v1, v2) = _two_versions(tmp_path / "vs", images)
    info1, info2 = store.get(v1), store.get(v2)
    assert (info1.n_samples, info2.n_samples) == (20, 21)
    # Only the recaptioned sample and the 3 new ones were written again; the rest point at v1's pack.
    assert info2.new_samples == 4 and set(info1.packs) < set(info2.packs)
    new_pack = (set(info2.packs) - set(info1.packs)).pop()
    assert pq.read_metadata(tmp_path / "vs" / "objects" / "packs" / f"{new_pack}.parquet").num_rows == 4
    # An identical commit returns the same version (same id, nothing rewritten).
    before = (tmp_path / "vs" / "versions" / v2 / "version.json").read_bytes()
    again = store.commit(
        store.iter_samples(v2), parent=v1, message="filtered", plan_id="p1", events=_v2_events()
    )
    assert again.id == v2 and (tmp_path / "vs" / "versions" / v2 / "version.json").read_bytes() == before
    # Samples read back exactly, sorted by id.
    got = list(store.iter_samples(v2))
    assert [s["id"] for s in got] == sorted(s["id"] for s in got)
    assert got[0]["messages"][1]["content"] == "It is blue." and {s["id"] for s in got} >= {"s100", "s102"}
    d = store.diff(v1, v2)
    assert (d.added, d.removed, d.changed, d.unchanged) == (3, 2, 1, 17)
    reasons = {(r.change, r.op, r.reason): r.n for r in d.by_reason}
    assert reasons == {
        ("added", "build", "plan p1: colour=red"): 3,
        ("removed", "answer_agreement", "answer_mismatch"): 1,
        ("removed", "teacher_behaviour", "refusal"): 1,
        ("changed", "recaption", "low clip score"): 1,
    }
    table = store.diff_table(v1, v2)
    assert table.num_rows == 6 and set(table.column("change").to_pylist()) == {"added", "removed", "changed"}


def test_lineage_follows_a_sample_through_every_version(tmp_path: Path, images: dict[str, str]) -> None:
    store, (_v1, v2) = _two_versions(tmp_path / "vs", images)
    v3 = store.commit(store.iter_samples(v2), parent=v2, message="same data").id
    h = store.lineage("s000", v3)
    assert [e.presence for e in h.history] == ["added", "changed", "unchanged"]
    assert [ev.op for ev in h.history[1].events] == ["recaption"] and h.history[1].events[0].scores == {
        "clip": 0.12
    }
    assert h.history[1].plan_id == "p1" and h.sample is not None and h.sample["id"] == "s000"
    gone = store.lineage("s003", v3)
    assert [e.presence for e in gone.history] == ["added", "removed"] and gone.sample is None
    assert gone.history[1].events[0].reason == "answer_mismatch" and gone.history[1].events[0].dropped
    new = store.lineage("s101", v2)
    assert [e.presence for e in new.history] == ["added"] and new.history[0].version == v2
    assert store.lineage("nobody", v2).history == []


def test_ids_prefixes_refs_and_ancestors(tmp_path: Path, images: dict[str, str]) -> None:
    store, (v1, v2) = _two_versions(tmp_path / "vs", images)
    assert store.resolve(v2[:8]) == v2 and store.resolve(v2.upper()[:10].lower()) == v2
    assert store.resolve(f"{v2}~1") == v1
    with pytest.raises(UnknownVersionError, match="no version 'ffffffff'"):
        store.resolve("ffffffff")
    with pytest.raises(UnknownVersionError, match="too short"):
        store.resolve(v2[:2])
    with pytest.raises(UnknownVersionError, match="has no parent"):
        store.resolve(f"{v1}~1")
    # Two ids that share a prefix (a copy of v2's folder under a name that starts like it).
    twin = v2[:6] + ("0" if v2[6] != "0" else "1") + v2[7:]
    shutil.copytree(tmp_path / "vs" / "versions" / v2, tmp_path / "vs" / "versions" / twin)
    with pytest.raises(AmbiguousVersionError, match="matches 2 versions"):
        store.resolve(v2[:6])
    assert store.resolve(v2[:7]) == v2
    with pytest.raises(CorruptVersionError, match="does not hash to the id"):
        store.get(twin)
    with pytest.raises(VersionError, match="not a version store"):
        open_store(tmp_path / "nothing")


def test_bad_samples_are_refused_before_anything_is_written(tmp_path: Path, images: dict[str, str]) -> None:
    store = VersionStore(tmp_path / "vs")
    with pytest.raises(SampleFormatError, match="appears more than once"):
        store.commit([sample(1, images["red"]), sample(1, images["blue"])], parent=None, message="dup")
    with pytest.raises(SampleFormatError, match="non-empty string 'id'"):
        store.commit([{"messages": []}], parent=None, message="no id")
    with pytest.raises(SampleFormatError, match="JSON values"):
        store.commit([{"id": "x", "image": b"\x89PNG"}], parent=None, message="bytes")
    assert store.ids() == [] and list((tmp_path / "vs" / "tmp").iterdir()) == []
    with pytest.raises(UnknownVersionError):
        store.commit([sample(1, images["red"])], parent="abcdef", message="no such parent")


def test_attachments_are_immutable_and_leave_the_version_unchanged(
    tmp_path: Path, images: dict[str, str]
) -> None:
    store, (_v1, v2) = _two_versions(tmp_path / "vs", images)
    before = store.verify(v2)
    att = store.attach(v2, "validation", {"accepted": True, "reasons": ["ok"]})
    assert store.attach(v2, "validation", {"accepted": True, "reasons": ["ok"]}).created == att.created
    with pytest.raises(AttachmentExistsError, match="immutable"):
        store.attach(v2, "validation", {"accepted": False})
    with pytest.raises(VersionError, match="attachment name"):
        store.attach(v2, "../escape", {})
    assert store.attachments(v2)["validation"].payload["accepted"] is True
    after = store.verify(v2)
    assert before.ok and after.ok and store.get(v2).id == v2


def test_damage_is_detected_and_named(tmp_path: Path, images: dict[str, str]) -> None:
    store, (v1, v2) = _two_versions(tmp_path / "vs", images)
    vdir = tmp_path / "vs" / "versions"
    # An altered pack (one byte flipped) fails reads and export, and verify names it.
    pack = tmp_path / "vs" / "objects" / "packs" / f"{store.get(v1).packs[0]}.parquet"
    data = bytearray(pack.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pack.write_bytes(bytes(data))
    with pytest.raises(CorruptVersionError, match="was altered"):
        store.read_samples(v2)
    with pytest.raises(CorruptVersionError, match="was altered"):
        store.export(v2, "llava", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = store.verify(v1)
    assert not report.ok and any(pack.name in p for p in report.problems)
    # A point lookup that lands on the damage names the file (or the sample whose content changed).
    with pytest.raises(CorruptVersionError, match=r"damaged|was altered|not a readable"):
        for i in range(20):
            VersionStore(tmp_path / "vs").sample(f"s{i:03d}", v1)
    # A deleted manifest.
    (vdir / v2 / "manifest.parquet").unlink()
    with pytest.raises(CorruptVersionError, match="missing"):
        store.manifest(v2)
    # A manifest replaced by garbage, and version.json edited by hand.
    (vdir / v1 / "manifest.parquet").write_bytes(b"not parquet")
    assert "altered" in store.verify(v1).problems[0]
    meta = json.loads((vdir / v1 / "version.json").read_text())
    meta["message"] = "rewritten history"
    (vdir / v1 / "version.json").write_text(json.dumps(meta))
    with pytest.raises(CorruptVersionError, match="does not hash to the id"):
        store.get(v1)


def test_a_table_commits_like_its_dicts_and_refs_move_by_compare_and_swap(
    tmp_path: Path, images: dict[str, str]
) -> None:
    import pyarrow as pa

    from vlcurate.versions.errors import ConcurrentUpdateError

    rows = [sample(i, images["red"], score=0.5 + i) for i in range(5)]
    store = VersionStore(tmp_path / "vs")
    a = store.commit(rows, parent=None, message="m")
    b = store.commit(pa.Table.from_pylist(list(reversed(rows))), parent=None, message="m")
    assert a.id == b.id  # order and container do not matter: the same content is the same version
    c = store.commit(rows[:3], parent=a.id, message="fewer")
    assert store.set_ref("main", a.id, expect=None) == a.id
    assert store.set_ref("main", c.id[:8], expect=a.id) == c.id and store.head("main") == c.id
    with pytest.raises(ConcurrentUpdateError, match="another writer moved it"):
        store.set_ref("main", a.id, expect=a.id)
    assert store.head("main") == c.id and store.refs() == {"main": c.id}


def test_list_puts_parents_first_when_versions_share_a_second(
    tmp_path: Path, images: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Times are kept to the second: a chain written within one second must still list oldest first,
    whatever the ids' order (CI once listed a child before its parent)."""
    import vlcurate.versions.store as store_mod

    monkeypatch.setattr(store_mod, "_now", lambda: "2026-12-07T10:00:00+00:00")
    store = VersionStore(tmp_path / "vs")
    chain: list[str] = []
    parent: str | None = None
    for n in range(6):
        info = store.commit(
            [sample(i, images["red"]) for i in range(n + 1)], parent=parent, message=f"step {n}"
        )
        chain.append(info.id)
        parent = info.id
    assert sorted(chain) != chain  # the ids alone would put them out of order
    assert [i.id for i in store.list()] == chain
