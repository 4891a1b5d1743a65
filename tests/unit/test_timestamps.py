"""The stored form of a timestamp: fixed width, UTC, sorting as text in time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nexus_bridge.db.types import TIMESTAMP_FORMAT, TIMESTAMP_WIDTH, format_timestamp

aware = st.datetimes(
    min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
).flatmap(
    lambda moment: st.integers(min_value=-14 * 60, max_value=14 * 60).map(
        lambda minutes: moment.astimezone(timezone(timedelta(minutes=minutes)))
    )
)


@given(aware)
def test_a_timestamp_is_stored_in_the_documented_format_at_fixed_width(moment: datetime) -> None:
    stored = format_timestamp(moment)
    assert stored == moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    assert len(stored) == TIMESTAMP_WIDTH
    assert datetime.fromisoformat(stored) == moment


@given(aware, aware)
def test_stored_timestamps_sort_as_text_in_time_order(a: datetime, b: datetime) -> None:
    assert (format_timestamp(a) < format_timestamp(b)) == (a < b)


def test_a_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        format_timestamp(datetime(2026, 11, 30, 12, 0))
