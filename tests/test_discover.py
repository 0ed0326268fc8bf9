"""`discover`: a standalone install's files in, a `plan` command out, secrets only as
references. The fixture mirrors openim-docker v3.8 (mongo and redis publish no port,
MinIO publishes 10005, openim-server gets IMENV_* from .env)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from migrator.config import Endpoint
from migrator.deploy.discover import discover

ROOT = Path(__file__).resolve().parents[1]
SECRETS = ("mongo-S3cret", "root-S3cret", "redis-S3cret", "minio-S3cret", "mysql-S3cret")

COMPOSE_V38 = """\
networks:
  openim:
    driver: bridge
services:
  mongo:
    image: "${MONGO_IMAGE}"
    container_name: mongo
    volumes:
      - "${DATA_DIR}/components/mongodb/data/db:/data/db"
      - "${DATA_DIR}/components/mongodb/data/logs:/data/logs"
    environment:
      - MONGO_INITDB_ROOT_USERNAME=root
      - MONGO_INITDB_ROOT_PASSWORD=root-S3cret
      - MONGO_INITDB_DATABASE=openim_v3
      - MONGO_OPENIM_USERNAME=${MONGO_USERNAME}
      - MONGO_OPENIM_PASSWORD=${MONGO_PASSWORD}
  redis:
    image: "${REDIS_IMAGE}"
    container_name: redis
    command: ["redis-server", "/usr/local/redis/config/redis.conf", "--requirepass",
              "${REDIS_PASSWORD}", "--appendonly", "yes"]
  minio:
    image: "${MINIO_IMAGE}"
    ports:
      - "${MINIO_PORT}:9000"
      - "${MINIO_CONSOLE_PORT}:9090"
    environment:
      MINIO_ROOT_USER: "${MINIO_ACCESS_KEY_ID}"
      MINIO_ROOT_PASSWORD: "${MINIO_SECRET_ACCESS_KEY}"
  openim-server:
    image: ${OPENIM_SERVER_IMAGE}
    environment:
      - IMENV_MONGODB_ADDRESS=${MONGO_ADDRESS}
      - IMENV_MONGODB_USERNAME=${MONGO_USERNAME}
      - IMENV_MONGODB_PASSWORD=${MONGO_PASSWORD}
      - IMENV_REDIS_ADDRESS=${REDIS_ADDRESS}
      - IMENV_REDIS_PASSWORD=${REDIS_PASSWORD}
      - IMENV_MINIO_INTERNALADDRESS=${MINIO_INTERNAL_ADDRESS}
      - IMENV_MINIO_ACCESSKEYID=${MINIO_ACCESS_KEY_ID}
      - IMENV_MINIO_SECRETACCESSKEY=${MINIO_SECRET_ACCESS_KEY}
"""

DOTENV_V38 = """\
DATA_DIR=./
MONGO_IMAGE=mongo:7.0
REDIS_IMAGE=redis:7.0.0
MINIO_IMAGE=minio/minio:RELEASE.2024-01-11T07-46-16Z
OPENIM_SERVER_IMAGE=openim/openim-server:v3.8.3-patch.12
MONGO_ADDRESS=mongo:27017
MONGO_USERNAME=openIM
MONGO_PASSWORD=mongo-S3cret
REDIS_ADDRESS=redis:6379
REDIS_PASSWORD="redis-S3cret"
MINIO_PORT=10005
MINIO_CONSOLE_PORT=10004
MINIO_INTERNAL_ADDRESS=minio:9000
MINIO_ACCESS_KEY_ID=root
MINIO_SECRET_ACCESS_KEY=minio-S3cret
"""


def cli(*args: str, env: dict[str, str] | None = None):
    return subprocess.run([sys.executable, "-m", "migrator", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.fixture
def openim_docker(tmp_path: Path) -> Path:
    (tmp_path / "docker-compose.yaml").write_text(COMPOSE_V38)
    (tmp_path / ".env").write_text(DOTENV_V38)
    data = tmp_path / "components" / "mongodb" / "data" / "db"
    data.mkdir(parents=True)
    (data / "collection-0.wt").write_bytes(b"x" * (3 << 20))
    return tmp_path


def flags(stdout: str, command: str = "plan") -> dict[str, list[str]]:
    """The flags of the proposed ``openim-migrate COMMAND`` in discover's output."""
    blocks = [b for b in stdout.split("# ") if f"openim-migrate {command}" in b]
    assert len(blocks) == 1, stdout
    words = shlex.split(blocks[0].split("\n", 1)[1].replace("\\\n", " "))
    assert words[:2] == ["openim-migrate", command]
    out: dict[str, list[str]] = {}
    for flag, value in zip(words[2::2], words[3::2], strict=True):
        out.setdefault(flag, []).append(value)
    return out


