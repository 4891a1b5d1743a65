"""The ``nexus-bridge`` command: serve, migrate, and work the queue from a shell."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from nexus_bridge import __version__, config, ops
from nexus_bridge.config import Settings, load_settings
from nexus_bridge.constants import (
    AGENT_MCP_PATH,
    LOOPBACK_HOSTNAMES,
    MCP_PATH,
    READYZ_PATH,
    SHORT_ID_CHARS,
)
from nexus_bridge.domain import (
    EnqueueResult,
    Lease,
    Task,
    TaskUpdate,
    Transport,
    first_line,
    utc_now,
)
from nexus_bridge.errors import ConfigError, InvalidInput, NexusBridgeError, TaskNotFound
from nexus_bridge.logs import configure_logging
from nexus_bridge.queue import QueueService
from nexus_bridge.runtime import Runtime, open_runtime
from nexus_bridge.targets import Configuration, load_configuration
from nexus_bridge.views import TaskOut, UpdateOut, queue_figures, target_row

if TYPE_CHECKING:  # oauth imports the MCP SDK: loaded only by the auth commands
    from nexus_bridge.oauth import BridgeOAuthProvider

logger = logging.getLogger("nexus_bridge")

CLI_IDENTITY: Final = "cli"
FOLLOW_POLL_SECONDS: Final = 1.0
T = TypeVar("T")


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _task_json(task: Task, idle_seconds: float | None = None) -> dict[str, Any]:
    return TaskOut.of(task, idle_seconds).model_dump()


def _update_json(update: TaskUpdate) -> dict[str, Any]:
    return UpdateOut.of(update).model_dump()


def _format_update(update: TaskUpdate) -> str:
    task = update.task_id[:SHORT_ID_CHARS] if update.task_id else "-" * SHORT_ID_CHARS
    when = update.created_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"#{update.seq:<6} {when}Z [{task}] {update.kind.value:<6} {update.content}"


def _format_task(task: Task) -> str:
    when = task.created_at.strftime("%Y-%m-%d %H:%M:%S")
    summary = first_line(task.content, 60)
    return f"{task.id}  {when}Z  {task.status.value:<12} {task.target:<10} {summary}"


async def _with_runtime(
    configuration: Configuration | Settings, work: Callable[[Runtime], Awaitable[T]]
) -> T:
    """Run ``work`` on the services of a migrated database (no MCP: starts fast)."""
    runtime = open_runtime(configuration)
    try:
        await runtime.check_schema()
        return await work(runtime)
    finally:
        await runtime.close()


async def _with_queue(
    configuration: Configuration | Settings, work: Callable[[QueueService], Awaitable[T]]
) -> T:
    """Run ``work`` on the queue service of a migrated database."""
    return await _with_runtime(configuration, lambda runtime: work(runtime.queue))


# --- commands ------------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from nexus_bridge.app import make_server

    if args.host:
        settings = settings.model_copy(update={"host": args.host})
    if args.port is not None:
        if not 0 <= args.port <= config.MAX_PORT:
            raise ConfigError(f"--port must be between 0 and {config.MAX_PORT}, got {args.port}")
        settings = settings.model_copy(update={"port": args.port})

    configuration = load_configuration(settings)  # the one read of every configuration file
    if args.stdio:
        return asyncio.run(_serve_stdio(configuration))

    settings.check_serve_security()
    _check_listen_address(settings.host, settings.port)
    asyncio.run(_with_queue(configuration, _noop))  # refuse to start on an unmigrated database
    # The generated agent token is shown once, on the start that creates it, and only on a
    # terminal; otherwise the banner names only its file (a service's stderr is journald, kept
    # and readable by every admin).
    new_token = not settings.agent_token_file.exists() and sys.stderr.isatty()
    server = make_server(
        configuration,
        on_listening=lambda url: _print_banner(configuration, url, show_token=new_token),
    )
    if not settings.auth_tokens and settings.public_url is None:
        logger.warning(
            "no %sAUTH_TOKENS set: /mcp accepts any client that can reach %s",
            config.ENV_PREFIX,
            settings.host,
        )
    server.run()
    return 0 if server.started else 1


def _check_listen_address(host: str, port: int) -> None:
    """Bind once and let go, so a busy port or a foreign address is one line, not uvicorn's
    log lines and exit status 3 (a race with another process only brings those back).

    Raises:
        ConfigError: naming HOST or PORT and what to do.
    """
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except (socket.gaierror, UnicodeError) as exc:
            raise ConfigError(
                f"{config.ENV_PREFIX}HOST: cannot resolve {host!r} ({exc}); use an address of "
                "this machine, e.g. 127.0.0.1"
            ) from None
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"{config.ENV_PREFIX}PORT: {host}:{port} is already in use (another "
                    "nexus-bridge?); stop it, or choose another port with --port or "
                    f"{config.ENV_PREFIX}PORT"
                ) from None
            raise ConfigError(
                f"{config.ENV_PREFIX}HOST: cannot listen on {host}:{port}: {exc.strerror}; use "
                "an address of this machine, e.g. 127.0.0.1"
            ) from None


async def _noop(_queue: QueueService) -> None:
    return None


def _print_banner(configuration: Configuration, url: str, *, show_token: bool) -> None:
    settings = configuration.settings
    header = ' --header "Authorization: Bearer $TOKEN"' if settings.auth_tokens else ""
    lines = [
        f"nexus-bridge {__version__}",
        f"  database : {_safe_url(settings.database_url)}",
        f"  MCP URL  : {url}",
        "  connect  :",
        f"    Claude Code   claude mcp add --transport http nexus-bridge {url}{header}",
        f"    Inspector     npx @modelcontextprotocol/inspector  (Streamable HTTP, {url})",
        "    health        curl -s " + url.removesuffix(MCP_PATH) + READYZ_PATH,
    ]
    lines += _agent_banner(configuration, url.removesuffix(MCP_PATH), show_token=show_token)
    print("\n".join(lines), file=sys.stderr, flush=True)


def _agent_banner(configuration: Configuration, base_url: str, *, show_token: bool) -> list[str]:
    """How the default agent takes its tasks, when it uses the direct agent API."""
    import shlex

    from nexus_bridge.runtime import read_or_create_token

    settings = configuration.settings
    if settings.config_file is not None or configuration.telegram is not None:
        return []
    if settings.agent_tokens:  # homelab has tokens of its own; the file's is not used
        return []
    token = read_or_create_token(settings.agent_token_file, create=False)
    if not token:
        return []
    path = settings.agent_token_file
    value = f"{token}   # shown this once" if show_token else f'"$(cat {shlex.quote(str(path))})"'
    command = _shell_command()
    return [
        f"  agent    : {config.DEFAULT_TARGET} takes its tasks over the direct agent API "
        f"(token kept in {path})",
        f"    export NEXUS_BRIDGE_URL={base_url} NEXUS_BRIDGE_AGENT_TOKEN={value}",
        f"    {command} agent next --wait 55      # then: agent start|update|done ID ...",
        f"    {command} agent-prompt --target {config.DEFAULT_TARGET}   # for its CLAUDE.md",
    ]


def _shell_command() -> str:
    """How a shell reaches this nexus-bridge: its name when PATH finds this one, else its path.

    After ``make run`` the command is ``.venv/bin/nexus-bridge``, not on PATH: a banner line that
    said a bare ``nexus-bridge`` would be ``command not found`` when pasted.
    """
    import shlex
    import shutil

    beside = Path(sys.executable).with_name("nexus-bridge")
    if not beside.is_file():
        return "nexus-bridge"
    found = shutil.which("nexus-bridge")
    if found is not None and Path(found).resolve() == beside.resolve():
        return "nexus-bridge"
    return shlex.quote(str(beside.absolute()))


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


async def _serve_stdio(configuration: Configuration) -> int:
    from nexus_bridge.app import build_bridge

    bridge = build_bridge(configuration, default_identity="stdio", http=False)
    try:
        await bridge.check_schema()
        bridge.start_background()
        await bridge.mcp.run_stdio_async()
    finally:
        await bridge.close()
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from nexus_bridge.db import migrate
    from nexus_bridge.db.engine import prepare_sqlite_file

    if args.db_command == "history":
        return _db_history(settings)
    prepare_sqlite_file(settings.database_url)
    asyncio.run(_check_connection(settings.database_url))  # one line, not alembic's traceback
    if args.db_command == "upgrade":
        migrate.upgrade(settings.database_url, args.revision)
        print(f"database at {args.revision}: {_safe_url(settings.database_url)}", file=sys.stderr)
    elif args.db_command == "downgrade":
        if not _database_revisions(settings):
            raise ConfigError(
                "the database is at no revision yet (never migrated): there is nothing to "
                "downgrade; nexus-bridge db upgrade creates its schema"
            )
        migrate.downgrade(settings.database_url, args.revision)
    return 0


def _database_revisions(settings: Settings) -> tuple[str, ...]:
    """The revisions the database is at: none for one never migrated (or not there, which
    this never creates)."""
    from nexus_bridge.db.engine import sqlite_file

    path = sqlite_file(settings.database_url)
    if path is not None and not path.exists():
        return ()
    runtime = open_runtime(settings)

    async def read() -> tuple[str, ...]:
        try:
            return tuple(await runtime.queue.schema_revisions())
        except NexusBridgeError:
            return ()
        finally:
            await runtime.close()

    return asyncio.run(read())


def _db_history(settings: Settings) -> int:
    """The revisions ``db upgrade``/``db downgrade`` accept, marking the head and the database's."""
    from nexus_bridge.db import migrate

    current = _database_revisions(settings)
    heads = set(migrate.head_revisions())
    for revision, doc in migrate.revisions():
        marks = [
            m for m, on in (("head", revision in heads), ("current", revision in current)) if on
        ]
        print(f"{revision}  {doc}" + (f"  ({', '.join(marks)})" if marks else ""))
    if not current:
        print("the database is at no revision yet: nexus-bridge db upgrade")
    return 0


