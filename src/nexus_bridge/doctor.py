"""``nexus-bridge doctor``: check the whole set-up, line by line, and say what to do.

Each check is a :class:`Finding`: ``ok``, ``warn`` (works, but look at it), ``fail`` (something
will not work) or ``skip`` (does not apply, or could not be checked because an earlier check
failed). The checks only read: nothing is sent to a chat, nothing is written to the database.
"""

from __future__ import annotations

import asyncio
import enum
import shutil
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from nexus_bridge import config
from nexus_bridge.config import Settings, TelegramSettings
from nexus_bridge.constants import AUTH_SERVER_METADATA_PATH, READYZ_PATH
from nexus_bridge.db.engine import sqlite_file
from nexus_bridge.domain import Transport, utc_now
from nexus_bridge.errors import ConfigError, DatabaseNotReady, NexusBridgeError
from nexus_bridge.runtime import Runtime, open_runtime, read_or_create_token
from nexus_bridge.targets import Target

DOCTOR_HTTP_TIMEOUT_SECONDS: Final = 10.0
MIN_FREE_DISK_BYTES: Final = 100 * 1024 * 1024  # below this a write may fail: fail
LOW_FREE_DISK_BYTES: Final = 1024 * 1024 * 1024  # below this, warn
MEMBER_STATUSES: Final = frozenset({"creator", "administrator", "member", "restricted"})
ADMIN_STATUSES: Final = frozenset({"creator", "administrator"})
PROTECTED_RESOURCE_PATH: Final = "/.well-known/oauth-protected-resource"


class Status(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of the report: what was checked, how it went, and what to do about it."""

    check: str
    status: Status
    detail: str
    fix: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status.value,
            "detail": self.detail,
            "fix": self.fix,
        }


class Report:
    """The findings so far; checks add to it."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []

    def add(self, check: str, status: Status, detail: str, fix: str | None = None) -> None:
        self.findings.append(Finding(check, status, detail, fix))

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.findings)


async def diagnose(settings: Settings) -> Report:
    """Run every check for ``settings``; never raises for what it finds."""
    report = Report()
    files = [str(p.absolute()) for p in config.env_files() if p.is_file()]
    report.add(
        "configuration",
        Status.OK,
        "loaded from "
        + (", ".join(files) + " and the environment" if files else "the environment"),
    )
    _check_configuration_files(report, [*files, *_token_files(settings)])
    try:
        settings.check_serve_security()
    except ConfigError as exc:
        report.add(
            "configuration.exposure",
            Status.FAIL,
            str(exc),
            "set one of the settings it names; serve refuses to start until then",
        )
    path = sqlite_file(settings.database_url)
    missing = path is not None and not path.exists()
    try:
        runtime = open_runtime(settings)
    except ConfigError as exc:
        report.add("targets", Status.FAIL, str(exc), "fix the file or setting it names")
        return report
    report.add(
        "targets",
        Status.OK,
        ", ".join(f"{t.name} ({t.transport.value})" for t in runtime.targets),
    )
    try:
        if missing:
            report.add(
                "database",
                Status.FAIL,
                f"there is no database at {path}",
                "run: nexus-bridge db upgrade (or fix NEXUS_BRIDGE_DATABASE_URL)",
            )
        database_ok = not missing and await _check_database(report, runtime)
        if await _check_bridge(report, settings):
            try:
                database_id = await runtime.database_id() if database_ok else None
            except NexusBridgeError:  # busy or gone since it was checked: nothing to compare
                database_id = None
            await asyncio.to_thread(_check_bridge_targets, report, runtime, database_id)
        for target in runtime.targets:
            if target.transport is Transport.TELEGRAM:
                await _check_telegram_target(report, runtime, target, database_ok)
            else:
                await _check_agent_target(report, runtime, target, database_ok)
        if settings.public_url is not None:
            await _check_public_url(report, runtime, settings.public_url, database_ok)
    finally:
        await runtime.close()
        if missing and path is not None and path.exists() and path.stat().st_size == 0:
            path.unlink()  # opening the store made it; a check leaves nothing behind
    return report


