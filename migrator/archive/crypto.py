"""Encryption of archive files in the age format, through pyrage.

Every file of an encrypted archive (manifests too) is encrypted to one X25519 recipient,
so Debian's ``age -d -i KEYFILE`` decrypts any of them without this tool. The identity
comes either straight from the ``key`` option (an ``AGE-SECRET-KEY-1…`` line, e.g. made by
``age-keygen``), or, with ``passphrase``, from ``keys/<id>.age``: the identity encrypted
with that passphrase (age's scrypt recipient), which ``age -d`` also opens. A per-file
passphrase would cost one scrypt (about a second) per file; wrapping one key, as restic
does, costs one per command.

``config.json`` holds the recipient (a public key), so a wrong key is refused before
anything is read or written.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

import pyrage
from pyrage import x25519

from migrator.archive.streams import CHUNK, PullBridge, PushBridge, Readable, Sink, read_all
from migrator.config import Endpoint
from migrator.errors import PlanError

NONE, AGE = "none", "age"
KEYS_DIR = "keys/"
_KEY_HINT = ("give the archive's age identity as --key '${VAR}' (a line AGE-SECRET-KEY-1… "
             "from age-keygen) or its passphrase as --passphrase '${VAR}'")


class Cipher:
    """No encryption: bytes pass through."""

    scheme = NONE
    suffix = ""

    def encrypting(self, sink: Sink) -> Sink:
        return sink

    def decrypting(self, stream: Readable, size: int) -> Readable:
        return stream


class AgeCipher(Cipher):
    scheme = AGE
    suffix = ".age"

    def __init__(self, identity: x25519.Identity) -> None:
        self._identity = identity
        self.recipient = identity.to_public()

    def __repr__(self) -> str:
        return f"AgeCipher({self.recipient})"  # never the identity

    def encrypting(self, sink: Sink) -> Sink:
        recipients = [self.recipient]

        def whole(data: bytes) -> None:
            sink.write(pyrage.encrypt(data, recipients))

        def stream(reader: Readable) -> None:
            pyrage.encrypt_io(reader, sink, recipients)

        return _Chained(PullBridge(whole, stream, name="archive-encrypt"), sink)

    def decrypting(self, stream: Readable, size: int) -> Readable:
        identities = [self._identity]
        if size <= CHUNK:  # small files (most of them): no thread
            return io.BytesIO(pyrage.decrypt(read_all(stream), identities))
        return PushBridge(lambda out: pyrage.decrypt_io(stream, out, identities),
                          name="archive-decrypt")


class _Chained:
    """A sink feeding another: closing or aborting the first finishes the second too."""

    def __init__(self, head: Sink, tail: Sink) -> None:
        self.head, self.tail = head, tail

    def write(self, data: bytes) -> int:
        return self.head.write(data)

    def close(self) -> None:
        try:
            self.head.close()
        except BaseException:
            self.tail.abort()
            raise
        self.tail.close()

    def abort(self) -> None:
        try:
            self.head.abort()
        finally:
            self.tail.abort()


def _field(endpoint: Endpoint, option: str) -> str:
    return f"{endpoint.name or 'archive'}.{option}"


def parse_identity(text: str, where: str) -> x25519.Identity:
    """An age identity from an ``AGE-SECRET-KEY-1…`` line or a whole ``age-keygen`` file;
    the message never repeats the text."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-")]
    if len(lines) != 1:
        raise PlanError(where, "is not an age identity (one line AGE-SECRET-KEY-1…)",
                        hint="make one with `age-keygen -o archive.key`")
    try:
        return x25519.Identity.from_str(lines[0])
    except pyrage.IdentityError:
        raise PlanError(where, "is not a valid age identity (bad AGE-SECRET-KEY-1… line)",
                        hint="make one with `age-keygen -o archive.key`") from None


def new_encryption(endpoint: Endpoint) -> tuple[dict[str, Any], dict[str, bytes], Cipher]:
    """For a new archive: its ``encryption`` config, the key files to store, the cipher.
    With neither ``key`` nor ``passphrase`` the archive is not encrypted."""
    key = endpoint.resolved("key")
    passphrase = endpoint.resolved("passphrase")
    if key is None and passphrase is None:
        return {"scheme": NONE}, {}, Cipher()
    if passphrase is not None and not passphrase:
        raise PlanError(_field(endpoint, "passphrase"), "is empty")
    identity = (parse_identity(key, _field(endpoint, "key")) if key is not None
                else x25519.Identity.generate())
    files = {}
    if passphrase is not None:
        wrapped = pyrage.passphrase.encrypt(f"{identity}\n".encode(), passphrase)
        files[f"{KEYS_DIR}{uuid.uuid4().hex[:16]}.age"] = wrapped
    config = {"scheme": AGE, "recipient": str(identity.to_public()), "key_files": sorted(files)}
    return config, files, AgeCipher(identity)


def unlock(config: dict[str, Any], endpoint: Endpoint,
           read: Callable[[str], bytes]) -> Cipher:
    """The cipher of an existing archive, from the endpoint's key or passphrase.
    Wrong, missing or superfluous: one ``PlanError`` (exit 3) naming the option."""
    key = endpoint.resolved("key")
    passphrase = endpoint.resolved("passphrase")
    scheme = config.get("scheme")
    if scheme == NONE:
        given = "key" if key is not None else "passphrase" if passphrase is not None else None
        if given:
            raise PlanError(_field(endpoint, given), "would be ignored: this archive is not "
                            "encrypted", hint=f"drop the {given}")
        return Cipher()
    if scheme != AGE:
        raise PlanError(endpoint.name or "archive", f"unknown encryption scheme {scheme!r} "
                        "in config.json", hint="a newer version of openim-migrate wrote it?")
    recipient = str(config.get("recipient", ""))
    if key is not None:
        identity = parse_identity(key, _field(endpoint, "key"))
        if str(identity.to_public()) != recipient:
            raise PlanError(_field(endpoint, "key"), "is not this archive's key (the archive "
                            f"is encrypted to {recipient[:16]}…)", hint=_KEY_HINT)
        return AgeCipher(identity)
    if passphrase is None:
        raise PlanError(_field(endpoint, "key"), "this archive is encrypted; no key or "
                        "passphrase was given", hint=_KEY_HINT)
    for name in config.get("key_files") or []:
        try:
            text = pyrage.passphrase.decrypt(read(name), passphrase).decode()
        except pyrage.DecryptError:
            continue
        identity = parse_identity(text, name)
        if str(identity.to_public()) == recipient:
            return AgeCipher(identity)
    if not config.get("key_files"):
        raise PlanError(_field(endpoint, "passphrase"), "this archive has no passphrase; "
                        "it opens only with its key", hint=_KEY_HINT)
    raise PlanError(_field(endpoint, "passphrase"), "is not this archive's passphrase",
                    hint=_KEY_HINT)
