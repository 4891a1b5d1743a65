"""Which tool errors the agent runner waits out (the bridge's trouble) and which it takes as the
call's answer: decided by how the message begins, never by text it may quote."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nexus_bridge.errors import (
    INTERNAL_ERROR,
    DatabaseBusy,
    DatabaseUnreachable,
    DatabaseUnwritable,
    InvalidInput,
    TaskNotFound,
    is_bridge_side,
)

SDK_PREFIX = "Error executing tool complete_task: "
BRIDGE_SIDE = [
    str(DatabaseBusy()),
    str(DatabaseUnreachable("the connection was lost (connection reset)")),
    str(DatabaseUnwritable("database or disk is full")),
    f"{INTERNAL_ERROR} (ref 1a2b3c4d); nothing was changed by this call unless it says otherwise",
]


def test_the_bridges_own_trouble_is_recognised_with_or_without_the_sdks_prefix() -> None:
    for message in BRIDGE_SIDE:
        assert is_bridge_side(message), message
        assert is_bridge_side(SDK_PREFIX + message), message


def test_the_calls_own_errors_are_not() -> None:
    for error in (TaskNotFound("0" * 36), InvalidInput("text must not be empty")):
        assert not is_bridge_side(SDK_PREFIX + str(error))


@given(st.text(max_size=300), st.sampled_from(BRIDGE_SIDE))
def test_an_error_quoting_any_text_is_the_calls_even_if_the_text_reads_like_trouble(
    quoted: str, trouble: str
) -> None:
    """A command's output may say anything, "internal error in nexus-bridge" included: an
    error that quotes it is still the call's, and is not tried again for ever."""
    refusal = InvalidInput(f"text {quoted + trouble!r} is not allowed here")
    assert not is_bridge_side(SDK_PREFIX + str(refusal))
    assert not is_bridge_side(str(refusal))
