"""One exception tree for nexus-bridge. Each class's docstring is its default message."""

from __future__ import annotations

import re
from typing import Final


class NexusBridgeError(Exception):
    """nexus-bridge failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(NexusBridgeError):
    """The configuration is invalid."""


class InvalidInput(NexusBridgeError):
    """The request is invalid."""


class TaskNotFound(NexusBridgeError):
    """No task has that id."""

    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"no task with id {task_id!r}; list_messages shows the ids of existing tasks"
        )
        self.task_id = task_id


class DuplicateTask(NexusBridgeError):
    """An identical task is still open for this target."""


class IllegalTransition(NexusBridgeError):
    """That status change is not allowed."""


class TaskAlreadyEnded(IllegalTransition):
    """The task has already ended."""


class DatabaseNotReady(NexusBridgeError):
    """The database is not migrated to the current schema; run: nexus-bridge db upgrade"""


class MigrationError(NexusBridgeError):
    """The migration cannot run."""


class DatabaseUnreachable(DatabaseNotReady):
    """Cannot connect to the database."""

    def __init__(self, reason: str) -> None:
        super().__init__(
            f"cannot connect to the database: {reason}; check NEXUS_BRIDGE_DATABASE_URL (host, "
            "port, database name, credentials) and that the database server is running"
        )


class DatabaseBusy(NexusBridgeError):
    """the database is busy; try again"""


class DatabaseUnwritable(NexusBridgeError):
    """The database refused a write: its disk is full or failing, or it is read-only. Nothing of
    the call was written; it works again once the owner has fixed that (no restart needed)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"the database cannot be written ({reason}); nothing of this call was written: the "
            "disk of the bridge's database is full or failing, or the database is read-only; "
            "the bridge's owner must free space or fix it, then try again"
        )


class AgentTokenRefused(ConfigError):
    """The bridge refused the agent token."""


class BridgeUnreachable(ConfigError):
    """Cannot reach the bridge."""


class AnotherTarget(NexusBridgeError):
    """The agent token is for another target than the one named."""

    PREFIX: Final = "this agent token is for target "

    def __init__(self, mine: str, named: str) -> None:
        super().__init__(f"{self.PREFIX}{mine!r}, not {named!r}")

    @classmethod
    def target_in(cls, message: str) -> str | None:
        """The token's target (quoted, as said) in a tool error carrying this error; None if
        the message is not one."""
        if cls.PREFIX not in message:
            return None
        return message.partition(cls.PREFIX)[2].partition(", not ")[0]


class BridgeTroubled(NexusBridgeError):
    """The bridge answered but could not do the call on its side: its database is busy, away,
    full or read-only, or it failed unexpectedly. The same call may work later."""


# How a tool error that is the bridge's trouble, not the call's, begins or reads (the messages
# of DatabaseBusy, DatabaseUnreachable, DatabaseUnwritable and of an unexpected failure): a
# client that may wait (the agent runner) tries such a call again.
INTERNAL_ERROR: Final = "internal error in nexus-bridge"
_BRIDGE_SIDE_MARKERS: Final = (
    "the database is busy; try again",
    "cannot connect to the database: ",
    "the database cannot be written (",
    INTERNAL_ERROR,
)


# How the MCP SDK introduces a tool's error message.
_TOOL_ERROR_PREFIX: Final = re.compile(r"Error executing tool [^:\s]*: ")


def is_bridge_side(message: str) -> bool:
    """True when a tool error's ``message`` is the bridge's trouble, not the call's: it must
    begin so (after the SDK's prefix), since another error may quote a caller's text."""
    prefix = _TOOL_ERROR_PREFIX.match(message)
    body = message[prefix.end() :] if prefix is not None else message
    return body.startswith(_BRIDGE_SIDE_MARKERS)
