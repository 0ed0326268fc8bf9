"""Archive files and sets, on a directory and on a real MinIO, plain and age-encrypted:
round trips through the writer and reader, atomic sets (a killed writer leaves an
incomplete set that `list` shows and `check` reports), damage that `check` names exactly,
bad input as one line with its exit code and nothing written, secrets never written or
printed, and Debian's `age -d` / `zstd -d` reading our files without this tool.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import select
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyrage
import pytest
import zstandard
from pyrage import x25519

from migrator.archive import ArchiveDamaged, Cut, archive_endpoint, open_archive
from migrator.archive.manifest import now
from migrator.errors import EndpointError, PlanError
from migrator.stores.base import Unit, record_hash

ROOT = Path(__file__).resolve().parents[1]
KEY = x25519.Identity.generate()
OTHER_KEY = x25519.Identity.generate()
PASSPHRASE = f"correct horse {uuid.uuid4().hex[:8]}"
AGE_MAGIC = b"age-encryption.org/v1"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
SECRETS_ENV = {"OIM_TEST_ARCHIVE_KEY": str(KEY), "OIM_TEST_OTHER_KEY": str(OTHER_KEY),
               "OIM_TEST_ARCHIVE_PASSPHRASE": PASSPHRASE}


@pytest.fixture(autouse=True)
def _archive_secrets(monkeypatch):
    for name, value in SECRETS_ENV.items():
        monkeypatch.setenv(name, value)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, **SECRETS_ENV, **(env or {})})


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one ``error:`` line (a hint may follow), no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    others = [ln for ln in lines if not ln.startswith(("error:", "  hint:"))]
    assert "Traceback" not in proc.stderr
    assert len(errors) == 1 and not others, proc.stderr
    return errors[0]


# ------------------------------------------------------------------------- the places
@dataclass
class Place:
    """An archive location and raw access to what is stored there (for damage and greps)."""

    kind: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)
    root: Path | None = None
    client: Any = None
    bucket: str = ""
    prefix: str = ""

    def endpoint(self, **extra: Any):
        return archive_endpoint(self.url, {**self.options, **extra})

    def cli_args(self) -> list[str]:
        args = [self.url]
        for name, value in self.options.items():
            args += ["-o", f"{name}={value}"]
        return args

    def stored(self) -> dict[str, bytes]:
        """Every stored file, by its name relative to the archive root."""
        if self.root is not None:
            if not self.root.exists():
                return {}
            return {p.relative_to(self.root).as_posix(): p.read_bytes()
                    for p in sorted(self.root.rglob("*")) if p.is_file()}
        out = {}
        for obj in self.client.list_objects(self.bucket, prefix=self.prefix, recursive=True):
            response = self.client.get_object(self.bucket, obj.object_name)
            try:
                out[obj.object_name[len(self.prefix):]] = response.read()
            finally:
                response.close()
                response.release_conn()
        return out

    def put(self, name: str, data: bytes) -> None:
        if self.root is not None:
            (self.root / name).write_bytes(data)
        else:
            self.client.put_object(self.bucket, self.prefix + name, io.BytesIO(data), len(data))

    def remove(self, name: str) -> None:
        if self.root is not None:
            (self.root / name).unlink()
        else:
            self.client.remove_object(self.bucket, self.prefix + name)


def minio_client(env: dict[str, str]):
    from minio import Minio

    return Minio(urlsplit(env["OIM_S3_SRC_URL"]).netloc, secure=False,
                 access_key=env["OIM_S3_SRC_ACCESS_KEY"], secret_key=env["OIM_S3_SRC_SECRET_KEY"])


def s3_place(env: dict[str, str], *, bucket: str | None = None, create: bool = True) -> Place:
    client = minio_client(env)
    bucket = bucket or f"archive-{uuid.uuid4().hex[:10]}"
    if create and not client.bucket_exists(bucket):
        client.make_bucket(bucket)
    prefix = f"backups/{uuid.uuid4().hex[:6]}"
    return Place("s3", f"archive+s3://{urlsplit(env['OIM_S3_SRC_URL']).netloc}/{bucket}/{prefix}",
                 options={"access_key": "${OIM_S3_SRC_ACCESS_KEY}",
                          "secret_key": "${OIM_S3_SRC_SECRET_KEY}",
                          "multipart_part_size": "5MiB"},
                 client=client, bucket=bucket, prefix=prefix + "/")


@pytest.fixture(params=["file", "s3"])
def place(request, tmp_path) -> Place:
    if request.param == "file":
        root = tmp_path / "archive"
        return Place("file", f"archive+file://{root}", root=root)
    return s3_place(request.getfixturevalue("s3_env"))


ENCRYPTION = {"plain": {}, "key": {"key": "${OIM_TEST_ARCHIVE_KEY}"},
              "passphrase": {"passphrase": "${OIM_TEST_ARCHIVE_PASSPHRASE}"}}


# ------------------------------------------------------------------------- writing sets
def payloads() -> dict[str, dict[str, bytes]]:
    """Units and their files: empty, small, compressible and incompressible, a file above
    the 1 MiB bridge threshold and one above S3's 5 MiB part (multipart streaming)."""
    rng = hashlib.sha256(b"seed").digest()
    random_block = b"".join(hashlib.sha256(rng + i.to_bytes(4, "big")).digest()
                            for i in range(40_000))  # 1.28 MB, incompressible
    return {
        "db0": {"empty.bin": b"", "small.json": b'{"a": 1}',
                "big/compressible.txt": b"openim message log line\n" * 300_000},
        "openIM_v3.chat_logs#2/..": {"random.bin": random_block * 5},
    }


