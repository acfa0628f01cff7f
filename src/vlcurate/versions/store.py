"""`VersionStore`: immutable, content-addressed dataset versions with per-sample lineage.

Layout of a store folder ROOT:

    ROOT/store.json                      {"format": 1}
    ROOT/objects/packs/SHA256.parquet    sample content (id, hash, canonical JSON), named by its sha256
    ROOT/versions/VID/version.json       `VersionInfo`: parent, message, plan, digests, file hashes
    ROOT/versions/VID/manifest.parquet   (id, content hash, pack, row), sorted by id
    ROOT/versions/VID/events.parquet     lineage events of this step, sorted by sample id
    ROOT/versions/VID/attachments/N.json immutable attachments (validation decisions, plans, eval summaries)
    ROOT/refs/NAME                       a movable name (e.g. `main`) for a version id
    ROOT/lock                            the writers' lock (flock)

Guarantees:
- *Content-addressed*: VID is the hash of the parent, message, plan id and the digests of the
  samples and events; an identical commit returns the existing version.
- *Deduplicated*: a sample whose content is already in the parent is not written again; the manifest
  points at the parent's pack. A version that changes 1% writes 1% (dedup is against the parent, so
  content that comes back after being removed two versions ago is written again).
- *Atomic*: a version is assembled in `tmp/` and renamed into `versions/` in one step, under the lock;
  a reader sees all of it or nothing. Packs are written whole and renamed into place too.
- *Never rewritten*: nothing writes into an existing version folder except new attachments, which
  are created exclusively (a second attachment of the same name with other content fails).
- *Concurrent writers*: a commit that moves a ref names the parent it expects the ref to be at;
  if another writer moved it first, the commit fails with `ConcurrentUpdateError` and changes nothing.
  Commits without a ref always both succeed.
- *Detected damage*: every file's hash is recorded; `verify` checks them all, reads check the files
  they read, and a deleted or altered file is reported by name, never read silently.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.base.atomic import fsync_dir, write_json_atomic, write_text_atomic
from vlcurate.versions.content import (
    HASH_BYTES,
    canonical,
    content_hash,
    digest_columns,
    digest_pairs,
    file_sha256,
    iter_dicts,
)
from vlcurate.versions.errors import (
    AmbiguousVersionError,
    AttachmentExistsError,
    ConcurrentUpdateError,
    CorruptVersionError,
    SampleFormatError,
    UnknownVersionError,
    VersionError,
)
from vlcurate.versions.lock import store_lock
from vlcurate.versions.model import (
    STORE_FORMAT,
    Attachment,
    HistoryEntry,
    LineageEvent,
    SampleHistory,
    VerifyReport,
    VersionDiff,
    VersionInfo,
)
from vlcurate.versions.tables import (
    EVENTS_SCHEMA,
    MANIFEST_SCHEMA,
    PACK_ROW_GROUP,
    PACK_SCHEMA,
    IndexCache,
    event_from_row,
    events_table,
    read_parquet,
    write_table,
)

ID_HEX = 32
PACK_STAGE = "pack.parquet"  # the new pack inside a staging folder, moved out before publishing
MIN_PREFIX = 4
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_HEX = re.compile(r"^[0-9a-f]+$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_id(info: VersionInfo) -> str:
    text = json.dumps(info.id_payload(), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=ID_HEX // 2).hexdigest()


class VersionStore:
    """A folder of immutable dataset versions. Reading never writes; `commit` and `attach` write
    atomically. Safe to use from several processes at once."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._cache = IndexCache()

    # ---------------------------------------------------------------- paths

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def packs_dir(self) -> Path:
        return self.root / "objects" / "packs"

    def version_dir(self, vid: str) -> Path:
        return self.versions_dir / vid

    def _check_store(self) -> None:
        if not (self.root / "store.json").is_file():
            raise VersionError(
                f"{self.root} is not a version store (no store.json); create one with a first commit"
            )

    def _ensure(self) -> None:
        for d in (self.versions_dir, self.packs_dir, self.root / "refs", self.root / "tmp"):
            d.mkdir(parents=True, exist_ok=True)
        marker = self.root / "store.json"
        if not marker.is_file():
            write_json_atomic(marker, {"format": STORE_FORMAT, "kind": "vlcurate-version-store"})

    # ---------------------------------------------------------------- ids and refs

    def ids(self) -> list[str]:
        self._check_store()
        return sorted(p.name for p in self.versions_dir.iterdir() if p.is_dir() and len(p.name) == ID_HEX)

    def resolve(self, ref: str) -> str:
        """A full version id from an id, a unique prefix (4+ hex chars), a ref name, or any of them
        followed by `~N` (the N-th ancestor)."""
        self._check_store()
        ref = ref.strip()
        if "~" in ref:  # REF~N: the N-th ancestor (first parents), as in git
            base, _, n = ref.rpartition("~")
            if not n.isdigit():
                raise UnknownVersionError(f"{ref!r}: write REF~N with N a number of generations")
            vid = self.resolve(base)
            for _ in range(int(n)):
                parent = self.get(vid).parent
                if parent is None:
                    raise UnknownVersionError(f"{ref!r}: version {vid[:12]} has no parent")
                vid = parent
            return vid
        if _NAME.match(ref) and (self.root / "refs" / ref).is_file():
            return (self.root / "refs" / ref).read_text().strip()
        low = ref.lower()
        if not _HEX.match(low):
            raise UnknownVersionError(f"no version or ref {ref!r} in {self.root}")
        if len(low) == ID_HEX and self.version_dir(low).is_dir():
            return low
        if len(low) < MIN_PREFIX:
            raise UnknownVersionError(
                f"version prefix {ref!r} is too short: give at least {MIN_PREFIX} characters"
            )
        matches = [v for v in self.ids() if v.startswith(low)]
        if not matches:
            raise UnknownVersionError(
                f"no version {ref!r} in {self.root} (`vlcurate version list` shows them)"
            )
        if len(matches) > 1:
            shown = ", ".join(m[:12] for m in matches[:5])
            raise AmbiguousVersionError(
                f"version prefix {ref!r} matches {len(matches)} versions ({shown}); give more characters"
            )
        return matches[0]

    def refs(self) -> dict[str, str]:
        self._check_store()
        return {p.name: p.read_text().strip() for p in sorted((self.root / "refs").glob("*")) if p.is_file()}

    def set_ref(self, name: str, ref: str, *, expect: str | None, lock_timeout: float = 60.0) -> str:
        """Point ref `name` at version `ref` if it still points at `expect` (None: does not exist yet);
        else `ConcurrentUpdateError` and nothing changes. Returns the full id. (An accepted increment
        moves `main` this way, so two loops never overwrite each other's decision.)"""
        if not _NAME.match(name):
            raise VersionError(f"ref name {name!r}: use letters, digits, '.', '_' and '-'")
        vid = self.get(ref).id
        with store_lock(self.root / "lock", lock_timeout):
            current = self.head(name)
            if current != expect:
                raise ConcurrentUpdateError(
                    f"ref {name!r} points at {current[:12] if current else 'nothing'}, not at "
                    f"{expect[:12] if expect else 'nothing'}: another writer moved it; nothing was changed"
                )
            write_text_atomic(self.root / "refs" / name, vid + "\n")
        return vid

    def head(self, ref: str = "main") -> str | None:
        path = self.root / "refs" / ref
        return path.read_text().strip() if path.is_file() else None

    # ---------------------------------------------------------------- reading versions

    def get(self, ref: str) -> VersionInfo:
        """The version's record; `CorruptVersionError` when version.json is gone or not hashing to its id."""
        vid = self.resolve(ref)
        path = self.version_dir(vid) / "version.json"
        try:
            info = VersionInfo.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            raise CorruptVersionError(f"version {vid[:12]}: {path} is missing") from None
        except ValueError as exc:
            raise CorruptVersionError(
                f"version {vid[:12]}: {path} does not parse ({str(exc).splitlines()[0]})"
            ) from None
        if info.id != vid or version_id(info) != vid:
            raise CorruptVersionError(
                f"version {vid[:12]}: version.json was altered (its content does not hash to the id)"
            )
        return info

    def list(self) -> list[VersionInfo]:
        """Every version, oldest first; a parent always before its children (times are to the second,
        so two versions written in the same second are ordered by their depth in the history)."""
        infos = {v: self.get(v) for v in self.ids()}
        depth: dict[str, int] = {}

        def depth_of(vid: str) -> int:
            chain: builtins.list[str] = []
            cur: str | None = vid
            while cur is not None and cur not in depth and cur in infos and cur not in chain:
                chain.append(cur)
                cur = infos[cur].parent
            base = depth.get(cur, -1) if cur is not None else -1
            for i, v in enumerate(reversed(chain)):
                depth[v] = base + 1 + i
            return depth[vid]

        return sorted(infos.values(), key=lambda i: (i.created, depth_of(i.id), i.id))

    def log(self, ref: str) -> builtins.list[VersionInfo]:
        """The version and its ancestors, newest first."""
        out: list[VersionInfo] = []
        vid: str | None = self.resolve(ref)
        seen: set[str] = set()
        while vid is not None and vid not in seen:
            seen.add(vid)
            if not self.version_dir(vid).is_dir():
                raise CorruptVersionError(
                    f"version {out[-1].id[:12]} names parent {vid[:12]}, which is not in the store"
                )
            info = self.get(vid)
            out.append(info)
            vid = info.parent
        return out

    def manifest(self, ref: str, columns: builtins.list[str] | None = None) -> pa.Table:
        """(id, hash, pack, row) of every sample, sorted by id, checked against its recorded hash."""
        info = self.get(ref)
        path = self.version_dir(info.id) / "manifest.parquet"
        self._check_file(path, info.manifest_sha256, info.id)
        return read_parquet(path, columns)

    def events(self, ref: str) -> pa.Table:
        info = self.get(ref)
        path = self.version_dir(info.id) / "events.parquet"
        self._check_file(path, info.events_sha256, info.id)
        return read_parquet(path)

    def _check_file(self, path: Path, sha: str, vid: str) -> None:
        if not path.is_file():
            raise CorruptVersionError(f"version {vid[:12]}: {path} is missing (deleted?)")
        if file_sha256(path) != sha:
            raise CorruptVersionError(
                f"version {vid[:12]}: {path} was altered (sha256 does not match version.json)"
            )

    def _pack_path(self, pack: str) -> Path:
        return self.packs_dir / f"{pack}.parquet"

    def read_samples(self, ref: str) -> pa.Table:
        """(id, sample) of every sample, sorted by id; `sample` is the canonical JSON text.
        Every pack read is checked against its content hash."""
        info = self.get(ref)
        man = self.manifest(info.id, ["id", "pack", "row"])
        texts: list[pa.Array] = []
        positions: list[pa.Array] = []
        packs = man.column("pack")
        for pack in info.packs:
            pos = pc.indices_nonzero(pc.equal(packs, pack))
            if len(pos) == 0:
                continue
            path = self._pack_path(pack)
            self._check_file(path, pack, info.id)
            table = read_parquet(path, ["sample"])
            rows = man.column("row").take(pos)
            texts.append(table.column("sample").take(rows).combine_chunks())
            positions.append(pos)
        if not texts:
            return pa.table({"id": pa.array([], pa.string()), "sample": pa.array([], pa.string())})
        order = pc.sort_indices(pa.chunked_array(positions).combine_chunks())
        sample = pa.chunked_array(texts).combine_chunks().take(order)
        return pa.table({"id": man.column("id"), "sample": sample})

    def iter_samples(self, ref: str) -> Iterator[dict[str, Any]]:
        """Every sample of a version as a dict, in id order."""
        table = self.read_samples(ref)
        for batch in table.to_batches(max_chunksize=10_000):
            for text in batch.column("sample").to_pylist():
                yield json.loads(text)

    def sample(self, sample_id: str, ref: str) -> dict[str, Any] | None:
        """One sample's content in a version (None when not in it), checked against its hash."""
        vid = self.resolve(ref)
        hit = self._manifest_row(vid, sample_id)
        if hit is None:
            return None
        digest, pack, row = hit
        path = self._pack_path(pack)
        idx = self._cache.get(path, "id")
        group = idx.read_group(row // PACK_ROW_GROUP, ["hash", "sample"])
        text = group.column("sample")[row % PACK_ROW_GROUP].as_py()
        if content_hash(text) != digest:
            raise CorruptVersionError(
                f"version {vid[:12]}: sample {sample_id!r} in pack {pack[:12]} was altered"
            )
        value: dict[str, Any] = json.loads(text)
        return value

    def _manifest_row(self, vid: str, sample_id: str) -> tuple[bytes, str, int] | None:
        idx = self._cache.get(self.version_dir(vid) / "manifest.parquet", "id")
        rows = idx.lookup(sample_id, ["hash", "pack", "row"]).to_pylist()
        if not rows:
            return None
        r = rows[0]
        return r["hash"], r["pack"], int(r["row"])

    def _content_hash(self, vid: str, sample_id: str) -> bytes | None:
        idx = self._cache.get(self.version_dir(vid) / "manifest.parquet", "id")
        rows = idx.lookup(sample_id, ["hash"]).column(0).to_pylist()
        return rows[0] if rows else None

    def _events_of(self, vid: str, sample_id: str) -> builtins.list[LineageEvent]:
        idx = self._cache.get(self.version_dir(vid) / "events.parquet", "sample_id")
        table = idx.lookup(sample_id, list(EVENTS_SCHEMA.names))
        return [event_from_row(r) for r in table.sort_by("seq").to_pylist()]

    # ---------------------------------------------------------------- lineage

    def lineage(self, sample_id: str, version: str | None = None) -> SampleHistory:
        """The sample's history along the ancestry of `version` (default: ref `main`, else the newest
        version), oldest first: in each version, whether it was added, changed, unchanged, removed or
        absent, and the events recorded for it (operators, reasons, scores, plan)."""
        if version is None:
            vid = self.head() or (self.list()[-1].id if self.ids() else None)
            if vid is None:
                raise UnknownVersionError(f"{self.root} holds no versions yet")
        else:
            vid = self.resolve(version)
        chain = self.log(vid)[::-1]
        history: list[HistoryEntry] = []
        prev: bytes | None = None
        for info in chain:
            digest = self._content_hash(info.id, sample_id)
            events = self._events_of(info.id, sample_id)
            if digest is None:
                presence = "removed" if prev is not None else "absent"
            elif prev is None:
                presence = "added"
            else:
                presence = "unchanged" if digest == prev else "changed"
            if presence != "absent" or events:
                history.append(
                    HistoryEntry(
                        version=info.id,
                        parent=info.parent,
                        message=info.message,
                        plan_id=info.plan_id,
                        created=info.created,
                        presence=presence,
                        content_hash=digest.hex() if digest else None,
                        events=events,
                    )
                )
            prev = digest
        current = self.sample(sample_id, vid) if prev is not None else None
        return SampleHistory(sample_id=sample_id, version=vid, history=history, sample=current)

    # ---------------------------------------------------------------- diff

    def diff(self, a: str, b: str, *, examples: int = 5) -> VersionDiff:
        from vlcurate.versions.diff import diff_versions

        return diff_versions(self, self.resolve(a), self.resolve(b), examples=examples)

    def diff_table(self, a: str, b: str) -> pa.Table:
        """(id, change, op, reason) for every sample added, removed or changed from a to b."""
        from vlcurate.versions.diff import diff_rows

        return diff_rows(self, self.resolve(a), self.resolve(b))

    # ---------------------------------------------------------------- export

    def export(
        self, ref: str, fmt: str, out: str | Path, *, missing: str = "error", image_root: Path | None = None
    ) -> dict[str, Any]:
        """Write the version in a trainer format (llava, sharegpt, openai, hf) or jsonl; see `export.py`."""
        from vlcurate.versions.export import export_version

        return export_version(self, self.resolve(ref), fmt, Path(out), missing=missing, image_root=image_root)

    # ---------------------------------------------------------------- attachments

    def attach(self, ref: str, name: str, payload: dict[str, Any]) -> Attachment:
        """Store `payload` beside the version as `attachments/NAME.json`, once: the same payload again
        is a no-op, another payload under the same name fails. The version's id and files never change."""
        info = self.get(ref)
        if not _NAME.match(name):
            raise VersionError(f"attachment name {name!r}: use letters, digits, '.', '_' and '-'")
        folder = self.version_dir(info.id) / "attachments"
        folder.mkdir(exist_ok=True)
        target = folder / f"{name}.json"
        body = json.loads(json.dumps(payload, default=str))
        if target.exists():
            existing = self._read_attachment(target, info.id)
            if existing.payload == body:
                return existing
            raise AttachmentExistsError(
                f"version {info.id[:12]} already has an attachment {name!r} with other content; attachments "
                "are immutable, use another name"
            )
        att = Attachment(name=name, version=info.id, created=_now(), payload=body)
        tmp = folder / f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(att.model_dump_json(indent=2) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, target)  # fails if another writer created it first: never overwritten
            except FileExistsError:
                existing = self._read_attachment(target, info.id)
                if existing.payload == body:
                    return existing
                raise AttachmentExistsError(
                    f"version {info.id[:12]}: attachment {name!r} was just written by another writer"
                ) from None
            fsync_dir(folder)
        finally:
            tmp.unlink(missing_ok=True)
        return att

    def _read_attachment(self, path: Path, vid: str) -> Attachment:
        try:
            return Attachment.model_validate_json(path.read_bytes())
        except ValueError as exc:
            raise CorruptVersionError(
                f"version {vid[:12]}: attachment {path.name} does not parse ({exc})"
            ) from None

    def attachments(self, ref: str) -> dict[str, Attachment]:
        info = self.get(ref)
        folder = self.version_dir(info.id) / "attachments"
        if not folder.is_dir():
            return {}
        return {p.stem: self._read_attachment(p, info.id) for p in sorted(folder.glob("*.json"))}

    # ---------------------------------------------------------------- verify

    def verify(self, ref: str) -> VerifyReport:
        """Check every hash of a version: version.json against the id, manifest and events against
        version.json, the manifest's digest, every pack against its name."""
        vid = self.resolve(ref)
        problems: list[str] = []
        checked = 0
        try:
            info = self.get(vid)
        except CorruptVersionError as exc:
            return VerifyReport(version=vid, ok=False, problems=[str(exc)], checked_files=1)
        vdir = self.version_dir(vid)
        for name, sha in (("manifest.parquet", info.manifest_sha256), ("events.parquet", info.events_sha256)):
            checked += 1
            try:
                self._check_file(vdir / name, sha, vid)
            except CorruptVersionError as exc:
                problems.append(str(exc))
        if not problems:
            man = read_parquet(vdir / "manifest.parquet")
            if (
                digest_pairs(man.column("id").combine_chunks(), man.column("hash").combine_chunks())
                != info.content_digest
            ):
                problems.append(f"version {vid[:12]}: manifest content does not match its digest")
            listed = set(pc.unique(man.column("pack")).to_pylist())
            if not listed <= set(info.packs):
                problems.append(f"version {vid[:12]}: manifest names packs not in version.json")
            if digest_columns(read_parquet(vdir / "events.parquet")) != info.events_digest:
                problems.append(f"version {vid[:12]}: events do not match their digest")
        for pack in info.packs:
            checked += 1
            try:
                self._check_file(self._pack_path(pack), pack, vid)
            except CorruptVersionError as exc:
                problems.append(str(exc))
        return VerifyReport(version=vid, ok=not problems, problems=problems, checked_files=checked)

    # ---------------------------------------------------------------- commit

    def commit(
        self,
        samples: Iterable[Mapping[str, Any]] | pa.Table,
        *,
        parent: str | None,
        message: str,
        plan_id: str | None = None,
        events: Iterable[LineageEvent | dict[str, Any]] | None = None,
        ref: str | None = None,
        lock_timeout: float = 60.0,
        progress: Callable[[int], None] | None = None,
    ) -> VersionInfo:
        """Store `samples` as a new version (or return the identical one already stored).

        `events` are the lineage of this step (what operators did to which samples, and why); drops
        are events of samples not in `samples`. With `ref`, the ref must point at `parent` (or not
        exist when `parent` is None) when the version is published, else `ConcurrentUpdateError` and
        nothing changes; the ref then points at the new version. `progress(n)` is called as every n
        more samples are hashed."""
        self._ensure()
        parent_id = self.resolve(parent) if parent else None
        if ref is not None and not _NAME.match(ref):
            raise VersionError(f"ref name {ref!r}: use letters, digits, '.', '_' and '-'")
        stage = self.root / "tmp" / f"stage-{os.getpid()}-{uuid.uuid4().hex[:10]}"
        stage.mkdir(parents=True)
        try:
            info, new_pack = self._stage(stage, samples, parent_id, message, plan_id, events or [], progress)
            with store_lock(self.root / "lock", lock_timeout):
                if ref is not None:
                    current = self.head(ref)
                    if current != parent_id:
                        now = current[:12] if current else "nothing"
                        raise ConcurrentUpdateError(
                            f"ref {ref!r} points at {now}, not at the parent "
                            f"{parent_id[:12] if parent_id else '(none)'}: another writer committed first; "
                            "nothing was written, commit again on top of it"
                        )
                if new_pack is not None:
                    tmp_pack, sha = new_pack
                    final = self._pack_path(sha)
                    if final.exists():
                        tmp_pack.unlink()
                    else:
                        os.replace(tmp_pack, final)
                        fsync_dir(final.parent)
                target = self.version_dir(info.id)
                if not target.exists():
                    os.rename(stage, target)
                    fsync_dir(self.versions_dir)
                if ref is not None:
                    write_text_atomic(self.root / "refs" / ref, info.id + "\n")
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)
        return self.get(info.id)

    def _stage(
        self,
        stage: Path,
        samples: Iterable[Mapping[str, Any]] | pa.Table,
        parent_id: str | None,
        message: str,
        plan_id: str | None,
        events: Iterable[LineageEvent | dict[str, Any]],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[VersionInfo, tuple[Path, str] | None]:
        ids_parts: list[pa.Array] = []
        hash_parts: list[pa.Array] = []
        text_parts: list[pa.Array] = []
        ids: list[str] = []
        hashes: list[bytes] = []
        texts: list[str] = []

        def flush() -> None:
            if ids:
                ids_parts.append(pa.array(ids, pa.string()))
                hash_parts.append(pa.array(hashes, pa.binary(HASH_BYTES)))
                text_parts.append(pa.array(texts, pa.large_string()))
                ids.clear()
                hashes.clear()
                texts.clear()

        for s in iter_dicts(samples):
            if not isinstance(s, Mapping):
                raise SampleFormatError(f"samples must be JSON objects, got {type(s).__name__}")
            sid, text = canonical(s)
            ids.append(sid)
            hashes.append(content_hash(text))
            texts.append(text)
            if len(ids) >= 10_000:
                flush()
                if progress is not None:
                    progress(10_000)
        if progress is not None:
            progress(len(ids))
        flush()
        table = pa.table(
            {
                "id": pa.chunked_array(ids_parts, pa.string()),
                "hash": pa.chunked_array(hash_parts, pa.binary(HASH_BYTES)),
                "sample": pa.chunked_array(text_parts, pa.large_string()),
            }
        )
        table = table.take(pc.sort_indices(table.column("id")))
        sorted_ids = table.column("id").combine_chunks()
        if len(sorted_ids) > 1:
            dup = pc.equal(sorted_ids.slice(1), sorted_ids.slice(0, len(sorted_ids) - 1))
            first = pc.index(dup, True).as_py()
            if first >= 0:
                raise SampleFormatError(f"sample id {sorted_ids[first].as_py()!r} appears more than once")
        hashes_arr = table.column("hash").combine_chunks()

        # Dedup against the parent: unchanged samples keep pointing at the parent's packs.
        n = table.num_rows
        packs: set[str] = set()
        pack_np = np.full(n, None, dtype=object)
        row_np = np.zeros(n, dtype=np.int64)
        is_new = np.ones(n, dtype=bool)
        if parent_id is not None and n:
            pman = self.manifest(parent_id, ["hash", "pack", "row"])
            keyed = pa.table({"hash": hashes_arr, "_pos": pa.array(np.arange(n))})
            joined = keyed.join(pman, "hash", join_type="inner")
            pos = joined.column("_pos").to_numpy()
            is_new[pos] = False
            pack_np[pos] = joined.column("pack").to_numpy(zero_copy_only=False)
            row_np[pos] = joined.column("row").to_numpy()
            packs |= set(pc.unique(joined.column("pack")).to_pylist())
        new_pack: tuple[Path, str] | None = None
        n_new = int(is_new.sum())
        if n_new:
            new_idx = np.flatnonzero(is_new)
            new_rows = table.take(pa.array(new_idx))
            pack_table = pa.table(
                {
                    "id": new_rows.column("id"),
                    "hash": new_rows.column("hash"),
                    "sample": new_rows.column("sample").cast(pa.string()),
                },
                schema=PACK_SCHEMA,
            )
            tmp_pack = stage / PACK_STAGE
            write_table(tmp_pack, pack_table, PACK_ROW_GROUP, key="id")
            sha = file_sha256(tmp_pack)
            new_pack = (tmp_pack, sha)
            packs.add(sha)
            pack_np[new_idx] = sha
            row_np[new_idx] = np.arange(n_new)
        pack_col = pa.array(pack_np, pa.string())
        row_col = pa.array(row_np)
        manifest = pa.table(
            {"id": sorted_ids, "hash": hashes_arr, "pack": pack_col, "row": row_col}, schema=MANIFEST_SCHEMA
        )
        write_table(stage / "manifest.parquet", manifest, key="id")
        ev = events_table(events)
        write_table(stage / "events.parquet", ev, key="sample_id")
        info = VersionInfo(
            id="",
            parent=parent_id,
            message=message,
            plan_id=plan_id,
            created=_now(),
            n_samples=manifest.num_rows,
            n_events=ev.num_rows,
            content_digest=digest_pairs(sorted_ids, hashes_arr),
            events_digest=digest_columns(ev),
            manifest_sha256=file_sha256(stage / "manifest.parquet"),
            events_sha256=file_sha256(stage / "events.parquet"),
            packs=sorted(packs),
            new_samples=n_new,
        )
        info.id = version_id(info)
        write_json_atomic(stage / "version.json", info.model_dump())
        return info, new_pack


def open_store(root: str | Path) -> VersionStore:
    """A store that must already exist (reads); `VersionStore(root).commit` creates one."""
    store = VersionStore(root)
    store._check_store()
    return store