async def _check_connection(database_url: str) -> None:
    from nexus_bridge.db.engine import create_engine
    from nexus_bridge.db.store import Store

    store = Store(create_engine(database_url))
    try:
        await store.check_connection()
    finally:
        await store.dispose()


def cmd_send(settings: Settings, args: argparse.Namespace) -> int:
    configuration = load_configuration(settings)
    queue_log = logging.getLogger(QueueService.__module__)
    if queue_log.getEffectiveLevel() == logging.INFO:
        # The queue's "queued task …" line is for a server's log; here stdout says it already.
        queue_log.setLevel(logging.WARNING)

    async def send(runtime: Runtime) -> EnqueueResult:
        _check_server_agrees(configuration, args.target, await runtime.database_id())
        return await runtime.queue.enqueue(args.text, args.target, urgent=args.urgent)

    result = asyncio.run(_with_runtime(configuration, send))
    if args.json:
        _print_json({"queued": result.queued, "id": result.task.id, "status": result.task.status})
    elif result.queued:
        print(f"queued {result.task.id}")
    else:
        print(f"duplicate of open task {result.task.id} ({result.task.status.value}); not queued")
    return 0


# --- the running server's view of the targets ----------------------------------------------


SERVER_CHECK_TIMEOUT_SECONDS: Final = 3.0


