"""Diffs between versions: which samples were added, removed or changed, and why.

Two manifests (sorted id and content hash per sample) are joined on id, columnar, so a diff of a
million samples takes seconds. The *why* comes from the lineage events recorded by the versions
between the two (when `a` is an ancestor of `b`; otherwise `b`'s own events): for each sample, its
latest event that gives a reason, or else its latest event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.versions.model import ReasonCount, VersionDiff

if TYPE_CHECKING:
    from vlcurate.versions.store import VersionStore

CHANGES = ("added", "removed", "changed")


def _path_versions(store: VersionStore, a: str, b: str) -> list[str]:
    """Versions after `a` up to `b`, oldest first, when `a` is an ancestor of `b`; else [b]."""
    chain = [info.id for info in store.log(b)]
    if a in chain:
        return chain[: chain.index(a)][::-1]
    return [b]


def _reasons(store: VersionStore, versions: list[str], ids: pa.Array) -> pa.Table:
    """(id, op, reason) of the deciding event per sample among `ids`."""
    parts: list[pa.Table] = []
    for order, vid in enumerate(versions):
        ev = store.events(vid).select(["sample_id", "seq", "op", "reason"])
        ev = ev.filter(pc.is_in(ev.column("sample_id"), value_set=ids))
        parts.append(ev.append_column("vorder", pa.array([order] * ev.num_rows, pa.int64())))
    if not parts:
        return pa.table(
            {
                "id": pa.array([], pa.string()),
                "op": pa.array([], pa.string()),
                "reason": pa.array([], pa.string()),
            }
        )
    ev = pa.concat_tables(parts)
    ev = ev.append_column("has_reason", pc.is_valid(ev.column("reason")))
    ev = ev.sort_by(
        [
            ("sample_id", "ascending"),
            ("has_reason", "ascending"),
            ("vorder", "ascending"),
            ("seq", "ascending"),
        ]
    )
    last = ev.group_by("sample_id", use_threads=False).aggregate([("op", "last"), ("reason", "last")])
    return last.rename_columns(
        ["id" if c == "sample_id" else c.removesuffix("_last") for c in last.column_names]
    )


def diff_rows(store: VersionStore, a: str, b: str) -> pa.Table:
    """(id, change, op, reason) of every sample added, removed or changed from `a` to `b`, by id."""
    ma = store.manifest(a, ["id", "hash"]).rename_columns(["id", "ha"])
    mb = store.manifest(b, ["id", "hash"]).rename_columns(["id", "hb"])
    j = ma.join(mb, "id", join_type="full outer")
    ha, hb = j.column("ha"), j.column("hb")
    added, removed = pc.is_null(ha), pc.is_null(hb)
    changed = pc.and_(pc.and_(pc.is_valid(ha), pc.is_valid(hb)), pc.not_equal(ha, hb))
    change = pc.if_else(added, "added", pc.if_else(removed, "removed", pc.if_else(changed, "changed", None)))
    rows = pa.table({"id": j.column("id"), "change": change}).filter(pc.is_valid(change))
    ids = rows.column("id").combine_chunks()
    reasons = _reasons(store, _path_versions(store, a, b), ids)
    out = rows.join(reasons, "id", join_type="left outer")
    return out.sort_by("id").select(["id", "change", "op", "reason"])


def diff_versions(store: VersionStore, a: str, b: str, *, examples: int = 5) -> VersionDiff:
    rows = diff_rows(store, a, b)
    counts = {c: 0 for c in CHANGES}
    by_reason: list[ReasonCount] = []
    if rows.num_rows:
        grouped = rows.group_by(["change", "op", "reason"], use_threads=False).aggregate([("id", "count")])
        for r in grouped.to_pylist():
            counts[r["change"]] += r["id_count"]
            by_reason.append(ReasonCount(change=r["change"], op=r["op"], reason=r["reason"], n=r["id_count"]))
    by_reason.sort(key=lambda r: (CHANGES.index(r.change), -r.n, r.op or "", r.reason or ""))
    n_b = store.get(b).n_samples
    sample_ids: dict[str, list[str]] = {}
    for c in CHANGES:
        picked = rows.filter(pc.equal(rows.column("change"), c)).column("id").slice(0, examples)
        sample_ids[c] = picked.to_pylist()
    return VersionDiff(
        a=a,
        b=b,
        added=counts["added"],
        removed=counts["removed"],
        changed=counts["changed"],
        unchanged=n_b - counts["added"] - counts["changed"],
        by_reason=by_reason,
        examples=sample_ids,
    )