def write_set(repo, units: dict[str, dict[str, bytes]], *, kind: str = "redis",
              plan: str = "fp-1"):
    writer = repo.begin_set(plan_name="test", plan_fingerprint=plan, stores=[kind])
    store = writer.store(kind)
    store.set_cut(Cut(time=now(), snapshot=False, detail="keys as listed at the start"))
    with store.open("definitions.json") as f:
        f.write(b'{"views": []}')
    for unit_name, files in units.items():
        unit = store.unit(Unit(kind, unit_name, spec={"db": 0}))
        for name, data in files.items():
            with unit.open(name, meta={"source_bytes": len(data)}) as f:
                for start in range(0, len(data), 300_000):  # several writes per file
                    f.write(data[start:start + 300_000])
            unit.record(f"c{len(name) % 3}", record_hash(data))
        unit.meta["note"] = "test"
        unit.commit()
    store.commit({"server": "test"})
    return writer.commit([Unit(kind, u) for u in units])


@pytest.mark.parametrize("encryption", sorted(ENCRYPTION))
def test_files_round_trip_through_writer_and_reader(place, encryption):
    data = payloads()
    with open_archive(place.endpoint(**ENCRYPTION[encryption]), create=True) as repo:
        manifest = write_set(repo, data)
    stored = place.stored()
    # Read back through a fresh open, as a restore would.
    with open_archive(place.endpoint(**ENCRYPTION[encryption])) as repo:
        latest = repo.open_set()
        assert latest.set_id == manifest.set_id
        assert [i.state for i in repo.sets()] == ["complete"]
        units = latest.stores["redis"].units
        assert sorted(units) == sorted(data)
        for unit_name, files in data.items():
            record = units[unit_name]
            assert record.records == len(files) == sum(d.count for d in record.digests.values())
            assert record.meta == {"note": "test"} and record.unit["spec"] == {"db": 0}
            assert {f.name for f in record.files} == set(files)
            for entry in record.files:
                with repo.read_file(entry) as reader:
                    assert reader.read() == files[entry.name], entry.name
                raw = stored[entry.path]
                assert hashlib.sha256(raw).hexdigest() == entry.sha256
                assert entry.bytes == len(raw) and entry.plain_bytes == len(files[entry.name])
                assert entry.meta == {"source_bytes": len(files[entry.name])}
                suffix = ".zst" if encryption == "plain" else ".zst.age"
                assert entry.path.endswith(entry.name + suffix)
                assert raw.startswith(ZSTD_MAGIC if encryption == "plain" else AGE_MAGIC)
        store_file = latest.stores["redis"].files[0]
        with repo.read_file(store_file) as reader:
            assert reader.read() == b'{"views": []}'
        assert latest.stores["redis"].cut.snapshot is False
    # A unit name is one safe folder, whatever it holds.
    assert any("/units/openIM_v3.chat_logs%232%2F../random.bin" in p for p in stored)
    # After the commit only the manifest and data remain (records were folded in).
    assert not [p for p in stored if "/records/" in p or p.endswith(("started.json.zst",
                                                                     "store.json.zst"))]
    compressible = units["db0"].files
    assert next(f for f in compressible if f.name == "big/compressible.txt").bytes < 100_000


