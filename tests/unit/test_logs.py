"""Secrets never reach the log output, whatever logs them."""

from __future__ import annotations

import io
import logging

from nexus_bridge.logs import (
    REDACTED,
    RedactSecrets,
    RepeatedFailure,
    StripQueryStrings,
    quiet_noisy_loggers,
)


def test_secrets_are_redacted_in_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(["123:SECRET-TOKEN", "bearer-secret-0123456789"]))
    log = logging.getLogger("test.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("POST https://api.telegram.org/bot123:SECRET-TOKEN/getMe")
        log.warning("token %s used", "bearer-secret-0123456789")
        try:
            raise RuntimeError("failed for 123:SECRET-TOKEN")
        except RuntimeError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    output = stream.getvalue()
    assert "SECRET-TOKEN" not in output
    assert "bearer-secret" not in output
    assert output.count(REDACTED) == 4


def test_the_access_log_keeps_the_path_and_drops_the_query_string() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    log = logging.getLogger("test.access")
    log.setLevel(logging.INFO)
    log.addFilter(StripQueryStrings())
    log.addHandler(handler)
    log.propagate = False
    try:
        # uvicorn's own format and arguments
        log.info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/mcp?access_token=abc", "1.1", 200
        )
        log.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/healthz", "1.1", 200)
        log.info("no arguments? fine")
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().splitlines() == [
        '127.0.0.1:5 - "GET /mcp HTTP/1.1" 200',
        '127.0.0.1:5 - "GET /healthz HTTP/1.1" 200',
        "no arguments? fine",
    ]


def test_libraries_that_log_sql_parameters_or_messages_stay_quiet_at_debug() -> None:
    quiet_noisy_loggers()
    for name in ("aiosqlite", "sqlalchemy.engine.Engine", "asyncpg", "mcp.server.lowlevel"):
        assert not logging.getLogger(name).isEnabledFor(logging.DEBUG), name


def test_json_lines_redact_secrets_in_the_message_the_fields_and_the_traceback() -> None:
    import json

    from nexus_bridge.logs import JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets(["123:SECRET-TOKEN"]))
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.json")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("sent to %s", "bot123:SECRET-TOKEN", extra={"task_id": "t1", "target": "x"})
        log.warning("plain", extra={"target": "123:SECRET-TOKEN"})
        try:
            raise RuntimeError("failed for 123:SECRET-TOKEN")
        except RuntimeError:
            log.exception("boom", extra={"task_id": "t2"})
    finally:
        log.removeHandler(handler)
    assert "SECRET-TOKEN" not in stream.getvalue()
    first, second, third = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == f"sent to bot{REDACTED}"
    assert (first["task_id"], first["target"], first["level"]) == ("t1", "x", "WARNING")
    assert second["target"] == REDACTED
    assert third["task_id"] == "t2"
    assert "RuntimeError: failed for " + REDACTED in third["exc_info"]


def test_a_flood_of_one_kind_of_record_is_logged_once_per_interval_then_counted() -> None:
    from nexus_bridge.logs import OncePerInterval

    now = [100.0]
    once = OncePerInterval("socket.accept() out of system resource", 60.0, clock=lambda: now[0])

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, message, None, None)

    flood = "socket.accept() out of system resource\nexception: [Errno 24] Too many open files"
    assert once.filter(record(flood))
    assert not any(once.filter(record(flood)) for _ in range(2048))
    assert once.filter(record("Task exception was never retrieved"))  # other records pass
    now[0] += 60.0
    next_one = record(flood)
    assert once.filter(next_one)
    assert "2048 more like it since the last one were not logged" in str(next_one.msg)
    assert once.dropped == 0


def test_a_failure_repeated_every_round_logs_one_traceback_then_a_line_a_minute() -> None:
    """A loop that polls every second while the database is away for an hour: not 3,600
    tracebacks, but one, then one line a minute with a count, then one when it works again."""
    now = [0.0]
    log = logging.getLogger("test.repeated")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    failures = RepeatedFailure(log, "could not poll", clock=lambda: now[0])
    try:
        for _ in range(3_600):  # an hour, a round a second
            failures.failed(ConnectionRefusedError("connection refused"))
            now[0] += 1.0
        failures.succeeded()
        failures.succeeded()  # working on: nothing more to say
        failures.failed(ConnectionRefusedError("refused again"))
    finally:
        log.removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert [r.exc_info is not None for r in records] == [True] + [False] * 60 + [True]
    assert lines[0] == "could not poll: connection refused"
    assert lines[1] == (
        "could not poll: still failing for 60 s (60 more times since the last line): "
        "connection refused"
    )
    assert lines[60].startswith("could not poll: works again, after 3600 failures in 3600 s")
    assert lines[61] == "could not poll: refused again"