def _check_server_agrees(
    configuration: Configuration, target: str, database_id: str | None
) -> None:
    """Refuse to queue for ``target`` when the bridge running at ``URL`` reads another database
    than this command's (``database_id``) or delivers the target differently from how this
    command's configuration says (a CLI run with another configuration would queue a task the
    server never delivers). Nothing running, or nothing to compare: go ahead.

    Raises:
        ConfigError: the server reads another database, has no such target, or another
            transport for it.
    """
    from nexus_bridge.doctor import (
        ANOTHER_CONFIGURATION_FIX,
        ServerWantsToken,
        database_disagreement,
        server_view,
        target_disagreement,
    )

    settings = configuration.settings
    url = settings.bridge_url.rstrip("/")
    try:
        view = server_view(settings, SERVER_CHECK_TIMEOUT_SECONDS)
    except ServerWantsToken:
        print(
            f"nexus-bridge: warning: the bridge at {url} wants a token to compare targets "
            f"({config.ENV_PREFIX}AUTH_TOKENS); queueing without checking",
            file=sys.stderr,
        )
        return
    if view is None:
        return  # no bridge there (the task waits in the database for one), or nothing to compare
    mine = {t.name: t.transport.value for t in configuration.targets}
    problem = database_disagreement(
        url, settings.database_url, database_id, view.database_id
    ) or target_disagreement(url, mine, view.targets, target)
    if problem is not None:
        raise ConfigError(f"{problem}; {ANOTHER_CONFIGURATION_FIX}; not queued")


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    async def work(runtime: Runtime) -> tuple[Any, list[Any], Lease | None]:
        counts = await runtime.queue.status(args.target)
        summaries = await runtime.queue.target_summaries()
        lease = await runtime.relay.lease_row(config.POLLER_LEASE)
        mine = [s for s in summaries if args.target in (None, s.policy.name)]
        return counts, mine, lease

    counts, summaries, lease = asyncio.run(_with_runtime(settings, work))
    data = queue_figures(counts, summaries)
    targets = [target_row(s) for s in summaries]
    telegram = _telegram_health(lease)
    if args.json:
        _print_json({**data, "targets": targets, "telegram": telegram})
        return 0
    for key, value in data.items():
        if key == "current_task" and value:
            value = first_line(str(value), 80)
        print(f"{key:<18}{value if value is not None else '-'}")
    if telegram is not None:
        line = f"telegram          {telegram['state']}"
        if telegram["poller"]:
            line += f" (polled by {telegram['poller']})"
        if telegram["last_error"]:
            line += f"; failing since {telegram['error_since']}: {telegram['last_error']}"
        print(f"{line}; last successful Bot API call {telegram['last_ok_at'] or 'never'}")
    for t in targets:
        seen = t["last_seen_at"] or "never"
        print(
            f"target {t['name']} ({t['transport']}, {t['dispatch']}): {t['pending']} pending, "
            f"{t['with_agent']} with the agent, {t['stalled']} stalled, agent last seen {seen}"
        )
    return 0


def _telegram_health(lease: Lease | None) -> dict[str, Any] | None:
    """The Telegram poller as its lease row says: who polls, and how its Bot API calls go."""
    if lease is None:
        return None
    live = lease.expires_at > utc_now()
    return {
        "state": (lease.health or "polling") if live else "no poller",
        "poller": lease.holder if live else None,
        "last_ok_at": lease.last_ok_at.isoformat() if lease.last_ok_at else None,
        "last_error": lease.last_error if live else None,
        "error_since": lease.error_since.isoformat() if live and lease.error_since else None,
    }