def test_a_set_without_manifest_is_never_complete(tmp_path):
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(), create=True) as repo:
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"])
        store = writer.store("redis")
        store.set_cut(Cut(now(), True, "snapshot"))
        unit = store.unit(Unit("redis", "db0"))
        with unit.open("data") as f:
            f.write(b"x" * 10)
        unit.commit()
        store.commit()
        assert [i.state for i in repo.sets()] == ["incomplete"]
        with pytest.raises(PlanError, match="holds no complete set"):
            repo.open_set()
        with pytest.raises(PlanError, match="the set is incomplete"):
            repo.open_set(writer.set_id)
        assert repo.resumable_set("fp") == writer.set_id
        assert repo.resumable_set("another plan") is None
        writer.commit()
        assert [i.state for i in repo.sets()] == ["complete"]
        assert repo.resumable_set("fp") is None


def test_commit_refuses_a_unit_without_record_and_an_unfinalized_store(tmp_path):
    endpoint = archive_endpoint(f"archive+file://{tmp_path / 'a'}")
    with open_archive(endpoint, create=True) as repo:
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"])
        store = writer.store("redis")
        store.set_cut(Cut(now(), True))
        with pytest.raises(Exception, match="was not finalized"):
            writer.commit()
        store.commit()
        with pytest.raises(Exception, match="1 unit.* have no record, e.g. redis:db1"):
            writer.commit([Unit("redis", "db1")])
        assert [i.state for i in repo.sets()] == ["incomplete"]


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from migrator.archive import Cut, archive_endpoint, open_archive
    from migrator.archive.manifest import now
    from migrator.stores.base import Unit
    options = {k: v for k, v in (a.split("=", 1) for a in sys.argv[2:])}
    repo = open_archive(archive_endpoint(sys.argv[1], options), create=True)
    writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"])
    store = writer.store("redis")
    store.set_cut(Cut(now(), False, "listed"))
    done = store.unit(Unit("redis", "db0"))
    with done.open("rdb") as f:
        f.write(b"first unit" * 1000)
    done.record("c0", 1)
    done.commit()
    half = store.unit(Unit("redis", "db1"))
    f = half.open("rdb")
    f.write(os.urandom(3 << 20))  # past the buffers: the upload or temp file is underway
    print(writer.set_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def test_a_killed_writer_leaves_an_incomplete_set_that_list_shows_and_check_reports(place):
    options = [f"{k}={v}" for k, v in {**place.options, **ENCRYPTION["key"]}.items()]
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, place.url, *options],
                          cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **SECRETS_ENV})
    assert proc.returncode == -9, proc.stderr
    set_id = proc.stdout.strip()
    key = ["--key", "${OIM_TEST_ARCHIVE_KEY}"]
    listed = cli("backup", "list", *place.cli_args(), *key, "--json")
    assert listed.returncode == 0, listed.stderr
    sets = json.loads(listed.stdout)["sets"]
    assert [(s["set"], s["state"], s.get("units_done")) for s in sets] == \
        [(set_id, "incomplete", 1)]
    checked = cli("backup", "check", *place.cli_args(), *key, "--json")
    assert checked.returncode == 0, checked.stdout + checked.stderr  # no damage: a warning
    problems = json.loads(checked.stdout)["problems"]
    assert [(p["path"], p["severity"]) for p in problems] == \
        [(f"sets/{set_id}", "warning")]
    assert "incomplete set" in problems[0]["problem"]
    human = cli("backup", "list", *place.cli_args(), *key)
    assert set_id in human.stdout and "incomplete" in human.stdout
    # The rerun resumes the set: the finished unit is kept, the other is written again.
    with open_archive(place.endpoint(**ENCRYPTION["key"])) as repo:
        assert repo.resumable_set("fp") == set_id
        writer = repo.begin_set(plan_name="t", plan_fingerprint="fp", stores=["redis"],
                                resume=set_id)
        store = writer.store("redis")
        assert sorted(store.done_units()) == ["db0"]
        store.set_cut(Cut(now(), False, "listed"))
        unit = store.unit(Unit("redis", "db1"))
        with unit.open("rdb") as f:
            f.write(b"second unit")
        unit.commit()
        store.commit()
        manifest = writer.commit([Unit("redis", "db0"), Unit("redis", "db1")])
        assert "resumed" in manifest.stores["redis"].cut.detail
        assert manifest.stores["redis"].cut.snapshot is False
    checked = cli("backup", "check", *place.cli_args(), *key, "--read-data", "--json")
    assert checked.returncode == 0, checked.stdout
    report = json.loads(checked.stdout)
    assert report["complete_sets"] == 1 and report["files_read"] == 2
    leftovers = [p for p in report["problems"] if p["severity"] == "warning"]
    if place.kind == "file":  # the killed write's temporary file, until prune
        assert len(leftovers) == 1 and "unfinished write" in leftovers[0]["problem"]
        pruned = cli("backup", "prune", *place.cli_args(), *key, "--keep-last", "1")
        assert pruned.returncode == 0, pruned.stderr
        assert not [n for n in place.stored() if ".tmp-" in n]
    else:  # S3 aborts the multipart upload; nothing is left to see
        assert leftovers == []


