"""RDB, Redis' own file format: written from DUMP payloads, read back value by value.

Why: a backup of a Redis DB should be a file that ``redis-server`` loads and
``redis-check-rdb`` accepts without this tool. A DUMP payload is already an RDB value
(type byte + value body) followed by the dumping server's RDB version (2 bytes, LE) and
the CRC-64 of both (8 bytes, LE), so a file is assembled from payloads without decoding
them: ``REDIS00NN``, AUX fields, SELECTDB, RESIZEDB, then per key [EXPIRETIME_MS] + type
byte + key + value body, then EOF and the CRC-64 of everything before it.

Reading back needs the structure of every value type (to find where a value ends) and,
for verification, its contents: the decoders below follow Redis' rdb.c, listpack.c,
ziplist.c, zipmap.c and intset.c layouts. A value is decoded into the same plain form
the native commands return (bytes for strings and elements, ints spelled in decimal).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import anycrc
import lzf

from migrator.errors import StoreError

CRC64 = anycrc.Model("CRC64-REDIS")  # Jones polynomial, reflected, as Redis' crc64.c

OP_FUNCTION2, OP_MODULE_AUX, OP_IDLE, OP_FREQ = 0xF5, 0xF7, 0xF8, 0xF9
OP_AUX, OP_RESIZEDB, OP_EXPIRETIME_MS, OP_EXPIRETIME = 0xFA, 0xFB, 0xFC, 0xFD
OP_SELECTDB, OP_EOF = 0xFE, 0xFF

STRING, LIST, SET, ZSET, HASH, ZSET_2, MODULE_PRE_GA, MODULE_2 = 0, 1, 2, 3, 4, 5, 6, 7
HASH_ZIPMAP, LIST_ZIPLIST, SET_INTSET, ZSET_ZIPLIST, HASH_ZIPLIST = 9, 10, 11, 12, 13
LIST_QUICKLIST, STREAM_LISTPACKS, HASH_LISTPACK, ZSET_LISTPACK = 14, 15, 16, 17
LIST_QUICKLIST_2, STREAM_LISTPACKS_2, SET_LISTPACK, STREAM_LISTPACKS_3 = 18, 19, 20, 21
# Hashes with field expiries (Redis 7.4+): "_PRE_GA" are the 7.4 release candidates' forms.
HASH_METADATA_PRE_GA, HASH_LISTPACK_EX_PRE_GA, HASH_METADATA, HASH_LISTPACK_EX = 22, 23, 24, 25

# Type byte -> the type name TYPE answers. Types not listed (module values written before
# Redis 4.0 GA, types of later versions) cannot be read back here.
KINDS: dict[int, str] = {
    STRING: "string", LIST: "list", LIST_ZIPLIST: "list", LIST_QUICKLIST: "list",
    LIST_QUICKLIST_2: "list", SET: "set", SET_INTSET: "set", SET_LISTPACK: "set",
    ZSET: "zset", ZSET_2: "zset", ZSET_ZIPLIST: "zset", ZSET_LISTPACK: "zset",
    HASH: "hash", HASH_ZIPMAP: "hash", HASH_ZIPLIST: "hash", HASH_LISTPACK: "hash",
    STREAM_LISTPACKS: "stream", STREAM_LISTPACKS_2: "stream", STREAM_LISTPACKS_3: "stream",
    MODULE_2: "module", HASH_METADATA_PRE_GA: "hash", HASH_LISTPACK_EX_PRE_GA: "hash",
    HASH_METADATA: "hash", HASH_LISTPACK_EX: "hash",
}
FOOTER = 10  # a DUMP payload's RDB version (2 bytes) + CRC-64 (8 bytes)
MIN_VERSION = 9  # the lowest version this writer claims (Redis 5.0): AUX, RESIZEDB, ms expiries

_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_I16, _I32, _I64 = struct.Struct("<h"), struct.Struct("<i"), struct.Struct("<q")
_F32, _F64 = struct.Struct("<f"), struct.Struct("<d")
_MODULE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class RdbError(StoreError):
    """An RDB file or payload that is not what it should be (damaged or unsupported)."""


def crc64(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    return int(CRC64.calc(data, crc))


# -- writing -----------------------------------------------------------------------------

def length(n: int) -> bytes:
    if n < 1 << 6:
        return bytes((n,))
    if n < 1 << 14:
        return bytes((0x40 | n >> 8, n & 0xFF))
    if n <= 0xFFFFFFFF:
        return b"\x80" + n.to_bytes(4, "big")
    return b"\x81" + n.to_bytes(8, "big")


def string(data: bytes) -> bytes:
    """A plain (not integer-, not LZF-encoded) RDB string: always valid, simplest to read."""
    return length(len(data)) + data


def aux(name: str, value: str) -> bytes:
    return bytes((OP_AUX,)) + string(name.encode()) + string(value.encode())


def header(version: int, fields: dict[str, str]) -> bytes:
    return b"REDIS%04d" % version + b"".join(aux(k, v) for k, v in fields.items())


def select_db(db: int, keys: int, expires: int) -> bytes:
    return (bytes((OP_SELECTDB,)) + length(db) + bytes((OP_RESIZEDB,)) + length(keys)
            + length(expires))


@dataclass(frozen=True)
class Payload:
    """A DUMP payload taken apart: the value's type, its body, the dumping RDB version."""

    type: int
    body: memoryview
    version: int