def cmd_updates(settings: Settings, args: argparse.Namespace) -> int:
    if args.message_id is not None:
        _check_cli_id(args.message_id)
    # Without --since, --cursor or --message-id every pull continues from (and moves) this
    # command's durable cursor, page by page, so stopping a follower at any moment loses nothing
    # and repeats nothing.
    durable = args.since is None and args.cursor is None and args.message_id is None

    async def run(queue: QueueService) -> int:
        stop = _stop_on_sigterm()
        cursor, since, shown = args.cursor, args.since, 0
        while True:
            page = await queue.pull(
                CLI_IDENTITY,
                since=since,
                cursor=None if durable else cursor,
                task_id=args.message_id,
                limit=args.limit,
            )
            for update in page.updates:
                print(json.dumps(_update_json(update)) if args.json else _format_update(update))
            shown += len(page.updates)
            sys.stdout.flush()
            cursor, since = page.next_cursor, None
            if page.has_more:
                continue
            if not args.follow:
                if not shown and not args.json:
                    print("no new updates")
                return 0
            # Another process (the server) writes the updates, so a follower re-reads.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FOLLOW_POLL_SECONDS)
            if stop.is_set():
                return 0

    try:
        return asyncio.run(_with_queue(settings, run))
    except KeyboardInterrupt:
        return 130


def _stop_on_sigterm() -> asyncio.Event:
    """An event set by SIGTERM (how a service manager stops a follower): it ends cleanly."""
    import signal

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


def _check_cli_id(task_id: str) -> None:
    """Raises InvalidInput for an id too short to name one task (a short id needs 8+)."""

    if len(task_id) < SHORT_ID_CHARS:
        raise InvalidInput(
            f"id {task_id!r} is too short: give at least {SHORT_ID_CHARS} characters of the "
            "task id (nexus-bridge list shows them)"
        )


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    _check_cli_id(args.id)

    async def work(queue: QueueService) -> tuple[Any, dict[str, float]]:
        detail = await queue.get(args.id)
        return detail, await queue.stalls([detail.task])

    detail, stalls = asyncio.run(_with_queue(settings, work))
    if args.json:
        data = _task_json(detail.task, stalls.get(detail.task.id))
        data["updates"] = [_update_json(u) for u in detail.recent_updates]
        _print_json(data)
        return 0
    task = detail.task
    print(f"id       {task.id}\ntarget   {task.target}\nstatus   {task.status.value}")
    if task.status_reason:
        print(f"reason   {task.status_reason}")
    print(f"created  {task.created_at.isoformat()}\n\n{task.content}\n")
    for update in detail.recent_updates:
        print(_format_update(update))
    return 0


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    _check_cli_id(args.id)
    task = asyncio.run(_with_queue(settings, lambda q: q.cancel(args.id, args.reason)))
    if args.json:
        _print_json(_task_json(task))
    else:
        print(f"cancelled {task.id}")
    return 0


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(queue: QueueService) -> tuple[Any, dict[str, float]]:
        page = await queue.list_tasks(
            status=args.status, target=args.target, limit=args.limit, before=args.before
        )
        return page, await queue.stalls(page.tasks)

    page, stalls = asyncio.run(_with_queue(settings, work))
    if args.json:
        _print_json(
            {
                "messages": [_task_json(t, stalls.get(t.id)) for t in page.tasks],
                "next_before": page.next_before,
            }
        )
        return 0
    for task in page.tasks:
        print(_format_task(task))
    if not page.tasks:
        filters = [f"{k} {v}" for k, v in (("status", args.status), ("target", args.target)) if v]
        print("no tasks" + (f" with {' and '.join(filters)}" if filters else ""))
    if page.next_before:
        print(f"(more: --before {page.next_before})")
    return 0


def cmd_reply(settings: Settings, args: argparse.Namespace) -> int:
    _check_cli_id(args.id)
    task = asyncio.run(_with_queue(settings, lambda q: q.reply(args.id, args.text)))
    if args.json:
        _print_json(_task_json(task))
    else:
        print(f"answered {task.id}; it is {task.status.value} again")
    return 0


