"""An archive: opened (or created) from an endpoint, its key checked, its sets listed.

Opening reads ``config.json`` and unlocks the key before anything else, so a wrong key,
a missing key or a place that holds no archive is one error and nothing is written. A new
archive is created only by a writer, and never inside a bucket that does not exist or a
directory whose parent does not exist.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from migrator import __version__
from migrator.archive.backends import Backend, open_backend, refuse_missing_root
from migrator.archive.crypto import Cipher, new_encryption, unlock
from migrator.archive.files import ArchiveDamaged, ArchiveFile, ArchiveReader, read_json, write_json
from migrator.archive.layout import (
    COMPRESSED,
    CONFIG,
    SET_ID,
    SETS,
    Layout,
    new_set_id,
    set_time,
)
from migrator.archive.location import Location, parse
from migrator.archive.manifest import FileEntry, Manifest, ManifestError, SetStart, now, parse_time
from migrator.archive.reader import SetReader
from migrator.archive.writer import SetWriter, read_start
from migrator.config import Endpoint
from migrator.errors import PlanError, StoreError

FORMAT = "openim-migrate archive"
VERSION = 1
COMPLETE, INCOMPLETE, FORGOTTEN, DAMAGED = "complete", "incomplete", "forgotten", "damaged"


@dataclass
class SetInfo:
    """A set as found in the archive: its state, and what could be read of it."""

    set_id: str
    state: str
    stored: dict[str, int] = field(default_factory=dict)  # files in its folder -> size
    start: SetStart | None = None
    manifest: Manifest | None = None
    problem: str | None = None  # why the manifest or start record could not be read
    problem_path: str | None = None

    @property
    def time(self) -> datetime:
        started = self.manifest.start.started if self.manifest else \
            self.start.started if self.start else None
        return parse_time(started) if started else set_time(self.set_id)

    @property
    def stores(self) -> list[str]:
        source = self.manifest.start if self.manifest else self.start
        return list(source.stores) if source else []

    def to_dict(self) -> dict[str, Any]:
        """For ``list``: time, state, stores, cuts, sizes; never a secret."""
        out: dict[str, Any] = {"set": self.set_id,
                               "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                               "state": self.state, "stores": self.stores,
                               "stored_files": len(self.stored),
                               "stored_bytes": sum(self.stored.values())}
        head = self.manifest.start if self.manifest else self.start
        if head is not None:
            out["plan"] = {"name": head.plan_name, "fingerprint": head.plan_fingerprint}
            out["tool_version"] = head.tool_version
        if self.manifest is not None:
            out["finished"] = self.manifest.finished
            out["cuts"] = {kind: store.cut.to_dict() if store.cut else None
                           for kind, store in self.manifest.stores.items()}
            out["totals"] = self.manifest.totals()
        elif self.state == INCOMPLETE:
            out["units_done"] = sum(1 for p in self.stored if "/records/" in p)
        if self.problem:
            out["problem"] = {"path": self.problem_path, "problem": self.problem}
        return out


class Repository:
    def __init__(self, location: Location, backend: Backend, cipher: Cipher,
                 config: dict[str, Any]) -> None:
        self.location = location
        self.backend = backend
        self.cipher = cipher
        self.config = config
        self.level = location.level
        self.layout = Layout(COMPRESSED + cipher.suffix)

    @property
    def label(self) -> str:
        return self.location.label

    # -- opening -----------------------------------------------------------------------
    @classmethod
    def open(cls, endpoint: Endpoint, *, create: bool = False) -> Repository:
        """The archive at ``endpoint``; with ``create``, a new one where there is none
        (encrypted when the endpoint has a key or passphrase)."""
        location = parse(endpoint)
        backend = open_backend(location)
        try:
            if backend.size(CONFIG) is None:
                if not create:
                    raise PlanError(f"{endpoint.name or 'archive'}.url",
                                    f"there is no archive at {location.label}",
                                    hint="check the URL; a backup creates the archive")
                return cls._create(location, backend)
            config = cls._read_config(backend)
            cipher = unlock(config.get("encryption") or {}, endpoint, backend.read_bytes)
            return cls(location, backend, cipher, config)
        except BaseException:
            backend.close()
            raise

    @classmethod
    def _create(cls, location: Location, backend: Backend) -> Repository:
        refuse_missing_root(backend)
        name = location.endpoint.name or "archive"
        if next(iter(backend.files()), None) is not None:
            raise PlanError(f"{name}.url", f"{location.label} holds files but no archive "
                            "(no config.json)", hint="give an empty directory or prefix")
        encryption, key_files, cipher = new_encryption(location.endpoint)
        config = {"format": FORMAT, "version": VERSION, "created": now(),
                  "tool": {"name": "openim-migrate", "version": __version__},
                  "encryption": encryption}
        for path, data in key_files.items():
            backend.write_bytes(path, data)
        backend.sync()
        backend.write_bytes(CONFIG, json.dumps(config, indent=1).encode() + b"\n")
        backend.sync()
        return cls(location, backend, cipher, config)

    @staticmethod
    def _read_config(backend: Backend) -> dict[str, Any]:
        try:
            config = json.loads(backend.read_bytes(CONFIG))
        except ValueError as exc:
            raise ArchiveDamaged(CONFIG, f"not valid JSON ({exc})") from exc
        if not isinstance(config, dict) or config.get("format") != FORMAT:
            raise ArchiveDamaged(CONFIG, "is not an openim-migrate archive's config")
        if int(config.get("version", 0)) > VERSION:
            raise PlanError(backend.label, f"archive format version {config['version']} is "
                            "newer than this tool reads", hint="upgrade openim-migrate")
        return config

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files -------------------------------------------------------------------------
    def new_file(self, path: str, *, name: str, meta: dict[str, Any] | None = None,
                 on_close: Callable[[FileEntry], None] | None = None) -> ArchiveFile:
        return ArchiveFile(self.backend, path, self.cipher, self.level, name=name, meta=meta,
                           on_close=on_close)

    def read_file(self, entry: FileEntry) -> ArchiveReader:
        """A stored file's plain bytes, checked against its entry as they are read."""
        return ArchiveReader(self.backend, entry.path, self.cipher, entry)

    def write_record(self, path: str, data: Any) -> None:
        write_json(self.backend, path, self.cipher, self.level, data)

    def read_record(self, path: str) -> Any:
        return read_json(self.backend, path, self.cipher)

    # -- sets --------------------------------------------------------------------------
    def stored_sets(self) -> dict[str, dict[str, int]]:
        """Every set folder with its files and sizes, from one listing."""
        found: dict[str, dict[str, int]] = defaultdict(dict)
        for path, size in self.backend.files(SETS):
            set_id = path[len(SETS):].split("/", 1)[0]
            if SET_ID.match(set_id):
                found[set_id][path] = size
        return dict(sorted(found.items()))

    def sets(self) -> list[SetInfo]:
        """All sets, oldest first; complete ones with their manifest read and checked."""
        infos = []
        for set_id, stored in self.stored_sets().items():
            infos.append(self._set_info(set_id, stored))
        return sorted(infos, key=lambda i: (i.time, i.set_id))

    def _set_info(self, set_id: str, stored: dict[str, int]) -> SetInfo:
        layout = self.layout
        if layout.forgotten(set_id) in stored:
            return SetInfo(set_id, FORGOTTEN, stored)
        manifest_path = layout.manifest(set_id)
        if manifest_path in stored:
            try:
                manifest = Manifest.from_dict(self.read_record(manifest_path))
            except (ManifestError, ArchiveDamaged) as exc:
                problem = exc.problem if isinstance(exc, ArchiveDamaged) else str(exc)
                return SetInfo(set_id, DAMAGED, stored, problem=problem,
                               problem_path=manifest_path)
            if manifest.set_id != set_id:
                return SetInfo(set_id, DAMAGED, stored, problem_path=manifest_path,
                               problem=f"it names set {manifest.set_id}")
            return SetInfo(set_id, COMPLETE, stored, manifest=manifest)
        start = None
        if layout.started(set_id) in stored:
            try:
                start = read_start(self, set_id)
            except (ArchiveDamaged, KeyError, TypeError) as exc:
                return SetInfo(set_id, INCOMPLETE, stored, problem=str(exc),
                               problem_path=layout.started(set_id))
        return SetInfo(set_id, INCOMPLETE, stored, start=start)

    def open_set(self, set_id: str | None = None) -> Manifest:
        """The manifest of a complete set (the newest when ``set_id`` is None)."""
        name = self.location.endpoint.name or "archive"
        if set_id is not None and not SET_ID.match(set_id):
            raise PlanError(f"{name}@{set_id}", "is not a set name (e.g. 20250102T030405Z-1a2b3c)")
        infos = self.sets()
        if set_id is None:
            complete = [i for i in infos if i.state == COMPLETE]
            if not complete:
                raise PlanError(name, f"{self.label} holds no complete set")
            assert complete[-1].manifest is not None
            return complete[-1].manifest
        info = next((i for i in infos if i.set_id == set_id), None)
        if info is None:
            raise PlanError(f"{name}@{set_id}", "no such set in the archive",
                            hint="`openim-migrate backup list ARCHIVE` shows the sets")
        if info.state == DAMAGED:
            raise ArchiveDamaged(info.problem_path or set_id, info.problem or "damaged")
        if info.manifest is None:
            raise PlanError(f"{name}@{set_id}", f"the set is {info.state}")
        return info.manifest

    def reader(self, set_id: str | None = None) -> SetReader:
        """A complete set (the newest when ``set_id`` is None), for restores and drills."""
        return SetReader(self, self.open_set(set_id))

    def begin_set(self, *, plan_name: str, plan_fingerprint: str, stores: list[str],
                  resume: str | None = None,
                  units: dict[str, list[dict[str, Any]]] | None = None) -> SetWriter:
        """A writer for a new set, or for ``resume`` (an incomplete set of the same plan)."""
        if resume is not None:
            info = next((i for i in self.sets() if i.set_id == resume), None)
            if info is None or info.state != INCOMPLETE or info.start is None:
                state = "gone" if info is None else info.state
                raise StoreError(f"set {resume} cannot be resumed: it is {state}")
            if info.start.plan_fingerprint != plan_fingerprint:
                raise StoreError(f"set {resume} was started for another plan")
            return SetWriter(self, info.start)
        start = SetStart(set_id=new_set_id(), started=now(), tool_version=__version__,
                         plan_name=plan_name, plan_fingerprint=plan_fingerprint,
                         stores=sorted(stores), units=dict(units or {}))
        self.write_record(self.layout.started(start.set_id), start.to_dict())
        return SetWriter(self, start)

    def resumable_set(self, plan_fingerprint: str) -> str | None:
        """The incomplete set a rerun of this plan continues: the newest one, if it is
        newer than every complete set (older ones are abandoned; prune removes them)."""
        infos = self.sets()
        newest_complete = max((i.time for i in infos if i.state == COMPLETE), default=None)
        for info in reversed(infos):
            if info.state != INCOMPLETE or info.start is None:
                continue
            if newest_complete is not None and info.time <= newest_complete:
                return None
            if info.start.plan_fingerprint == plan_fingerprint:
                return info.set_id
        return None


def open_archive(endpoint: Endpoint, *, create: bool = False) -> Repository:
    return Repository.open(endpoint, create=create)
