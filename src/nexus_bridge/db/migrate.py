"""Alembic, driven from code: where the migrations are, upgrade, and the head check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import nexus_bridge


def migrations_path() -> Path:
    """The migrations directory: inside the installed package, or at the repo root."""
    packaged = Path(nexus_bridge.__file__).resolve().parent / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    repo = Path(nexus_bridge.__file__).resolve().parents[2] / "migrations"
    if (repo / "env.py").is_file():
        return repo
    raise FileNotFoundError(f"no migrations found at {packaged} or {repo}")


def alembic_config(database_url: str) -> Config:
    """An alembic config for ``database_url`` that works from any current directory."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_path()))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def head_revisions() -> tuple[str, ...]:
    script = ScriptDirectory(str(migrations_path()))
    return tuple(script.get_heads())