def _token_files(settings: Settings) -> list[str]:
    """The other files that may hold tokens: the Telegram credentials and the targets file."""
    found = []
    for name in (settings.telegram_credentials_file, settings.config_file):
        path = Path(name).expanduser() if name is not None else None
        if path is not None and path.is_file():
            found.append(str(path.absolute()))
    return found


def _check_configuration_files(report: Report, files: list[str]) -> None:
    for name in files:
        mode = stat.S_IMODE(Path(name).stat().st_mode)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            report.add(
                "configuration.permissions",
                Status.WARN,
                f"{name} is readable by other users (mode {mode:o}); it may hold tokens",
                f"chmod 600 {name}",
            )


# --- the database ------------------------------------------------------------------------------


async def _check_database(report: Report, runtime: Runtime) -> bool:
    """Reachable, migrated, WAL, private, room to grow; True when it can be queried."""
    url = runtime.settings.database_url
    try:
        await runtime.store.check_connection()
    except NexusBridgeError as exc:
        report.add("database", Status.FAIL, str(exc), f"check {config.ENV_PREFIX}DATABASE_URL")
        return False
    try:
        await runtime.check_schema()
    except DatabaseNotReady as exc:
        report.add("database.schema", Status.FAIL, str(exc), "run: nexus-bridge db upgrade")
        return False
    report.add("database.schema", Status.OK, f"at the current schema ({', '.join(runtime.heads)})")
    path = sqlite_file(url)
    if path is None:
        report.add(
            "database.files",
            Status.SKIP,
            "PostgreSQL: journaling, file permissions and disk space are the database server's",
        )
        return True
    async with runtime.store.read() as tx:
        mode = await tx.sqlite_journal_mode()
    if mode == "wal":
        report.add("database.wal", Status.OK, "journal mode WAL")
    else:
        report.add(
            "database.wal",
            Status.FAIL,
            f"journal mode is {mode!r}, not WAL: the file system of {path} cannot hold SQLite's "
            "shared memory (a network file system?)",
            "put the database on a local disk",
        )
    _check_permissions(report, path)
    _check_disk(report, path)
    return True


def _check_permissions(report: Report, path: Path) -> None:
    open_to_others = []
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except FileNotFoundError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            open_to_others.append(f"{candidate} (mode {mode:o})")
    if open_to_others:
        report.add(
            "database.permissions",
            Status.FAIL,
            "readable by other users: "
            + ", ".join(open_to_others)
            + "; it holds secrets and every task",
            f"chmod 600 {path}*",
        )
    else:
        report.add("database.permissions", Status.OK, f"{path} is private to its owner")


def _check_disk(report: Report, path: Path) -> None:
    free = shutil.disk_usage(path.parent).free
    shown = f"{free / 1024**3:.1f} GiB free on the disk of {path.parent}"
    if free < MIN_FREE_DISK_BYTES:
        report.add("database.disk", Status.FAIL, shown, "free some space: writes will fail")
    elif free < LOW_FREE_DISK_BYTES:
        report.add("database.disk", Status.WARN, shown, "free some space soon")
    else:
        report.add("database.disk", Status.OK, shown)


# --- the running bridge ------------------------------------------------------------------------


async def _check_bridge(report: Report, settings: Settings) -> bool:
    """Whether the bridge at URL answers ready (a transport in error included)."""
    import httpx

    url = settings.bridge_url.rstrip("/") + READYZ_PATH
    try:
        async with httpx.AsyncClient(timeout=DOCTOR_HTTP_TIMEOUT_SECONDS) as http:
            response = await http.get(url)
        body = (
            response.json()
            if response.headers.get("content-type", "").startswith("application/json")
            else {}
        )
        if not isinstance(body, dict):
            body = {}
    except (httpx.HTTPError, ValueError) as exc:
        report.add(
            "bridge",
            Status.FAIL,
            f"nothing answers at {url} ({type(exc).__name__})",
            f"start it (nexus-bridge serve, or systemctl start nexus-bridge), or set "
            f"{config.ENV_PREFIX}URL to where it listens",
        )
        return False
    if response.status_code != 200 or body.get("status") != "ready":
        reason = body.get("reason") or f"HTTP {response.status_code}"
        report.add(
            "bridge",
            Status.FAIL,
            f"{url} answers but is not ready: {reason}",
            f"is {config.ENV_PREFIX}URL this bridge? see its log",
        )
        return False
    transport = body.get("transport") or {}
    state = transport.get("state")
    detail = f"ready at {settings.bridge_url}; Telegram transport {state}"
    if state == "error":
        report.add("bridge", Status.FAIL, detail, "see the bridge's log for the reason")
    else:
        report.add("bridge", Status.OK, detail)
    return True


