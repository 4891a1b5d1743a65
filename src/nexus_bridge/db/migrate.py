"""Alembic, driven from code: where the migrations are, upgrade, and the head check."""

from __future__ import annotations

import ast
import functools
from pathlib import Path
from typing import TYPE_CHECKING

import nexus_bridge
from nexus_bridge.errors import MigrationError

# alembic (with mako and pygments) is imported where it is used, not here: a server only needs
# to know the head revisions (``head_revisions``), and loading alembic would double its start.
if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.util import CommandError


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
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_path()))
    # ConfigParser interpolation: a literal % in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head") -> None:
    """Raises MigrationError for a revision, given or found in the database, that is unknown."""
    from alembic import command
    from alembic.util import CommandError

    try:
        command.upgrade(alembic_config(database_url), revision)
    except CommandError as exc:
        raise _explained(exc) from exc


def downgrade(database_url: str, revision: str) -> None:
    """Raises MigrationError for a revision, given or found in the database, that is unknown."""
    from alembic import command
    from alembic.util import CommandError

    try:
        command.downgrade(alembic_config(database_url), revision)
    except CommandError as exc:
        raise _explained(exc) from exc


def _explained(exc: CommandError) -> MigrationError:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_path()))
    known = [r.revision for r in reversed(list(script.walk_revisions()))]
    return MigrationError(
        f"{exc}; this nexus-bridge knows revisions {', '.join(known)} (a database at another "
        "one was migrated by a newer nexus-bridge: upgrade nexus-bridge); see: "
        "nexus-bridge db history"
    )


def revisions() -> list[tuple[str, str]]:
    """Every revision this nexus-bridge knows, oldest first, with the first line of its doc."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_path()))
    return [
        (r.revision, (r.doc or "").strip().splitlines()[0] if r.doc else "")
        for r in reversed(list(script.walk_revisions()))
    ]


@functools.cache
def head_revisions() -> tuple[str, ...]:
    """The revisions no other revision builds on, read from the migration files' ``revision``
    and ``down_revision`` assignments without loading alembic (a unit test checks that alembic
    finds the same heads). Read once: the migrations are this nexus-bridge's own, and a server
    asks for them twice as it starts."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in sorted((migrations_path() / "versions").glob("*.py")):
        found = _revision_assignments(path)
        if "revision" not in found:
            continue
        revisions.add(str(found["revision"]))
        down = found.get("down_revision")
        if isinstance(down, str):
            parents.add(down)
        elif isinstance(down, tuple | list):
            parents.update(str(d) for d in down)
    return tuple(sorted(revisions - parents))


def _revision_assignments(path: Path) -> dict[str, object]:
    source = path.read_text(encoding="utf-8")
    # The identifiers head the file, before its functions: parsing only that much is 5x faster
    # (a server reads them as it starts). Anything else gets the whole file parsed.
    end = source.find("\ndef ")
    if end >= 0:
        try:
            found = _assignments(source[:end])
        except SyntaxError:
            found = {}
        if {"revision", "down_revision"} <= found.keys():
            return found
    return _assignments(source)


def _assignments(source: str) -> dict[str, object]:
    found: dict[str, object] = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names = [t.id for t in targets if isinstance(t, ast.Name)]
            if node.value is not None and {"revision", "down_revision"} & set(names):
                found[names[0]] = ast.literal_eval(node.value)
    return found


def known_revisions() -> frozenset[str]:
    """Every revision this nexus-bridge's migrations know."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(migrations_path()))
    return frozenset(r.revision for r in script.walk_revisions())