def split_payload(payload: bytes) -> Payload:
    """Check a DUMP payload's CRC-64 and take it apart."""
    if len(payload) < 1 + FOOTER:
        raise RdbError(f"a DUMP payload of {len(payload)} bytes is too short")
    view = memoryview(payload)
    if crc64(view[:-8]) != _U64.unpack_from(payload, len(payload) - 8)[0]:
        raise RdbError("a DUMP payload's CRC-64 is wrong (damaged in transit?)")
    return Payload(payload[0], view[1:-FOOTER], _U16.unpack_from(payload, len(payload) - 10)[0])


def key_entry(key: bytes, expire_ms: int, payload: Payload) -> bytes:
    """One key of a DB section: [EXPIRETIME_MS] type key body."""
    head = bytes((OP_EXPIRETIME_MS,)) + _I64.pack(expire_ms) if expire_ms else b""
    return head + bytes((payload.type,)) + string(key) + payload.body


def make_payload(kind: int, body: bytes | memoryview, version: int) -> bytes:
    """A DUMP payload as RESTORE takes it: type, body, version, CRC-64."""
    data = bytes((kind,)) + bytes(body) + _U16.pack(version)
    return data + _U64.pack(crc64(data))


# -- reading -----------------------------------------------------------------------------

class _Source:
    """Bytes in order, from memory or a stream; optionally copied aside (``capture``) and
    CRC-summed, so a file is read once for its values, their raw bodies and its checksum."""

    def __init__(self, data: bytes | None = None, stream: Readable | None = None,
                 chunk: int = 1 << 20) -> None:
        self._buf = memoryview(data if data is not None else b"")
        self._pos = 0
        self._stream = stream
        self._chunk = chunk
        self._crc = 0
        self.consumed = 0  # bytes read before the current buffer
        self.capture: list[bytes] | None = None

    def read(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._buf):
            self._fill(n)
            end = self._pos + n
        out = bytes(self._buf[self._pos:end])
        self._pos = end
        if self.capture is not None:
            self.capture.append(out)
        return out

    def byte(self) -> int:
        if self._pos >= len(self._buf):
            self._fill(1)
        value = self._buf[self._pos]
        self._pos += 1
        if self.capture is not None:
            self.capture.append(bytes((value,)))
        return value

    def _fill(self, n: int) -> None:
        rest = self._buf[self._pos:]
        done = self._buf[:self._pos]
        self._crc = crc64(done, self._crc)
        self.consumed += len(done)
        parts = [bytes(rest)]
        have = len(rest)
        while self._stream is not None and have < n:
            more = self._stream.read(max(self._chunk, n - have))
            if not more:
                break
            parts.append(more)
            have += len(more)
        if have < n:
            raise RdbError("the RDB data ends in the middle of a value (truncated)")
        self._buf = memoryview(b"".join(parts))
        self._pos = 0

    def crc(self) -> int:
        """CRC-64 of every byte read so far."""
        return crc64(self._buf[:self._pos], self._crc)

    def at_end(self) -> bool:
        if self._pos < len(self._buf):
            return False
        if self._stream is None:
            return True
        try:
            self._fill(1)
        except RdbError:
            return True
        return False

    # -- RDB primitives ----------------------------------------------------------------
    def length(self) -> int:
        first = self.byte()
        kind = first >> 6
        if kind == 0:
            return first & 0x3F
        if kind == 1:
            return (first & 0x3F) << 8 | self.byte()
        if first == 0x80:
            return int.from_bytes(self.read(4), "big")
        if first == 0x81:
            return int.from_bytes(self.read(8), "big")
        raise RdbError(f"bad RDB length byte 0x{first:02x}")

    def string(self, decode: bool = True) -> bytes:
        """An RDB string (plain, integer or LZF); ``decode=False`` skips the decompression."""
        first = self.byte()
        if first >> 6 != 3:
            if first >> 6 == 0:
                n = first & 0x3F
            elif first >> 6 == 1:
                n = (first & 0x3F) << 8 | self.byte()
            elif first == 0x80:
                n = int.from_bytes(self.read(4), "big")
            elif first == 0x81:
                n = int.from_bytes(self.read(8), "big")
            else:
                raise RdbError(f"bad RDB length byte 0x{first:02x}")
            return self.read(n)
        enc = first & 0x3F
        if enc == 0:
            return b"%d" % int.from_bytes(self.read(1), "little", signed=True)
        if enc == 1:
            return b"%d" % _I16.unpack(self.read(2))[0]
        if enc == 2:
            return b"%d" % _I32.unpack(self.read(4))[0]
        if enc == 3:
            clen, n = self.length(), self.length()
            packed = self.read(clen)
            if not decode:
                return b""
            out = lzf.decompress(packed, n) if n else b""
            if out is None or len(out) != n:
                raise RdbError("an LZF-compressed RDB string does not decompress")
            return bytes(out)
        raise RdbError(f"unknown RDB string encoding {enc}")


