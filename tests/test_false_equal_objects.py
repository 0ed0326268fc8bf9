"""False EQUAL, objects: after a clean run, change what the object-level digests cannot see
(bucket settings, a bucket no unit covers, an edited plan) and expect `verify` to say so,
naming the bucket, through the command line against the two MinIO servers (``s3_env``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from minio import Minio
from minio.commonconfig import ENABLED, Filter, Tags
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from minio.versioningconfig import VersioningConfig

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def client(side: str) -> Minio:
    return Minio(os.environ[f"OIM_S3_{side}_URL"].split("//", 1)[1], secure=False,
                 access_key=os.environ[f"OIM_S3_{side}_ACCESS_KEY"],
                 secret_key=os.environ[f"OIM_S3_{side}_SECRET_KEY"])


def put(c: Minio, bucket: str, key: str, data: bytes = b"x") -> None:
    c.put_object(bucket, key, io.BytesIO(data), len(data))


def plan_args(src_path: str, dst_path: str, *extra: str) -> list[str]:
    return ["--source", f"objects={os.environ['OIM_S3_SRC_URL']}{src_path}",
            "--source-option", "objects.access_key=${OIM_S3_SRC_ACCESS_KEY}",
            "--source-option", "objects.secret_key=${OIM_S3_SRC_SECRET_KEY}",
            "--target", f"objects={os.environ['OIM_S3_DST_URL']}{dst_path}",
            "--target-option", "objects.access_key=${OIM_S3_DST_ACCESS_KEY}",
            "--target-option", "objects.secret_key=${OIM_S3_DST_SECRET_KEY}", *extra]


def planned_and_run(tmp_path: Path, *args: str) -> Path:
    plan = tmp_path / "objects.yaml"
    out = cli("plan", *args, "-o", str(plan))
    assert out.returncode == 0, out.stderr + out.stdout
    run = cli("run", str(plan), "--json")
    assert run.returncode == 0, run.stderr + run.stdout
    assert json.loads(run.stdout)["verify"]["ok"] is True
    return plan


def failing_verify(plan: Path, code: int = 5) -> dict:
    out = cli("verify", str(plan), "--json")
    assert out.returncode == code, out.stderr + out.stdout
    assert "Traceback" not in out.stderr
    return json.loads(out.stdout) if code == 5 else {"stderr": out.stderr}


def unit(report: dict, name: str) -> dict:
    return next(u for u in report["units"] if u["unit"] == name)


@pytest.fixture
def bucket(s3_env) -> str:
    name = f"fe-{uuid.uuid4().hex[:12]}"
    client("SRC").make_bucket(name)
    return name


def test_bucket_settings_changed_on_the_target_are_named_with_the_bucket(bucket, tmp_path):
    src, dst = client("SRC"), client("DST")
    src.set_bucket_policy(bucket, json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/openim/*"}]}))
    src.set_bucket_lifecycle(bucket, LifecycleConfig([Rule(
        ENABLED, rule_filter=Filter(prefix="openim/temp/"), rule_id="temp",
        expiration=Expiration(days=1))]))
    src.set_bucket_versioning(bucket, VersioningConfig(ENABLED))
    tags = Tags.new_bucket_tags()
    tags["app"] = "openim"
    src.set_bucket_tags(bucket, tags)
    for key in ("openim/data/hash/1", "openim/temp/2"):
        put(src, bucket, key)
    plan = planned_and_run(tmp_path, *plan_args(f"/{bucket}", f"/{bucket}"))

    dst.delete_bucket_policy(bucket)
    dst.delete_bucket_lifecycle(bucket)
    tags["app"] = "something else"
    dst.set_bucket_tags(bucket, tags)
    report = failing_verify(plan)
    lines = unit(report, "objects:(definitions)")["schema"]
    assert sorted(line.split(":")[0] for line in lines) == [
        f"{bucket}.lifecycle", f"{bucket}.policy", f"{bucket}.tags.app"], lines
    assert all(u["status"] == "match" for u in report["units"]
               if u["unit"] != "objects:(definitions)")
    text = cli("verify", str(plan))
    assert text.returncode == 5 and f"{bucket}.policy" in text.stdout


def test_a_bucket_created_after_plan_is_named_by_run_and_verify(s3_env, tmp_path):
    tag = uuid.uuid4().hex[:10]
    src = client("SRC")
    src.make_bucket(f"fe-{tag}-a")
    put(src, f"fe-{tag}-a", "openim/data/hash/1")
    plan = planned_and_run(tmp_path, *plan_args("", "", "--include", f"objects=fe-{tag}-*"))

    src.make_bucket(f"fe-{tag}-b")
    put(src, f"fe-{tag}-b", "openim/data/hash/2")
    report = failing_verify(plan)
    assert unit(report, "objects:(not in plan)")["missing_on_target"] == [f"fe-{tag}-b"]
    run = cli("run", str(plan))
    assert run.returncode == 3 and f"fe-{tag}-b" in run.stderr, run.stderr
    assert not client("DST").bucket_exists(f"fe-{tag}-b")


def test_a_unit_deleted_from_the_plan_is_a_plan_error_naming_the_keys(bucket, tmp_path):
    src = client("SRC")
    for i in range(60):
        put(src, bucket, f"openim/data/hash/{uuid.UUID(int=i * 2**122).hex}")
    plan = planned_and_run(tmp_path, *plan_args(f"/{bucket}", f"/{bucket}", "--unit-records",
                                                "20"))
    data = yaml.safe_load(plan.read_text())
    assert len(data["inventory"]) >= 3
    gone = data["inventory"].pop(1)
    plan.write_text(yaml.safe_dump(data, sort_keys=False))
    out = failing_verify(plan, code=3)
    first = out["stderr"].splitlines()[0]
    assert bucket in first and "in no unit" in first
    assert f"[{gone['spec']['start']}..{gone['spec']['end']})" in first