# ------------------------------------------------------------------------- damage
def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1:]


def _edit_manifest(place: Place, path: str, raw: bytes, encrypted: bool) -> bytes:
    """An edit that keeps every layer valid: decrypt, change a count, re-compress,
    re-encrypt with the archive's own key. Only the manifest's own digest can tell."""
    plain = pyrage.decrypt(raw, [KEY]) if encrypted else raw
    data = json.loads(zstandard.ZstdDecompressor().stream_reader(io.BytesIO(plain)).read())
    unit = next(iter(data["stores"]["redis"]["units"].values()))
    unit["records"] += 1
    unit["digests"] = {}
    packed = zstandard.ZstdCompressor().compress(json.dumps(data).encode())
    return pyrage.encrypt(packed, [KEY.to_public()]) if encrypted else packed


DAMAGE = ["flipped byte", "truncated", "missing", "edited manifest"]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_check_names_exactly_the_damaged_file_and_exits_5(place, damage, encrypted):
    enc = ENCRYPTION["key"] if encrypted else {}
    small = {"db0": {"a.bin": b"alpha" * 1000, "b.bin": b"beta" * 1000},
             "db1": {"c.bin": b"gamma" * 1000}}
    with open_archive(place.endpoint(**enc), create=True) as repo:
        manifest = write_set(repo, small)
    target = next(f.path for f in manifest.stores["redis"].units["db0"].files
                  if f.name == "b.bin")
    if damage == "edited manifest":
        target = f"sets/{manifest.set_id}/manifest.json.zst" + (".age" if encrypted else "")
    raw = place.stored()[target]
    if damage == "flipped byte":
        place.put(target, _flip(raw))
    elif damage == "truncated":
        place.put(target, raw[: len(raw) - 7])
    elif damage == "missing":
        place.remove(target)
    else:
        place.put(target, _edit_manifest(place, target, raw, encrypted))
    key = ["--key", "${OIM_TEST_ARCHIVE_KEY}"] if encrypted else []
    proc = cli("backup", "check", *place.cli_args(), *key, "--read-data", "--json")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    damaged = [p["path"] for p in report["problems"] if p["severity"] == "damage"]
    assert damaged == [target], report["problems"]
    human = cli("backup", "check", *place.cli_args(), *key, "--read-data")
    assert human.returncode == 5 and target in human.stdout
    errors = [ln for ln in human.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: the archive has 1 damaged or missing file(s); each is named above"]
    if damage == "flipped byte":
        # Sizes alone cannot see a changed byte: that is what --read-data is for ...
        assert cli("backup", "check", *place.cli_args(), *key).returncode == 0
        # ... and a restore reading the file refuses it, naming it.
        with open_archive(place.endpoint(**enc)) as repo:
            entry = next(f for f in repo.open_set().files() if f.path == target)
            with pytest.raises(ArchiveDamaged) as info, repo.read_file(entry) as reader:
                reader.read()
            assert info.value.path == target
    if damage == "edited manifest":
        listed = json.loads(cli("backup", "list", *place.cli_args(), *key, "--json").stdout)
        assert [s["state"] for s in listed["sets"]] == ["damaged"]


def test_check_reports_every_problem_not_the_first(tmp_path):
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(), create=True) as repo:
        manifest = write_set(repo, {"db0": {"a": b"1" * 100, "b": b"2" * 100, "c": b"3" * 99}})
    paths = sorted(f.path for f in manifest.stores["redis"].units["db0"].files)
    place.remove(paths[0])
    place.put(paths[1], _flip(place.stored()[paths[1]]))
    place.put(paths[2], place.stored()[paths[2]][:-1])
    proc = cli("backup", "check", place.url, "--read-data", "--json")
    assert proc.returncode == 5
    problems = {p["path"]: p["problem"] for p in json.loads(proc.stdout)["problems"]}
    assert problems.keys() == set(paths)
    assert problems[paths[0]] == "missing"
    assert "SHA-256" in problems[paths[1]] and "truncated" in problems[paths[2]]


