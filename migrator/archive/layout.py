"""Where each file of an archive lives, in one place.

::

    config.json                                  plain: format, encryption scheme, recipient
    keys/<id>.age                                the identity, encrypted with a passphrase
    sets/<set>/started.json.zst[.age]            written first (removed at commit)
    sets/<set>/<store>/store.json.zst[.age]      cut, store-level files (removed at commit)
    sets/<set>/<store>/store/<name>.zst[.age]    store-level files (e.g. views, settings)
    sets/<set>/<store>/records/<unit>.json.zst[.age]  a finished unit (removed at commit)
    sets/<set>/<store>/units/<unit>/<name>.zst[.age]  the unit's data, in its store's format
    sets/<set>/manifest.json.zst[.age]           written last: the set is complete
    sets/<set>/forgotten.json                    plain: prune forgot the set; files that
                                                 later sets reference are still here

Set names sort by time: ``20250102T030405Z-1a2b3c``. Unit names are percent-encoded
into one path segment, so any unit name is a safe folder name.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime
from urllib.parse import quote, unquote

CONFIG = "config.json"
SETS = "sets/"
STARTED = "started.json"
MANIFEST = "manifest.json"
FORGOTTEN = "forgotten.json"
SET_ID = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")
COMPRESSED = ".zst"


def new_set_id(when: datetime | None = None) -> str:
    moment = (when or datetime.now(UTC)).astimezone(UTC)
    return f"{moment:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def set_time(set_id: str) -> datetime:
    return datetime.strptime(set_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def folder(name: str) -> str:
    """A unit name as one safe path segment (reversible with ``unfolder``)."""
    text = quote(name, safe="-_=+,@")
    return "%2E" + text[1:] if text.startswith(".") else text


def unfolder(text: str) -> str:
    return unquote(text)


class Layout:
    """Paths for one archive; ``suffix`` is what stored files end with (.zst[.age])."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix

    def stored(self, path: str) -> str:
        return path + self.suffix

    @staticmethod
    def set_dir(set_id: str) -> str:
        return f"{SETS}{set_id}/"

    def started(self, set_id: str) -> str:
        return self.stored(f"{self.set_dir(set_id)}{STARTED}")

    def manifest(self, set_id: str) -> str:
        return self.stored(f"{self.set_dir(set_id)}{MANIFEST}")

    def forgotten(self, set_id: str) -> str:
        return f"{self.set_dir(set_id)}{FORGOTTEN}"

    def store_record(self, set_id: str, kind: str) -> str:
        return self.stored(f"{self.set_dir(set_id)}{kind}/store.json")

    def store_file(self, set_id: str, kind: str, name: str) -> str:
        return self.stored(f"{self.set_dir(set_id)}{kind}/store/{name}")

    def unit_record(self, set_id: str, kind: str, unit: str) -> str:
        return self.stored(f"{self.set_dir(set_id)}{kind}/records/{folder(unit)}.json")

    def unit_records_dir(self, set_id: str, kind: str) -> str:
        return f"{self.set_dir(set_id)}{kind}/records/"

    def unit_file(self, set_id: str, kind: str, unit: str, name: str) -> str:
        return self.stored(f"{self.set_dir(set_id)}{kind}/units/{folder(unit)}/{name}")

    def is_bookkeeping(self, set_id: str, path: str) -> bool:
        """Records a writer keeps until the manifest is written."""
        base = self.set_dir(set_id)
        if path == self.started(set_id):
            return True
        rest = path[len(base):] if path.startswith(base) else ""
        parts = rest.split("/")
        return (len(parts) == 2 and parts[1] == self.stored("store.json")) or \
            (len(parts) == 3 and parts[1] == "records")


def set_of(path: str) -> str | None:
    """The set a stored path belongs to."""
    if not path.startswith(SETS):
        return None
    set_id = path[len(SETS):].split("/", 1)[0]
    return set_id if SET_ID.match(set_id) else None
