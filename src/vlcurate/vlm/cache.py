"""The VLM client's persistent response cache: one SQLite file in a folder, keyed by request hash.

Why SQLite: one file, atomic writes, and several processes (or a re-run after a crash) can share
it; WAL mode keeps writers from blocking readers. Only successful answers are stored, so a re-run
asks again exactly for what failed. A file that is not a readable database (truncated, overwritten)
is moved aside as `<name>.corrupt-<time>` and a fresh one is started: losing a cache costs
requests, never the run. A row that does not decode is treated as a miss and deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CACHE_FILE = "vlm_cache.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL)"


class ResponseCache:
    """key -> JSON-able dict; `rebuilt` says whether a corrupt file was set aside at open."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder).expanduser()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / CACHE_FILE
        self.rebuilt = False
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            self._set_aside(exc)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(_SCHEMA)
            row = conn.execute("PRAGMA quick_check").fetchone()
            if not row or row[0] != "ok":
                raise sqlite3.DatabaseError(f"quick_check failed: {row[0] if row else 'no answer'}")
            conn.execute("SELECT count(*) FROM responses").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _set_aside(self, exc: Exception) -> None:
        bad = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time() * 1000)}")
        log.warning("VLM cache %s is unreadable (%s); moved to %s and starting afresh", self.path, exc, bad)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            with contextlib.suppress(OSError):
                side.unlink()
        with contextlib.suppress(OSError):
            self.path.rename(bad)
        self.rebuilt = True

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored value, or None on a miss (or on a row or file that no longer reads)."""
        try:
            row = self._conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        except sqlite3.DatabaseError as exc:  # corrupted while open: start afresh, count it as a miss
            self._recover(exc)
            return None
        if row is None:
            return None
        try:
            value = json.loads(row[0])
            if not isinstance(value, dict):
                raise ValueError("not an object")
            return value
        except ValueError:
            with contextlib.suppress(sqlite3.DatabaseError):
                self._conn.execute("DELETE FROM responses WHERE key = ?", (key,))
            return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        """Store (or replace) one answer; a failing write is logged, never raised."""
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        try:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, text, time.time()),
            )
        except sqlite3.DatabaseError as exc:
            self._recover(exc)
            with contextlib.suppress(sqlite3.DatabaseError):
                self._conn.execute(
                    "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                    (key, text, time.time()),
                )

    def _recover(self, exc: Exception) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._set_aside(exc)
        self._conn = self._open()

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
