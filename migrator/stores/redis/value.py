"""Redis values: key selection, canonical fingerprints, chunk digests, the typed copy.

Why this exists beside DUMP/RESTORE: a DUMP payload depends on the encoding (listpack vs
hashtable, intset vs hashtable) and on the server's RDB version, so equal data can have
different payloads, and an older target refuses a newer payload. The canonical fingerprint
(which names differing keys) and the typed copy therefore read values with native
commands, which every version answers alike. The chunk digest takes payloads where they
are exact and cheap, and falls back to the fingerprint where they are not (see below).

All functions take a client whose response callbacks are switched off (raw RESP replies).

Typed record, as it travels in a batch: ``(key, expire_at_ms or 0, kind, value)`` with
value: string → bytes; hash → flat [field, value, ...]; list/set → [element, ...];
zset → flat [member, score, ...] (scores as the server printed them); stream → dict
(entries, last_id, entries_added, max_deleted_id, groups with consumers and pending).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import struct
from array import array
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from migrator.errors import CapabilityMissing, PlanError, TransientError
from migrator.stores.base import HASH_MASK, Selection
from migrator.stores.redis.wire import ScanPage, key_command, run_commands, run_packed

SLOTS = 16384
PAGE = 1000  # elements per page: LRANGE, HSCAN/SSCAN COUNT, ZRANGE, XRANGE COUNT
STRING_PAGE = 1 << 20  # bytes per GETRANGE page, so a 512 MB string never sits in memory
WRITE_CHUNK = 512  # elements per HSET/RPUSH/SADD/ZADD when rebuilding a value

Fingerprint = tuple[str, str, "int | None"]  # (type, canonical value hash hex, expire ms)

_BLAKE = hashlib.blake2b(digest_size=16)  # copied: cheaper than a new one per record
_LENGTH = struct.Struct("<Q").pack
_HEADER = struct.Struct("<cqQ").pack  # chunk digest record: tag, expiry bucket, key length


def key_text(key: bytes) -> str:
    """A printable, injective name for a key.

    Valid UTF-8 without a backslash is shown as is; anything else escapes backslashes and
    undecodable bytes (``\\xNN``), so two different keys never print the same.
    """
    if b"\\" not in key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return key.replace(b"\\", b"\\\\").decode("utf-8", "backslashreplace")


_ESCAPE = re.compile(rb"\\(\\|x[0-9a-f]{2})")


def key_bytes(text: str) -> bytes:
    """The key that ``key_text`` printed as ``text``: the engine hands keys back by the
    names ``records`` gave them (``sync`` fetches and deletes them)."""
    raw = text.encode("utf-8")
    if b"\\" not in raw:
        return raw
    return _ESCAPE.sub(lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1][1:], 16)]),
                       raw)


def server_version(text: str) -> tuple[int, ...]:
    """``"7.0.15"`` → ``(7, 0, 15)``."""
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def info(client: Any, section: str) -> dict[str, str]:
    """One INFO section as a dict of its ``name:value`` lines."""
    text = client.execute_command("INFO", section)
    out = {}
    for line in text.decode().splitlines():
        name, sep, value = line.partition(":")
        if sep and not line.startswith("#"):
            out[name] = value
    return out


MAX_STAR_GROUPS = 1000  # Redis gives up (no match) past this nesting of `*`


class PatternError(ValueError):
    """A pattern this matcher cannot follow exactly as Redis would."""


def _class_bytes(pattern: bytes, i: int) -> tuple[frozenset[int], int]:
    """The bytes a ``[...]`` starting at ``pattern[i]`` (just after the ``[``) matches, and
    the index after it, step for step as Redis' ``stringmatchlen`` reads it: ``^`` negates,
    ``\\`` escapes, ``a-z`` is a range (either order), and a class the pattern ends inside
    closes there."""
    n = len(pattern)

    def at(j: int) -> int:  # Redis reads the string's NUL terminator past the end
        return pattern[j] if j < n else 0

    negate = at(i) == ord("^")
    if negate:
        i += 1
    chosen: set[int] = set()
    while True:
        left = n - i
        if at(i) == ord("\\") and left >= 2:
            i += 1
            chosen.add(at(i))
        elif at(i) == ord("]"):
            break
        elif left <= 0:
            i -= 1
            break
        elif left >= 3 and at(i + 1) == ord("-"):
            start, end = sorted((at(i), at(i + 2)))
            if end > 0x7F:
                # Redis compares plain C chars here: signed on x86, unsigned on ARM.
                raise PatternError("a [a-z] range with a byte above 0x7f matches differently "
                                   "on x86 and ARM servers; list those bytes instead")
            chosen.update(range(start, end + 1))
            i += 2
        else:
            chosen.add(at(i))
        i += 1
    i += 1
    return frozenset(set(range(256)) - chosen if negate else chosen), i


def _byte_regex(allowed: frozenset[int]) -> bytes:
    if len(allowed) == 256:
        return b"."
    if not allowed:
        return b"(?!)"
    if len(allowed) == 1:
        return re.escape(bytes(allowed))
    return b"[" + b"".join(b"\\x%02x" % b for b in sorted(allowed)) + b"]"


def glob_tokens(pattern: bytes) -> list[frozenset[int] | None]:
    """A Redis glob as a list of steps: None for ``*`` (runs collapsed), else the set of
    bytes one key byte may be. Each other step consumes exactly one byte, whatever the key,
    which is what lets a regex match like ``stringmatchlen`` does."""
    tokens: list[frozenset[int] | None] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == ord("*"):
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
            i += 1
        elif c == ord("?"):
            tokens.append(frozenset(range(256)))
            i += 1
        elif c == ord("["):
            allowed, i = _class_bytes(pattern, i + 1)
            tokens.append(allowed)
        else:
            if c == ord("\\") and n - i >= 2:
                i += 1
            tokens.append(frozenset((pattern[i],)))
            i += 1
    if sum(t is None for t in tokens) > MAX_STAR_GROUPS:
        raise PatternError(f"more than {MAX_STAR_GROUPS} '*' groups; Redis matches nothing")
    return tokens


def glob_regex(pattern: bytes) -> bytes:
    """A regex equal to Redis' glob ``pattern`` on a non-empty key, when anchored at both ends.

    Fixed-length runs between stars are placed leftmost inside atomic groups, which finds
    a match whenever one exists and never backtracks exponentially.
    """
    segments: list[list[frozenset[int]]] = [[]]
    for token in glob_tokens(pattern):
        if token is None:
            segments.append([])
        else:
            segments[-1].append(token)
    parts = [b"".join(_byte_regex(t) for t in seg) for seg in segments]
    if len(parts) == 1:
        return parts[0]
    middle = b"".join(b"(?>.*?" + p + b")" for p in parts[1:-1] if p)
    return parts[0] + middle + b".*" + parts[-1]


class Glob:
    """Redis' own MATCH semantics (``stringmatchlen`` as SCAN applies it) for any number
    of patterns: ``\\`` escapes, ``[^a-z]`` classes, bytes not characters."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        encoded = [p.encode() for p in patterns]
        # SCAN treats the pattern "*" as no pattern at all, so it matches the empty key;
        # for any other pattern an empty key matches only the empty pattern.
        self.empty = any(p in (b"", b"*") for p in encoded)
        # match + one \Z: the same as fullmatch, and faster (it runs once per key)
        self.regex = re.compile(b"(?:" + b"|".join(b"(?:" + glob_regex(p) + b")"
                                                   for p in encoded) + b")\\Z", re.DOTALL)

    def __call__(self, key: bytes) -> bool:
        return self.regex.match(key) is not None if key else self.empty


def check_patterns(selection: Selection, where: str, preset: Selection | None = None) -> None:
    """Refuse a pattern that cannot be matched exactly, naming it (``where.include[i]``).

    ``selection`` may hold a preset's patterns too (they are always exact): they are
    skipped, so ``i`` counts the plan's own patterns."""
    for name in ("include", "exclude"):
        own = [p for p in getattr(selection, name)
               if preset is None or p not in getattr(preset, name)]
        for i, pattern in enumerate(own):
            try:
                glob_tokens(pattern.encode())
            except PatternError as exc:
                raise PlanError(f"{where}.{name}[{i}]", f"{pattern!r}: {exc}") from None


class KeyFilter:
    """Which keys a selection takes part, plus a SCAN MATCH the server can apply.

    Patterns follow Redis' MATCH exactly, so a single include pattern can also be sent
    as SCAN's MATCH; excludes and several includes are applied here.
    """

    def __init__(self, selection: Selection) -> None:
        self.include = Glob(selection.include) if selection.include else None
        self.exclude = Glob(selection.exclude) if selection.exclude else None
        self.match = selection.include[0] if len(selection.include) == 1 else None

    def __call__(self, key: bytes) -> bool:
        if self.include is not None and not self.include(key):
            return False
        return self.exclude is None or not self.exclude(key)


def slot_filter(lo: int, hi: int, keep: KeyFilter) -> Callable[[ScanPage], list[bytes]]:
    """The selected keys of a page whose hash slot lies in lo..hi (CRC16, hash tags)."""
    whole = lo == 0 and hi == SLOTS - 1
    plain = keep.include is None and keep.exclude is None

    def select(page: ScanPage) -> list[bytes]:
        keys = page.keys if whole else \
            [k for k, slot in zip(page.keys, page.slots, strict=True) if lo <= slot <= hi]
        return keys if plain else [k for k in keys if keep(k)]

    return select


def _pairs(flat: list[Any]) -> dict[bytes, Any]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _next_stream_id(entry_id: bytes) -> bytes:
    """The smallest id after ``entry_id``: an inclusive XRANGE start that works on Redis 5."""
    ms, _, seq = entry_id.partition(b"-")
    if int(seq) == (1 << 64) - 1:
        return b"%d-0" % (int(ms) + 1)
    return b"%d-%d" % (int(ms), int(seq) + 1)


def _record_hash(*parts: bytes) -> int:
    """``base.record_hash``, byte for byte, fed in one update: it runs once per element."""
    h = _BLAKE.copy()
    h.update(b"".join([x for part in parts for x in (_LENGTH(len(part)), part)]))
    return int.from_bytes(h.digest(), "little")


def _element_hashes(flat: list[bytes], pairs: bool) -> list[int]:
    """``record_hash(element)`` of each element, or ``record_hash(field, value)`` of each
    pair of a flat [field, value, ...] list."""
    copy, out = _BLAKE.copy, []
    if pairs:
        for a, b in zip(flat[0::2], flat[1::2], strict=True):
            h = copy()
            h.update(b"%s%s%s%s" % (_LENGTH(len(a)), a, _LENGTH(len(b)), b))
            out.append(int.from_bytes(h.digest(), "little"))
    else:
        for a in flat:
            h = copy()
            h.update(_LENGTH(len(a)) + a)
            out.append(int.from_bytes(h.digest(), "little"))
    return out


def _score(raw: bytes) -> bytes:
    # Servers print doubles differently across versions ("1" vs "1.0", "%.17g");
    # the float value is the data.
    return repr(float(raw)).encode()


class ValueDigest:
    """Hashes one key's value page by page, so big values stream through.

    Ordered types (string, list, stream entries) feed one running hash; unordered types
    (hash, set, zset) sum per-element hashes, so listpack and hashtable encodings agree.
    """

    def __init__(self, key: bytes, kind: str) -> None:
        self.key, self.kind = key, kind
        self.done = False
        self._ordered = _BLAKE.copy()
        self._sum = 0
        self._count = 0
        self._pos = 0
        self._cursor = b"0"
        self._seen: set[int] | None = None
        self._stage = 0
        self._start = b"-"
        self._meta: list[bytes] = []

    def command(self) -> tuple[Any, ...]:
        key, pos = self.key, self._pos
        if self.kind == "string":
            return ("GETRANGE", key, pos, pos + STRING_PAGE - 1)
        if self.kind == "list":
            return ("LRANGE", key, pos, pos + PAGE - 1)
        if self.kind == "hash":
            return ("HSCAN", key, self._cursor, "COUNT", PAGE)
        if self.kind == "set":
            return ("SSCAN", key, self._cursor, "COUNT", PAGE)
        if self.kind == "zset":
            return ("ZRANGE", key, pos, pos + PAGE - 1, "WITHSCORES")
        if self.kind == "stream":
            if self._stage == 0:
                return ("XINFO", "STREAM", key)
            if self._stage == 1:
                return ("XINFO", "GROUPS", key)
            return ("XRANGE", key, self._start, "+", "COUNT", PAGE)
        # Module types (e.g. ReJSON-RL): no native reader, the payload is all we have.
        return ("DUMP", key)

    def feed(self, reply: Any) -> None:
        kind = self.kind
        if kind == "string":
            self._ordered.update(reply)
            self._pos += len(reply)
            self.done = len(reply) < STRING_PAGE
        elif kind == "list":
            for item in reply:
                self._ordered.update(len(item).to_bytes(8, "little"))
                self._ordered.update(item)
            self._count += len(reply)
            self._pos += PAGE
            self.done = len(reply) < PAGE
        elif kind in ("hash", "set"):
            cursor, items = reply
            hashes = _element_hashes(items, pairs=kind == "hash")
            # HSCAN/SSCAN may repeat elements across calls (rehashing); one page cannot.
            if self._seen is None and cursor != b"0":
                self._seen = set()
            if self._seen is not None:
                hashes = [h for h in dict.fromkeys(hashes) if h not in self._seen]
                self._seen.update(hashes)
            self._add(hashes)
            self._cursor = cursor
            self.done = cursor == b"0"
        elif kind == "zset":
            scored = list(reply)
            scored[1::2] = [_score(score) for score in reply[1::2]]
            self._add(_element_hashes(scored, pairs=True))
            self._pos += PAGE
            self.done = len(reply) < 2 * PAGE
        elif kind == "stream":
            self._feed_stream(reply)
        else:
            self._ordered.update(reply or b"")
            self.done = True

    def _add(self, hashes: list[int]) -> None:
        self._count += len(hashes)
        self._sum = (self._sum + sum(hashes)) & HASH_MASK

    def _feed_stream(self, reply: Any) -> None:
        if self._stage == 0:
            self._meta.append(_pairs(reply).get(b"last-generated-id", b""))
            self._stage = 1
            return
        if self._stage == 1:
            # Consumer names and seen-times are not data a restore can reproduce exactly;
            # where each group stands and how much it has pending is.
            for group in sorted((_pairs(g) for g in reply), key=lambda g: g[b"name"]):
                self._meta += [group[b"name"], group[b"last-delivered-id"],
                               str(group[b"pending"]).encode()]
            self._stage = 2
            return
        for entry_id, fields in reply:
            self._ordered.update(_record_hash(entry_id, *fields).to_bytes(16, "little"))
        self._count += len(reply)
        if reply:
            self._start = _next_stream_id(reply[-1][0])
        self.done = len(reply) < PAGE

    def hexdigest(self) -> str:
        if self.kind in ("hash", "set", "zset"):
            value = _record_hash(self.kind.encode(), self._sum.to_bytes(16, "little"),
                                 str(self._count).encode())
        else:
            value = _record_hash(self.kind.encode(), self._ordered.digest(), *self._meta)
        return f"{value:032x}"


def expiry_command(pexpiretime: bool) -> str:
    return "PEXPIRETIME" if pexpiretime else "PTTL"


def absolute_expiry(reply: int, pexpiretime: bool, now_ms: int) -> int | None:
    """None = no expiry, -2 = key gone, else the absolute unix time in ms."""
    if reply == -1:
        return None
    if reply == -2:
        return -2
    return reply if pexpiretime else now_ms + reply


_TYPE_EXPIRY = {pexp: key_command("TYPE") + key_command(expiry_command(pexp))
                for pexp in (True, False)}


def _types(client: Any, keys: list[bytes], pexpiretime: bool, now_ms: int
           ) -> tuple[list[tuple[bytes, str, int | None]], list[bytes]]:
    """(key, type, absolute expiry) of the keys that exist, and those that are gone."""
    template = _TYPE_EXPIRY[pexpiretime]
    replies = run_packed(client, b"".join([template % (len(k), k, len(k), k) for k in keys]),
                         2 * len(keys))
    live, gone = [], []
    for key, kind, expiry in zip(keys, replies[0::2], replies[1::2], strict=True):
        for reply in (kind, expiry):
            if isinstance(reply, Exception):
                raise reply
        expire = absolute_expiry(expiry, pexpiretime, now_ms)
        if kind == b"none" or expire == -2:
            gone.append(key)
        else:
            live.append((key, kind.decode(), expire))
    return live, gone


def fingerprints(client: Any, keys: list[bytes], *, pexpiretime: bool,
                 now_ms: int, retries: int = 3) -> list[tuple[bytes, Fingerprint]]:
    """(key, (type, value hash, expiry)) for each key that still exists.

    Pages of every key go out in one pipeline per round, so many small keys cost a few
    round trips, and a big key costs one page per round.
    """
    live, _ = _types(client, keys, pexpiretime, now_ms)
    digests = [(ValueDigest(key, kind), expire) for key, kind, expire in live]
    changed: list[bytes] = []
    pending = [d for d, _ in digests]
    while pending:
        replies = run_commands(client, [d.command() for d in pending])
        for digest, reply in zip(pending, replies, strict=True):
            if isinstance(reply, ResponseError):  # type changed under us (WRONGTYPE)
                changed.append(digest.key)
                digest.done = True
            else:
                digest.feed(reply)
        pending = [d for d in pending if not d.done]
    out = [(d.key, (d.kind, d.hexdigest(), e)) for d, e in digests if d.key not in changed]
    if changed:
        if retries <= 0:
            raise TransientError(f"redis keys kept changing while being read: "
                                 f"{', '.join(key_text(k) for k in changed[:5])}")
        out += fingerprints(client, changed, pexpiretime=pexpiretime, now_ms=now_ms,
                            retries=retries - 1)
    return out


# -- chunk digests ----------------------------------------------------------------------
# A chunk digest only has to agree between two sides that hold equal data, and agreeing
# digests must mean equal data; it need not equal the canonical fingerprint. So it takes
# the cheapest reads that are exact: strings by value (one MGET per SCAN page on a single
# server), other types by DUMP payload, each key's expiry beside them.
#
# A DUMP payload without its 10-byte footer (RDB version + CRC64) is the value in a form
# that RESTORE parses by its leading type byte alone, on every server version: equal bytes
# are an equal value, whichever versions dumped them. Equal values can dump differently
# (encoding thresholds, ziplist vs listpack, a list's node layout): the chunk then
# disagrees and the verifier compares its keys one by one by canonical fingerprint, which
# costs time, never a wrong answer. Sets, whose encoding depends on the server version and
# config, and hashtable-encoded hashes, which dump in an order set by a per-process hash
# seed, are hashed from their elements, sorted, when one SSCAN/HSCAN call returns them all,
# and from their canonical fingerprint otherwise. Type bytes not listed below (module
# values, hashes with field TTLs, newer formats) are hashed from the canonical fingerprint.

_PAYLOAD_TYPES = frozenset({1, 3, 5, 6, 7, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 21})
_ELEMENT_TYPES = {2: b"set", 11: b"set", 20: b"set", 4: b"hash"}
_FOOTER = 10  # RDB version (2 bytes) + CRC64 (8 bytes)
_EXPIRY = {pexp: key_command(expiry_command(pexp)) for pexp in (True, False)}
_MGET, _DUMP = key_command("MGET"), key_command("DUMP")
_FIRST_SCAN = {b"hash": key_command("HSCAN", 0, "COUNT", PAGE),
               b"set": key_command("SSCAN", 0, "COUNT", PAGE)}


def _hashed(tag: bytes, key: bytes, bucket: int, body: Any) -> bytes:
    """128-bit hash of one record: a fixed-size header with the key's length, the key,
    then the value's bytes, so the framing is unambiguous."""
    h = _BLAKE.copy()
    h.update(_HEADER(tag, bucket, len(key)) + key)
    h.update(body)
    return h.digest()


def _bucket(expire: int | None, tolerance: int) -> int:
    if expire is None:
        return -1
    return expire // tolerance if tolerance > 0 else expire


def record_hashes(client: Any, keys: list[bytes], *, pexpiretime: bool, now_ms: int,
                  tolerance: int, one_mget: bool) -> list[tuple[bytes, bytes]]:
    """(key, hash of key + value + expiry // tolerance) for each key that still exists;
    the hash is 16 bytes, little-endian, as ``base.packed_sum`` sums them.

    ``one_mget``: the keys may be read with one MGET (a single server, not a cluster).
    """
    n, expiry = len(keys), _EXPIRY[pexpiretime]
    if not n:
        return []  # a run of SCAN calls can end without a key of the unit's slots
    if one_mget:
        packed = (b"*%d\r\n$4\r\nMGET\r\n" % (n + 1)
                  + b"".join([b"$%d\r\n%s\r\n" % (len(k), k) for k in keys])
                  + b"".join([expiry % (len(k), k) for k in keys]))
        replies = run_packed(client, packed, n + 1)
        values, ttls = replies[0], replies[1:]
        if values.__class__ is not list:
            raise values
    else:
        template = _MGET + expiry
        replies = run_packed(client, b"".join([template % (len(k), k, len(k), k)
                                               for k in keys]), 2 * n)
        values = [r if r.__class__ is not list else r[0] for r in replies[0::2]]
        ttls = replies[1::2]
    relative = 0 if pexpiretime else now_ms
    out: list[tuple[bytes, bytes]] = []
    others: list[tuple[bytes, int]] = []
    copy, append, header = _BLAKE.copy, out.append, _HEADER
    for key, value, ttl in zip(keys, values, ttls, strict=True):
        # Runs once per key on each side: plain checks and inline hashing, no helper calls.
        if ttl.__class__ is not int or value.__class__ is not bytes:
            for reply in (value, ttl):
                if isinstance(reply, Exception):
                    raise reply
        if ttl < 0:
            if ttl == -2:
                continue  # gone since SCAN
            bucket = -1
        else:
            bucket = (ttl + relative) // tolerance if tolerance > 0 else ttl + relative
        if value is None:
            others.append((key, bucket))  # not a string (or just deleted)
        else:
            h = copy()  # _hashed(b"s", key, bucket, value), inline
            h.update(header(b"s", bucket, len(key)) + key)
            h.update(value)
            append((key, h.digest()))
    if others:
        _hash_others(client, others, out, pexpiretime=pexpiretime, now_ms=now_ms,
                     tolerance=tolerance)
    return out


def _hash_others(client: Any, others: list[tuple[bytes, int]], out: list[tuple[bytes, bytes]],
                 *, pexpiretime: bool, now_ms: int, tolerance: int) -> None:
    """Adds the hashes of keys that are not strings: DUMP payload, elements or canonical."""
    replies = run_packed(client, b"".join([_DUMP % (len(k), k) for k, _ in others]),
                         len(others))
    elements: list[tuple[bytes, bytes, int]] = []
    canonical: list[bytes] = []
    for (key, bucket), payload in zip(others, replies, strict=True):
        if isinstance(payload, Exception):
            raise payload
        if payload is None:
            continue  # deleted since SCAN
        if payload[0] in _PAYLOAD_TYPES:
            out.append((key, _hashed(b"p", key, bucket, memoryview(payload)[:-_FOOTER])))
        elif payload[0] in _ELEMENT_TYPES:
            elements.append((key, _ELEMENT_TYPES[payload[0]], bucket))
        else:
            canonical.append(key)
    if elements:
        packed = b"".join([_FIRST_SCAN[kind] % (len(k), k) for k, kind, _ in elements])
        replies = run_packed(client, packed, len(elements))
        for (key, kind, bucket), reply in zip(elements, replies, strict=True):
            body = None if isinstance(reply, Exception) else _sorted_elements(kind, reply)
            if body is None:
                canonical.append(key)
            else:
                out.append((key, _hashed(b"e", key, bucket, body)))
    if canonical:  # also the keys that changed type meanwhile: re-read from the start
        for key, (name, value, expire) in fingerprints(client, canonical, now_ms=now_ms,
                                                       pexpiretime=pexpiretime):
            out.append((key, _hashed(b"c", key, _bucket(expire, tolerance),
                                     f"{name}:{value}".encode())))


def _sorted_elements(kind: bytes, reply: list[Any]) -> bytes | None:
    """A hash's or set's elements, sorted, as bytes; None unless the first HSCAN/SSCAN call
    returned the whole value with fewer than PAGE elements."""
    cursor, items = reply
    if cursor != b"0" or len(items) >= (2 * PAGE if kind == b"hash" else PAGE):
        return None
    if kind == b"hash":
        pairs = sorted(zip(items[0::2], items[1::2], strict=True))
        items = list(itertools.chain.from_iterable(pairs))
    else:
        items.sort()
    return (b"%s%d:" % (kind, len(items)) + b"".join(items)
            + array("I", map(len, items)).tobytes())


def access_commands(key: bytes, *, target: bool, typed: bool,
                    pexpiretime: bool) -> list[tuple[Any, ...]]:
    """What a source (reads) or a target (writes too) runs, aimed at an absent key.

    The ACL answers NOPERM before a command runs, so reads and a RESTORE of an invalid
    payload prove the rights without touching data. Only the typed path's plain writes
    really write, to that fresh key, deleted at once.
    """
    out: list[tuple[Any, ...]] = [
        ("SCAN", 0, "COUNT", 1), ("TYPE", key), ("DUMP", key), ("MGET", key),
        (expiry_command(pexpiretime), key), ("GETRANGE", key, 0, 0), ("LRANGE", key, 0, 0),
        ("HSCAN", key, 0), ("SSCAN", key, 0), ("ZRANGE", key, 0, 0, "WITHSCORES"),
        ("XRANGE", key, "-", "+", "COUNT", 1), ("XINFO", "STREAM", key)]
    if target:
        out += [("RESTORE", key, 0, b"\x00", "REPLACE"), ("DEL", key), ("PEXPIREAT", key, 1)]
    if target and typed:
        for write in (("SET", key, "x", "PX", 60_000), ("HSET", key, "f", "v"),
                      ("RPUSH", key, "x"), ("SADD", key, "x"), ("ZADD", key, 1, "x"),
                      ("XADD", key, "*", "f", "v")):
            out += [write, ("DEL", key)]
    return out


# -- typed copy ------------------------------------------------------------------------

_READ: dict[str, Callable[[bytes], list[tuple[Any, ...]]]] = {
    "string": lambda k: [("GET", k)],
    "hash": lambda k: [("HGETALL", k)],
    "list": lambda k: [("LRANGE", k, 0, -1)],
    "set": lambda k: [("SMEMBERS", k)],
    "zset": lambda k: [("ZRANGE", k, 0, -1, "WITHSCORES")],
    "stream": lambda k: [("XRANGE", k, "-", "+"), ("XINFO", "STREAM", k),
                         ("XINFO", "GROUPS", k)],
}


def read_typed(client: Any, keys: list[bytes], *, pexpiretime: bool,
               now_ms: int) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """Typed records for ``keys`` plus the keys that vanished or changed type meanwhile."""
    live, skipped = _types(client, keys, pexpiretime, now_ms)
    for key, kind, _ in live:
        if kind not in _READ:
            raise CapabilityMissing(f"redis key {key_text(key)!r} has type {kind!r}, which "
                                    "the typed copy cannot rebuild; use RESTORE mode")
    commands = [c for key, kind, _ in live for c in _READ[kind](key)]
    replies = iter(run_commands(client, commands))
    records: list[tuple[Any, ...]] = []
    streams: list[tuple[bytes, dict[str, Any]]] = []
    for key, kind, expire in live:
        values = [next(replies) for _ in _READ[kind](key)]
        if any(isinstance(v, ResponseError) for v in values):
            skipped.append(key)  # changed type between TYPE and the read
            continue
        value: Any = values[0]
        if kind == "stream":
            value = _stream_value(values)
            streams.append((key, value))
        records.append((key, expire or 0, kind, value))
    _read_pending(client, streams)
    return records, skipped


def typed_size(record: tuple[Any, ...]) -> int:
    """About how many bytes a typed record holds, for the batch size limit."""
    value = record[3]
    if isinstance(value, dict):  # a stream: its entries are the bulk
        value = [x for entry_id, fields in value["entries"] for x in (entry_id, *fields)]
    if isinstance(value, bytes):
        return len(record[0]) + len(value)
    return len(record[0]) + sum(len(x) for x in value) + 8 * len(value)


def _stream_value(values: list[Any]) -> dict[str, Any]:
    entries, info, groups = values
    info = _pairs(info)
    return {
        "entries": [(entry_id, list(fields)) for entry_id, fields in entries],
        "last_id": info.get(b"last-generated-id", b"0-0"),
        "entries_added": info.get(b"entries-added"),
        "max_deleted_id": info.get(b"max-deleted-entry-id"),
        "groups": [{"name": g[b"name"], "last_delivered_id": g[b"last-delivered-id"],
                    "entries_read": g.get(b"entries-read"), "pending_count": g[b"pending"],
                    "consumers": [], "pending": []}
                   for g in (_pairs(x) for x in groups)],
    }


def _read_pending(client: Any, streams: list[tuple[bytes, dict[str, Any]]]) -> None:
    """Consumers and pending entries of every group, so a typed copy keeps acknowledgements."""
    targets = [(key, g) for key, value in streams for g in value["groups"]]
    if not targets:
        return
    commands: list[tuple[Any, ...]] = []
    for key, group in targets:
        commands.append(("XINFO", "CONSUMERS", key, group["name"]))
        commands.append(("XPENDING", key, group["name"], "-", "+",
                         max(1, int(group["pending_count"]))))
    replies = run_commands(client, commands)
    for i, (_, group) in enumerate(targets):
        consumers, pending = replies[2 * i], replies[2 * i + 1]
        if not isinstance(consumers, Exception):
            group["consumers"] = [_pairs(c)[b"name"] for c in consumers]
        if not isinstance(pending, Exception):
            group["pending"] = [list(p) for p in pending]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def typed_commands(record: tuple[Any, ...], version: tuple[int, ...]) -> list[tuple[Any, ...]]:
    """Commands that rebuild one typed record on a target running ``version``.

    Starts with DEL, so replaying them (a crash before the checkpoint) converges.
    """
    key, expire, kind, value = record
    out: list[tuple[Any, ...]] = [("DEL", key)]
    if kind == "string":
        out.append(("SET", key, value))
    elif kind == "hash":
        out += [("HSET", key, *part) for part in _chunks(value, 2 * WRITE_CHUNK)]
    elif kind == "list":
        out += [("RPUSH", key, *part) for part in _chunks(value, WRITE_CHUNK)]
    elif kind == "set":
        out += [("SADD", key, *part) for part in _chunks(value, WRITE_CHUNK)]
    elif kind == "zset":
        swapped = [x for i in range(0, len(value), 2) for x in (value[i + 1], value[i])]
        out += [("ZADD", key, *part) for part in _chunks(swapped, 2 * WRITE_CHUNK)]
    elif kind == "stream":
        out += _stream_commands(key, value, version)
    if expire:
        out.append(("PEXPIREAT", key, expire))
    return out


def _stream_commands(key: bytes, value: dict[str, Any],
                     version: tuple[int, ...]) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = [("XADD", key, entry_id, *fields)
                                  for entry_id, fields in value["entries"]]
    last_id = value["last_id"]
    if not value["entries"]:
        if last_id not in (b"0-0", "0-0"):
            # An empty stream that remembers its last id: add one entry, trim it away.
            out.append(("XADD", key, "MAXLEN", "0", last_id, "-", "-"))
        else:
            out += [("XGROUP", "CREATE", key, "-", "0", "MKSTREAM"),
                    ("XGROUP", "DESTROY", key, "-")]
    setid: list[Any] = ["XSETID", key, last_id]
    if version >= (7,) and value.get("entries_added") is not None:
        setid += ["ENTRIESADDED", value["entries_added"],
                  "MAXDELETEDID", value["max_deleted_id"] or b"0-0"]
    out.append(tuple(setid))
    for group in value["groups"]:
        create: list[Any] = ["XGROUP", "CREATE", key, group["name"],
                             group["last_delivered_id"]]
        if version >= (7,) and group.get("entries_read") is not None:
            create += ["ENTRIESREAD", group["entries_read"]]
        out.append(tuple(create))
        if version >= (6, 2):
            out += [("XGROUP", "CREATECONSUMER", key, group["name"], consumer)
                    for consumer in group["consumers"]]
        # XCLAIM ... FORCE recreates a pending entry with its owner, idle time and count.
        out += [("XCLAIM", key, group["name"], consumer, 0, entry_id, "IDLE", idle,
                 "RETRYCOUNT", deliveries, "FORCE", "JUSTID")
                for entry_id, consumer, idle, deliveries in group["pending"]]
    return out
