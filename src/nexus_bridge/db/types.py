"""Column types shared by the models and the migrations."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

# Fixed width, always UTC, always with an offset: reads well in the sqlite3 CLI and sorts
# correctly as plain text (which is how SQLite compares it).
TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%f+00:00"
TIMESTAMP_WIDTH: Final = 32


# A row stores one moment in several columns (created_at, updated_at, ...): format it once.
# Equal instants in different zones are equal keys, and have the same stored form.
@functools.lru_cache(maxsize=64)
def format_timestamp(value: datetime) -> str:
    """The stored form of an aware datetime (UTC, microseconds, ``+00:00``)."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    # isoformat is TIMESTAMP_FORMAT for a UTC datetime, at a fifth of strftime's cost.
    return value.astimezone(UTC).isoformat(timespec="microseconds")


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime stored as fixed-width ISO-8601 text on every database."""

    impl = String(TIMESTAMP_WIDTH)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if isinstance(value, str):
            return value
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        return format_timestamp(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return datetime.fromisoformat(str(value)).astimezone(UTC)
