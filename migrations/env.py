"""Alembic environment: async engine, batch mode for SQLite, URL from nexus_bridge.config."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection, make_url

from nexus_bridge.config import load_settings
from nexus_bridge.db.engine import create_engine
from nexus_bridge.db.models import POSTGRESQL_ONLY, declare_postgresql_options, metadata

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

declare_postgresql_options()
target_metadata = metadata


def _database_url() -> str:
    override = context.get_x_argument(as_dictionary=True).get("url")
    if override:
        return override
    configured = config.get_main_option("sqlalchemy.url")
    if configured:
        return configured
    return load_settings().database_url


def _compared_on(dialect: str) -> Any:
    """alembic's include_object: an index of PostgreSQL's alone is no drift elsewhere."""

    def include(obj: Any, _name: Any, type_: str, _reflected: bool, _compare_to: Any) -> bool:
        only_postgresql = type_ == "index" and bool(obj.info.get(POSTGRESQL_ONLY))
        return dialect == "postgresql" or not only_postgresql

    return include


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    if connection is not None:
        dialect = connection.dialect.name
    else:
        dialect = make_url(str(url)).get_backend_name()
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        include_object=_compared_on(dialect),
        render_as_batch=True,
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    _configure(url=_database_url())
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    # Foreign keys stay off while migrating: SQLite batch mode rebuilds tables, and a rebuild
    # with foreign keys on would cascade deletes.
    engine = create_engine(_database_url(), foreign_keys=False)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