class ServerWantsToken(NexusBridgeError):
    """The bridge at URL asks for a token to list its targets (set AUTH_TOKENS to compare)."""


@dataclass(frozen=True)
class ServerView:
    """What the bridge running at ``URL`` says it serves (``GET /targets``)."""

    targets: dict[str, str]  # each target's name: its transport
    database_id: str | None  # the id of the database it reads (None: an older bridge)


def server_view(settings: Settings, timeout: float) -> ServerView | None:
    """The targets the bridge running at ``URL`` serves, by name, with their transports, and
    the id of its database; None when nothing answers there or it does not list them (another
    version).

    Raises:
        ServerWantsToken: it answered 401/403 (this command has no or another AUTH_TOKENS).
    """
    import httpx

    from nexus_bridge.app import TARGETS_PATH

    headers = (
        {"Authorization": f"Bearer {settings.auth_tokens[0].get_secret_value()}"}
        if settings.auth_tokens
        else {}
    )
    url = settings.bridge_url.rstrip("/") + TARGETS_PATH
    try:
        response = httpx.get(url, headers=headers, timeout=timeout)
    except httpx.HTTPError:
        return None
    if response.status_code in (401, 403):
        raise ServerWantsToken()
    try:
        body = response.json()
    except ValueError:
        return None
    return parse_server_view(body)


def parse_server_view(body: Any) -> ServerView | None:
    """``GET /targets``'s JSON as a :class:`ServerView`; None if it is not one."""
    try:
        targets = {str(t["name"]): str(t["transport"]) for t in body["targets"]}
        database = body.get("database")
    except (KeyError, TypeError, AttributeError):
        return None
    return ServerView(targets, database if isinstance(database, str) else None)


def database_disagreement(
    url: str, database_url: str, mine: str | None, theirs: str | None
) -> str | None:
    """In words, that the bridge at ``url`` reads another database (id ``theirs``) than this
    command (``database_url``, id ``mine``); None when they are the same or cannot be told."""
    if mine is None or theirs is None or mine == theirs:
        return None
    from sqlalchemy.engine import make_url

    shown = make_url(database_url).render_as_string(hide_password=True)
    return (
        f"the bridge running at {url} reads another database than this command ({shown}): "
        "what this command queues, that bridge never sees"
    )


def target_disagreement(
    url: str, mine: dict[str, str], theirs: dict[str, str], target: str
) -> str | None:
    """How the bridge at ``url`` (``theirs``) differs from this configuration (``mine``) on
    ``target``, in words; None where they agree."""
    if target not in mine:
        return None
    if target not in theirs:
        return (
            f"the bridge running at {url} has no target {target!r} (it has "
            f"{', '.join(sorted(theirs)) or 'none'})"
        )
    if theirs[target] != mine[target]:
        return (
            f"the bridge running at {url} delivers {target!r} over {theirs[target]}, but this "
            f"command's configuration puts it on {mine[target]}"
        )
    return None


ANOTHER_CONFIGURATION_FIX: Final = (
    "this command reads another configuration than the server: compare `nexus-bridge config` "
    f"with the server's (its environment file), or set {config.ENV_PREFIX}ENV_FILE to it"
)