def module_name(module_id: int) -> str:
    """The 9-character module type name packed into a module value's 64-bit id."""
    return "".join(_MODULE_CHARS[(module_id >> (58 - 6 * j)) & 63] for j in range(9))


# -- compact encodings (the blob inside one RDB string) ----------------------------------

def _backlen_size(n: int) -> int:
    if n <= 127:
        return 1
    if n < 16383:
        return 2
    if n < 2097151:
        return 3
    if n < 268435455:
        return 4
    return 5


def listpack(blob: bytes) -> list[bytes | int]:
    """A listpack's elements: strings as bytes, integers as int."""
    out: list[bytes | int] = []
    pos, n = 6, len(blob)
    while pos < n:
        b = blob[pos]
        if b == 0xFF:
            return out
        if b < 0x80:
            value: bytes | int = b
            size = 1
        elif b & 0xC0 == 0x80:
            size = 1 + (b & 0x3F)
            value = blob[pos + 1:pos + size]
        elif b & 0xE0 == 0xC0:
            value = (b & 0x1F) << 8 | blob[pos + 1]
            if value >= 1 << 12:
                value -= 1 << 13
            size = 2
        elif b & 0xF0 == 0xE0:
            size = 2 + ((b & 0x0F) << 8 | blob[pos + 1])
            value = blob[pos + 2:pos + size]
        elif b == 0xF0:
            size = 5 + _U32.unpack_from(blob, pos + 1)[0]
            value = blob[pos + 5:pos + size]
        elif b == 0xF1:
            value, size = _I16.unpack_from(blob, pos + 1)[0], 3
        elif b == 0xF2:
            value, size = int.from_bytes(blob[pos + 1:pos + 4], "little", signed=True), 4
        elif b == 0xF3:
            value, size = _I32.unpack_from(blob, pos + 1)[0], 5
        elif b == 0xF4:
            value, size = _I64.unpack_from(blob, pos + 1)[0], 9
        else:
            raise RdbError(f"bad listpack entry encoding 0x{b:02x}")
        out.append(value)
        pos += size + _backlen_size(size)
    raise RdbError("a listpack has no end marker")


