"""The MCP tools: a thin adapter from MCP calls to the queue service.

Each tool returns a pydantic model, so clients get structured content (with an output schema) and
the same JSON as text. Domain errors become tool errors (``isError``) with a one-line message.
"""

import functools
import inspect
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from typing import Annotated, Any, Final, Literal, ParamSpec, TypeVar

from mcp.server.apps import client_supports_apps
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import OAuthAuthorizationServerProvider, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import (
    CallToolResult,
    Icon,
    InputRequiredResult,
    ListResourcesResult,
    ListToolsResult,
    PaginatedRequestParams,
    ToolAnnotations,
)
from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from nexus_bridge import __version__, config
from nexus_bridge.db.types import format_timestamp
from nexus_bridge.domain import MAX_ID_CHARS, MAX_INSTANT_CHARS, TransportReport
from nexus_bridge.errors import INTERNAL_ERROR, NexusBridgeError
from nexus_bridge.mcp_http import client_gone
from nexus_bridge.metrics import METRICS
from nexus_bridge.queue import DeliveryInfo, QueueService
from nexus_bridge.task_card import (
    CARD_ONLY_TOOLS,
    TASK_CARD_META,
    resources_for_client,
    task_card_extension,
    tools_for_client,
)
from nexus_bridge.views import (
    StatusName,
    TargetOut,
    TaskOut,
    TransportOut,
    UpdateOut,
    queue_figures,
)

logger = logging.getLogger(__name__)

SERVER_NAME: Final = "nexus-bridge"
INSTRUCTIONS: Final = (
    "nexus-bridge queues tasks for an AI agent running on the user's server and brings back "
    "its progress. Use send_message to hand the agent a task, pull_updates (with wait_seconds "
    "to wait) to follow what it reports, get_message for one task's state and history, "
    "list_messages and queue_status for an overview, cancel_message to withdraw a task, and "
    "reply_to_task to answer a question the agent asked (status input_required)."
)


class DeliveryOut(BaseModel):
    state: Literal["pending", "delivered", "failed", "skipped"]
    attempts: int
    last_error: str | None
    delivered_at: str | None
    telegram_message_ids: list[int]

    @classmethod
    def of(cls, info: DeliveryInfo) -> "DeliveryOut":
        return cls(
            state=info.state.value,
            attempts=info.attempts,
            last_error=info.last_error,
            delivered_at=format_timestamp(info.delivered_at) if info.delivered_at else None,
            telegram_message_ids=list(info.telegram_message_ids),
        )


class SendResult(BaseModel):
    queued: bool = Field(description="True if a new task was queued; false for a duplicate.")
    id: str = Field(description="The new task's id, or the id of the open task it duplicates.")
    status: StatusName = Field(description="That task's status.")
    reason: Literal["duplicate"] | None = Field(
        default=None, description="Why nothing was queued: an identical task is still open."
    )


class PullResult(BaseModel):
    updates: list[UpdateOut]
    next_cursor: str = Field(description="Pass as cursor to get what comes after these updates.")
    has_more: bool = Field(description="True if more updates are waiting: pull again at once.")


class QueueStatusResult(BaseModel):
    pending: int
    acknowledged: int
    in_progress: int
    input_required: int
    complete: int
    error: int
    cancelled: int
    total_updates: int
    current_task: str | None = Field(description="The text of the task the agent is working on.")
    current_task_id: str | None
    ignored_messages: int = Field(
        description="Messages in the agent's chat from senders that are not the agent, ignored."
    )
    transport: TransportOut | None = Field(
        description="How tasks reach the agent; state 'not configured' means tasks wait."
    )
    stalled: int = Field(description="Tasks with the agent but no agent activity for long.")
    targets: list[TargetOut] = Field(description="Each target's own figures.")


class TargetList(BaseModel):
    targets: list[TargetOut]


class MessageDetail(TaskOut):
    delivery: DeliveryOut | None = Field(
        description="How the task (or the latest answer to it) reached the agent's chat."
    )
    updates: list[UpdateOut] = Field(description="The task's most recent updates, oldest first.")


class MessageList(BaseModel):
    messages: list[TaskOut] = Field(description="Newest first.")
    next_before: str | None = Field(
        description="Pass as before to get the next (older) page; null on the last page."
    )


