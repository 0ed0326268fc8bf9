"""Prometheus metrics and JSON logs for the long-running commands (run, verify, and later
cutover/backup/drill), so a migration inside a cluster can be watched like any other job.

``Metrics`` is a ``Progress`` observer: the engine already reports each unit's start,
progress and end through that interface, so metrics need no second set of hooks. What
``Progress`` does not carry (retries, verify results, the end of the command) has its own
small methods. Each ``Metrics`` owns its registry, so tests and several commands in one
process never share counters. Samples go out over HTTP (``serve``) for Prometheus to
scrape, or into a textfile (``write_textfile``) for node_exporter's textfile collector,
which suits Jobs and CronJobs that end before a scrape. Metric names are listed in
``METRIC_NAMES``; the Grafana dashboard under deploy/grafana/ queries only those (a test
checks it).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Info, write_to_textfile
from prometheus_client.exposition import start_http_server

from migrator import __version__

PREFIX = "openim_migrate"
log = logging.getLogger("migrator.events")

# Every series the code exports, as Prometheus shows them (counters get ``_total``).
METRIC_NAMES = (
    f"{PREFIX}_info",
    f"{PREFIX}_units",
    f"{PREFIX}_unit_records_done",
    f"{PREFIX}_unit_bytes_done",
    f"{PREFIX}_records_total",
    f"{PREFIX}_bytes_total",
    f"{PREFIX}_retries_total",
    f"{PREFIX}_errors_total",
    f"{PREFIX}_verify_differences",
    f"{PREFIX}_duration_seconds",
    f"{PREFIX}_last_success_timestamp_seconds",
)


def _store(unit: str) -> str:
    return unit.split(":", 1)[0]


class Metrics:
    """The metrics of one command over one plan; thread-safe (units run in threads)."""

    def __init__(self, command: str, plan: str = "") -> None:
        self.command = command
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._lock = threading.Lock()
        self._states: dict[str, str] = {}
        self._started = time.monotonic()
        self._ended: float | None = None
        self._server: Any = None
        Info(f"{PREFIX}", "The tool and the plan", ["command"], registry=r).labels(
            command).info({"version": __version__, "plan": plan})
        self.units = Gauge(f"{PREFIX}_units", "Units by state (pending, copying, copied, "
                           "failed, verified, differs, ...)", ["command", "state"], registry=r)
        self.unit_records = Gauge(f"{PREFIX}_unit_records_done", "Records done in a unit, "
                                  "including earlier runs", ["command", "store", "unit"],
                                  registry=r)
        self.unit_bytes = Gauge(f"{PREFIX}_unit_bytes_done", "Bytes done in a unit in this "
                                "process", ["command", "store", "unit"], registry=r)
        self.records = Counter(f"{PREFIX}_records", "Records copied by this process",
                               ["command", "store"], registry=r)
        self.bytes = Counter(f"{PREFIX}_bytes", "Bytes copied by this process",
                             ["command", "store"], registry=r)
        self.retries = Counter(f"{PREFIX}_retries", "Retries after transient errors",
                               ["command", "store"], registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Units that failed (copy) or could not be "
                              "compared (verify)", ["command", "store"], registry=r)
        self.differences = Gauge(f"{PREFIX}_verify_differences", "Records found different by "
                                 "the last verify, by kind", ["store", "unit", "kind"],
                                 registry=r)
        duration = Gauge(f"{PREFIX}_duration_seconds", "Seconds since the command started "
                         "(frozen at its end)", ["command"], registry=r)
        duration.labels(command).set_function(self._elapsed)
        self.last_success = Gauge(f"{PREFIX}_last_success_timestamp_seconds", "Unix time the "
                                  "command last ended successfully", ["command"], registry=r)

    def _elapsed(self) -> float:
        end = self._ended if self._ended is not None else time.monotonic()
        return end - self._started

    def _set_state(self, unit: str, state: str) -> None:
        with self._lock:
            old = self._states.get(unit)
            self._states[unit] = state
            if old is not None:
                self.units.labels(self.command, old).dec()
            self.units.labels(self.command, state).inc()

    # -- Progress --------------------------------------------------------------------
    def start(self, total_records: int, total_bytes: int) -> None:
        log.info("started", extra={"event": "started", "command": self.command,
                                   "records": total_records, "bytes": total_bytes})

    def unit_started(self, unit: str, records: int, bytes_: int, done: int = 0) -> None:
        store = _store(unit)
        self.unit_records.labels(self.command, store, unit).set(done)
        self.unit_bytes.labels(self.command, store, unit).set(0)
        self._set_state(unit, "copying")
        log.info("unit started", extra={"event": "unit_started", "unit": unit,
                                        "records": records, "done": done})

    def advance(self, unit: str, records: int, bytes_: int) -> None:
        store = _store(unit)
        self.unit_records.labels(self.command, store, unit).inc(records)
        self.unit_bytes.labels(self.command, store, unit).inc(bytes_)
        self.records.labels(self.command, store).inc(records)
        self.bytes.labels(self.command, store).inc(bytes_)

    def unit_finished(self, unit: str, state: str) -> None:
        self._set_state(unit, state)
        if state == "failed":
            self.errors.labels(self.command, _store(unit)).inc()
        log.info("unit finished", extra={"event": "unit_finished", "unit": unit,
                                         "state": state})

    def close(self) -> None:
        pass

    # -- beyond Progress ---------------------------------------------------------------
    def pending(self, units: list[str]) -> None:
        """Units known from the plan but not started: so every unit has a sample from the
        beginning, and a dashboard shows what is left, not only what moves."""
        for unit in units:
            store = _store(unit)
            self.unit_records.labels(self.command, store, unit)
            self.unit_bytes.labels(self.command, store, unit)
            if unit not in self._states:
                self._set_state(unit, "pending")

    def retried(self, unit: str, error: BaseException | str = "") -> None:
        self.retries.labels(self.command, _store(unit)).inc()
        log.warning("retry", extra={"event": "retry", "unit": unit, "error": str(error)})

    def verified(self, report: Any) -> None:
        """Record a ``VerifyReport``: each unit's state and its differences by kind."""
        for u in report.units:
            self._set_state(u.unit, {"match": "verified", "differ": "differs"}.get(
                u.status, "error"))
            if u.status == "error":
                self.errors.labels(self.command, u.store).inc()
            for kind, n in (("missing_on_target", u.n_missing_on_target),
                            ("missing_on_source", u.n_missing_on_source),
                            ("differ", u.n_differ)):
                self.differences.labels(u.store, u.unit, kind).set(n)
            log.info("unit verified", extra={"event": "unit_verified", "unit": u.unit,
                                             "status": u.status})

    def drilled(self, report: Any) -> None:
        """Record a ``DrillReport``: pass or fail, the set's age (RPO), restore plus verify
        time (RTO), and what was restored per store; alert on these, not on logs."""
        r = self.registry
        Gauge(f"{PREFIX}_drill_passed", "1 when the last drill passed, else 0",
              registry=r).set(1 if report.passed else 0)
        for name, value, about in (
                ("rpo_seconds", report.rpo_seconds, "Age of the drilled set at drill time"),
                ("rto_seconds", report.rto_seconds, "Seconds to restore and verify the set")):
            if value is not None:
                Gauge(f"{PREFIX}_drill_{name}", about, registry=r).set(value)
        records = Gauge(f"{PREFIX}_drill_records", "Records restored by the drill", ["store"],
                        registry=r)
        size = Gauge(f"{PREFIX}_drill_bytes", "Bytes restored by the drill", ["store"],
                     registry=r)
        for kind, totals in report.stores.items():
            records.labels(kind).set(totals.get("records", 0))
            size.labels(kind).set(totals.get("bytes", 0))

    def finished(self, ok: bool) -> None:
        """The command ended; freezes the duration and, on success, stamps last success."""
        self._ended = time.monotonic()
        if ok:
            self.last_success.labels(self.command).set(time.time())
        log.info("finished", extra={"event": "finished", "command": self.command, "ok": ok,
                                    "seconds": round(self._elapsed(), 3)})

    # -- exposition --------------------------------------------------------------------
    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Serve /metrics on ``addr:port`` (0 = any free port) in a daemon thread; returns
        the port actually bound."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop_serving(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def write_textfile(self, path: str | Path) -> None:
        """Atomically write all samples in the text format (node_exporter textfile)."""
        write_to_textfile(str(path), self.registry)