def test_check_subset_reads_a_share_of_the_files(tmp_path):
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(), create=True) as repo:
        write_set(repo, {f"db{i}": {"f": bytes([i]) * 10} for i in range(10)})
    proc = cli("backup", "check", place.url, "--read-data", "--subset", "30%", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] == 11 and report["files_read"] == 3  # 10 units + 1 store file
    bad = cli("backup", "check", place.url, "--subset", "30")
    assert bad.returncode == 2 and "--subset needs --read-data" in bad.stderr


# ------------------------------------------------------------------------- bad input
def test_wrong_and_missing_keys_are_one_line_exit_3_and_nothing_written(place):
    with open_archive(place.endpoint(**ENCRYPTION["key"]), create=True) as repo:
        write_set(repo, {"db0": {"a": b"a"}})
    before = place.stored()
    cases = [
        (["--key", "${OIM_TEST_OTHER_KEY}"], "archive.key: is not this archive's key"),
        ([], "archive.key: this archive is encrypted; no key or passphrase was given"),
        (["--key", "${OIM_TEST_UNSET_VAR}"], "environment variable OIM_TEST_UNSET_VAR"),
        (["--key", str(KEY)], "archive.key: expected a ${VAR}"),
        (["--passphrase", "${OIM_TEST_ARCHIVE_PASSPHRASE}"], "archive.passphrase: this "
         "archive has no passphrase"),
    ]
    runs = [(["list"], args, message) for args, message in cases]
    runs += [(command, *cases[0]) for command in (["check"], ["prune", "--keep-last", "1"])]
    for command, args, message in runs:
        proc = cli("backup", *command, *place.cli_args(), *args)
        assert proc.returncode == 3, (args, command, proc.stderr)
        line = one_error_line(proc)
        assert message in line, line
        assert str(KEY) not in proc.stderr + proc.stdout
    assert place.stored() == before


def test_a_wrong_passphrase_is_refused_and_the_right_one_opens(tmp_path):
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(**ENCRYPTION["passphrase"]), create=True) as repo:
        write_set(repo, {"db0": {"a": b"a"}})
    wrong = cli("backup", "list", place.url, "--passphrase", "${WRONG}", env={"WRONG": "nope"})
    assert wrong.returncode == 3
    assert "archive.passphrase: is not this archive's passphrase" in one_error_line(wrong)
    right = cli("backup", "list", place.url, "--passphrase", "${OIM_TEST_ARCHIVE_PASSPHRASE}")
    assert right.returncode == 0 and "complete" in right.stdout


def test_a_plain_archive_refuses_a_key_it_would_ignore(tmp_path):
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(), create=True) as repo:
        write_set(repo, {"db0": {"a": b"a"}})
    proc = cli("backup", "list", place.url, "--key", "${OIM_TEST_ARCHIVE_KEY}")
    assert proc.returncode == 3
    assert "archive.key: would be ignored: this archive is not encrypted" in one_error_line(proc)


