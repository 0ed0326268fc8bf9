"""Smoke tests of the test servers themselves (tests/conftest.py, scripts/services.py)."""

from urllib.parse import urlsplit

import pytest


def test_redis_reader_is_read_only(redis_env):
    redis = pytest.importorskip("redis")
    url = redis_env["OIM_REDIS_SRC_URL"]
    admin = redis.Redis.from_url(url, password=redis_env["OIM_REDIS_SRC_PASSWORD"])
    admin.set("oim:smoke", "1")
    reader = redis.Redis.from_url(
        url,
        username=redis_env["OIM_REDIS_SRC_READER_USER"],
        password=redis_env["OIM_REDIS_SRC_READER_PASSWORD"],
    )
    assert reader.get("oim:smoke") == b"1"
    assert reader.dump("oim:smoke") and reader.pttl("oim:smoke") == -1
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.set("oim:smoke", "2")
    with pytest.raises(redis.exceptions.NoPermissionError):
        reader.delete("oim:smoke")
    admin.delete("oim:smoke")


def test_redis_cluster_has_three_masters(redis_env):
    redis = pytest.importorskip("redis")
    u = urlsplit(redis_env["OIM_REDIS_CLUSTER_URL"])
    node = redis.Redis(
        host=u.hostname, port=u.port, password=redis_env["OIM_REDIS_CLUSTER_PASSWORD"]
    )
    assert node.cluster("info")["cluster_state"] == "ok"
    nodes = node.cluster("nodes")  # {"host:port": {"flags": "myself,master", ...}}
    assert sum("master" in n["flags"] for n in nodes.values()) == 3


def test_mysql_reader_cannot_insert(mysql_env):
    pymysql = pytest.importorskip("pymysql")
    u = urlsplit(mysql_env["OIM_MYSQL_SRC_URL"])
    root = pymysql.connect(
        host=u.hostname,
        port=u.port,
        user=mysql_env["OIM_MYSQL_SRC_USER"],
        password=mysql_env["OIM_MYSQL_SRC_PASSWORD"],
        autocommit=True,
    )
    with root.cursor() as c:
        c.execute("CREATE DATABASE IF NOT EXISTS oim_smoke")
        c.execute("CREATE TABLE IF NOT EXISTS oim_smoke.t (id INT PRIMARY KEY)")
        c.execute("REPLACE INTO oim_smoke.t VALUES (1)")
    reader = pymysql.connect(
        host=u.hostname,
        port=u.port,
        user=mysql_env["OIM_MYSQL_SRC_READER_USER"],
        password=mysql_env["OIM_MYSQL_SRC_READER_PASSWORD"],
    )
    with reader.cursor() as c:
        c.execute("SELECT COUNT(*) FROM oim_smoke.t")
        assert c.fetchone() == (1,)
        with pytest.raises(pymysql.err.OperationalError) as err:
            c.execute("INSERT INTO oim_smoke.t VALUES (2)")
        assert err.value.args[0] == 1142  # ER_TABLEACCESS_DENIED_ERROR
    reader.close()
    with root.cursor() as c:
        c.execute("DROP DATABASE oim_smoke")
    root.close()
