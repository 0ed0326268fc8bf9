"""What travels in a batch (object descriptors, never bodies) and the small facts about
objects that the copy and the verify share."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from migrator.errors import StoreError

if TYPE_CHECKING:
    from migrator.stores.objects.store import ObjectStore

MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's smallest multipart part
MAX_PARTS = 10_000
COPIED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language")
MD5_ETAG = re.compile(r"[0-9a-fA-F]{32}")
PARTS_ETAG = re.compile(r"[0-9a-fA-F]{32}-([0-9]+)")  # a multipart upload's: -<parts>
GONE = "(deleted during verify)"
CHANGED = "(changed during verify)"


class CacheKey(NamedTuple):
    """One version of one object; any change to it gives a different key."""

    endpoint: str
    bucket: str
    key: str
    etag: str
    size: int
    last_modified: int


class HashCache(dict[CacheKey, str]):
    """Streamed content MD5s, so a second verify does not re-read unchanged objects.

    A plain dict on purpose (its single operations are atomic under the GIL): the engine
    can swap in any mapping with ``get`` and ``__setitem__``, e.g. one backed by its journal.
    """


@dataclass(frozen=True)
class ObjectRecord:
    """One object as listed: what a batch carries instead of the bytes.

    ``metadata``/``headers`` are None when the listing did not include them (plain S3);
    ``source`` is the store the importer streams the body from.
    """

    bucket: str
    key: str
    size: int
    etag: str
    last_modified: int = 0  # seconds since the epoch
    content_type: str | None = None
    metadata: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    source: ObjectStore | None = field(default=None, compare=False, repr=False)

    def origin(self) -> ObjectStore:
        if self.source is None:
            raise StoreError(f"object {self.bucket}/{self.key}: record has no source")
        return self.source

    def open(self) -> Any:
        """The body as a readable HTTP response (close and release it), or None if gone."""
        return self.origin().open_object(self.bucket, self.key)


def etag(raw: str | None) -> str:
    return (raw or "").strip('"')


def epoch(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        value = parsedate_to_datetime(value)
    return int(value.timestamp())


def split_headers(raw: Mapping[str, str]) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """(content type, user metadata, copied standard headers) with names lowercased."""
    content_type, metadata, headers = None, {}, {}
    for name, value in raw.items():
        low = name.lower()
        if low == "content-type":
            content_type = value
        elif low.startswith("x-amz-meta-"):
            metadata[low[len("x-amz-meta-"):]] = value
        elif low in COPIED_HEADERS:
            headers[low] = value
    return content_type, metadata, headers
