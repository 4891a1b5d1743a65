"""``/metrics`` on a real server, read with prometheus_client's own text parser."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import sqlite_file
from nexus_bridge.metrics import METRICS
from tests.conftest import mcp_client, running_server, wait_for
from tests.e2e.test_http import call, call_error
from tests.e2e.test_oauth import (
    authorize,
    oauth_bridge,
    pkce,
    register,
    start_authorization,
    submit_consent,
)
from tests.e2e.test_telegram import telegram_settings, wait_status
from tests.fake_telegram import Fault, running_fake_telegram

METRICS_TOKEN = "m" * 32


def base(url: str) -> str:
    return url.removesuffix("/mcp")


async def scrape(url: str, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by name and sorted labels; the parser must accept it."""
    async with httpx2.AsyncClient() as http:
        response = await http.get(base(url) + "/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_report_tasks_tool_calls_and_waiting_pulls(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings()) as (url, _), mcp_client(url) as client:
        before = await scrape(url)
        sent = await call(client, "send_message", {"message": "check the backups"})
        await call_error(client, "cancel_message", {"id": "0" * 36})
        samples = await scrape(url)

        assert value(samples, "nexus_bridge_tasks", target="homelab", status="pending") == 1
        assert value(samples, "nexus_bridge_tasks", target="homelab", status="complete") == 0
        assert value(samples, "nexus_bridge_oldest_pending_task_age_seconds", target="homelab") >= 0
        assert ("nexus_bridge_stalled_tasks", (("target", "homelab"),)) in samples
        assert ("nexus_bridge_deliveries_due", (("target", "homelab"),)) in samples
        assert ("nexus_bridge_deliveries_failed", (("target", "homelab"),)) in samples
        assert value(samples, "nexus_bridge_target_reachable", target="homelab") == 0
        ok = {"tool": "send_message", "outcome": "ok"}
        assert value(samples, "nexus_bridge_tool_calls_total", **ok) == 1 + value(
            before, "nexus_bridge_tool_calls_total", **ok
        )
        failed = {"tool": "cancel_message", "outcome": "error"}
        assert value(samples, "nexus_bridge_tool_calls_total", **failed) == 1 + value(
            before, "nexus_bridge_tool_calls_total", **failed
        )
        assert value(samples, "nexus_bridge_tool_call_duration_seconds_count", **ok) >= 1

        # A pull that waits is counted while it waits, and no longer once the send wakes it.
        await call(client, "pull_updates", {})  # move the cursor past the first task
        waiting = asyncio.create_task(call(client, "pull_updates", {"wait_seconds": 30}))

        async def one_waiting() -> bool:
            return value(await scrape(url), "nexus_bridge_pull_updates_waiting") >= 1

        await wait_for(one_waiting, what="a waiting pull_updates in /metrics")
        await call(client, "send_message", {"message": "wake the pull"})
        assert (await waiting)["updates"]
        assert sent["queued"]

        # The agent is seen once it takes its task over the agent API.
        async with mcp_client(base(url) + "/agent/mcp", _agent_token(make_settings)) as agent:
            await call(agent, "next_task", {})
        samples = await scrape(url)
        assert value(samples, "nexus_bridge_target_reachable", target="homelab") == 1
        assert (
            value(samples, "nexus_bridge_agent_last_seen_timestamp_seconds", target="homelab") > 0
        )
        assert value(samples, "nexus_bridge_tasks", target="homelab", status="acknowledged") == 1


def _this_process() -> tuple[int, int, int]:
    """This process's resident bytes and open files, and the boot time (Unix), from /proc."""
    resident = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    stat = Path("/proc/stat").read_text().splitlines()
    boot = next(int(line.split()[1]) for line in stat if line.startswith("btime "))
    return resident, len(os.listdir("/proc/self/fd")), boot


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="process_* metrics need /proc")
async def test_metrics_show_the_process_memory_open_files_start_and_collector(
    make_settings: Callable[..., Settings],
) -> None:
    """An owner leaving the bridge up for months graphs its memory and open files."""
    async with running_server(make_settings()) as (url, _):
        samples = await scrape(url)
        resident, open_files, boot = _this_process()
    assert 0.5 * resident < value(samples, "process_resident_memory_bytes") < 2 * resident
    assert abs(value(samples, "process_open_fds") - open_files) <= 20
    assert value(samples, "process_max_fds") > 0
    assert boot <= value(samples, "process_start_time_seconds") <= time.time()
    assert value(samples, "process_cpu_seconds_total") > 0
    for generation in ("0", "1", "2"):
        assert ("python_gc_collections_total", (("generation", generation),)) in samples


async def test_metrics_show_the_size_of_the_database_file_and_its_write_ahead_log(
    make_settings: Callable[..., Settings],
) -> None:
    """An owner leaving the bridge up for months graphs the disk its queue takes."""
    settings = make_settings()
    database = sqlite_file(settings.database_url)
    assert database is not None
    log = database.with_name(database.name + "-wal")
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        await call(client, "send_message", {"message": "x" * 20_000})
        samples = await scrape(url)
        on_disk = database.stat().st_size, log.stat().st_size
    assert on_disk[1] > 20_000  # the send is in the log, not yet checkpointed
    size = {
        f: value(samples, "nexus_bridge_database_size_bytes", file=f) for f in ("database", "wal")
    }
    assert (size["database"], size["wal"]) == on_disk


