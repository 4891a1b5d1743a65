"""The whole configuration, resolved once: :class:`Configuration` (settings, Telegram
credentials and targets), built by :func:`load_configuration` when a command starts.

Targets are the agents nexus-bridge dispatches to, declared in the ``NEXUS_BRIDGE_CONFIG`` file.
Without that file there is one target, ``homelab``. With it, every ``[targets.NAME]`` table is a
target. Every mistake in the file is a ConfigError naming the file, the line and the key (and a
mistake in the environment names the variable), so the bridge refuses to start rather than
guess. Each per-target view (the queue's :class:`~nexus_bridge.domain.TargetPolicy`, the Telegram
transport's :class:`TelegramRoute`) is derived from the one :class:`Target`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import re
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeAlias, TypeVar

from nexus_bridge.config import (
    DEFAULT_TARGET,
    ENV_PREFIX,
    Settings,
    TelegramSettings,
    resolve_telegram,
)
from nexus_bridge.constants import GENERATE_TOKEN_COMMAND as GENERATE_COMMAND
from nexus_bridge.constants import MIN_TOKEN_CHARS
from nexus_bridge.domain import TargetPolicy, Transport
from nexus_bridge.errors import ConfigError
from nexus_bridge.logs import redact_also

logger = logging.getLogger(__name__)

TARGET_NAME: Final = re.compile(r"[a-z0-9][a-z0-9:_.-]{0,99}")
DEFAULT_DESCRIPTION: Final = "the agent"
CONFIG_VARIABLE: Final = f"{ENV_PREFIX}CONFIG"
AGENT_TOKENS_VARIABLE: Final = f"{ENV_PREFIX}AGENT_TOKENS"
TARGET_KEYS: Final = (
    "transport",
    "description",
    "dispatch",
    "chat_id",
    "agent_ids",
    "agent_username",
    "agent_tokens",
)
TELEGRAM_ONLY_KEYS: Final = ("chat_id", "agent_ids", "agent_username")

_Fail: TypeAlias = Callable[[str, str], ConfigError]  # (key, message) -> the error to raise
_Choice = TypeVar("_Choice", bound=enum.StrEnum)


class Dispatch(enum.StrEnum):
    """When a target's agent is given the next task."""

    IMMEDIATE = "immediate"
    ONE_AT_A_TIME = "one_at_a_time"


@dataclass(frozen=True, slots=True)
class Target:
    """One agent the bridge dispatches to; None and empty values mean "use the settings'"."""

    name: str
    transport: Transport
    description: str
    dispatch: Dispatch
    chat_id: int | None
    agent_ids: frozenset[int]
    agent_username: str | None
    agent_tokens: tuple[str, ...] = field(default=(), repr=False)

    @property
    def policy(self) -> TargetPolicy:
        """What the queue service needs to know of this target."""
        return TargetPolicy(
            name=self.name,
            transport=self.transport,
            one_at_a_time=self.dispatch is Dispatch.ONE_AT_A_TIME,
            description=self.description,
        )

    @property
    def route(self) -> TelegramRoute | None:
        """What the Telegram transport needs of this target; None for a direct-agent target (or
        a Telegram target whose chat is not resolved: ``load_targets`` alone leaves it unset)."""
        if self.transport is not Transport.TELEGRAM or self.chat_id is None:
            return None
        return TelegramRoute(self.name, self.chat_id, self.agent_ids, self.agent_username)


@dataclass(frozen=True, slots=True)
class TelegramRoute:
    """One target on this bot: its chat, whose messages count as its agent's, whom to mention."""

    target: str
    chat_id: int
    agent_ids: frozenset[int]
    agent_username: str | None


@dataclass(frozen=True, slots=True)
class Configuration:
    """Everything configured, read and checked once at start; never changes afterwards.

    ``targets`` are resolved: a Telegram target's chat, agents and username are its own or,
    where the file leaves them out, the Telegram settings'.
    """

    settings: Settings
    telegram: TelegramSettings | None
    targets: tuple[Target, ...]

    @property
    def policies(self) -> tuple[TargetPolicy, ...]:
        """The queue service's view of every target."""
        return tuple(target.policy for target in self.targets)

    @property
    def routes(self) -> tuple[TelegramRoute, ...]:
        """The Telegram transport's view of every Telegram target."""
        return tuple(route for target in self.targets if (route := target.route) is not None)

    def target(self, name: str) -> Target | None:
        return next((target for target in self.targets if target.name == name), None)

    def secrets(self) -> list[str]:
        """Every secret configured, including a bot token read from the credentials file."""
        values = set(self.settings.secrets())
        if self.telegram is not None:
            values.add(self.telegram.token)
        return sorted(values)