def _check_bridge_targets(report: Report, runtime: Runtime, database_id: str | None) -> None:
    """The running bridge serves this configuration's targets the same way, from the same
    database (``database_id``: this command's, None if unknown)."""
    settings = runtime.settings
    mine = {t.name: t.transport.value for t in runtime.targets}
    try:
        view = server_view(settings, DOCTOR_HTTP_TIMEOUT_SECONDS)
    except ServerWantsToken:
        report.add(
            "bridge.targets",
            Status.SKIP,
            "the bridge wants a token to list its targets",
            f"set {config.ENV_PREFIX}AUTH_TOKENS for this command to compare them",
        )
        return
    if view is None:
        return
    url = settings.bridge_url.rstrip("/")
    problems = [p for t in sorted(mine) if (p := target_disagreement(url, mine, view.targets, t))]
    other_database = database_disagreement(
        url, settings.database_url, database_id, view.database_id
    )
    if other_database is not None:
        problems.insert(0, other_database)
    if problems:
        report.add("bridge.targets", Status.FAIL, "; ".join(problems), ANOTHER_CONFIGURATION_FIX)
    else:
        report.add(
            "bridge.targets",
            Status.OK,
            f"the bridge serves these targets too: {', '.join(sorted(mine))}"
            + (", from the same database" if database_id and view.database_id else ""),
        )


# --- targets -----------------------------------------------------------------------------------


async def _last_seen(runtime: Runtime, target: str, database_ok: bool) -> datetime | None:
    if not database_ok:
        return None
    return (await runtime.queue.presence()).get(target)


def _ago(when: datetime) -> str:
    seconds = int((utc_now() - when).total_seconds())
    return (
        f"{when.isoformat(timespec='seconds')} ({seconds // 3600} h {seconds % 3600 // 60} min ago)"
    )


async def _check_agent_target(
    report: Report, runtime: Runtime, target: Target, database_ok: bool
) -> None:
    name = f"target {target.name}"
    token = bool(target.agent_tokens)
    where = "its agent_tokens"
    if not token and runtime.settings.config_file is None:
        path = runtime.settings.agent_token_file
        where = str(path)
        try:
            token = read_or_create_token(path, create=False) is not None
        except ConfigError as exc:
            report.add(f"{name}.token", Status.FAIL, str(exc))
            return
    if token:
        report.add(f"{name}.token", Status.OK, f"an agent token exists ({where})")
    else:
        report.add(
            f"{name}.token",
            Status.FAIL,
            "no agent token: no agent can take this target's tasks",
            f"start the bridge once (it creates {where}), or set "
            f"{config.ENV_PREFIX}AGENT_TOKENS={target.name}:TOKEN",
        )
    await _report_last_seen(report, runtime, target, database_ok)


async def _report_last_seen(
    report: Report, runtime: Runtime, target: Target, database_ok: bool
) -> None:
    name = f"target {target.name}.agent"
    if not database_ok:
        report.add(name, Status.SKIP, "the database cannot be read")
        return
    seen = await _last_seen(runtime, target.name, database_ok)
    if seen is None:
        report.add(
            name,
            Status.WARN,
            "the agent has never been seen",
            f"send a task (nexus-bridge send --target {target.name} 'say hello') and check that "
            "the agent answers",
        )
    elif (utc_now() - seen).total_seconds() > runtime.settings.stall_seconds:
        report.add(name, Status.WARN, f"agent last seen {_ago(seen)}", "is the agent running?")
    else:
        report.add(name, Status.OK, f"agent last seen {_ago(seen)}")