P = ParamSpec("P")
R = TypeVar("R")

# A tool error names the field and what to do; an echoed argument (a 100,000-character id, say)
# is cut in the middle so the message stays one short line and keeps its advice at the end.
MAX_ERROR_CHARS: Final = 500
_ERROR_TAIL_CHARS: Final = 160


def bounded(message: str) -> str:
    """``message`` as one line of at most ``MAX_ERROR_CHARS`` characters."""
    line = " ".join(message.splitlines())
    if len(line) <= MAX_ERROR_CHARS:
        return line
    head = MAX_ERROR_CHARS - _ERROR_TAIL_CHARS - 3
    return f"{line[:head]} … {line[-_ERROR_TAIL_CHARS:]}"


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn domain errors into one-line tool errors; hide anything unexpected behind a reference."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except NexusBridgeError as exc:
            raise ToolError(bounded(str(exc))) from exc
        except Exception as exc:
            reference = uuid.uuid4().hex[:8]
            logger.exception("tool %s failed unexpectedly (ref %s)", fn.__name__, reference)
            raise ToolError(
                f"{INTERNAL_ERROR} (ref {reference}); nothing was changed by this "
                "call unless it says otherwise; try again, or ask the operator to check the log"
            ) from exc

    return wrapper


def current_identity(default: str) -> str:
    """Who is calling: the authenticated client, or ``default`` when there is no authentication."""
    token = get_access_token()
    return f"client:{token.client_id}" if token is not None else default


def _limit_schema(low: int, high: int) -> dict[str, Any]:
    # Advertised in the schema; enforced by the service so the error is one clear line.
    return {"minimum": low, "maximum": high}


