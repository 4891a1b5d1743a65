"""The store and queue service of one process, built from settings; no MCP, HTTP or Telegram.

The CLI uses this alone (fast start-up); the server adds the MCP adapter in ``app.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from nexus_bridge.config import Settings
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.migrate import head_revisions
from nexus_bridge.db.store import Store
from nexus_bridge.errors import DatabaseNotReady
from nexus_bridge.queue import QueueService


@dataclass
class Runtime:
    """The running parts every entry point shares."""

    settings: Settings
    store: Store
    queue: QueueService
    heads: tuple[str, ...]

    async def check_schema(self) -> None:
        """Raises DatabaseNotReady unless the database is reachable and migrated to head."""
        try:
            current = tuple(sorted(await self.queue.schema_revisions()))
        except OSError as exc:
            raise DatabaseNotReady(f"the database is unreachable: {exc}") from exc
        if current != tuple(sorted(self.heads)):
            at = ", ".join(current) or "no schema"
            raise DatabaseNotReady(
                f"the database is at {at}, not at the current schema "
                f"({', '.join(self.heads)}); run: nexus-bridge db upgrade"
            )

    async def close(self) -> None:
        self.queue.signal.close()
        await self.store.dispose()


def open_runtime(settings: Settings) -> Runtime:
    """Wire the store and the queue service; nothing connects until first use."""
    store = Store(
        create_engine(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    )
    queue = QueueService(
        store,
        max_message_chars=settings.max_message_chars,
        max_wait_seconds=settings.max_wait_seconds,
    )
    return Runtime(settings=settings, store=store, queue=queue, heads=head_revisions())
