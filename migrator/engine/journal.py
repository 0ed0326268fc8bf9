"""The journal: a small SQLite file beside the plan with every unit's state and an event log.

``run`` after a crash or Ctrl-C reads it and continues from each unit's last checkpoint.
A checkpoint is written only after the importer has committed the batch it describes,
so at worst one batch is replayed, which importers make harmless.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from migrator.errors import JournalConflict

PENDING, COPYING, COPIED, SKIPPED, FAILED = "pending", "copying", "copied", "skipped", "failed"
VERIFIED, DIFFERS = "verified", "differs"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    key TEXT PRIMARY KEY, store TEXT NOT NULL, name TEXT NOT NULL,
    state TEXT NOT NULL, cursor TEXT, records INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, unit TEXT,
    kind TEXT NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS cache (
    scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (scope, key));
"""


@dataclass
class UnitState:
    key: str
    state: str = PENDING
    cursor: Any = None
    records: int = 0
    bytes: int = 0
    skipped: int = 0
    attempts: int = 0
    error: str | None = None


def journal_path(plan_path: Path) -> Path:
    return plan_path.with_name(plan_path.stem + ".journal.sqlite")


class Journal:
    """Thread-safe: one connection guarded by a lock; writes are tiny and commit at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lock_file: IO[str] | None = None
        self._db: sqlite3.Connection | None = None

    def open(self, *, exclusive: bool = True) -> Journal:
        """Open (or create) the journal; one that cannot be used is a conflict (exit 6)
        that names the file, never a traceback: it holds the only record of progress."""
        if self.path.is_dir():
            raise JournalConflict(f"journal {self.path} is a directory, not a journal file",
                                  hint="move it aside; the journal is created beside the plan")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._take_file_lock()
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT key, state, cursor FROM units LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise JournalConflict(
                f"journal {self.path} is unreadable ({exc})",
                hint="it is damaged or not a journal: move it aside and run with --restart "
                "(the target is then re-written from the start)") from None
        except OSError as exc:
            self.close()
            raise JournalConflict(
                f"cannot use the journal {self.path} ({exc.strerror or exc})",
                hint="the plan's directory must be writable: the journal lives beside the "
                "plan; copy the plan to a writable directory") from None
        return self

    def _take_file_lock(self) -> None:
        lock_path = self.path.with_suffix(".lock")
        handle = open(lock_path, "a+")  # noqa: SIM115 - held for the journal's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise JournalConflict(
                f"journal {self.path} is in use by {holder}",
                hint="wait for that run to finish, or stop it (Ctrl-C saves its progress)",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exec(self, sql: str, args: tuple = ()) -> list[tuple]:
        assert self._db is not None, "journal is not open"
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- meta ------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._exec("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._exec("INSERT INTO meta(key, value) VALUES (?, ?) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))

    def bind_plan(self, fingerprint: str, *, restart: bool) -> None:
        """Refuse to continue a journal that belongs to a different plan."""
        if restart:
            self.reset()
        current = self.get_meta("plan_fingerprint")
        if current is not None and current != fingerprint and self.has_progress():
            raise JournalConflict(
                f"journal {self.path} was written for a different version of this plan",
                hint="re-run with --restart to start over (the target is re-written), "
                "or restore the plan the journal belongs to")
        self.set_meta("plan_fingerprint", fingerprint)

    def reset(self) -> None:
        self._exec("DELETE FROM units")
        self._exec("DELETE FROM meta")
        self.event(None, "restart", "journal reset by --restart")

    def has_progress(self) -> bool:
        rows = self._exec("SELECT COUNT(*) FROM units WHERE state != ?", (PENDING,))
        return bool(rows[0][0])

    # -- units -----------------------------------------------------------------------
    def unit(self, key: str) -> UnitState:
        rows = self._exec("SELECT state, cursor, records, bytes, skipped, attempts, error "
                          "FROM units WHERE key = ?", (key,))
        if not rows:
            return UnitState(key)
        state, cursor, records, bytes_, skipped, attempts, error = rows[0]
        return UnitState(key, state, json.loads(cursor) if cursor else None, records,
                         bytes_, skipped, attempts, error)

    def units(self) -> dict[str, UnitState]:
        rows = self._exec("SELECT key FROM units")
        return {key: self.unit(key) for (key,) in rows}

    def set_state(self, key: str, store: str, name: str, state: str, *,
                  error: str | None = None, count_attempt: bool = False) -> None:
        self._exec(
            "INSERT INTO units(key, store, name, state, error, attempts, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET state = excluded.state, "
            "error = excluded.error, attempts = units.attempts + ?, "
            "updated_at = excluded.updated_at",
            (key, store, name, state, error, int(count_attempt), time.time(),
             int(count_attempt)))
        self.event(key, state, error)

    def start_fresh(self, key: str, store: str, name: str) -> None:
        """Forget a unit's cursor and counts, e.g. for a unit that cannot resume mid-way."""
        self._exec("INSERT INTO units(key, store, name, state, updated_at) VALUES (?,?,?,?,?) "
                   "ON CONFLICT(key) DO UPDATE SET cursor = NULL, records = 0, bytes = 0, "
                   "skipped = 0, state = excluded.state, updated_at = excluded.updated_at",
                   (key, store, name, COPYING, time.time()))

    def checkpoint(self, key: str, cursor: Any, records: int, bytes_: int,
                   skipped: int = 0) -> None:
        self._exec("UPDATE units SET cursor = ?, records = records + ?, bytes = bytes + ?, "
                   "skipped = skipped + ?, updated_at = ? WHERE key = ?",
                   (json.dumps(cursor), records, bytes_, skipped, time.time(), key))

    # -- events and caches -----------------------------------------------------------
    def event(self, unit: str | None, kind: str, detail: str | None = None) -> None:
        self._exec("INSERT INTO events(ts, unit, kind, detail) VALUES (?, ?, ?, ?)",
                   (time.time(), unit, kind, detail))

    def events(self, unit: str | None = None) -> list[tuple[float, str | None, str, str | None]]:
        if unit is None:
            return self._exec("SELECT ts, unit, kind, detail FROM events ORDER BY id")
        return self._exec("SELECT ts, unit, kind, detail FROM events WHERE unit = ? "
                          "ORDER BY id", (unit,))

    def cache(self, scope: str) -> JournalCache:
        return JournalCache(self, scope)


