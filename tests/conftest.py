# ----------------------------------------------------------------------------- test servers
# Real servers for the tests, from scripts/services.py. A group whose *_SRC_URL is already
# in the environment (docker-compose.test.yml, see its header) is used as it is; otherwise
# it is started on the first request, on free 127.0.0.1 ports, and stopped at session end.
# Missing binary: skip, or fail when OIM_REQUIRE_SERVICES=1 (`make test`).
import atexit
import importlib.util
import os
import sys
from pathlib import Path

import pytest


def _load_services_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "services.py"
    spec = importlib.util.spec_from_file_location("oim_services", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


oim_services = _load_services_module()

_GROUP_URL = {
    "redis": "OIM_REDIS_SRC_URL",
    "mysql": "OIM_MYSQL_SRC_URL",
    "minio": "OIM_S3_SRC_URL",
    "mongo": "OIM_MONGO_SRC_URL",
}
_GROUP_PREFIX = {
    "redis": "OIM_REDIS_",
    "mysql": "OIM_MYSQL_",
    "minio": "OIM_S3_",
    "mongo": "OIM_MONGO_",
}


class _ServiceManager:
    def __init__(self, tmp_path_factory):
        self._factory = tmp_path_factory
        self.dir = None
        self.added = {}  # env vars this manager put into os.environ
        self.failed = {}  # group -> error, so a broken group fails fast afterwards

    def ensure(self, groups):
        need = [g for g in groups if _GROUP_URL[g] not in os.environ]
        for g in need:
            if g in self.failed:
                pytest.fail(self.failed[g], pytrace=False)
        missing = oim_services.missing_binaries(need)
        if missing:
            msg = str(oim_services.MissingBinary(*missing[0]))
            if os.environ.get("OIM_REQUIRE_SERVICES") == "1":
                pytest.fail(msg, pytrace=False)
            pytest.skip(msg)
        if need:
            if self.dir is None:
                self.dir = self._factory.mktemp("services", numbered=True)
                atexit.register(oim_services.stop, self.dir)
            try:
                env = oim_services.start(self.dir, only=need, detach=False)
            except oim_services.ServiceError as exc:
                for g in need:
                    self.failed[g] = str(exc)
                raise
            for k, v in env.items():
                if k not in os.environ:
                    self.added[k] = v
                    os.environ[k] = v
        return {
            k: v
            for k, v in os.environ.items()
            if any(k.startswith(_GROUP_PREFIX[g]) for g in groups)
        }

    def close(self):
        if self.dir is not None:
            oim_services.stop(self.dir)
        for k in self.added:
            os.environ.pop(k, None)


@pytest.fixture(scope="session")
def _oim_service_manager(tmp_path_factory):
    mgr = _ServiceManager(tmp_path_factory)
    try:
        yield mgr
    finally:
        mgr.close()


@pytest.fixture(scope="session")
def services(_oim_service_manager):
    """Env dict (OIM_*) of all test servers; started if not given in the environment."""
    return _oim_service_manager.ensure(list(_GROUP_URL))


@pytest.fixture(scope="session")
def redis_env(_oim_service_manager):
    """OIM_REDIS_* (source + reader user, standalone target, 3-master cluster)."""
    return _oim_service_manager.ensure(["redis"])


@pytest.fixture(scope="session")
def mysql_env(_oim_service_manager):
    """OIM_MYSQL_* (MariaDB/MySQL source + reader user, target)."""
    return _oim_service_manager.ensure(["mysql"])


@pytest.fixture(scope="session")
def s3_env(_oim_service_manager):
    """OIM_S3_* (MinIO source and target)."""
    return _oim_service_manager.ensure(["minio"])


@pytest.fixture(scope="session")
def mongo_env(_oim_service_manager):
    """OIM_MONGO_* (DocumentDB gateway, FerretDB or MongoDB source and target;
    OIM_MONGO_FLAVOR names which). URLs may carry ``${OIM_MONGO_*_PASSWORD}`` references:
    resolve them (migrator.config.resolve_refs) before giving one to a driver directly."""
    env = _oim_service_manager.ensure(["mongo"])
    _MONGO_USED["flavour"] = env.get("OIM_MONGO_FLAVOR", "unknown")
    return env


_MONGO_USED: dict[str, str] = {}


def _mongo_flavour_expected() -> str:
    if "OIM_MONGO_SRC_URL" in os.environ:
        return os.environ.get("OIM_MONGO_FLAVOR", "unknown") + " (from the environment)"
    try:
        flavour = oim_services.mongo_flavour()
    except ValueError as exc:
        return str(exc)
    if flavour == "ferretdb" and os.environ.get("OIM_MONGO_TEST_SERVER"):
        return "ferretdb (FerretDB 1.24, chosen by OIM_MONGO_TEST_SERVER)"
    if flavour == "ferretdb":
        return ("ferretdb (FerretDB 1.24; DocumentDB not built: see scripts/build-documentdb.sh"
                " and OIM_VENDOR_DIR)")
    return "documentdb (PostgreSQL 15 + DocumentDB + its gateway)"


def pytest_report_header(config):
    return f"mongo test server: {_mongo_flavour_expected()}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _MONGO_USED:
        terminalreporter.write_line(f"MongoDB tests ran against: {_MONGO_USED['flavour']}")


# ----------------------------------------------------------------------------- end of test servers