@pytest.mark.parametrize("url, message", [
    ("/tmp/no-scheme", "is not an archive URL"),
    ("archive+ftp://host/x", "'archive+ftp' is not an archive URL"),
    ("file:///tmp/x", "'file' is not an archive URL"),
    ("archive+file://relative/path", "'relative' would be read as a host name"),
    ("archive+file:///", "needs an absolute path other than /"),
    ("archive+file:///tmp/x?level=3", "'?level=3' would be ignored"),
    ("archive+s3://127.0.0.1:0/bucket", "has port 0"),
    ("archive+s3://127.0.0.1:9000", "names no bucket"),
    ("archive+s3:///bucket/x", "has no host"),
    ("archive+s3://127.0.0.1:9000/ab/x", "is not a bucket name"),
    ("archive+s3://127.0.0.1:9000/bucket/a//b", "has an empty, '.' or '..' part"),
    ("archive+s3://user:hunter2pw@127.0.0.1:9000/bucket", "literal password"),
    ("archive+s3://127.0.0.1:notaport/bucket", "not a valid URL"),
])
def test_a_malformed_archive_url_is_one_line_exit_3(url, message):
    proc = cli("backup", "list", url)
    assert proc.returncode == 3, proc.stderr
    line = one_error_line(proc)
    assert line.startswith("error: archive") and message in line, line
    assert "hunter2pw" not in proc.stderr + proc.stdout


def test_bad_options_are_one_line_and_name_the_option(tmp_path):
    url = f"archive+file://{tmp_path}/a"
    for args, code, message in [
        (["-o", "colour=blue"], 2, "expected NAME=VALUE"),
        (["-o", "access_key=x"], 3, "archive.access_key: would be ignored"),
        (["-o", "compression_level=99"], 3, "archive.compression_level: expected a zstd level"),
        (["-o", "secret_key=plain"], 3, "archive.secret_key: holds a literal secret"),
    ]:
        proc = cli("backup", "list", url, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert message in proc.stderr, proc.stderr
        assert "plain" not in proc.stderr.replace("explain", "")
    assert not (tmp_path / "a").exists()


def test_no_archive_where_the_url_points_is_exit_3_and_creates_nothing(tmp_path):
    proc = cli("backup", "check", f"archive+file://{tmp_path}/nothing-here")
    assert proc.returncode == 3
    assert "there is no archive at" in one_error_line(proc)
    assert not (tmp_path / "nothing-here").exists()


def test_creating_with_a_malformed_key_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BAD_KEY", "AGE-SECRET-KEY-1NOTAKEY")
    endpoint = archive_endpoint(f"archive+file://{tmp_path}/a", {"key": "${BAD_KEY}"})
    with pytest.raises(PlanError) as info:
        open_archive(endpoint, create=True)
    assert info.value.field == "archive.key" and "NOTAKEY" not in str(info.value)
    assert not (tmp_path / "a").exists()
    parentless = archive_endpoint(f"archive+file://{tmp_path}/no/such/dir")
    with pytest.raises(PlanError, match="does not exist"):
        open_archive(parentless, create=True)
    assert not (tmp_path / "no").exists()


def test_a_bucket_that_does_not_exist_is_exit_4_and_is_not_created(s3_env):
    place = s3_place(s3_env, bucket=f"missing-{uuid.uuid4().hex[:8]}", create=False)
    proc = cli("backup", "list", *place.cli_args())
    assert proc.returncode == 4, proc.stderr
    assert f"bucket '{place.bucket}' does not exist" in one_error_line(proc)
    with pytest.raises(EndpointError):
        open_archive(place.endpoint(), create=True)
    assert not place.client.bucket_exists(place.bucket)


def test_a_wrong_s3_secret_is_exit_4_and_never_shown(s3_env):
    place = s3_place(s3_env)
    proc = cli("backup", "list", *place.cli_args(), env={"OIM_S3_SRC_SECRET_KEY": "wrong-pw-1"})
    assert proc.returncode == 4, proc.stderr
    assert "archive" in one_error_line(proc)
    assert "wrong-pw-1" not in proc.stderr + proc.stdout


# ------------------------------------------------------------------------- secrets
def test_keys_and_s3_secrets_appear_nowhere_in_the_archive_or_the_output(s3_env):
    place = s3_place(s3_env)
    secrets = [str(KEY), PASSPHRASE, s3_env["OIM_S3_SRC_SECRET_KEY"]]
    both = {**ENCRYPTION["key"], **ENCRYPTION["passphrase"]}
    with open_archive(place.endpoint(**both), create=True) as repo:
        write_set(repo, {"db0": {"a": b"payload " * 100}})
        write_set(repo, {"db0": {"a": b"payload " * 100}})
    outputs = []
    for args in (["list"], ["list", "--json"], ["check", "--read-data"],
                 ["check", "--json"], ["prune", "--keep-last", "1", "--dry-run"],
                 ["prune", "--keep-last", "1", "--json"]):
        proc = cli("backup", args[0], *place.cli_args(), "--key", "${OIM_TEST_ARCHIVE_KEY}",
                   *args[1:])
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    stored = place.stored()
    assert "config.json" in stored and any(n.startswith("keys/") for n in stored)
    for secret in secrets:
        for name, data in stored.items():
            assert secret.encode() not in data, name
            assert secret.encode() not in zstd_plain(data, name), name
        for text in outputs:
            assert secret not in text
    config = json.loads(stored["config.json"])
    assert config["encryption"]["recipient"] == str(KEY.to_public())


def zstd_plain(data: bytes, name: str) -> bytes:
    """What our layers hold: the plain bytes of a .zst/.zst.age file (decrypted with the
    key), to prove no secret is inside the manifests either."""
    if name.endswith(".age") and not name.startswith("keys/"):
        data = pyrage.decrypt(data, [KEY])
    if name.endswith((".zst", ".zst.age")):
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    return data


# ------------------------------------------------------------------------- Debian's tools
def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages: apt-get install "
                    f"{' '.join(missing)}; scripts/install-deps.sh should list them)")


