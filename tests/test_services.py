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


def _mongo(url: str, **kwargs):
    pymongo = pytest.importorskip("pymongo")
    from migrator.config import resolve_refs

    return pymongo.MongoClient(resolve_refs(url, "test"), serverSelectionTimeoutMS=5000, **kwargs)


def test_mongo_flavour_is_named_and_both_sides_answer(mongo_env):
    assert mongo_env["OIM_MONGO_FLAVOR"] in ("documentdb", "ferretdb", "mongodb")
    for side in ("SRC", "DST"):
        assert _mongo(mongo_env[f"OIM_MONGO_{side}_URL"]).admin.command("ping")["ok"] == 1
    if mongo_env["OIM_MONGO_FLAVOR"] == "documentdb":  # its own PostgreSQL behind each side
        build = _mongo(mongo_env["OIM_MONGO_SRC_URL"]).admin.command("buildInfo")
        assert "gitVersion" not in build and "ferretdbVersion" not in build


def test_mongo_reader_has_read_any_database_and_cannot_write(mongo_env):
    if "OIM_MONGO_SRC_READER_USER" not in mongo_env:
        pytest.skip(f"{mongo_env.get('OIM_MONGO_FLAVOR')} test servers have no users")
    pymongo = pytest.importorskip("pymongo")
    admin = _mongo(mongo_env["OIM_MONGO_SRC_URL"])
    admin["oim_smoke_a"]["t"].insert_one({"_id": 1})
    admin["oim_smoke_b"]["t"].insert_one({"_id": 2})
    hostport = mongo_env["OIM_MONGO_SRC_URL"].split("@")[-1]
    reader = pymongo.MongoClient(
        f"mongodb://{hostport}", username=mongo_env["OIM_MONGO_SRC_READER_USER"],
        password=mongo_env["OIM_MONGO_SRC_READER_PASSWORD"], serverSelectionTimeoutMS=5000)
    assert reader["oim_smoke_a"]["t"].find_one() == {"_id": 1}  # any database
    assert reader["oim_smoke_b"]["t"].find_one() == {"_id": 2}
    with pytest.raises(pymongo.errors.OperationFailure) as err:
        reader["oim_smoke_a"]["t"].insert_one({"_id": 3})
    assert err.value.code == 13  # Unauthorized
    with pytest.raises(pymongo.errors.OperationFailure):
        reader["oim_smoke_a"].drop_collection("t")
    assert admin["oim_smoke_a"]["t"].count_documents({}) == 1
    for name in ("oim_smoke_a", "oim_smoke_b"):
        admin.drop_database(name)


def test_mongo_tls_listener_presents_a_certificate_from_the_test_ca(mongo_env):
    client = _mongo(mongo_env["OIM_MONGO_TLS_URL"], tls=True,
                    tlsCAFile=mongo_env["OIM_MONGO_TLS_CA_FILE"])
    assert client.admin.command("ping")["ok"] == 1