class Tee:
    """Fans ``Progress`` calls out to several observers (a progress bar and metrics)."""

    def __init__(self, *observers: Any) -> None:
        self.observers = [o for o in observers if o is not None]

    def __getattr__(self, name: str) -> Any:
        def call(*args: Any, **kwargs: Any) -> None:
            for o in self.observers:
                method = getattr(o, name, None)
                if method is not None:
                    method(*args, **kwargs)
        return call


# ----------------------------------------------------------------------------- JSON logs
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3), "level": record.levelname.lower(),
            "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """``json``: structured lines on stderr for log collectors; ``text``: warnings only
    (the CLI's own output stays the human interface)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        level = logging.WARNING
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@contextmanager
def observed(command: str, plan: str = "", *, port: int | None = None,
             textfile: str | Path | None = None, log_format: str = "text",
             units: list[str] | None = None) -> Iterator[Metrics | None]:
    """What a command wraps its work in: logging set up, metrics served or written at the
    end. Yields None when neither a port, a textfile nor JSON logs (whose unit events come
    from the same observer) are asked for."""
    configure_logging(log_format)
    if port is None and textfile is None and log_format != "json":
        yield None
        return
    metrics = Metrics(command, plan)
    metrics.pending(units or [])
    if port is not None:
        bound = metrics.serve(port)
        log.info("metrics served", extra={"event": "metrics", "port": bound})
    ok = False
    try:
        yield metrics
        ok = True
    finally:
        if metrics._ended is None:
            metrics.finished(ok)
        if textfile is not None:
            metrics.write_textfile(textfile)
        metrics.stop_serving()