async def _check_telegram_target(
    report: Report, runtime: Runtime, target: Target, database_ok: bool
) -> None:
    from telegram import Bot
    from telegram.error import InvalidToken, TelegramError
    from telegram.request import HTTPXRequest

    telegram = runtime.configuration.telegram
    assert telegram is not None  # a Telegram target exists only with a token
    name = f"target {target.name}"
    chat_id = target.chat_id  # resolved: the target's own, else the Telegram settings'
    agent_ids = sorted(target.agent_ids)
    # Our own request object, so it is closed even when getMe fails (Bot.shutdown closes only
    # a bot whose getMe succeeded).
    request = HTTPXRequest(
        connect_timeout=telegram.request_timeout, read_timeout=telegram.request_timeout
    )
    bot = Bot(telegram.token, base_url=telegram.base_url, request=request)
    try:
        try:
            me = await bot.get_me()
        except InvalidToken:
            report.add(
                f"{name}.token",
                Status.FAIL,
                "Telegram rejects the bot token (getMe)",
                f"get the bridge bot's token from @BotFather into "
                f"{config.ENV_PREFIX}TELEGRAM_BOT_TOKEN",
            )
            return
        except TelegramError as exc:
            report.add(
                f"{name}.token",
                Status.FAIL,
                f"cannot reach Telegram: {exc}",
                f"check the network and {config.ENV_PREFIX}TELEGRAM_BASE_URL",
            )
            return
        report.add(f"{name}.token", Status.OK, f"the token is @{me.username}'s (id {me.id})")
        await _check_webhook(report, name, bot, telegram)
        if chat_id is None:
            report.add(f"{name}.chat", Status.FAIL, "no chat_id", "set chat_id for the target")
            return
        checks = _ChatChecks(report, name, bot, chat_id)
        admin = await checks.bridge_bot(me.id, bool(me.can_read_all_group_messages))
        if admin is None:
            return
        for agent_id in agent_ids:
            await checks.agent(agent_id)
    finally:
        await request.shutdown()
    await _report_last_seen(report, runtime, target, database_ok)


async def _check_webhook(report: Report, name: str, bot: Any, telegram: TelegramSettings) -> None:
    from telegram.error import TelegramError

    try:
        info = await bot.get_webhook_info()
    except TelegramError as exc:
        report.add(f"{name}.webhook", Status.WARN, f"getWebhookInfo failed: {exc}")
        return
    if telegram.webhook_url is None and info.url:
        report.add(
            f"{name}.webhook",
            Status.FAIL,
            f"a webhook is set ({info.url}) while the bridge polls: something else sets it, "
            "and then getUpdates fails",
            "give the bridge a bot of its own; or use webhook mode (TELEGRAM_WEBHOOK_URL)",
        )
    elif telegram.webhook_url is not None and info.url != telegram.webhook_url:
        report.add(
            f"{name}.webhook",
            Status.WARN,
            f"the webhook is {info.url or 'not set'}, not {telegram.webhook_url}",
            "the running bridge sets it; is it running with this configuration?",
        )
    else:
        mode = f"webhook at {info.url}" if info.url else "no webhook: polling works"
        report.add(f"{name}.webhook", Status.OK, mode)


@dataclass
class _ChatChecks:
    report: Report
    name: str
    bot: Any
    chat_id: int

    async def _member(self, user_id: int) -> tuple[Any | None, str | None]:
        from telegram.error import TelegramError

        try:
            return await self.bot.get_chat_member(self.chat_id, user_id), None
        except TelegramError as exc:
            return None, str(exc)

    async def bridge_bot(self, bot_id: int, reads_all: bool) -> bool | None:
        """The chat exists, the bridge bot is in it and sees every message; None: stop here."""
        from telegram.error import TelegramError

        try:
            chat = await self.bot.get_chat(self.chat_id)
        except TelegramError as exc:
            self.report.add(
                f"{self.name}.chat",
                Status.FAIL,
                f"chat {self.chat_id}: {exc} (getChat)",
                "check TELEGRAM_CHAT_ID and add the bridge bot to the group "
                "(docs/telegram.md, step 3)",
            )
            return None
        title = chat.title or chat.username or chat.id
        self.report.add(
            f"{self.name}.chat", Status.OK, f"chat {self.chat_id} ({title}, {chat.type})"
        )
        member, error = await self._member(bot_id)
        status = member.status if member is not None else None
        if status not in MEMBER_STATUSES:
            self.report.add(
                f"{self.name}.bridge-bot",
                Status.FAIL,
                f"the bridge bot is not in the chat ({status or error})",
                "add the bridge bot to the group",
            )
            return None
        admin = status in ADMIN_STATUSES
        if reads_all or admin:
            why = "an admin" if admin else "privacy off"
            self.report.add(
                f"{self.name}.bridge-bot",
                Status.OK,
                f"in the chat as {status}; sees every message ({why})",
            )
        else:
            self.report.add(
                f"{self.name}.bridge-bot",
                Status.FAIL,
                "in the chat, but privacy mode is on and it is not an admin: it never sees the "
                "agent's messages",
                "@BotFather /setprivacy: Disable for the bridge bot, or make it a group admin; "
                "then remove it from the group and add it again",
            )
        return admin

    async def agent(self, agent_id: int) -> None:
        member, error = await self._member(agent_id)
        status = member.status if member is not None else None
        check = f"{self.name}.agent-id {agent_id}"
        if status not in MEMBER_STATUSES:
            self.report.add(
                check,
                Status.FAIL,
                f"not a member of chat {self.chat_id} ({status or error})",
                "add the agent (bot) to the group, or fix TELEGRAM_AGENT_IDS",
            )
            return
        assert member is not None  # a member status came with it
        user = member.user
        if not user.is_bot:
            self.report.add(check, Status.OK, f"a member ({status}), a person")
            return
        handle = f"@{user.username}" if user.username else str(agent_id)
        if status in ADMIN_STATUSES:
            self.report.add(
                check,
                Status.OK,
                f"{handle}, a bot, is an admin: it sees the bridge's tasks if its Bot-to-Bot "
                "mode is on (not visible through the Bot API)",
            )
        else:
            self.report.add(
                check,
                Status.WARN,
                f"{handle} is a bot and not an admin: it sees the bridge's tasks only with its "
                "privacy off and Bot-to-Bot mode on (neither is visible to the bridge's token)",
                f"@BotFather for {handle}: Bot-to-Bot Communication Mode on, /setprivacy "
                "Disable; or make it a group admin",
            )