class JournalCache(MutableMapping[Any, str]):
    """A dict-like string cache in the journal (e.g. streamed object hashes); keys may be
    any JSON-able value such as a tuple. Iteration yields the stored (JSON) key text."""

    def __init__(self, journal: Journal, scope: str) -> None:
        self._journal = journal
        self._scope = scope

    @staticmethod
    def _key(key: object) -> str:
        return key if isinstance(key, str) else json.dumps(key, default=str)

    def __getitem__(self, key: object) -> str:
        rows = self._journal._exec("SELECT value FROM cache WHERE scope = ? AND key = ?",
                                   (self._scope, self._key(key)))
        if not rows:
            raise KeyError(key)
        return rows[0][0]

    def __setitem__(self, key: object, value: str) -> None:
        self._journal._exec("INSERT INTO cache(scope, key, value) VALUES (?, ?, ?) "
                            "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value",
                            (self._scope, self._key(key), value))

    def __delitem__(self, key: object) -> None:
        self._journal._exec("DELETE FROM cache WHERE scope = ? AND key = ?",
                            (self._scope, self._key(key)))

    def __iter__(self) -> Iterator[Any]:
        rows = self._journal._exec("SELECT key FROM cache WHERE scope = ?", (self._scope,))
        return iter([key for (key,) in rows])

    def __len__(self) -> int:
        return self._journal._exec("SELECT COUNT(*) FROM cache WHERE scope = ?",
                                   (self._scope,))[0][0]