def ziplist(blob: bytes) -> list[bytes | int]:
    """A ziplist's elements (Redis < 7 encodings of small lists, hashes and zsets)."""
    out: list[bytes | int] = []
    pos, n = 10, len(blob)
    while pos < n and blob[pos] != 0xFF:
        pos += 1 if blob[pos] < 254 else 5  # the previous entry's length
        b = blob[pos]
        if b >> 6 == 0:
            size = b & 0x3F
            out.append(blob[pos + 1:pos + 1 + size])
            pos += 1 + size
        elif b >> 6 == 1:
            size = (b & 0x3F) << 8 | blob[pos + 1]
            out.append(blob[pos + 2:pos + 2 + size])
            pos += 2 + size
        elif b == 0x80:
            size = int.from_bytes(blob[pos + 1:pos + 5], "big")
            out.append(blob[pos + 5:pos + 5 + size])
            pos += 5 + size
        elif b == 0xC0:
            out.append(_I16.unpack_from(blob, pos + 1)[0])
            pos += 3
        elif b == 0xD0:
            out.append(_I32.unpack_from(blob, pos + 1)[0])
            pos += 5
        elif b == 0xE0:
            out.append(_I64.unpack_from(blob, pos + 1)[0])
            pos += 9
        elif b == 0xF0:
            out.append(int.from_bytes(blob[pos + 1:pos + 4], "little", signed=True))
            pos += 4
        elif b == 0xFE:
            out.append(int.from_bytes(blob[pos + 1:pos + 2], "little", signed=True))
            pos += 2
        elif 0xF1 <= b <= 0xFD:
            out.append((b & 0x0F) - 1)
            pos += 1
        else:
            raise RdbError(f"bad ziplist entry encoding 0x{b:02x}")
    return out


def zipmap(blob: bytes) -> list[bytes]:
    """A zipmap's fields and values, flat (hashes of Redis < 2.6)."""
    out: list[bytes] = []
    pos = 1

    def size() -> int:
        nonlocal pos
        b = blob[pos]
        if b < 254:
            pos += 1
            return b
        value = _U32.unpack_from(blob, pos + 1)[0]
        pos += 5
        return int(value)

    while blob[pos] != 0xFF:
        n = size()
        out.append(blob[pos:pos + n])
        pos += n
        n = size()
        free = blob[pos]
        pos += 1
        out.append(blob[pos:pos + n])
        pos += n + free
    return out


def intset(blob: bytes) -> list[bytes]:
    width, count = _U32.unpack_from(blob, 0)[0], _U32.unpack_from(blob, 4)[0]
    fmt = {2: "h", 4: "i", 8: "q"}.get(width)
    if fmt is None:
        raise RdbError(f"bad intset width {width}")
    return [b"%d" % v for v in struct.unpack_from(f"<{count}{fmt}", blob, 8)]


def text(value: bytes | int) -> bytes:
    return value if isinstance(value, bytes) else b"%d" % value


def _score(raw: bytes | int) -> float:
    return float(raw) if isinstance(raw, int) else float(raw.decode())


# -- values ------------------------------------------------------------------------------