# --- OAuth -------------------------------------------------------------------------------------


async def _check_public_url(
    report: Report, runtime: Runtime, public_url: str, database_ok: bool
) -> None:
    from urllib.parse import urlsplit

    import httpx

    parts = urlsplit(public_url)
    origin = f"{parts.scheme}://{parts.netloc}"
    resource_url = origin + PROTECTED_RESOURCE_PATH + parts.path
    try:
        async with httpx.AsyncClient(timeout=DOCTOR_HTTP_TIMEOUT_SECONDS) as http:
            resource = _object((await http.get(resource_url)).json())
            server = _object((await http.get(origin + AUTH_SERVER_METADATA_PATH)).json())
    except (httpx.HTTPError, ValueError) as exc:
        report.add(
            "public-url.metadata",
            Status.FAIL,
            f"cannot read the OAuth metadata at {resource_url} ({type(exc).__name__})",
            "check the TLS proxy in front of the bridge, and DNS for " + str(parts.hostname),
        )
    else:
        issuer = str(server.get("issuer", "")).rstrip("/")
        if resource.get("resource") != public_url or issuer != origin:
            report.add(
                "public-url.metadata",
                Status.FAIL,
                f"{resource_url} names resource {resource.get('resource')!r} and issuer "
                f"{server.get('issuer')!r}, not {public_url!r} and {origin!r}",
                "the proxy serves another site, or PUBLIC_URL differs from the running bridge's",
            )
        else:
            report.add("public-url.metadata", Status.OK, f"OAuth metadata served for {public_url}")
    await _check_passphrase(report, runtime, database_ok)


def _object(value: object) -> dict[str, Any]:
    """A JSON answer that must be an object; ValueError (as for bad JSON) otherwise."""
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")  # noqa: TRY004 - the same failure as bad JSON
    return value


async def _check_passphrase(report: Report, runtime: Runtime, database_ok: bool) -> None:
    if not database_ok:
        report.add("public-url.passphrase", Status.SKIP, "the database cannot be read")
        return
    async with runtime.store.read() as tx:
        owner = await tx.oauth.owner()
    if owner is None or not owner.passphrase_hash:
        report.add(
            "public-url.passphrase",
            Status.FAIL,
            "no owner passphrase: nobody can approve claude.ai on the consent page",
            "run: nexus-bridge auth set-passphrase",
        )
    else:
        report.add("public-url.passphrase", Status.OK, "the owner passphrase is set")