def test_openim_docker_v38_gives_a_plan_command_with_references_only(openim_docker):
    out = cli("discover", str(openim_docker), "-n", "openim")
    assert out.returncode == 0, out.stderr
    for secret in SECRETS:
        assert secret not in out.stdout + out.stderr
    got = flags(out.stdout)
    sources = dict(v.split("=", 1) for v in got["--source"])
    # the server's own credentials, referenced by the .env variable that holds them
    assert sources["mongo"] == ("mongodb://openIM:${MONGO_PASSWORD}@mongo:27017/openim_v3"
                                "?authSource=openim_v3")
    assert sources["redis"] == "redis://:${REDIS_PASSWORD}@redis:6379/0"
    assert sources["objects"] == "http://127.0.0.1:10005/openim"  # the published port
    assert "objects.access_key=${MINIO_ACCESS_KEY_ID}" in got["--source-option"]
    assert "objects.secret_key=${MINIO_SECRET_ACCESS_KEY}" in got["--source-option"]
    targets = dict(v.split("=", 1) for v in got["--target"])
    assert targets["mongo"].startswith("mongodb://root:${k8s:openim%2Fim-mongodb%23"
                                       "mongodb-root-password}@im-mongodb.openim.svc")
    assert "objects.secret_key=${k8s:openim/im-minio#root-password}" in got["--target-option"]
    assert got["--preset"] == ["redis=openim"]
    # and the deploy command before it, sized from the bind-mounted data directory
    deploy = flags(out.stdout, "deploy")
    assert deploy["--stores"] == ["mongo,redis,objects"]
    assert deploy["--size"] == ["mongo=2Gi"]  # 3 MiB x 2 rounded up + 1 GiB
    # what cannot be reached from the host is said, with what to do about it
    assert "'mongo' publishes no port" in out.stderr and "'redis' publishes no port" in out.stderr
    assert ".env" in out.stderr
    # every endpoint is one `plan` accepts (no literal secret, references well-formed)
    for kind, url in {**sources, **targets}.items():
        Endpoint.from_dict(kind, {"url": url}, f"stores.{kind}")


def test_config_files_and_imenv_variables_take_precedence(tmp_path):
    config = tmp_path / "config"
    config.mkdir()
    (config / "mongodb.yml").write_text(
        "address: [127.0.0.1:37017]\ndatabase: openIM_v3\nusername: root\n"
        "password: root-S3cret\nauthSource: admin\n")
    (config / "redis.yml").write_text("address: [127.0.0.1:16379]\npassword: x-S3cret\n"
                                      "clusterMode: true\n")
    env = {"IMENV_REDIS_PASSWORD": "redis-S3cret"}
    found = discover(tmp_path, environ=env)
    mongo, redis = found.sources["mongo"], found.sources["redis"]
    assert mongo.url == ("mongodb://root:${SRC_MONGO_PASSWORD}@127.0.0.1:37017/openIM_v3"
                         "?authSource=admin")
    assert any("SRC_MONGO_PASSWORD" in n and "mongodb.yml password" in n for n in mongo.notes)
    # an IMENV_ variable beats the config file, and is referenced as it is
    assert redis.url == "redis+cluster://:${IMENV_REDIS_PASSWORD}@127.0.0.1:16379"
    assert any("db_map" in n for n in found.notes)  # openIM_v3 means OpenIM <= 3.5
    text = repr(found)
    assert "root-S3cret" not in text and "redis-S3cret" not in text and "x-S3cret" not in text


def test_old_compose_with_mysql_and_a_directory_with_nothing(tmp_path):
    (tmp_path / "docker-compose.yml").write_text(
        "services:\n  mysql:\n    image: mysql:5.7\n    ports: ['${MYSQL_PORT}:3306']\n"
        "    environment:\n      MYSQL_ROOT_PASSWORD: '${MYSQL_PASSWORD}'\n")
    (tmp_path / ".env").write_text("MYSQL_PORT=13306\nMYSQL_PASSWORD=mysql-S3cret\n")
    found = discover(tmp_path, environ={})
    assert found.sources["mysql"].url == "mysql://root:${MYSQL_PASSWORD}@127.0.0.1:13306/openIM_v3"
    assert any("MySQL" in n for n in found.notes)
    empty = tmp_path / "empty"
    empty.mkdir()
    out = cli("discover", str(empty))
    assert out.returncode == 3 and "no docker-compose.yml" in out.stderr