def load_configuration(settings: Settings) -> Configuration:
    """Resolve the whole configuration once: the Telegram settings (reading the credentials
    file), the targets (reading the ``NEXUS_BRIDGE_CONFIG`` file) and the checks that span
    them. Every command that needs targets or Telegram calls this once, at its start.

    Raises:
        ConfigError: any mistake; the message names the file, line and key, or the variable.
    """
    telegram = _Telegram(settings)
    targets, source = _load(settings, telegram)
    resolved = telegram.get()
    if resolved is not None:
        targets = [_with_telegram_defaults(target, resolved) for target in targets]
    if source is not None:
        _check_agent_targets_have_tokens(source, targets)
        _check_one_chat_per_target(source, targets)
    configuration = Configuration(settings=settings, telegram=resolved, targets=tuple(targets))
    redact_also(configuration.secrets())  # the credentials file's bot token, from now on
    return configuration


def configuration_of(value: Configuration | Settings) -> Configuration:
    """``value`` itself, or the configuration loaded from those settings."""
    return value if isinstance(value, Configuration) else load_configuration(value)


def _with_telegram_defaults(target: Target, telegram: TelegramSettings) -> Target:
    if target.transport is not Transport.TELEGRAM:
        return target
    return dataclasses.replace(
        target,
        chat_id=target.chat_id if target.chat_id is not None else telegram.chat_id,
        agent_ids=target.agent_ids or telegram.agent_ids,
        agent_username=target.agent_username or telegram.agent_username,
    )


def _check_agent_targets_have_tokens(source: _Source, targets: list[Target]) -> None:
    """A direct-agent target without a token could never have its tasks taken."""
    silent = [t.name for t in targets if t.transport is Transport.AGENT and not t.agent_tokens]
    if silent:
        raise source.error(
            ("targets", silent[0], "agent_tokens"),
            f"agent target(s) {', '.join(silent)} have no agent_tokens, so no agent could ever "
            f"take their tasks; add agent_tokens here or {AGENT_TOKENS_VARIABLE}="
            f"{silent[0]}:TOKEN",
        )


def _check_one_chat_per_target(source: _Source, targets: list[Target]) -> None:
    """A message in a chat two targets share could not be told apart: whose agent sent it?"""
    seen: dict[int, str] = {}
    for target in targets:
        if (route := target.route) is None:
            continue
        other = seen.setdefault(route.chat_id, target.name)
        if other != target.name:
            raise source.error(
                ("targets", target.name, "chat_id"),
                f"targets {other!r} and {target.name!r} use the same Telegram chat "
                f"{route.chat_id}; give each Telegram target its own chat_id",
            )