def read_value(kind: int, src: _Source, decode: bool = True) -> Any:
    """One value of RDB type ``kind``; with ``decode=False`` only walks past it.

    Decoded forms: string → bytes; list/set → [bytes]; hash → [(field, value)];
    zset → [(member, score)]; stream → ``Stream``; module → ``(name, None)``.
    """
    string, n = src.string, 0
    if kind == STRING:
        return string(decode)
    if kind in (LIST, SET):
        n = src.length()
        return [string(decode) for _ in range(n)]
    if kind == HASH:
        n = src.length()
        return [(string(decode), string(decode)) for _ in range(n)]
    if kind == ZSET:
        n = src.length()
        out = []
        for _ in range(n):
            member = string(decode)
            size = src.byte()
            if size == 253:
                score = float("nan")
            elif size in (254, 255):
                score = float("inf") if size == 254 else float("-inf")
            else:
                score = float(src.read(size).decode())
            out.append((member, score))
        return out
    if kind == ZSET_2:
        n = src.length()
        return [(string(decode), _F64.unpack(src.read(8))[0]) for _ in range(n)]
    if kind in (SET_INTSET, SET_LISTPACK, LIST_ZIPLIST, HASH_ZIPLIST, HASH_LISTPACK,
                ZSET_ZIPLIST, ZSET_LISTPACK, HASH_ZIPMAP):
        blob = string(decode)
        return _compact(kind, blob) if decode else None
    if kind == LIST_QUICKLIST:
        n = src.length()
        blobs = [string(decode) for _ in range(n)]
        return [text(e) for b in blobs for e in ziplist(b)] if decode else None
    if kind == LIST_QUICKLIST_2:
        n = src.length()
        items: list[bytes] = []
        for _ in range(n):
            container = src.length()
            blob = string(decode)
            if decode:
                items += [blob] if container == 1 else [text(e) for e in listpack(blob)]
        return items
    if kind in (HASH_METADATA, HASH_METADATA_PRE_GA, HASH_LISTPACK_EX,
                HASH_LISTPACK_EX_PRE_GA):
        return _expiring_hash(kind, src, decode)
    if kind in (STREAM_LISTPACKS, STREAM_LISTPACKS_2, STREAM_LISTPACKS_3):
        return _stream(kind, src, decode)
    if kind == MODULE_2:
        module_id = src.length()
        while True:
            opcode = src.length()
            if opcode == 0:
                break
            if opcode in (1, 2):
                src.length()
            elif opcode == 3:
                src.read(4)
            elif opcode == 4:
                src.read(8)
            elif opcode == 5:
                string(False)
            else:
                raise RdbError(f"bad module value opcode {opcode}")
        return (module_name(module_id), None)
    raise RdbError(f"RDB value type {kind} cannot be read by this version")


def _compact(kind: int, blob: bytes) -> Any:
    if kind == SET_INTSET:
        return intset(blob)
    if kind == HASH_ZIPMAP:
        flat = zipmap(blob)
        return list(zip(flat[0::2], flat[1::2], strict=True))
    elements = ziplist(blob) if kind in (LIST_ZIPLIST, HASH_ZIPLIST, ZSET_ZIPLIST) \
        else listpack(blob)
    if kind in (SET_LISTPACK, LIST_ZIPLIST):
        return [text(e) for e in elements]
    if kind in (HASH_ZIPLIST, HASH_LISTPACK):
        return [(text(a), text(b)) for a, b in zip(elements[0::2], elements[1::2], strict=True)]
    return [(text(a), _score(b)) for a, b in zip(elements[0::2], elements[1::2], strict=True)]


def _expiring_hash(kind: int, src: _Source, decode: bool) -> list[tuple[bytes, bytes]] | None:
    """A hash whose fields may expire (Redis 7.4+): the fields still alive now, as HSCAN
    lists them. Layouts as Redis' rdbLoadObject reads them: an 8-byte minimum expiry
    (GA forms), then (TTL, field, value) triples, the TTL 0 for none; in the dict form a
    TTL is relative to the minimum (+1), in the listpack form absolute."""
    base = _I64.unpack(src.read(8))[0] if kind in (HASH_METADATA, HASH_LISTPACK_EX) else 0
    triples: list[tuple[bytes, bytes, int]] = []
    if kind in (HASH_METADATA, HASH_METADATA_PRE_GA):
        for _ in range(src.length()):
            ttl = src.length()
            field, value = src.string(decode), src.string(decode)
            expire = ttl + base - 1 if ttl and kind == HASH_METADATA else ttl
            triples.append((field, value, expire))
    else:
        blob = src.string(decode)
        if decode:
            items = listpack(blob)
            triples = [(text(items[i]), text(items[i + 1]), int(items[i + 2]))
                       for i in range(0, len(items) - 2, 3)]
    if not decode:
        return None
    now = time.time_ns() // 1_000_000
    return [(f, v) for f, v, expire in triples if not expire or expire > now]


@dataclass
class Stream:
    entries: list[tuple[bytes, list[bytes]]]  # (id, [field, value, ...]) as XRANGE
    last_id: bytes
    groups: list[tuple[bytes, bytes, int]]  # (name, last delivered id, pending count)


def _id(ms: int, seq: int) -> bytes:
    return b"%d-%d" % (ms, seq)