def test_debian_age_and_zstd_give_back_the_plain_bytes(tmp_path):
    _need("age", "zstd")
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    data = payloads()
    with open_archive(place.endpoint(**ENCRYPTION["key"]), create=True) as repo:
        manifest = write_set(repo, data)
    keyfile = tmp_path / "archive.key"
    keyfile.write_text(f"# created by the test\n{KEY}\n")
    for entry in manifest.files():
        plain = age_zstd(place.root / entry.path, keyfile)
        expected = next((files[entry.name] for files in data.values() if entry.name in files),
                        b'{"views": []}')
        assert plain == expected, entry.path
    text = age_zstd(place.root / f"sets/{manifest.set_id}/manifest.json.zst.age", keyfile)
    assert json.loads(text)["set"] == manifest.set_id


def test_debian_zstd_reads_a_plain_archive(tmp_path):
    _need("zstd")
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(), create=True) as repo:
        manifest = write_set(repo, {"db0": {"x.txt": b"hello archive\n" * 1000}})
    entry = next(manifest.files())
    if entry.name != "x.txt":
        entry = next(f for f in manifest.files() if f.name == "x.txt")
    out = subprocess.run(["zstd", "-d", "-c", str(place.root / entry.path)],
                         capture_output=True, check=True).stdout
    assert out == b"hello archive\n" * 1000


def test_debian_age_opens_the_passphrase_key_file_and_then_any_file(tmp_path):
    _need("age", "zstd")
    place = Place("file", f"archive+file://{tmp_path / 'a'}", root=tmp_path / "a")
    with open_archive(place.endpoint(**ENCRYPTION["passphrase"]), create=True) as repo:
        manifest = write_set(repo, {"db0": {"x.txt": b"restore me\n" * 100}})
    key_files = sorted((place.root / "keys").iterdir())
    assert len(key_files) == 1
    keyfile = tmp_path / "unwrapped.key"
    age_with_passphrase(key_files[0], keyfile, PASSPHRASE)
    entry = next(f for f in manifest.files() if f.name == "x.txt")
    assert age_zstd(place.root / entry.path, keyfile) == b"restore me\n" * 100


def age_zstd(path: Path, keyfile: Path) -> bytes:
    age = subprocess.run(["age", "-d", "-i", str(keyfile), str(path)], capture_output=True,
                         check=True)
    return subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True,
                          check=True).stdout


def age_with_passphrase(path: Path, out: Path, passphrase: str) -> None:
    """``age -d`` reads a passphrase only from a terminal: give it one."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp("age", ["age", "-d", "-o", str(out), str(path)])
    seen, deadline = b"", time.monotonic() + 60
    try:
        while b"passphrase" not in seen.lower() and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1)
            if ready:
                seen += os.read(fd, 1024)
        os.write(fd, passphrase.encode() + b"\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen
