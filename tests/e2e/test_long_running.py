"""Left running for months: a served request leaves nothing behind in the process.

Counted: the objects the garbage collector tracks (containers, instances, coroutines: what a
leak holds on to). A container kept per tool call shows as about 1,300 here; the growth of a
healthy run is under 200."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

from mcp import Client

from nexus_bridge.config import Settings
from tests.conftest import mcp_client, running_server
from tests.e2e.test_agent_api import FELT_TOKEN, agent_client, two_targets
from tests.e2e.test_http import call

WARM_UP = 40  # caches (compiled statements, schemas, pools) fill first
ROUNDS = 150
# A leak of even 10 objects a round would show as 1,500; what is left is the collector's noise.
MAX_GROWTH = 1_000


async def test_a_round_of_every_kind_of_call_leaves_no_objects_behind(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(config_file=two_targets(tmp_path))
    async with (
        running_server(settings) as (url, _),
        mcp_client(url) as client,
        agent_client(url.removesuffix("/mcp"), FELT_TOKEN) as agent,
    ):
        for n in range(WARM_UP):
            await _round(client, agent, n)
        gc.collect()
        before = len(gc.get_objects())
        for n in range(WARM_UP, WARM_UP + ROUNDS):
            await _round(client, agent, n)
        gc.collect()
        grown = len(gc.get_objects()) - before
    assert grown < MAX_GROWTH, f"{grown} more live objects after {ROUNDS} rounds"


async def _round(client: Client, agent: Client, n: int) -> None:
    """A task's whole life: sent, read, claimed, worked and finished by the agent, pulled."""
    sent = await call(client, "send_message", {"message": f"round {n}", "target": "nexus:felt"})
    task = (await call(agent, "next_task", {}))["task"]
    assert task["id"] == sent["id"]
    await call(agent, "start_task", {"id": task["id"]})
    await call(agent, "post_update", {"id": task["id"], "text": "halfway"})
    await call(agent, "complete_task", {"id": task["id"], "summary": "done"})
    await call(client, "get_message", {"id": sent["id"]})
    await call(client, "pull_updates", {"message_id": sent["id"]})
    await call(client, "queue_status", {})
    await call(client, "list_messages", {"limit": 5})