def _stream(kind: int, src: _Source, decode: bool) -> Stream | None:
    entries: list[tuple[bytes, list[bytes]]] = []
    for _ in range(src.length()):
        node = src.string(decode)
        blob = src.string(decode)
        if decode:
            master_ms, master_seq = struct.unpack(">QQ", node)
            entries += _stream_node(master_ms, master_seq, listpack(blob))
    src.length()  # entries in the stream
    last_id = _id(src.length(), src.length())
    if kind >= STREAM_LISTPACKS_2:
        for _ in range(5):  # first id, max deleted id, entries added
            src.length()
    groups = []
    for _ in range(src.length()):
        name = src.string(decode)
        delivered = _id(src.length(), src.length())
        if kind >= STREAM_LISTPACKS_2:
            src.length()  # entries read
        pending = src.length()
        for _ in range(pending):
            src.read(16 + 8)  # id, delivery time
            src.length()  # delivery count
        for _ in range(src.length()):  # consumers
            src.string(decode)
            src.read(16 if kind >= STREAM_LISTPACKS_3 else 8)  # seen (and active) time
            src.read(16 * src.length())  # the consumer's pending ids
        groups.append((name, delivered, pending))
    return Stream(entries, last_id, groups) if decode else None


def _stream_node(master_ms: int, master_seq: int, e: list[bytes | int]
                 ) -> list[tuple[bytes, list[bytes]]]:
    """The live entries of one stream listpack (master entry, then deltas from it)."""
    out = []
    nfields = int(e[2])
    fields = [text(f) for f in e[3:3 + nfields]]
    i = 4 + nfields  # past the master entry's terminating 0
    while i < len(e):
        flags, ms, seq = int(e[i]), master_ms + int(e[i + 1]), master_seq + int(e[i + 2])
        i += 3
        if flags & 2:  # same fields as the master entry
            values = [text(v) for v in e[i:i + nfields]]
            i += nfields
            flat = [x for pair in zip(fields, values, strict=True) for x in pair]
        else:
            count = int(e[i])
            flat = [text(x) for x in e[i + 1:i + 1 + 2 * count]]
            i += 1 + 2 * count
        i += 1  # the entry's element count, for walking backwards
        if not flags & 1:  # not deleted
            out.append((_id(ms, seq), flat))
    return out


def decode_body(kind: int, body: bytes | memoryview) -> Any:
    return read_value(kind, _Source(bytes(body)))


# -- files -------------------------------------------------------------------------------

@dataclass
class Entry:
    """One key read from a file: its DB, expiry (0: none), type, and raw value body."""

    db: int
    key: bytes
    expire_ms: int
    type: int
    body: bytes
    version: int  # the RDB version of the payload it came from


PAYLOAD_VERSION_AUX = "openim-payload-ver"  # AUX before keys: their payloads' RDB version


def read_file(stream: Readable) -> Iterator[Entry]:
    """Every key of an RDB file, in order; checks the magic, the version and the CRC-64."""
    src = _Source(stream=stream)
    magic = src.read(9)
    if magic[:5] != b"REDIS" or not magic[5:].isdigit():
        raise RdbError("not an RDB file (no REDIS magic)")
    version = int(magic[5:])
    payload_version = version
    db, expire = 0, 0
    while True:
        op = src.byte()
        if op == OP_EOF:
            expected = src.crc()
            found = _U64.unpack(src.read(8))[0] if version >= 5 else 0
            if found and found != expected:
                raise RdbError("the RDB file's CRC-64 is wrong (damaged)")
            return
        if op == OP_SELECTDB:
            db = src.length()
        elif op == OP_RESIZEDB:
            src.length()
            src.length()
        elif op == OP_AUX:
            name, value = src.string(), src.string()
            if name == PAYLOAD_VERSION_AUX.encode():
                payload_version = int(value)
        elif op == OP_EXPIRETIME_MS:
            expire = _I64.unpack(src.read(8))[0]
        elif op == OP_EXPIRETIME:
            expire = _I32.unpack(src.read(4))[0] * 1000
        elif op == OP_IDLE:
            src.length()
        elif op == OP_FREQ:
            src.byte()
        elif op == OP_FUNCTION2:
            src.string()
        elif op == OP_MODULE_AUX:
            raise RdbError("module AUX data cannot be read by this version")
        else:
            key = src.string()
            src.capture = []
            read_value(op, src, decode=False)
            body = b"".join(src.capture)
            src.capture = None
            yield Entry(db, key, expire, op, body, payload_version)
            expire = 0