def agent_api_prompt(target: str, bridge_url: str) -> str:
    """The CLAUDE.md section for an agent that takes its tasks from the bridge directly."""
    return f"""## Tasks from nexus-bridge (target `{target}`)

Tasks for you wait in nexus-bridge at {bridge_url}. Use the `nexus-bridge agent` command (it
needs `NEXUS_BRIDGE_URL={bridge_url}` and `NEXUS_BRIDGE_AGENT_TOKEN` in the environment), or the
same tools over MCP at {bridge_url}{AGENT_MCP_PATH} with that token as a bearer token.

| Step | Command | MCP tool |
|---|---|---|
| take the next task (waits up to 55 s) | `nexus-bridge agent next --wait 55` | `next_task` |
| say you started | `nexus-bridge agent start ID` | `start_task` |
| keep the claim while you prepare | `nexus-bridge agent heartbeat ID` | `heartbeat` |
| report progress | `nexus-bridge agent update ID "text"` | `post_update` |
| ask the client, then wait | `nexus-bridge agent ask ID "question"` | `ask_question` |
| read the answers | `nexus-bridge agent replies ID` | `get_replies` |
| finish | `nexus-bridge agent done ID --summary "what you did"` | `complete_task` |
| give up, saying why | `nexus-bridge agent fail ID "why"` | `fail_task` |

- Work on one task at a time; take the next one only when the current one is done or failed.
- A claim is a lease: `start` the task (or `heartbeat` it) before its claim expires (`next`
  prints when), or it goes back to the queue for someone else.
- Report progress at each meaningful step: the client reads it in claude.ai as it happens.
- A task marked URGENT comes first; halt what you are doing and take it.
- After `ask`, poll `replies` until an answer arrives, then continue with `update`.

### When `nexus-bridge agent run` runs you

The runner claims, starts and finishes each task for you; do not call `next`, `start`, `done` or
`fail` yourself. You get the task text as your prompt (on standard input), and in the
environment `NEXUS_BRIDGE_TASK_ID` (the task's id), `NEXUS_BRIDGE_TASK_TAG` (its short tag),
`NEXUS_BRIDGE_URL` and `NEXUS_BRIDGE_AGENT_TOKEN`.

- What you write is the client's progress report: Claude Code's text and each tool you use (one
  line each), or a plain command's output lines, sent at most every couple of seconds.
- Your final answer (or a plain command's last lines) becomes the task's summary when you exit
  normally; exiting with an error fails the task with your exit code and the end of stderr.
- Need a decision? Make your final answer start with `[Question]` and end your turn: the client
  is asked, and its answer comes back as your next prompt, in the same Claude Code session.
- A cancel stops you (SIGTERM, then SIGKILL): leave nothing half-done that a stop would break.
- An extra report at any time: `nexus-bridge agent update "$NEXUS_BRIDGE_TASK_ID" "text"`."""


def cmd_agent_prompt(settings: Settings, args: argparse.Namespace) -> int:
    from nexus_bridge.protocol import agent_prompt

    configuration: Configuration | None = None
    if args.target is not None:
        configuration = load_configuration(settings)
        target = configuration.target(args.target)
        if target is None:
            known = ", ".join(t.name for t in configuration.targets)
            raise ConfigError(f"unknown target {args.target!r}; known targets: {known}")
        if target.transport is Transport.AGENT:
            print(agent_api_prompt(target.name, settings.bridge_url))
            return 0
        if args.agent_username is None and target.agent_username:
            args.agent_username = target.agent_username
    username = args.agent_username
    if username is None:
        if configuration is None:
            try:
                configuration = load_configuration(settings)
            except NexusBridgeError:
                configuration = None
        telegram = configuration.telegram if configuration is not None else None
        username = telegram.agent_username if telegram else None
    print(agent_prompt(agent_username=username, bridge_username=args.bridge_username))
    return 0


def _oauth_provider(settings: Settings) -> tuple[Runtime, BridgeOAuthProvider]:
    from nexus_bridge.oauth import BridgeOAuthProvider, OAuthPolicy

    runtime = open_runtime(settings)
    policy = OAuthPolicy(
        public_url=settings.public_url or f"http://{LOOPBACK_HOSTNAMES[0]}{MCP_PATH}"
    )
    return runtime, BridgeOAuthProvider(runtime.store, policy)


