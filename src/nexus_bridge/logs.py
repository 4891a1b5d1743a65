"""Logging set-up: everything to stderr, and no secret ever written out."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any, Final

REDACTED: Final = "[redacted]"
# httpx logs every request URL at INFO, and python-telegram-bot logs its Bot API URL at DEBUG:
# both carry the bot token. At DEBUG, aiosqlite logs every statement with its parameters (client
# secrets, token and passphrase hashes, task text), SQLAlchemy and asyncpg can do the same, and
# the MCP SDK logs every message it sends or receives (tool arguments: task text, replies). So
# DEBUG means nexus-bridge's own debug lines, never theirs. The handler filter below is the
# second line of defence.
QUIET_LOGGERS: Final = {
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "httpx2": logging.WARNING,
    "httpcore2": logging.WARNING,
    "telegram": logging.INFO,
    "alembic.runtime.plugins": logging.WARNING,
    "aiosqlite": logging.INFO,
    "sqlalchemy": logging.WARNING,
    "asyncpg": logging.INFO,
    "mcp": logging.INFO,
    # Stateless HTTP: every request is a session of its own, "terminated" at INFO as it ends.
    "mcp.server.streamable_http": logging.WARNING,
    "mcp.server.streamable_http_manager": logging.WARNING,
}
# uvicorn's access log line: (client, method, path with query string, HTTP version, status).
ACCESS_LOGGER: Final = "uvicorn.access"
ACCESS_PATH_ARG: Final = 2
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Fields a log call may attach with ``extra=``; the JSON format gives each its own key.
LOG_FIELDS: Final = ("task_id", "target")


class RedactSecrets(logging.Filter):
    """Replaces configured secrets in every record that passes through a handler."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({*self._secrets, *(s for s in secrets if s)}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        if record.exc_info and record.exc_text is None and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            for secret in self._secrets:
                text = text.replace(secret, REDACTED)
            record.exc_text = text
        return True


class StripQueryStrings(logging.Filter):
    """Drops the query string from uvicorn's access log lines: a client may put a token there
    (``?access_token=…``, ``?code=…``), and the path alone says which endpoint was hit."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) > ACCESS_PATH_ARG:
            path = args[ACCESS_PATH_ARG]
            if isinstance(path, str) and "?" in path:
                stripped = list(args)
                stripped[ACCESS_PATH_ARG] = path.partition("?")[0]
                record.args = tuple(stripped)
        return True


def quiet_noisy_loggers() -> None:
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < level:
            logger.setLevel(level)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO-8601), level, logger, message, the fields in
    LOG_FIELDS a call attached, and the traceback as ``exc_info`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_text is None:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc_info"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


# asyncio logs a failed accept() (the process is out of open files) once per connection waiting,
# up to uvicorn's backlog of 2048, every second while it lasts, each with a traceback: tens of
# megabytes of log a minute. One such line a minute says as much.
ACCEPT_FAILED_MESSAGE: Final = "socket.accept() out of system resource"
ACCEPT_FAILED_LOG_SECONDS: Final = 60.0
# What anyone on the internet can make the server say, a line a request (a wrong Host, a webhook
# without its secret, registrations over the limits): at most one line a minute of each, by
# logger and how the message begins, the rest counted in the next.
REFUSED_REQUEST_MESSAGES: Final = {
    "nexus_bridge.app": (
        "refused a request for Host",
        "telegram webhook: refused a request",
        "oauth: refused a registration",
    ),
    "nexus_bridge.oauth": ("oauth: refused a registration",),
}
REFUSED_REQUEST_LOG_SECONDS: Final = 60.0


class OncePerInterval(logging.Filter):
    """Lets through one record whose message starts with ``prefix`` per ``seconds``; the
    others in between are dropped (and counted in the next one let through)."""

    def __init__(
        self, prefix: str, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.prefix = prefix
        self._seconds = seconds
        self._clock = clock
        self._last: float | None = None
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(self.prefix):
            return True
        now = self._clock()
        if self._last is not None and now - self._last < self._seconds:
            self.dropped += 1
            return False
        self._last = now
        if self.dropped:
            record.msg = (
                f"{record.msg}\n({self.dropped} more like it since the last one were not logged)"
            )
            self.dropped = 0
        return True


class RepeatedFailure:
    """The log of something a loop does every round (a poll, a lease renewal) while it keeps
    failing (the database away for an hour): the first failure with its traceback, then one
    line every ``seconds`` at most with how many failed since, then one when it works again;
    not a traceback a round."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._seconds = seconds
        self._clock = clock
        self._since: float | None = None  # when it began failing
        self._last_line = 0.0
        self._failures = 0
        self._unlogged = 0

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self._failures += 1
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if self._since is None:
            self._since = self._last_line = now
            self._log.error("%s: %s", self._what, reason, exc_info=exc)
        elif now - self._last_line >= self._seconds:
            self._last_line = now
            self._log.error(
                "%s: still failing for %.0f s (%d more times since the last line): %s",
                self._what,
                now - self._since,
                self._unlogged + 1,
                reason,
            )
            self._unlogged = 0
        else:
            self._unlogged += 1

    def succeeded(self) -> None:
        if self._since is not None:
            self._log.info(
                "%s: works again, after %d failures in %.0f s",
                self._what,
                self._failures,
                self._clock() - self._since,
            )
        self._since, self._failures, self._unlogged = None, 0, 0


# The filters configure_logging installed, so secrets learnt later are redacted too.
_INSTALLED: Final[list[RedactSecrets]] = []


def redact_also(secrets: Iterable[str]) -> None:
    """From now on redact ``secrets`` too: those known only once the configuration is loaded
    (a bot token read from the Telegram credentials file)."""
    for redact in _INSTALLED:
        redact.add(secrets)


def configure_logging(level: str, secrets: Iterable[str] = (), log_format: str = "text") -> None:
    """Log to stderr (stdout belongs to command output, and to MCP under --stdio), as readable
    lines or, with ``log_format="json"``, one JSON object per line."""
    logging.basicConfig(level=level, stream=sys.stderr, format=TEXT_FORMAT)
    redact = RedactSecrets(secrets)
    _INSTALLED.append(redact)
    for handler in logging.getLogger().handlers:
        handler.addFilter(redact)
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, StripQueryStrings) for f in access.filters):
        access.addFilter(StripQueryStrings())
    event_loop = logging.getLogger("asyncio")
    if not any(isinstance(f, OncePerInterval) for f in event_loop.filters):
        event_loop.addFilter(OncePerInterval(ACCEPT_FAILED_MESSAGE, ACCEPT_FAILED_LOG_SECONDS))
    quiet_noisy_loggers()
    limit_refused_request_logs()


def limit_refused_request_logs() -> None:
    """At most a line a minute of each kind of refused request (REFUSED_REQUEST_MESSAGES)."""
    for name, prefixes in REFUSED_REQUEST_MESSAGES.items():
        log = logging.getLogger(name)
        present = {f.prefix for f in log.filters if isinstance(f, OncePerInterval)}
        for prefix in prefixes:
            if prefix not in present:
                log.addFilter(OncePerInterval(prefix, REFUSED_REQUEST_LOG_SECONDS))
