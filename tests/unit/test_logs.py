"""Secrets never reach the log output, whatever logs them."""

from __future__ import annotations

import io
import logging

from nexus_bridge.logs import REDACTED, RedactSecrets


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