def cmd_auth(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> int:
        runtime, provider = _oauth_provider(settings)
        try:
            await runtime.check_schema()
            return await _auth_action(provider, args)
        finally:
            await runtime.close()

    return asyncio.run(run())


def _has_terminal() -> bool:
    """Whether getpass can ask without echoing: it reads the controlling terminal, not stdin."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


def _read_new_passphrase(from_stdin: bool) -> str:
    import getpass

    if from_stdin:
        passphrase = sys.stdin.readline().rstrip("\n")
    elif not _has_terminal():
        raise ConfigError(
            "auth set-passphrase asks for the passphrase on a terminal and there is none; "
            "pipe it in instead: nexus-bridge auth set-passphrase --stdin < FILE"
        )
    else:
        try:
            passphrase = getpass.getpass("New owner passphrase: ")
            again = getpass.getpass("Again: ")
        except EOFError:  # Ctrl-D at a prompt
            raise ConfigError("no passphrase was typed; nothing was changed") from None
        if again != passphrase:
            raise ConfigError("the two passphrases differ; nothing was changed")
    if len(passphrase) < 12:
        raise ConfigError("the passphrase must be at least 12 characters; nothing was changed")
    return passphrase


async def _auth_action(provider: BridgeOAuthProvider, args: argparse.Namespace) -> int:
    from nexus_bridge.oauth import UnknownClientOrFamily
    from nexus_bridge.views import oauth_client_row, token_family_row

    if args.auth_command == "set-passphrase":
        await provider.set_passphrase(_read_new_passphrase(args.stdin))
        print(
            "passphrase set; the console (/console) and the OAuth consent page accept it now",
            file=sys.stderr,
        )
        return 0
    if args.auth_command == "clients":
        clients = [oauth_client_row(c) for c in await provider.clients()]
        if args.json:
            _print_json(clients)
        elif not clients:
            print("no clients registered")
        for row in [] if args.json else clients:
            state = f"revoked {row['revoked']}" if row["revoked"] else "active"
            print(f"{row['client_id']}  {row['name'] or '-':<24} {row['registered']}  {state}")
        return 0
    if args.auth_command == "tokens":
        families = [token_family_row(f) for f in await provider.token_families()]
        if args.json:
            _print_json(families)
        elif not families:
            print("no tokens issued")
        for row in [] if args.json else families:
            print(
                f"{row['family_id']}  client {row['client_id']}  {row['live']} live of "
                f"{row['issued']} issued, last {row['last_issued']}"
            )
        return 0
    try:  # revoke: a client id (the client and all its tokens) or a token family id
        revocation = await provider.revoke(args.id)
    except UnknownClientOrFamily as exc:
        raise ConfigError(f"{exc}; see: nexus-bridge auth clients") from exc
    print(f"revoked {revocation.description}")
    return 0


# --- doctor: check the whole set-up ------------------------------------------------------------


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    """Every check, one line each with what to do; exit 1 if any failed."""
    from nexus_bridge.doctor import Status, diagnose

    report = asyncio.run(diagnose(settings))
    if args.json:
        _print_json({"ok": not report.failed, "checks": [f.as_json() for f in report.findings]})
    else:
        for finding in report.findings:
            label = (
                finding.status.value.upper()
                if finding.status is Status.FAIL
                else finding.status.value
            )
            print(f"{label:<5} {finding.check}: {finding.detail}")
            if finding.fix and finding.status in (Status.FAIL, Status.WARN):
                print(f"      -> {finding.fix}")
        failed = sum(f.status is Status.FAIL for f in report.findings)
        print(f"{failed} problem(s) found" if failed else "everything checked is fine")
    return 1 if report.failed else 0


def _doctor_configuration_failed(args: argparse.Namespace, exc: ConfigError) -> int:
    fix = "fix the variable it names (nexus-bridge config shows where each value comes from)"
    if args.json:
        check = {"check": "configuration", "status": "fail", "detail": str(exc), "fix": fix}
        _print_json({"ok": False, "checks": [check]})
    else:
        print(f"FAIL  configuration: {exc}\n      -> {fix}\n1 problem(s) found")
    return 1


# --- config: the effective configuration ---------------------------------------------------


def cmd_config(settings: Settings, args: argparse.Namespace) -> int:
    """Every setting as this command sees it, secrets masked, and where its value came from."""
    values = config.effective_configuration(settings)
    if args.json:
        _print_json(
            {
                "files": [str(p.absolute()) for p in config.env_files() if p.is_file()],
                "settings": [
                    {"variable": v.variable, "value": v.value, "source": v.source} for v in values
                ],
            }
        )
        return 0
    read = [str(p.absolute()) for p in config.env_files() if p.is_file()]
    print("files read (later ones override): " + (", ".join(read) or "none"))
    print(f"standard file: {config.standard_env_file()} (set {config.ENV_FILE_VARIABLE} to move)")
    width = max(len(v.variable) for v in values)
    for v in values:
        print(f"{v.variable:<{width}}  {v.value}  ({v.source})")
    return 0


AGENT_ACTIONS: Final = {
    # action: (tool, positional argument names)
    "next": ("next_task", ()),
    "start": ("start_task", ("id",)),
    "heartbeat": ("heartbeat", ("id",)),
    "update": ("post_update", ("id", "text")),
    "ask": ("ask_question", ("id", "text")),
    "replies": ("get_replies", ("id",)),
    "done": ("complete_task", ("id",)),
    "fail": ("fail_task", ("id", "error")),
}


def cmd_agent(settings: Settings, args: argparse.Namespace) -> int:
    """The direct agent API from a shell: one tool call on a running bridge, over HTTP."""
    tool, names = AGENT_ACTIONS[args.agent_action]
    arguments: dict[str, Any] = {name: getattr(args, name) for name in names}
    if args.agent_action == "next":
        arguments["wait_seconds"] = args.wait
    if args.agent_action == "replies" and args.cursor:
        arguments["cursor"] = args.cursor
    if args.agent_action == "done" and args.summary:
        arguments["summary"] = args.summary
    from nexus_bridge.agent_client import call_agent_tool

    token = _agent_token(settings)
    result = asyncio.run(call_agent_tool(settings.bridge_url, token, tool, arguments))
    if args.json or args.agent_action not in ("next", "replies"):
        _print_json(result)
    elif args.agent_action == "next":
        task = result.get("task")
        if task is None:
            print("no task")
        else:
            print(f"task {task['id']}\n{task['content']}")
            print(
                f"claimed until {task.get('claim_expires_at')}: start it (or heartbeat it) "
                "before then, or it goes back to the queue",
                file=sys.stderr,
            )
    else:
        for reply in result.get("replies", []):
            print(reply["content"])
        if not result.get("replies"):
            print("no replies yet")
    return 0


def _agent_token(settings: Settings) -> str:
    """``NEXUS_BRIDGE_AGENT_TOKEN``, else the default agent's token file.

    Raises:
        ConfigError: neither is there.
    """
    from nexus_bridge.runtime import read_or_create_token

    token = (
        settings.agent_token.get_secret_value()
        if settings.agent_token
        else read_or_create_token(settings.agent_token_file, create=False)
    )
    if not token:
        raise ConfigError(
            f"no agent token: set {config.ENV_PREFIX}AGENT_TOKEN, or "
            f"{config.ENV_PREFIX}AGENT_TOKEN_FILE to the bridge's token file (there is none at "
            f"{settings.agent_token_file}; the bridge writes it when it first starts)"
        )
    return token


def cmd_agent_run(settings: Settings, args: argparse.Namespace) -> int:
    """The agent runner: claim the target's tasks and run a command for each, until SIGTERM."""
    import signal

    from nexus_bridge.runner import CLAUDE_COMMAND, OutputFormat, Runner, RunnerOptions

    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    output = OutputFormat(args.format or "text")
    if args.claude:
        command = [*CLAUDE_COMMAND, *command]
        output = OutputFormat(args.format or "claude")
    if not command:
        raise ConfigError(
            "agent run needs a command: nexus-bridge agent run -- COMMAND [ARG...], or --claude"
        )
    options = RunnerOptions(
        command=tuple(command),
        bridge_url=settings.bridge_url,
        token=_agent_token(settings),
        output=output,
        target=args.target,
        concurrency=args.concurrency,
        timeout=args.timeout,
        workdir=args.workdir,
        **({"state_dir": args.state_dir} if args.state_dir else {}),
        **({"drain_seconds": args.grace} if args.grace is not None else {}),
    )
    if options.timeout == 0:
        raise ConfigError("--timeout must be more than 0 seconds (leave it out for none)")
    if options.workdir is not None and not options.workdir.is_dir():
        raise ConfigError(f"--workdir {options.workdir} is not a directory")
    _check_runnable(command[0], options.workdir)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        logger.info(
            "agent runner: %s at %s, %d at a time; SIGTERM stops it",
            " ".join(command),
            settings.bridge_url,
            options.concurrency,
        )
        await Runner(options).run(stop)

    asyncio.run(run())
    return 0


def _check_runnable(program: str, workdir: Path | None) -> None:
    """Refuse to start a runner whose command cannot start: it would claim every task and fail
    each one with "cannot start".

    Raises:
        ConfigError: naming the program and what to do.
    """
    import shutil

    if "/" in program:
        path = Path(program)
        if not path.is_absolute() and workdir is not None:
            path = workdir / path  # the command runs in --workdir
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"cannot run {program!r}: there is no executable file at {path}")
    elif shutil.which(program) is None:
        raise ConfigError(
            f"cannot run {program!r}: it is not on PATH; install it, or give its full path"
        )


