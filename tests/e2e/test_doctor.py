"""``nexus-bridge doctor``: each misconfiguration found and explained, against the fake Bot API
(the real python-telegram-bot client), real SQLite and PostgreSQL databases and a real server."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from nexus_bridge.config import Settings
from nexus_bridge.db import migrate
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.store import Store
from nexus_bridge.doctor import Finding, Status, diagnose
from nexus_bridge.queue import QueueService
from tests.conftest import free_port, running_server, subprocess_env, wait_for
from tests.fake_telegram import FakeTelegram, running_fake_telegram

EXE = str(Path(sys.executable).with_name("nexus-bridge"))
CHAT = -1009876
AGENT = 4242
BOT = 1000  # the fake's own bot id
TARGET = "target homelab"


def telegram_settings(
    make_settings: Callable[..., Settings], fake: FakeTelegram, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "telegram_bot_token": fake.token,
        "telegram_chat_id": CHAT,
        "telegram_agent_ids": [AGENT],
        "telegram_base_url": fake.base_url,
        "telegram_poll_timeout": 1,
        "telegram_min_send_interval": 0,
        "telegram_request_timeout": 2,
        "bridge_url": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }
    values.update(overrides)
    return make_settings(**values)


async def checks(settings: Settings) -> dict[str, Finding]:
    report = await diagnose(settings)
    return {f.check: f for f in report.findings}


def a_good_chat(fake: FakeTelegram) -> None:
    fake.add_member(CHAT, BOT, "administrator")
    fake.add_member(CHAT, AGENT, "administrator", is_bot=True, username="agent_bot")


async def test_a_working_telegram_set_up_passes_every_check(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        a_good_chat(fake)
        settings = telegram_settings(make_settings, fake)
        async with running_server(settings) as (url, server):
            fake.inject_message(CHAT, AGENT, "hello from the agent")

            async def seen() -> bool:
                return "homelab" in await server.bridge.queue.presence()

            await wait_for(seen, what="the agent's message to reach the bridge")
            settings = settings.model_copy(update={"bridge_url": url.removesuffix("/mcp")})
            report = await diagnose(settings)
    found = {f.check: f for f in report.findings}
    assert not report.failed, report.findings
    not_ok = [f.check for f in report.findings if f.status is not Status.OK]
    assert set(not_ok) <= {"database.disk"}, report.findings  # a nearly full test disk may warn
    assert found["bridge"].detail.startswith("ready at http://127.0.0.1:")
    assert "Telegram transport polling" in found["bridge"].detail
    assert found[f"{TARGET}.token"].detail == "the token is @bridge_bot's (id 1000)"
    assert found[f"{TARGET}.webhook"].detail == "no webhook: polling works"
    assert found[f"{TARGET}.bridge-bot"].detail.endswith("sees every message (an admin)")
    assert found[f"{TARGET}.agent-id {AGENT}"].status is Status.OK
    assert found[f"{TARGET}.agent"].detail.startswith("agent last seen ")
    assert found["database.wal"].detail == "journal mode WAL"


async def test_a_rejected_token_is_a_failure_saying_where_to_get_one(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        settings = telegram_settings(make_settings, fake, telegram_bot_token="1:WRONG")
        found = await checks(settings)
    token = found[f"{TARGET}.token"]
    assert token.status is Status.FAIL
    assert token.detail == "Telegram rejects the bot token (getMe)"
    assert "@BotFather" in (token.fix or "")
    assert f"{TARGET}.chat" not in found  # nothing more can be asked with that token


async def test_a_chat_that_does_not_exist_is_a_failure(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        found = await checks(telegram_settings(make_settings, fake))
    chat = found[f"{TARGET}.chat"]
    assert chat.status is Status.FAIL
    assert chat.detail.startswith(f"chat {CHAT}: Chat not found")
    assert "TELEGRAM_CHAT_ID" in (chat.fix or "")


@pytest.mark.parametrize(
    ("status", "reads_all", "expected", "words"),
    [
        ("left", False, Status.FAIL, "the bridge bot is not in the chat (left)"),
        ("kicked", True, Status.FAIL, "the bridge bot is not in the chat (kicked)"),
        ("member", False, Status.FAIL, "privacy mode is on and it is not an admin"),
        ("member", True, Status.OK, "sees every message (privacy off)"),
    ],
)
async def test_the_bridge_bot_must_be_in_the_chat_and_see_every_message(
    make_settings: Callable[..., Settings],
    status: str,
    reads_all: bool,
    expected: Status,
    words: str,
) -> None:
    async with running_fake_telegram() as fake:
        fake.bot_user["can_read_all_group_messages"] = reads_all
        fake.add_member(CHAT, AGENT, "administrator", is_bot=True, username="agent_bot")
        fake.add_member(CHAT, BOT, status)
        found = await checks(telegram_settings(make_settings, fake))
    bridge_bot = found[f"{TARGET}.bridge-bot"]
    assert bridge_bot.status is expected, bridge_bot
    assert words in bridge_bot.detail


async def test_agent_ids_must_be_members_and_an_agent_bot_needs_to_see_the_tasks(
    make_settings: Callable[..., Settings],
) -> None:
    person, absent = 777, 555
    async with running_fake_telegram() as fake:
        fake.add_member(CHAT, BOT, "administrator")
        fake.add_member(CHAT, AGENT, "member", is_bot=True, username="agent_bot")
        fake.add_member(CHAT, person, "member")
        settings = telegram_settings(
            make_settings, fake, telegram_agent_ids=[AGENT, person, absent]
        )
        found = await checks(settings)
    bot = found[f"{TARGET}.agent-id {AGENT}"]
    assert bot.status is Status.WARN
    assert "@agent_bot is a bot and not an admin" in bot.detail
    assert "Bot-to-Bot" in (bot.fix or "")
    assert found[f"{TARGET}.agent-id {person}"].status is Status.OK
    missing = found[f"{TARGET}.agent-id {absent}"]
    assert missing.status is Status.FAIL
    assert missing.detail == f"not a member of chat {CHAT} (left)"


async def test_a_webhook_someone_else_set_conflicts_with_polling(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_fake_telegram() as fake:
        a_good_chat(fake)
        fake.webhook_url = "https://other.example/hook"
        found = await checks(telegram_settings(make_settings, fake))
    webhook = found[f"{TARGET}.webhook"]
    assert webhook.status is Status.FAIL
    assert "a webhook is set (https://other.example/hook) while the bridge polls" in webhook.detail


async def test_the_bridge_not_answering_at_its_url_is_a_failure(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(bridge_url=f"http://127.0.0.1:{free_port()}")
    found = await checks(settings)
    assert found["bridge"].status is Status.FAIL
    assert found["bridge"].detail.startswith("nothing answers at http://127.0.0.1:")
    assert "nexus-bridge serve" in (found["bridge"].fix or "")


async def test_a_public_name_without_authentication_is_a_failure(
    make_settings: Callable[..., Settings],
) -> None:
    """What serve refuses, the doctor reports, before anyone restarts the service."""
    found = await checks(make_settings(allowed_hosts=["mcp.example.net"]))
    assert found["configuration.exposure"].status is Status.FAIL
    assert "answer to mcp.example.net" in found["configuration.exposure"].detail
    assert "configuration.exposure" not in await checks(
        make_settings(allowed_hosts=["mcp.example.net"], auth_tokens=["t" * 32])
    )


async def test_an_agent_api_target_needs_a_token_and_says_when_its_agent_was_seen(
    make_settings: Callable[..., Settings], migrated_sqlite_url: str, tmp_path: Path
) -> None:
    settings = make_settings()
    found = await checks(settings)
    assert found[f"{TARGET}.token"].status is Status.FAIL
    assert found[f"{TARGET}.agent"].status is Status.WARN
    assert found[f"{TARGET}.agent"].detail == "the agent has never been seen"

    async with running_server(settings):
        pass  # the first start creates the token file
    store = Store(create_engine(migrated_sqlite_url))
    try:
        await QueueService(store).touch_presence("homelab")
    finally:
        await store.dispose()
    found = await checks(settings)
    assert found[f"{TARGET}.token"].status is Status.OK
    assert found[f"{TARGET}.token"].detail == f"an agent token exists ({tmp_path / 'agent-token'})"
    assert found[f"{TARGET}.agent"].status is Status.OK
    assert found[f"{TARGET}.agent"].detail.startswith("agent last seen ")


async def test_a_database_others_can_read_is_a_failure(
    make_settings: Callable[..., Settings], migrated_sqlite_url: str
) -> None:
    database = Path(str(make_url(migrated_sqlite_url).database))
    database.chmod(0o644)  # noqa: ASYNC240 - set-up, before the loop has work
    found = await checks(make_settings())
    permissions = found["database.permissions"]
    assert permissions.status is Status.FAIL
    assert f"{database} (mode 644)" in permissions.detail
    assert permissions.fix == f"chmod 600 {database}*"
    assert found["database.disk"].status in (Status.OK, Status.WARN)


async def test_an_unmigrated_or_missing_database_is_a_failure_and_nothing_is_created(
    make_settings: Callable[..., Settings], tmp_path: Path, sqlite_url: str
) -> None:
    missing = tmp_path / "nowhere" / "bridge.db"
    found = await checks(make_settings(database_url=f"sqlite+aiosqlite:///{missing}"))
    assert found["database"].status is Status.FAIL
    assert found["database"].detail == f"there is no database at {missing}"
    assert not missing.exists()

    Path(str(make_url(sqlite_url).database)).write_bytes(b"")  # noqa: ASYNC240 - set-up
    found = await checks(make_settings(database_url=sqlite_url))
    assert found["database.schema"].status is Status.FAIL
    assert found["database.schema"].fix == "run: nexus-bridge db upgrade"


@pytest.mark.postgres
async def test_a_migrated_postgresql_database_passes_its_checks(
    make_settings: Callable[..., Settings], postgres_url: str
) -> None:
    from nexus_bridge.db import migrate

    found = await checks(make_settings(database_url=postgres_url))
    assert found["database.schema"].status is Status.FAIL
    await asyncio.to_thread(migrate.upgrade, postgres_url)
    found = await checks(make_settings(database_url=postgres_url))
    assert found["database.schema"].status is Status.OK
    assert found["database.files"].status is Status.SKIP


async def test_with_a_public_url_the_metadata_is_served_and_the_passphrase_must_be_set(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    settings = make_settings(public_url=f"http://127.0.0.1:{port}/mcp")
    async with running_server(settings, port=port) as (_url, server):
        found = await checks(settings)
        assert found["public-url.metadata"].status is Status.OK, found["public-url.metadata"]
        passphrase = found["public-url.passphrase"]
        assert passphrase.status is Status.FAIL
        assert passphrase.fix == "run: nexus-bridge auth set-passphrase"
        await server.bridge.oauth.set_passphrase("a long enough passphrase")  # type: ignore[union-attr]
        found = await checks(settings)
        assert found["public-url.passphrase"].status is Status.OK
    elsewhere = settings.model_copy(update={"public_url": f"http://127.0.0.1:{free_port()}/mcp"})
    found = await checks(elsewhere)
    assert found["public-url.metadata"].status is Status.FAIL
    assert "cannot read the OAuth metadata" in found["public-url.metadata"].detail


async def test_the_command_prints_a_line_per_check_and_exits_1_on_a_failure(
    migrated_sqlite_url: str,
) -> None:
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_URL=f"http://127.0.0.1:{free_port()}")
    process = await asyncio.create_subprocess_exec(
        EXE,
        "doctor",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, err
    data = json.loads(out)
    assert data["ok"] is False
    by_check = {c["check"]: c for c in data["checks"]}
    assert by_check["bridge"]["status"] == "fail"
    assert by_check["database.schema"]["status"] == "ok"
    assert set(by_check["bridge"]) == {"check", "status", "detail", "fix"}

    process = await asyncio.create_subprocess_exec(
        EXE, "doctor", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, err
    lines = out.decode().splitlines()
    assert any(line.startswith("FAIL  bridge: nothing answers at ") for line in lines)
    assert any(line.startswith("      -> start it (nexus-bridge serve") for line in lines)
    assert "ok    database.schema: at the current schema" in "\n".join(lines)
    assert lines[-1].endswith("problem(s) found")


async def test_a_configuration_that_does_not_load_is_the_first_failed_check(
    migrated_sqlite_url: str,
) -> None:
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_STALL_SECONDS="soon")
    process = await asyncio.create_subprocess_exec(
        EXE,
        "doctor",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, err
    [check] = json.loads(out)["checks"]
    assert check["check"] == "configuration"
    assert check["status"] == "fail"
    assert "NEXUS_BRIDGE_STALL_SECONDS" in check["detail"]


async def test_a_database_server_that_refuses_connections_is_a_failure(
    make_settings: Callable[..., Settings],
) -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"
    found = await checks(make_settings(database_url=url))
    assert found["database"].status is Status.FAIL
    assert found["database"].detail.startswith("cannot connect to the database: ")
    assert found["database"].fix == "check NEXUS_BRIDGE_DATABASE_URL"
    assert found[f"{TARGET}.agent"].status is Status.SKIP


async def test_a_configuration_file_others_can_read_is_a_warning(
    migrated_sqlite_url: str, tmp_path: Path
) -> None:
    env_file = tmp_path / "env"
    env_file.write_text(f"NEXUS_BRIDGE_DATABASE_URL={migrated_sqlite_url}\n")
    env_file.chmod(0o644)
    env = subprocess_env(migrated_sqlite_url, NEXUS_BRIDGE_ENV_FILE=str(env_file))
    process = await asyncio.create_subprocess_exec(
        EXE,
        "doctor",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _err = await asyncio.wait_for(process.communicate(), timeout=60)
    by_check = {c["check"]: c for c in json.loads(out)["checks"]}
    assert by_check["configuration"]["detail"] == f"loaded from {env_file} and the environment"
    assert by_check["configuration.permissions"]["status"] == "warn"
    assert by_check["configuration.permissions"]["fix"] == f"chmod 600 {env_file}"


async def test_a_credentials_file_others_can_read_is_a_warning(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """serve warns of it in its log; the doctor says it too, with the command that fixes it."""
    credentials = tmp_path / "telegram.env"
    credentials.write_text("chat_id=-100123\n")  # no token: the transport stays off
    credentials.chmod(0o644)
    found = await checks(make_settings(telegram_credentials_file=credentials))
    assert found["configuration.permissions"].status is Status.WARN
    assert found["configuration.permissions"].fix == f"chmod 600 {credentials}"
    credentials.chmod(0o600)
    assert "configuration.permissions" not in await checks(
        make_settings(telegram_credentials_file=credentials)
    )


async def test_a_bridge_serving_other_targets_than_this_configuration_is_a_failure(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The bridge answers ready, but it reads another configuration than this command (another
    targets file, another database): what this command queues, it would never deliver."""
    from tests.e2e.test_agent_api import two_targets

    async with running_server(make_settings(config_file=two_targets(tmp_path))) as (url, _):
        base = url.removesuffix("/mcp")
        found = await checks(make_settings(bridge_url=base))  # the default target: homelab
        assert found["bridge"].status is Status.OK
        assert found["bridge.targets"].status is Status.FAIL
        assert "has no target 'homelab' (it has nexus:felt, nexus:sentry)" in (
            found["bridge.targets"].detail
        )
        assert "nexus-bridge config" in (found["bridge.targets"].fix or "")
        same = await checks(make_settings(bridge_url=base, config_file=two_targets(tmp_path)))
        assert same["bridge.targets"].status is Status.OK
        assert same["bridge.targets"].detail.endswith(", from the same database")


async def test_a_bridge_reading_another_database_than_this_command_is_a_failure(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Same targets, but the command's DATABASE_URL is not the server's (another environment
    file, another user's default path): the tasks it queues, no server reads."""
    other = f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"
    await asyncio.to_thread(migrate.upgrade, other)  # a database of its own: its own id
    async with running_server(make_settings()) as (url, _):
        base = url.removesuffix("/mcp")
        found = await checks(make_settings(bridge_url=base, database_url=other))
    assert found["bridge.targets"].status is Status.FAIL
    assert found["bridge.targets"].detail.startswith(
        f"the bridge running at {base} reads another database than this command ({other})"
    )
    assert "nexus-bridge config" in (found["bridge.targets"].fix or "")