def _digits_as_text(value: object) -> object:
    """A cursor or an id typed as digits may arrive as a JSON number (the Inspector sends one)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


MAX_CURSOR_CHARS: Final = 18
# Bounds advertised in the schema; the service enforces each one with a one-line error.
TaskIdArg = Annotated[
    str,
    BeforeValidator(_digits_as_text),
    Field(
        description="The task's id (or its first 8+ characters).",
        json_schema_extra={"minLength": 1, "maxLength": MAX_ID_CHARS},
    ),
]
CursorArg = Annotated[
    str | None,
    BeforeValidator(_digits_as_text),
    Field(
        description="A next_cursor from an earlier call; continue after it.",
        json_schema_extra={"maxLength": MAX_CURSOR_CHARS},
    ),
]


def wait_seconds_arg(description: str) -> Any:
    """``wait_seconds``: finite and not negative (NaN or inf would wait forever)."""
    return Field(description=description, allow_inf_nan=False, json_schema_extra={"minimum": 0})


def text_schema(max_chars: int) -> dict[str, Any]:
    return {"maxLength": max_chars}


def register_tools(
    server: MCPServer[Any],
    queue: QueueService,
    *,
    default_identity: str,
    transport_report: Callable[[], Awaitable[TransportReport]] | None = None,
) -> None:
    """Add the client tools to ``server``, bound to ``queue``."""
    read_only = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
    targets: Sequence[str] = queue.targets

    @server.tool(
        annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True), meta=TASK_CARD_META
    )
    @tool_errors
    async def send_message(
        message: Annotated[
            str,
            Field(
                description=(
                    "The task for the agent, in plain words, complete enough to act on without "
                    f"further context. At most {queue.max_message_chars} characters."
                ),
                json_schema_extra=text_schema(queue.max_message_chars),
            ),
        ],
        target: Annotated[
            str,
            Field(
                description=f"Which agent receives it. Known: {', '.join(targets)}.",
                json_schema_extra=text_schema(config.MAX_TARGET_CHARS),
            ),
        ] = config.DEFAULT_TARGET,
        urgent: Annotated[
            bool,
            Field(
                description=(
                    "Mark the task URGENT: the agent halts what it is doing for it. Use only "
                    "when the user says it cannot wait."
                )
            ),
        ] = False,
    ) -> SendResult:
        """Queue a task for the agent on the user's server.

        Returns queued=true with the new task's id. If an identical task for the same target is
        still open, nothing is queued: queued=false, reason="duplicate", with that task's id and
        status. Follow progress with pull_updates or get_message.
        """
        result = await queue.enqueue(message, target, urgent=urgent)
        return SendResult(
            queued=result.queued,
            id=result.task.id,
            status=result.task.status.value,
            reason=None if result.queued else "duplicate",
        )

    # Not read-only: without since or cursor it moves this client's remembered position.
    @server.tool(
        annotations=ToolAnnotations(
            readOnlyHint=False, destructiveHint=False, idempotentHint=False, openWorldHint=False
        )
    )
    @tool_errors
    async def pull_updates(
        since: Annotated[
            str | None,
            Field(
                description="ISO-8601 time; only updates after it. No offset means UTC.",
                json_schema_extra=text_schema(MAX_INSTANT_CHARS),
            ),
        ] = None,
        cursor: CursorArg = None,
        message_id: Annotated[
            str | None,
            BeforeValidator(_digits_as_text),
            Field(
                description="Only this task's updates (from its start by default).",
                json_schema_extra={"maxLength": MAX_ID_CHARS},
            ),
        ] = None,
        limit: Annotated[
            int,
            Field(
                description="At most this many updates.",
                json_schema_extra=_limit_schema(1, config.MAX_PULL_LIMIT),
            ),
        ] = config.DEFAULT_PULL_LIMIT,
        wait_seconds: Annotated[
            float,
            wait_seconds_arg(
                "If nothing is new, wait up to this long for the first update (capped at "
                f"{queue.max_wait_seconds:g} s). 0 returns at once."
            ),
        ] = 0,
    ) -> PullResult:
        """Get the agent's updates: status changes and the agent's reports, oldest first.

        With no since and no cursor, returns everything since your previous pull_updates call
        and remembers where you stopped. Pass either since or cursor, not both. When has_more is
        true, call again with cursor=next_cursor.
        """
        waiting = METRICS.waiting_pulls.track_inprogress() if wait_seconds else nullcontext()
        with waiting:
            page = await queue.pull(
                current_identity(default_identity),
                since=since,
                cursor=cursor,
                task_id=message_id,
                limit=limit,
                wait_seconds=wait_seconds,
                stop=client_gone(),
            )
        return PullResult(
            updates=[UpdateOut.of(u) for u in page.updates],
            next_cursor=page.next_cursor,
            has_more=page.has_more,
        )

    @server.tool(annotations=read_only)
    @tool_errors
    async def queue_status(
        target: Annotated[
            str | None,
            Field(
                description="Only this target's queue; all targets if omitted.",
                json_schema_extra=text_schema(config.MAX_TARGET_CHARS),
            ),
        ] = None,
    ) -> QueueStatusResult:
        """See the queue at a glance: tasks per status, total updates, the current task, and
        whether tasks can reach the agent (transport)."""
        counts = await queue.status(target)
        report = await transport_report() if transport_report else None
        summaries = [
            s for s in await queue.target_summaries() if target is None or s.policy.name == target
        ]
        return QueueStatusResult(
            **queue_figures(counts, summaries),
            transport=TransportOut.of(report) if report else None,
            targets=[TargetOut.of(s) for s in summaries],
        )

    @server.tool(annotations=read_only)
    @tool_errors
    async def list_targets() -> TargetList:
        """The agents you can send tasks to: name, description, how tasks reach it, whether
        its agent was seen recently, and its queue."""
        return TargetList(targets=[TargetOut.of(s) for s in await queue.target_summaries()])

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=False))
    @tool_errors
    async def reply_to_task(
        id: TaskIdArg,
        text: Annotated[
            str,
            Field(
                description="Your answer to the agent's question.",
                json_schema_extra=text_schema(queue.max_message_chars),
            ),
        ],
    ) -> TaskOut:
        """Answer the agent's question on a task in status input_required.

        The answer is posted to the agent as a reply to its question, and the task goes back to
        in_progress. Read the question first with get_message or pull_updates.
        """
        return TaskOut.of(await queue.reply(id, text))

    @server.tool(annotations=read_only, meta=TASK_CARD_META)
    @tool_errors
    async def get_message(id: TaskIdArg) -> MessageDetail:
        """Look up one task: its text, status, timestamps, how it was delivered to the agent,
        and its most recent updates."""
        detail = await queue.get(id)
        stalled = await queue.stalls([detail.task])
        return MessageDetail(
            **TaskOut.of(detail.task, stalled.get(detail.task.id)).model_dump(),
            delivery=DeliveryOut.of(detail.delivery) if detail.delivery else None,
            updates=[UpdateOut.of(u) for u in detail.recent_updates],
        )

    @server.tool(annotations=read_only)
    @tool_errors
    async def list_messages(
        status: Annotated[
            StatusName | None, Field(description="Only tasks in this status.")
        ] = None,
        target: Annotated[
            str | None,
            Field(
                description="Only this target's tasks.",
                json_schema_extra=text_schema(config.MAX_TARGET_CHARS),
            ),
        ] = None,
        limit: Annotated[
            int,
            Field(
                description="Page size.",
                json_schema_extra=_limit_schema(1, config.MAX_LIST_LIMIT),
            ),
        ] = config.DEFAULT_LIST_LIMIT,
        before: Annotated[
            str | None,
            BeforeValidator(_digits_as_text),
            Field(
                description="A next_before from the previous page.",
                json_schema_extra={"maxLength": MAX_ID_CHARS},
            ),
        ] = None,
    ) -> MessageList:
        """List tasks, newest first, a page at a time."""
        page = await queue.list_tasks(status=status, target=target, limit=limit, before=before)
        stalled = await queue.stalls(page.tasks)
        return MessageList(
            messages=[TaskOut.of(t, stalled.get(t.id)) for t in page.tasks],
            next_before=page.next_before,
        )

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
    @tool_errors
    async def cancel_message(
        id: TaskIdArg,
        reason: Annotated[
            str | None,
            Field(
                description="Why, in a few words; recorded in its history.",
                json_schema_extra=text_schema(config.MAX_REASON_CHARS),
            ),
        ] = None,
    ) -> TaskOut:
        """Cancel a task that has not ended yet. Fails if it already completed, failed or was
        cancelled."""
        return TaskOut.of(await queue.cancel(id, reason))

    # Listed only to clients that render the card (task_card.CARD_ONLY_TOOLS).
    @server.tool(annotations=read_only, meta=TASK_CARD_META)
    @tool_errors
    async def watch_task(id: TaskIdArg) -> MessageDetail:
        """Show the live card of a task in the conversation: its status, the agent's updates as
        they arrive, a box to answer the agent's question and a cancel button. The card follows
        the task by itself, so you need not call pull_updates to watch it. Returns the task as
        get_message does."""
        return await get_message(id)


def _one_line(tool: str, error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        where = ".".join(str(p) for p in item["loc"]) or "arguments"
        parts.append(f"{where}: {item['msg']}")
    return f"invalid arguments for {tool}: " + "; ".join(parts)


# Keywords a nullable scalar can carry into ``"type": [..., "null"]`` unchanged.
_SCALAR_KEYWORDS: Final = frozenset(
    {"type", "title", "description", "format", "maxLength", "minLength", "minimum", "maximum"}
)


def lean_schema(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """``schema`` as cheap to validate as it is to read: every ``$ref`` inlined and each
    ``anyOf: [scalar, null]`` a ``type`` list (and an ``enum`` for an enum or a constant).
    Clients (the SDK's among them) validate every result against the output schema, once per
    row of a page: that validation, not the server, is most of what a 100-update pull costs.
    The schema accepts exactly the same documents."""
    if isinstance(schema, list):
        return [lean_schema(item, defs, depth) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if defs is None:
        defs = schema.get("$defs", {})
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and len(schema) == 1 and depth < 8:
        target = defs.get(ref.removeprefix("#/$defs/"))
        if target is not None:
            return lean_schema(target, defs, depth + 1)
    out = {key: lean_schema(value, defs, depth) for key, value in schema.items() if key != "$defs"}
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (other,) = [o for o in options if o != {"type": "null"}]
        if isinstance(other, dict) and isinstance(other.get("type"), str):
            if set(other) <= _SCALAR_KEYWORDS:
                del out["anyOf"]
                out = {**other, **out, "type": [other["type"], "null"]}
            elif set(other) <= _SCALAR_KEYWORDS | {"enum"}:
                del out["anyOf"]
                out = {**other, **out, "type": [other["type"], "null"]}
                out["enum"] = [*other["enum"], None]
            elif set(other) <= _SCALAR_KEYWORDS | {"const"}:  # a Literal["x"] | None
                del out["anyOf"]
                scalar = {key: value for key, value in other.items() if key != "const"}
                out = {**scalar, **out, "type": [other["type"], "null"]}
                out["enum"] = [other["const"], None]
    if "$defs" in schema and not _refers(out):
        return out
    if "$defs" in schema:  # a recursive model: keep the definitions it still needs
        out["$defs"] = schema["$defs"]
    return out


def _refers(schema: Any) -> bool:
    if isinstance(schema, dict):
        return "$ref" in schema or any(_refers(v) for v in schema.values())
    if isinstance(schema, list):
        return any(_refers(v) for v in schema)
    return False


class BridgeMCPServer(MCPServer[Any]):
    """MCPServer whose argument-validation errors are one line a model can act on, whose
    tool descriptions are the docstrings without their source indentation, and whose output
    schemas are lean (:func:`lean_schema`)."""

    def add_tool(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        icons: list[Icon] | None = None,
        meta: dict[str, Any] | None = None,
        structured_output: bool | None = None,
    ) -> None:
        super().add_tool(
            fn,
            name=name,
            title=title,
            description=description or inspect.cleandoc(fn.__doc__ or ""),
            annotations=annotations,
            icons=icons,
            meta=meta,
            structured_output=structured_output,
        )
        tool = self._tool_manager.get_tool(name or fn.__name__)
        if tool is not None and tool.fn_metadata.output_schema is not None:
            # The SDK reads the field live: it publishes (and checks results against) this one.
            tool.fn_metadata.output_schema = lean_schema(tool.fn_metadata.output_schema)

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        # A tool that exists only for the card is unknown to a client that did not negotiate it.
        hidden = (
            name in CARD_ONLY_TOOLS and context is not None and not client_supports_apps(context)
        )
        # Only known tools get their own label: a client cannot grow the metrics with names.
        known = self._tool_manager.get_tool(name) is not None and not hidden
        with METRICS.tool_call(name if known else "unknown") as outcome:
            if hidden:
                raise ToolError(f"Unknown tool: {name}")
            try:
                result = await super().call_tool(name, arguments, context)
            except ToolError as exc:
                if isinstance(exc.__cause__, ValidationError):
                    raise ToolError(bounded(_one_line(name, exc.__cause__))) from exc.__cause__
                raise
            if getattr(result, "is_error", False):
                outcome[0] = "error"
            return result

    # The task card (task_card.py): a client that did not negotiate MCP Apps sees the tools and
    # resources as they were before the card, and cannot call a tool that exists only for it.
    async def _handle_list_tools(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListToolsResult:
        listed = await super()._handle_list_tools(ctx, params)
        tools = tools_for_client(listed.tools, renders_card=client_supports_apps(ctx))
        return listed.model_copy(update={"tools": tools})

    async def _handle_list_resources(
        self, ctx: ServerRequestContext[Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        listed = await super()._handle_list_resources(ctx, params)
        shown = resources_for_client(listed.resources, renders_card=client_supports_apps(ctx))
        return listed.model_copy(update={"resources": shown})


def create_mcp_server(
    queue: QueueService,
    *,
    default_identity: str,
    token_verifier: TokenVerifier | None = None,
    auth_server_provider: OAuthAuthorizationServerProvider[Any, Any, Any] | None = None,
    auth: AuthSettings | None = None,
    transport_report: Callable[[], Awaitable[TransportReport]] | None = None,
) -> MCPServer[Any]:
    """An MCP server exposing the client tools over ``queue``."""
    server = BridgeMCPServer(
        SERVER_NAME,
        version=__version__,
        instructions=INSTRUCTIONS,
        log_level="WARNING",
        token_verifier=token_verifier,
        auth_server_provider=auth_server_provider,
        auth=auth,
        extensions=[task_card_extension()],
    )
    register_tools(
        server, queue, default_identity=default_identity, transport_report=transport_report
    )
    return server
