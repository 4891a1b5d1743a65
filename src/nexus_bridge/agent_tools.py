"""The direct agent API: MCP tools at ``/agent/mcp`` for an agent that takes its tasks from the
bridge instead of a Telegram chat. Every call is scoped to the target its token belongs to."""

from typing import Annotated, Final

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp_types import ToolAnnotations
from pydantic import AnyHttpUrl, BaseModel, Field

from nexus_bridge import __version__, config
from nexus_bridge.auth import agent_target
from nexus_bridge.domain import MAX_AGENT_SESSION_CHARS, TaskStatus
from nexus_bridge.errors import AnotherTarget, NexusBridgeError
from nexus_bridge.mcp_http import client_gone
from nexus_bridge.mcp_tools import (
    BridgeMCPServer,
    CursorArg,
    TaskIdArg,
    text_schema,
    tool_errors,
    wait_seconds_arg,
)
from nexus_bridge.queue import QueueService
from nexus_bridge.views import AgentTaskOut, UpdateOut

AGENT_INSTRUCTIONS: Final = (
    "You are the agent: take your next task with next_task, say you started with start_task, "
    "report progress with post_update, ask the client with ask_question (then poll "
    "get_replies), and finish with complete_task or fail_task. A claim is a lease: start the "
    "task (or call heartbeat on it) before its claim_expires_at, or it goes back to the queue."
)


class NotAnAgent(NexusBridgeError):
    """This endpoint is for agents: authenticate with an agent token."""


class NextTask(BaseModel):
    task: AgentTaskOut | None = Field(
        description=(
            "The task you now own, or null: nothing to do. Its claim_expires_at is when the "
            "claim lapses unless you start it or call heartbeat on it first."
        )
    )


class Replies(BaseModel):
    replies: list[UpdateOut] = Field(description="The client's answers, oldest first.")
    next_cursor: str = Field(description="Pass as cursor next time to get only newer answers.")


def _target() -> str:
    token = get_access_token()
    target = agent_target(token.client_id if token else None)
    if target is None:
        raise NotAnAgent()
    return target


def create_agent_server(
    queue: QueueService, *, token_verifier: TokenVerifier, auth: AuthSettings
) -> BridgeMCPServer:
    """The agent-side MCP server over ``queue``."""
    server = BridgeMCPServer(
        "nexus-bridge-agent",
        version=__version__,
        instructions=AGENT_INSTRUCTIONS,
        log_level="WARNING",
        token_verifier=token_verifier,
        auth=auth,
    )

    limit = queue.max_message_chars
    writes = ToolAnnotations(readOnlyHint=False, openWorldHint=False)

    @server.tool(annotations=writes)
    @tool_errors
    async def next_task(
        wait_seconds: Annotated[
            float,
            wait_seconds_arg(
                "If nothing is pending, wait up to this long for a task (capped at "
                f"{queue.max_wait_seconds:g} s)."
            ),
        ] = 0,
        target: Annotated[
            str | None,
            Field(
                description=(
                    "The target you mean to serve: if your token is for another one, nothing "
                    "is claimed and the call fails (saying which). Omit it to take your token's."
                ),
                json_schema_extra=text_schema(config.MAX_TARGET_CHARS),
            ),
        ] = None,
    ) -> NextTask:
        """Claim the oldest pending task of your target; it becomes acknowledged and yours.

        Two agents asking at once never get the same task. The claim is a lease that ends at
        the task's claim_expires_at: start_task, or any other call on the task (heartbeat,
        post_update, ask_question), renews it; a task not started before it lapses goes back to
        the queue for the next next_task.
        """
        mine = _target()
        if target is not None and target != mine:
            raise AnotherTarget(mine, target)
        task = await queue.wait_for_task(mine, wait_seconds, stop=client_gone())
        return NextTask(task=AgentTaskOut.of(task) if task else None)

    @server.tool(annotations=writes)
    @tool_errors
    async def start_task(id: TaskIdArg) -> AgentTaskOut:
        """Say you are working on the task (in_progress)."""
        return AgentTaskOut.of(
            await queue.agent_report(_target(), id, status=TaskStatus.IN_PROGRESS)
        )

    @server.tool(annotations=ToolAnnotations(readOnlyHint=False, idempotentHint=True))
    @tool_errors
    async def heartbeat(
        id: TaskIdArg,
        session: Annotated[
            str | None,
            Field(
                description=(
                    "Your session for this task (e.g. Claude Code's session id), kept with the "
                    "task as agent_session so a restarted or other runner can resume it."
                ),
                json_schema_extra={"minLength": 1, "maxLength": MAX_AGENT_SESSION_CHARS},
            ),
        ] = None,
    ) -> AgentTaskOut:
        """Say you still hold the task: renews the lease of its claim (claim_expires_at)
        without changing anything else (but agent_session, when you give session). Every
        other call on the task renews it too."""
        return AgentTaskOut.of(await queue.agent_task(_target(), id, session=session))

    @server.tool(annotations=writes)
    @tool_errors
    async def post_update(
        id: TaskIdArg,
        text: Annotated[
            str,
            Field(
                description="What you did or found, for the client to read.",
                json_schema_extra=text_schema(limit),
            ),
        ],
    ) -> AgentTaskOut:
        """Report progress on the task; the client sees it in pull_updates."""
        return AgentTaskOut.of(await queue.agent_report(_target(), id, text=text))

    @server.tool(annotations=writes)
    @tool_errors
    async def ask_question(
        id: TaskIdArg,
        text: Annotated[
            str,
            Field(description="The question for the client.", json_schema_extra=text_schema(limit)),
        ],
    ) -> AgentTaskOut:
        """Ask the client; the task waits in input_required until it answers (get_replies)."""
        return AgentTaskOut.of(
            await queue.agent_report(
                _target(), id, text=text, status=TaskStatus.INPUT_REQUIRED, reason="question"
            )
        )

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
    @tool_errors
    async def get_replies(
        id: TaskIdArg,
        cursor: CursorArg = None,
    ) -> Replies:
        """The client's answers to your questions on this task."""
        page = await queue.replies(_target(), id, cursor)
        return Replies(
            replies=[UpdateOut.of(u) for u in page.updates], next_cursor=page.next_cursor
        )

    @server.tool(annotations=writes)
    @tool_errors
    async def complete_task(
        id: TaskIdArg,
        summary: Annotated[
            str | None,
            Field(
                description="What was done, in a few lines.",
                json_schema_extra=text_schema(limit),
            ),
        ] = None,
    ) -> AgentTaskOut:
        """Finish the task (complete)."""
        return AgentTaskOut.of(
            await queue.agent_report(
                _target(), id, text=summary, status=TaskStatus.COMPLETE, field="summary"
            )
        )

    @server.tool(annotations=writes)
    @tool_errors
    async def fail_task(
        id: TaskIdArg,
        error: Annotated[
            str,
            Field(
                description="Why the task failed or cannot be done.",
                json_schema_extra=text_schema(limit),
            ),
        ],
    ) -> AgentTaskOut:
        """End the task in error, saying why."""
        return AgentTaskOut.of(
            await queue.agent_report(
                _target(),
                id,
                text=error,
                status=TaskStatus.ERROR,
                reason=error.strip()[:200],
                field="error",
            )
        )

    return server


def agent_auth_settings(settings: config.Settings) -> AuthSettings:
    """Bearer-token auth for /agent/mcp (agent tokens only; no OAuth there)."""
    return AuthSettings(
        issuer_url=AnyHttpUrl(settings.listen_origin),
        resource_server_url=None,
    )