def _seconds(value: str) -> float:
    """A finite number of seconds, 0 or more (argparse type): NaN or inf would wait forever."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number 0 or more, got {value!r}")
    return seconds


def _positive_int(value: str) -> int:
    """A whole number, 1 or more (argparse type); the service checks the upper bound."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus-bridge",
        description="A durable task queue and MCP server between claude.ai and your agent.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        help=f"read this configuration file, not the standard one ({config.ENV_FILE_VARIABLE})",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve MCP over Streamable HTTP (or --stdio)")
    serve.add_argument("--stdio", action="store_true", help="speak MCP over stdin/stdout")
    serve.add_argument("--host", help="override NEXUS_BRIDGE_HOST")
    serve.add_argument("--port", type=int, help="override NEXUS_BRIDGE_PORT (0: any free port)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="migrate to the latest schema (alembic upgrade)")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="migrate back (alembic downgrade)")
    down.add_argument("revision", help="a revision from: nexus-bridge db history")
    db_sub.add_parser("history", help="the revisions known, the head and the database's")
    db.set_defaults(func=cmd_db)

    send = sub.add_parser("send", parents=[common], help="queue a task")
    send.add_argument("text")
    send.add_argument("--target", default=config.DEFAULT_TARGET)
    send.add_argument("--urgent", action="store_true", help="mark it URGENT for the agent")
    send.set_defaults(func=cmd_send)

    status = sub.add_parser("status", parents=[common], help="the queue at a glance")
    status.add_argument("--target")
    status.set_defaults(func=cmd_status)

    upd = sub.add_parser("updates", parents=[common], help="updates since this command's last run")
    upd.add_argument("--follow", "-f", action="store_true", help="keep printing new updates")
    upd.add_argument("--since", help="ISO-8601 time instead of the last-run cursor")
    upd.add_argument("--cursor", help="a seq to continue after")
    upd.add_argument("--message-id", help="only this task's updates")
    upd.add_argument(
        "--limit",
        type=_positive_int,
        default=config.DEFAULT_PULL_LIMIT,
        help="updates read per page (every page is printed)",
    )
    upd.set_defaults(func=cmd_updates)

    show = sub.add_parser("show", parents=[common], help="one task and its recent updates")
    show.add_argument("id")
    show.set_defaults(func=cmd_show)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel an open task")
    cancel.add_argument("id")
    cancel.add_argument("--reason")
    cancel.set_defaults(func=cmd_cancel)

    reply = sub.add_parser("reply", parents=[common], help="answer the agent's question")
    reply.add_argument("id")
    reply.add_argument("text")
    reply.set_defaults(func=cmd_reply)

    prompt = sub.add_parser(
        "agent-prompt", help="print the CLAUDE.md section that teaches the agent the protocol"
    )
    prompt.add_argument("--agent-username", help="the agent bot's @username")
    prompt.add_argument("--bridge-username", help="the bridge bot's @username")
    prompt.add_argument("--target", help="print the section for this target's transport")
    prompt.set_defaults(func=cmd_agent_prompt)

    agent = sub.add_parser(
        "agent", help="the direct agent API on a running bridge (NEXUS_BRIDGE_URL, _AGENT_TOKEN)"
    )
    agent_sub = agent.add_subparsers(dest="agent_action", required=True, metavar="ACTION")
    nxt = agent_sub.add_parser("next", parents=[common], help="claim the next task")
    nxt.add_argument(
        "--wait", type=_seconds, default=0, help="wait up to this many seconds (capped)"
    )
    for action, helptext in (
        ("start", "say you started"),
        ("heartbeat", "keep the claim on a task (renew its lease)"),
        ("replies", "the client's answers"),
    ):
        one = agent_sub.add_parser(action, parents=[common], help=helptext)
        one.add_argument("id")
        if action == "replies":
            one.add_argument("--cursor")
    for action, second, helptext in (
        ("update", "text", "report progress"),
        ("ask", "text", "ask the client a question"),
        ("fail", "error", "end the task in error"),
    ):
        two = agent_sub.add_parser(action, parents=[common], help=helptext)
        two.add_argument("id")
        two.add_argument(second)
    done = agent_sub.add_parser("done", parents=[common], help="finish the task")
    done.add_argument("id")
    done.add_argument("--summary")
    agent.set_defaults(func=cmd_agent)
    run = agent_sub.add_parser(
        "run",
        help="take tasks and run a command for each (--claude: Claude Code), until SIGTERM",
        description=(
            "Claim the target's tasks one by one (or --concurrency at once) and run COMMAND for "
            "each, with the task text on stdin; its output becomes progress updates, its exit "
            "status finishes the task. --claude runs: claude -p --output-format stream-json "
            "--verbose [EXTRA CLAUDE ARGS]."
        ),
    )
    run.add_argument("--target", help="the target this runner serves (checked against the token)")
    run.add_argument("--concurrency", type=_positive_int, default=1, help="tasks at once (1)")
    run.add_argument("--timeout", type=_seconds, help="fail a command that runs longer")
    run.add_argument("--workdir", type=Path, help="run the command in this directory")
    run.add_argument("--format", choices=["text", "claude"], help="how to read its output")
    run.add_argument("--claude", action="store_true", help="run Claude Code (see above)")
    run.add_argument("--grace", type=_seconds, help="on SIGTERM, seconds commands may finish (30)")
    run.add_argument("--state-dir", type=Path, help="where the runner keeps its tasks in hand")
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND [ARG...]")
    run.set_defaults(func=cmd_agent_run)

    auth = sub.add_parser("auth", help="OAuth: the owner passphrase, clients and tokens")
    auth_sub = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    setp = auth_sub.add_parser("set-passphrase", help="set the consent page's passphrase")
    setp.add_argument("--stdin", action="store_true", help="read it from standard input")
    auth_sub.add_parser("clients", parents=[common], help="registered clients")
    auth_sub.add_parser("tokens", parents=[common], help="issued token families")
    revoke = auth_sub.add_parser("revoke", help="revoke a client or a token family")
    revoke.add_argument("id")
    auth.set_defaults(func=cmd_auth, json=False)

    doctor = sub.add_parser(
        "doctor", parents=[common], help="check the whole set-up and say what to fix"
    )
    doctor.set_defaults(func=cmd_doctor)

    conf = sub.add_parser(
        "config", parents=[common], help="the effective configuration and where each value is from"
    )
    conf.set_defaults(func=cmd_config)

    lst = sub.add_parser("list", parents=[common], help="tasks, newest first")
    lst.add_argument("--status")
    lst.add_argument("--target")
    lst.add_argument("--limit", type=_positive_int, default=config.DEFAULT_LIST_LIMIT)
    lst.add_argument("--before")
    lst.set_defaults(func=cmd_list)

    ops.add_commands(sub)
    return parser


# What a shell reports for a command killed by SIGPIPE (128 + 13): its reader went away.
BROKEN_PIPE_STATUS: Final = 141


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader stopped early (``| head``): stop quietly, as any Unix tool. What is still
        # buffered for stdout goes nowhere, so the flush at exit cannot fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_STATUS


def _main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.env_file is not None:
        config.use_env_file(args.env_file)
    try:
        try:
            settings = load_settings()
        except ConfigError as exc:
            if args.func is cmd_doctor:  # the doctor reports it as its first failed check
                return _doctor_configuration_failed(args, exc)
            raise
        configure_logging(settings.log_level, settings.secrets(), settings.log_format)
        result: int = args.func(settings, args)
    except TaskNotFound as exc:  # its message names the MCP tool; a shell user needs the command
        print(
            f"nexus-bridge: error: no task with id {exc.task_id!r}; nexus-bridge list shows the "
            "ids of existing tasks",
            file=sys.stderr,
        )
        return 2
    except NexusBridgeError as exc:
        print(f"nexus-bridge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
