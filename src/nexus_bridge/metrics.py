"""Prometheus metrics (the official client library): counters and histograms kept in this
process as things happen, and gauges read from the database when ``/metrics`` is scraped.

The adapters (the MCP tools, the Telegram transport, the consent page) count into
:data:`METRICS`; the queue service knows nothing of it.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from nexus_bridge import config
from nexus_bridge.constants import LOOPBACK_HOSTS
from nexus_bridge.domain import TaskStatus
from nexus_bridge.queue import QueueMetrics, QueueService

logger = logging.getLogger(__name__)

METRICS_PATH: Final = "/metrics"
# What generate_latest writes: the classic text format every Prometheus reads.
TEXT_FORMAT: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "nexus_bridge"
# Tool calls take from milliseconds (a send) to a minute (a pull or next_task that waits).
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Headers a reverse proxy adds: a request that carries one came from beyond this machine.
FORWARDING_HEADERS: Final = ("forwarded", "x-forwarded-for", "x-real-ip", "cf-connecting-ip")


class Metrics:
    """What this process counts as it goes, and the client library's standard collectors of the
    process itself: memory, open files, CPU, start time (``process_*``, Linux) and the garbage
    collector and Python version (``python_*``), which show a process that grows over months."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self.tool_calls = Counter(
            f"{PREFIX}_tool_calls",
            "MCP tool calls, by tool and outcome (ok, error: the tool refused or failed).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.tool_seconds = Histogram(
            f"{PREFIX}_tool_call_duration_seconds",
            "How long MCP tool calls took, by tool and outcome (waits included).",
            ["tool", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.waiting_pulls = Gauge(
            f"{PREFIX}_pull_updates_waiting",
            "pull_updates calls waiting for an update right now.",
            registry=self.registry,
        )
        self.telegram_errors = Counter(
            f"{PREFIX}_telegram_api_errors",
            "Errors from the Telegram Bot API, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.oauth_logins = Counter(
            f"{PREFIX}_oauth_logins",
            "Consents the owner approved with the right passphrase (a client connected).",
            registry=self.registry,
        )
        self.oauth_refusals = Counter(
            f"{PREFIX}_oauth_refusals",
            "Consents refused, by reason (wrong_passphrase, locked_out, declined).",
            ["reason"],
            registry=self.registry,
        )

    @contextmanager
    def tool_call(self, tool: str) -> Iterator[list[str]]:
        """Count and time one tool call; the block sets ``outcome[0]`` to ``"error"`` if the
        call failed (an exception counts as an error by itself)."""
        outcome = ["ok"]
        start = time.perf_counter()
        try:
            yield outcome
        except BaseException:
            outcome[0] = "error"
            raise
        finally:
            self.tool_calls.labels(tool, outcome[0]).inc()
            self.tool_seconds.labels(tool, outcome[0]).observe(time.perf_counter() - start)

    def telegram_error(self, exc: BaseException) -> None:
        kind = next((k for cls, k in telegram_error_kinds() if isinstance(exc, cls)), "other")
        self.telegram_errors.labels(kind).inc()


@functools.cache
def telegram_error_kinds() -> tuple[tuple[type[Exception], str], ...]:
    """Kinds of Bot API error, most specific first (TimedOut is a NetworkError, and so on).

    Imported here, not at the top: only a process with a Telegram target loads the library.
    """
    from telegram.error import (
        BadRequest,
        ChatMigrated,
        Conflict,
        Forbidden,
        InvalidToken,
        NetworkError,
        RetryAfter,
        TimedOut,
    )

    return (
        (RetryAfter, "retry_after"),
        (Conflict, "conflict"),
        (InvalidToken, "invalid_token"),
        (Forbidden, "forbidden"),
        (ChatMigrated, "chat_migrated"),
        (BadRequest, "bad_request"),
        (TimedOut, "timed_out"),
        (NetworkError, "network"),
    )


METRICS: Final = Metrics()


class QueueCollector(Collector):
    """The gauges read from the database for one scrape."""

    def __init__(self, snapshot: QueueMetrics) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot
        tasks = GaugeMetricFamily(
            f"{PREFIX}_tasks",
            "Tasks in the database, by target and status.",
            labels=["target", "status"],
        )
        oldest = GaugeMetricFamily(
            f"{PREFIX}_oldest_pending_task_age_seconds",
            "Age of the oldest pending task of each target (0 when none is pending).",
            labels=["target"],
        )
        stalled = GaugeMetricFamily(
            f"{PREFIX}_stalled_tasks",
            "Tasks with the agent but no agent activity for STALL_SECONDS.",
            labels=["target"],
        )
        seen = GaugeMetricFamily(
            f"{PREFIX}_agent_last_seen_timestamp_seconds",
            "When each target's agent was last seen (Unix time; absent if never).",
            labels=["target"],
        )
        reachable = GaugeMetricFamily(
            f"{PREFIX}_target_reachable",
            "1 if the target's agent was seen within STALL_SECONDS, else 0.",
            labels=["target"],
        )
        due = GaugeMetricFamily(
            f"{PREFIX}_deliveries_due",
            "Deliveries to the agent's chat waiting to be posted now, by target.",
            labels=["target"],
        )
        failed = GaugeMetricFamily(
            f"{PREFIX}_deliveries_failed",
            "Deliveries Telegram refused for good (the task was marked error), by target.",
            labels=["target"],
        )
        for summary in snap.targets:
            name = summary.policy.name
            for status in TaskStatus:
                tasks.add_metric([name, status.value], summary.by_status.get(status, 0))
            oldest.add_metric([name], snap.oldest_pending_seconds.get(name, 0.0))
            stalled.add_metric([name], summary.stalled)
            if summary.last_seen_at is not None:
                seen.add_metric([name], summary.last_seen_at.timestamp())
            reachable.add_metric([name], 1.0 if summary.reachable else 0.0)
            due.add_metric([name], snap.deliveries_due.get(name, 0))
            failed.add_metric([name], snap.deliveries_failed.get(name, 0))
        yield from (tasks, oldest, stalled, seen, reachable, due, failed)


class SqliteFilesCollector(Collector):
    """The size of a SQLite database's file and of its write-ahead log, read at each scrape: a
    queue left running for months is watched for the disk it takes (retention keeps the file
    bounded; the writer keeps the log near ``WAL_LIMIT_BYTES``)."""

    def __init__(self, database: Path) -> None:
        self._files = (("database", database), ("wal", database.with_name(database.name + "-wal")))

    def collect(self) -> Iterator[Metric]:
        size = GaugeMetricFamily(
            f"{PREFIX}_database_size_bytes",
            "Bytes on disk of the SQLite database file and of its write-ahead log (0: none).",
            labels=["file"],
        )
        for name, path in self._files:
            try:
                size.add_metric([name], path.stat().st_size)
            except OSError:
                size.add_metric([name], 0)
        yield size


class _Scrape(Collector):
    """This process's counters and one scrape's database gauges, as one exposition."""

    def __init__(self, *parts: Collector | CollectorRegistry) -> None:
        self._parts = parts

    def collect(self) -> Iterator[Metric]:
        for part in self._parts:
            yield from part.collect()


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host: str) -> str:
    """The name in a Host header, without its port."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def metrics_endpoint(
    queue: QueueService, token: str | None, database: Path | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """GET /metrics: with METRICS_TOKEN, for that bearer token only; without it, only for a
    client on this machine that came straight (loopback address, loopback Host, no proxy
    headers), so an HTTP reverse proxy or tunnel in front of the bridge never publishes it (a
    TCP-level tunnel cannot be told from a local client: METRICS_TOKEN is for that).
    ``database``: the SQLite file whose size is reported (None on PostgreSQL)."""
    expected = f"Bearer {token}".encode() if token else None
    files = [SqliteFilesCollector(database)] if database is not None else []

    async def metrics(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return PlainTextResponse(
                    "metrics need the METRICS_TOKEN bearer token\n",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        else:
            host = _host_name(request.headers.get("host", ""))
            direct = not any(h in request.headers for h in FORWARDING_HEADERS)
            client = request.client.host if request.client else None
            if not (_loopback(client) and direct and host in LOOPBACK_HOSTS):
                return PlainTextResponse(
                    f"metrics are served to this machine only; set {config.ENV_PREFIX}"
                    "METRICS_TOKEN to scrape them from elsewhere\n",
                    status_code=403,
                )
        try:
            snapshot = await queue.metrics_snapshot()
        except Exception:
            logger.exception("/metrics: could not read the queue from the database")
            return PlainTextResponse("the database could not be read; see the log\n", 503)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Scrape(METRICS.registry, QueueCollector(snapshot), *files))
        return Response(generate_latest(registry), media_type=TEXT_FORMAT)

    return metrics