class _Telegram:
    """The Telegram settings, resolved at most once (the credentials file is read once), and
    only when asked for: an agent-only targets file needs none."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._done = False
        self._value: TelegramSettings | None = None
        self._problem: ConfigError | None = None

    def get(self) -> TelegramSettings | None:
        """Raises ConfigError when the Telegram settings cannot be resolved."""
        if not self._done:
            self._done = True
            try:
                self._value = resolve_telegram(self._settings)
            except ConfigError as exc:
                self._problem = exc
        if self._problem is not None:
            raise self._problem
        return self._value


def load_targets(settings: Settings) -> list[Target]:
    """The targets as declared: from the ``NEXUS_BRIDGE_CONFIG`` file or, without one, the
    single default (``load_configuration`` fills in the Telegram defaults and checks more).

    The default target is ``homelab``; it uses Telegram when a bot token is configured and the
    direct agent API otherwise. ``NEXUS_BRIDGE_AGENT_TOKENS`` entries (``target:token``; the
    name is everything before the last ``:``) are added to the tokens from the file.

    Raises:
        ConfigError: the file is missing or invalid (the message names the file, line and key),
            or an agent token is unknown, too short or shared by two targets.
    """
    return _load(settings, _Telegram(settings))[0]


def _load(settings: Settings, telegram: _Telegram) -> tuple[list[Target], _Source | None]:
    """The declared targets, and the file they come from (None: the default target)."""
    config_file: Path | None = getattr(settings, "config_file", None)
    if config_file is None:
        default = Target(
            name=DEFAULT_TARGET,
            transport=Transport.TELEGRAM if telegram.get() is not None else Transport.AGENT,
            description=DEFAULT_DESCRIPTION,
            dispatch=Dispatch.IMMEDIATE,
            chat_id=None,
            agent_ids=frozenset(),
            agent_username=None,
        )
        targets = _add_env_tokens(
            settings, [default], {}, f"without a {CONFIG_VARIABLE} file the only target is"
        )
        return targets, None
    source = _Source.read(Path(config_file))
    targets, owners = _parse_file(source, settings, telegram)
    if owners and source.mode & (stat.S_IRWXG | stat.S_IRWXO):
        logger.warning(
            "%s holds agent tokens and is readable by other users (mode %o): chmod 600 %s",
            source.path,
            source.mode,
            source.path,
        )
    return _add_env_tokens(settings, targets, owners, f"{source.path} declares"), source


class _Source:
    """The text of the config file, so errors can point at a line."""

    def __init__(self, path: Path, text: str, mode: int = 0o600) -> None:
        self.path = path
        self.text = text
        self.mode = mode

    @classmethod
    def read(cls, path: Path) -> _Source:
        try:
            data = path.expanduser().read_bytes()
            mode = stat.S_IMODE(path.expanduser().stat().st_mode)
        except OSError as exc:
            raise ConfigError(f"cannot read {CONFIG_VARIABLE} {path}: {exc.strerror}") from exc
        try:
            return cls(path, data.decode("utf-8"), mode)
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text ({exc.reason})") from exc

    def parse(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self.text)
        except tomllib.TOMLDecodeError as exc:
            at = re.search(r"\(at line (\d+), column \d+\)", str(exc))
            line = int(at.group(1)) if at else self.text.count("\n") + 1
            raise ConfigError(f"{self.path}:{line}: invalid TOML: {exc}") from exc

    def error(self, keys: tuple[str, ...], message: str) -> ConfigError:
        """An error at the line that sets ``keys`` (or the nearest enclosing table's line)."""
        return ConfigError(f"{self.path}:{_line_of(self.text, keys)}: {_dotted(keys)}: {message}")


def _parse_file(
    source: _Source, settings: Settings, telegram: _Telegram
) -> tuple[list[Target], dict[str, str]]:
    """The file's targets, and which target each of the file's agent tokens belongs to."""
    document = source.parse()
    for key in document:
        if key != "targets":
            raise source.error(
                (key,), "unknown key; the file holds only [targets.NAME] tables, one per target"
            )
    tables = document.get("targets")
    if not isinstance(tables, dict):
        if tables is None:
            raise source.error(("targets",), "no targets; declare at least one [targets.NAME]")
        raise source.error(("targets",), f"must be a table of targets, got {_kind(tables)}")
    if not tables:
        raise source.error(("targets",), "no targets; declare at least one [targets.NAME]")
    seen: dict[str, str] = {}
    for name in tables:
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise source.error(
                ("targets", name),
                f"duplicate target name: {name!r} and {other!r} differ only in case",
            )
    targets = [
        _parse_target(source, settings, telegram, name, table) for name, table in tables.items()
    ]
    owners: dict[str, str] = {}
    for target in targets:
        for token in target.agent_tokens:
            other = owners.setdefault(token, target.name)
            if other != target.name:
                raise source.error(
                    ("targets", target.name, "agent_tokens"),
                    f"a token is also given to target {other!r}; give each target its own",
                )
    return targets, owners


def _parse_target(
    source: _Source, settings: Settings, telegram: _Telegram, name: str, table: object
) -> Target:
    here = ("targets", name)
    if not TARGET_NAME.fullmatch(name):
        raise source.error(
            here,
            f"bad target name {name!r}; use up to 100 of a-z, 0-9 and ':_.-', "
            "starting with a letter or digit (e.g. homelab, nexus:felt)",
        )
    if not isinstance(table, dict):
        raise source.error(here, f"must be a table ([targets.{_key(name)}]), got {_kind(table)}")
    for key in table:
        if key not in TARGET_KEYS:
            raise source.error(
                (*here, key), f"unknown key {key!r}; use one of {', '.join(TARGET_KEYS)}"
            )

    def fail(key: str, message: str) -> ConfigError:
        return source.error((*here, key), message)

    if "transport" not in table:
        raise fail("transport", "missing; use telegram or agent")
    transport = _choice(fail, table, "transport", Transport, "unknown transport")
    dispatch = (
        _choice(fail, table, "dispatch", Dispatch, "unknown dispatch")
        if "dispatch" in table
        else Dispatch.IMMEDIATE
    )
    description = _string(fail, table, "description") or ""
    chat_id = _integer(fail, table, "chat_id")
    agent_ids = _integers(fail, table, "agent_ids")
    username = _string(fail, table, "agent_username")
    if username is not None:
        username = username.strip().lstrip("@")
        if not username:
            raise fail("agent_username", "must be the agent bot's username, e.g. @homelab_bot")
    tokens = _tokens(fail, table, "agent_tokens")

    if transport is Transport.AGENT:
        for key in TELEGRAM_ONLY_KEYS:
            if key in table:
                raise fail(key, "only telegram targets take this key; this target uses agent")
    else:
        _check_telegram(settings, telegram, fail, chat_id, agent_ids)
    return Target(
        name=name,
        transport=transport,
        description=description,
        dispatch=dispatch,
        chat_id=chat_id,
        agent_ids=agent_ids,
        agent_username=username,
        agent_tokens=tokens,
    )


def _check_telegram(
    settings: Settings,
    resolver: _Telegram,
    fail: _Fail,
    chat_id: int | None,
    agent_ids: frozenset[int],
) -> None:
    """A telegram target needs a bot token, a chat and agent ids (its own or the settings')."""
    telegram: TelegramSettings | None = None
    problem: ConfigError | None = None
    try:
        telegram = resolver.get()
    except ConfigError as exc:
        problem = exc
    if telegram is None and problem is None:
        raise fail(
            "transport",
            f"a telegram target needs {ENV_PREFIX}TELEGRAM_BOT_TOKEN "
            f"(or {ENV_PREFIX}TELEGRAM_CREDENTIALS_FILE with the bot token)",
        )
    # When the settings cannot be resolved, fall back to the environment's own values to tell
    # a missing chat from other problems; a credentials file could hold either, so say it all.
    vague = problem is not None and settings.telegram_credentials_file is not None
    if telegram is not None:
        default_chat: int | None = getattr(telegram, "chat_id", None)
        default_agents = frozenset(getattr(telegram, "agent_ids", ()))
    else:
        default_chat = settings.telegram_chat_id
        default_agents = frozenset(settings.telegram_agent_ids)
    if not vague and chat_id is None and default_chat is None:
        raise fail(
            "chat_id", f"telegram target needs a chat_id (or {ENV_PREFIX}TELEGRAM_CHAT_ID)"
        ) from problem
    if not vague and not agent_ids and not default_agents:
        raise fail(
            "agent_ids", f"telegram target needs agent_ids (or {ENV_PREFIX}TELEGRAM_AGENT_IDS)"
        ) from problem
    if problem is not None:
        raise fail("transport", f"telegram target, but {problem}") from problem


def _choice(
    fail: _Fail, table: Mapping[str, object], key: str, kind: type[_Choice], what: str
) -> _Choice:
    value = table[key]
    allowed = " or ".join(member.value for member in kind)
    if not isinstance(value, str):
        raise fail(key, f"must be a string ({allowed}), got {_kind(value)}")
    try:
        return kind(value)
    except ValueError:
        raise fail(key, f"{what} {value!r}; use {allowed}") from None


def _string(fail: _Fail, table: Mapping[str, object], key: str) -> str | None:
    value = table.get(key)
    if value is None or isinstance(value, str):
        return value
    raise fail(key, f"must be a string, got {_kind(value)}")


def _integer(fail: _Fail, table: Mapping[str, object], key: str) -> int | None:
    value = table.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise fail(key, f"must be an integer (a Telegram id), got {_kind(value)}")


def _integers(fail: _Fail, table: Mapping[str, object], key: str) -> frozenset[int]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise fail(key, f"must be a list of integers (Telegram user ids), got {_kind(value)}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int):
            raise fail(key, f"must be a list of integers (Telegram user ids), got {_kind(item)}")
    return frozenset(value)


def _tokens(fail: _Fail, table: Mapping[str, object], key: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list):
        raise fail(key, f"must be a list of strings, got {_kind(value)}")
    for item in value:
        if not isinstance(item, str):
            raise fail(key, f"must be a list of strings, got {_kind(item)}")
        if len(item) < MIN_TOKEN_CHARS:
            raise fail(
                key,
                f"every token must be at least {MIN_TOKEN_CHARS} characters; make one with: "
                f"{GENERATE_COMMAND}",
            )
    return tuple(dict.fromkeys(value))


def _add_env_tokens(
    settings: Settings, targets: list[Target], owners: dict[str, str], declared: str
) -> list[Target]:
    """Merge ``NEXUS_BRIDGE_AGENT_TOKENS`` into the targets' tokens and check them all."""
    known = {target.name: target for target in targets}
    extra: dict[str, list[str]] = {name: [] for name in known}
    for index, entry in enumerate(getattr(settings, "agent_tokens", None) or [], start=1):
        value = entry.get_secret_value() if hasattr(entry, "get_secret_value") else str(entry)
        name, colon, token = value.strip().rpartition(":")
        name, token = name.strip(), token.strip()
        if not colon or not name:
            raise ConfigError(
                f"{AGENT_TOKENS_VARIABLE}: entry {index} must be TARGET:TOKEN, e.g. homelab:<token>"
            )
        if name not in known:
            raise ConfigError(
                f"{AGENT_TOKENS_VARIABLE}: a token for unknown target {name!r}; "
                f"{declared} {', '.join(known)}"
            )
        if len(token) < MIN_TOKEN_CHARS:
            raise ConfigError(
                f"{AGENT_TOKENS_VARIABLE}: the token for {name!r} must be at least "
                f"{MIN_TOKEN_CHARS} characters; make one with: {GENERATE_COMMAND}"
            )
        other = owners.setdefault(token, name)
        if other != name:
            raise ConfigError(
                f"{AGENT_TOKENS_VARIABLE}: the token for {name!r} is also given to target "
                f"{other!r}; give each target its own"
            )
        extra[name].append(token)
    auth = {token.get_secret_value() for token in settings.auth_tokens}
    for token, name in owners.items():
        if token in auth:
            raise ConfigError(
                f"an agent token of target {name!r} is also in {ENV_PREFIX}AUTH_TOKENS; the "
                "agent's tokens must differ from claude.ai's"
            )
    return [
        dataclasses.replace(
            target, agent_tokens=tuple(dict.fromkeys((*target.agent_tokens, *extra[target.name])))
        )
        if extra[target.name]
        else target
        for target in targets
    ]


# Finding the line of a key, for error messages: tomllib does not report positions, so scan
# the text for the table headers and ``key =`` lines, and decode their keys with tomllib itself.
_BARE_OR_QUOTED: Final = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
_KEY_PATH: Final = rf"{_BARE_OR_QUOTED}(?:[ \t]*\.[ \t]*{_BARE_OR_QUOTED})*"
_HEADER: Final = re.compile(rf"[ \t]*\[\[?[ \t]*(?P<keys>{_KEY_PATH})[ \t]*\]\]?[ \t]*(?:#.*)?\r?")
_ASSIGNMENT: Final = re.compile(rf"[ \t]*(?P<keys>{_KEY_PATH})[ \t]*=")


def _line_of(text: str, wanted: tuple[str, ...]) -> int:
    """The first line that sets ``wanted``, else the first that sets its longest prefix, else 1."""
    first: dict[int, int] = {}
    table: tuple[str, ...] = ()
    for number, line in _lines(text):
        header = _HEADER.fullmatch(line)
        if header:
            keys = _decode_keys(header["keys"])
            if keys is None:
                continue
            table = full = keys
        else:
            assignment = _ASSIGNMENT.match(line)
            if not assignment or (keys := _decode_keys(assignment["keys"])) is None:
                continue
            full = (*table, *keys)
        shared = 0
        while shared < min(len(full), len(wanted)) and full[shared] == wanted[shared]:
            shared += 1
        if shared == len(wanted):
            return number
        first.setdefault(shared, number)
    return first[max(first)] if first and max(first) > 0 else 1


def _lines(text: str) -> Iterator[tuple[int, str]]:
    """Numbered lines (as tomllib counts them), skipping the inside of multi-line strings."""
    inside: str | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if inside is not None:
            if line.count(inside) % 2:
                inside = None
            continue
        yield number, line
        for quotes in ('"""', "'''"):
            if line.count(quotes) % 2:
                inside = quotes
                break


def _decode_keys(keys: str) -> tuple[str, ...] | None:
    try:
        node: object = tomllib.loads(f"{keys} = 0")
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        (key, node) = next(iter(node.items()))
        path.append(key)
    return tuple(path)


def _key(part: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", part):
        return part
    return json.dumps(part, ensure_ascii=False)


def _dotted(keys: tuple[str, ...]) -> str:
    return ".".join(_key(part) for part in keys)


def _kind(value: object) -> str:
    """The TOML name of a value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    kinds = {str: "a string", float: "a float", list: "an array", dict: "a table"}
    return next((name for kind, name in kinds.items() if isinstance(value, kind)), "a date/time")