async def test_through_a_symbolic_link_metrics_show_the_sizes_of_the_files_it_points_to(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    real = sqlite_file(make_settings().database_url)
    assert real is not None
    linked = tmp_path / "elsewhere" / "bridge.db"
    linked.parent.mkdir()
    linked.symlink_to(real)
    settings = make_settings(database_url=f"sqlite+aiosqlite:///{linked}")
    async with running_server(settings) as (url, _), mcp_client(url) as client:
        await call(client, "send_message", {"message": "x" * 20_000})
        samples = await scrape(url)
        on_disk = real.stat().st_size, real.with_name(real.name + "-wal").stat().st_size
    size = {
        f: value(samples, "nexus_bridge_database_size_bytes", file=f) for f in ("database", "wal")
    }
    assert (size["database"], size["wal"]) == on_disk
    assert on_disk[1] > 20_000


async def test_on_postgresql_metrics_report_no_file_sizes(
    migrated_postgres_url: str, make_settings: Callable[..., Settings]
) -> None:
    async with running_server(make_settings(database_url=migrated_postgres_url)) as (url, _):
        samples = await scrape(url)
    assert value(samples, "nexus_bridge_tasks", target="homelab", status="pending") == 0
    assert not [name for name, _labels in samples if name == "nexus_bridge_database_size_bytes"]


def _agent_token(make_settings: Callable[..., Settings]) -> str:
    return make_settings().agent_token_file.read_text().strip()


async def test_metrics_count_bot_api_errors_by_kind_and_failed_deliveries(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake)
        async with running_server(settings) as (url, _), mcp_client(url) as client:
            before = await scrape(url)
            fake.fail_next("sendMessage", Fault.forbidden("Forbidden: bot was kicked"))
            task_id = (await call(client, "send_message", {"message": "never arrives"}))["id"]
            await wait_status(client, task_id, "error")
            samples = await scrape(url)
    forbidden = {"kind": "forbidden"}
    assert value(samples, "nexus_bridge_telegram_api_errors_total", **forbidden) == 1 + value(
        before, "nexus_bridge_telegram_api_errors_total", **forbidden
    )
    assert value(samples, "nexus_bridge_deliveries_failed", target="homelab") == 1
    assert value(samples, "nexus_bridge_tasks", target="homelab", status="error") == 1


async def test_metrics_need_the_token_when_one_is_set(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_server(make_settings(metrics_token=METRICS_TOKEN)) as (url, _):
        async with httpx2.AsyncClient() as http:
            refused = await http.get(base(url) + "/metrics")
            wrong = await http.get(
                base(url) + "/metrics", headers={"Authorization": "Bearer " + "x" * 32}
            )
        assert refused.status_code == 401
        assert wrong.status_code == 401
        samples = await scrape(url, Authorization=f"Bearer {METRICS_TOKEN}")
        assert ("nexus_bridge_tasks", (("status", "pending"), ("target", "homelab"))) in samples


async def test_without_a_token_metrics_are_for_this_machine_only_never_through_a_proxy(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(allowed_hosts=["bridge.example.net"])
    async with running_server(settings) as (url, _):
        await scrape(url)
        async with httpx2.AsyncClient() as http:
            proxied = await http.get(
                base(url) + "/metrics", headers={"X-Forwarded-For": "203.0.113.9"}
            )
            public_name = await http.get(
                base(url) + "/metrics", headers={"Host": "bridge.example.net"}
            )
        assert proxied.status_code == 403
        assert "METRICS_TOKEN" in proxied.text
        assert public_name.status_code == 403


async def test_metrics_count_oauth_logins_and_refusals(
    make_settings: Callable[..., Settings],
) -> None:
    async with oauth_bridge(make_settings) as b:
        url = b.base + "/mcp"
        before = await scrape(url)
        client = await register(b)
        _verifier, challenge = pkce()
        wrong = await submit_consent(
            b, await start_authorization(b, client["client_id"], challenge), "not it at all"
        )
        assert wrong.status_code == 401
        declined = await submit_consent(
            b,
            await start_authorization(b, client["client_id"], challenge),
            "",
            action="deny",
        )
        assert declined.status_code == 303
        await authorize(b, client["client_id"], challenge)
        samples = await scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    assert delta("nexus_bridge_oauth_logins_total") == 1
    assert delta("nexus_bridge_oauth_refusals_total", reason="wrong_passphrase") == 1
    assert delta("nexus_bridge_oauth_refusals_total", reason="declined") == 1


async def test_a_rejected_bot_token_is_counted_once_as_invalid_token(
    make_settings: Callable[..., Settings],
) -> None:
    name, labels = "nexus_bridge_telegram_api_errors_total", {"kind": "invalid_token"}
    before = METRICS.registry.get_sample_value(name, labels) or 0.0  # this process's counter
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, telegram_bot_token="123:" + "w" * 35)
        async with running_server(settings) as (url, server):

            async def rejected() -> bool:
                return (await server.bridge.transport_report()).state == "error"

            await wait_for(rejected, what="the transport to give up on the token")
            after = value(await scrape(url), name, **labels)
    assert after - before == 1
