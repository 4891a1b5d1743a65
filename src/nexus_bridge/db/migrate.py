"""Alembic, driven from code: where the migrations are, upgrade, and the head check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError

import nexus_bridge
from nexus_bridge.errors import MigrationError


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
    """Raises MigrationError for a revision, given or found in the database, that is unknown."""
    try:
        command.upgrade(alembic_config(database_url), revision)
    except CommandError as exc:
        raise _explained(exc) from exc


def downgrade(database_url: str, revision: str) -> None:
    """Raises MigrationError for a revision, given or found in the database, that is unknown."""
    try:
        command.downgrade(alembic_config(database_url), revision)
    except CommandError as exc:
        raise _explained(exc) from exc


def _explained(exc: CommandError) -> MigrationError:
    script = ScriptDirectory(str(migrations_path()))
    known = [r.revision for r in reversed(list(script.walk_revisions()))]
    return MigrationError(
        f"{exc}; this nexus-bridge knows revisions {', '.join(known)} (a database at another "
        "one was migrated by a newer nexus-bridge: upgrade nexus-bridge); see: "
        "nexus-bridge db history"
    )


def revisions() -> list[tuple[str, str]]:
    """Every revision this nexus-bridge knows, oldest first, with the first line of its doc."""
    script = ScriptDirectory(str(migrations_path()))
    return [
        (r.revision, (r.doc or "").strip().splitlines()[0] if r.doc else "")
        for r in reversed(list(script.walk_revisions()))
    ]


def head_revisions() -> tuple[str, ...]:
    script = ScriptDirectory(str(migrations_path()))
    return tuple(script.get_heads())


def known_revisions() -> frozenset[str]:
    """Every revision this nexus-bridge's migrations know."""
    script = ScriptDirectory(str(migrations_path()))
    return frozenset(r.revision for r in script.walk_revisions())
