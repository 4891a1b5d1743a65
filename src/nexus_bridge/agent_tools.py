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
from nexus_bridge.domain import TaskStatus
from nexus_bridge.errors import NexusBridgeError
from nexus_bridge.mcp_tools import BridgeMCPServer, tool_errors
from nexus_bridge.queue import QueueService
from nexus_bridge.views import TaskOut, UpdateOut

AGENT_MCP_PATH: Final = "/agent/mcp"
AGENT_INSTRUCTIONS: Final = (
    "You are the agent: take your next task with next_task, say you started with start_task, "
    "report progress with post_update, ask the client with ask_question (then poll "
    "get_replies), and finish with complete_task or fail_task."
)


class NotAnAgent(NexusBridgeError):
    """This endpoint is for agents: authenticate with an agent token."""


class NextTask(BaseModel):
    task: TaskOut | None = Field(description="The task you now own, or null: nothing to do.")


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
    task_id = Annotated[str, Field(description="The task's id (or its first 8+ characters).")]
    writes = ToolAnnotations(readOnlyHint=False, openWorldHint=False)

    @server.tool(annotations=writes)
    @tool_errors
    async def next_task(
        wait_seconds: Annotated[
            float,
            Field(
                description=(
                    "If nothing is pending, wait up to this long for a task (capped at "
                    f"{queue.max_wait_seconds:g} s)."
                ),
                json_schema_extra={"minimum": 0},
            ),
        ] = 0,
    ) -> NextTask:
        """Claim the oldest pending task of your target; it becomes acknowledged and yours.

        Two agents asking at once never get the same task.
        """
        if wait_seconds < 0:
            raise NexusBridgeError("wait_seconds must be 0 or more")
        task = await queue.wait_for_task(_target(), wait_seconds)
        return NextTask(task=TaskOut.of(task) if task else None)

    @server.tool(annotations=writes)
    @tool_errors
    async def start_task(id: task_id) -> TaskOut:
        """Say you are working on the task (in_progress)."""
        return TaskOut.of(await queue.agent_report(_target(), id, status=TaskStatus.IN_PROGRESS))

    @server.tool(annotations=writes)
    @tool_errors
    async def post_update(
        id: task_id,
        text: Annotated[str, Field(description="What you did or found, for the client to read.")],
    ) -> TaskOut:
        """Report progress on the task; the client sees it in pull_updates."""
        return TaskOut.of(await queue.agent_report(_target(), id, text=text))

    @server.tool(annotations=writes)
    @tool_errors
    async def ask_question(
        id: task_id,
        text: Annotated[str, Field(description="The question for the client.")],
    ) -> TaskOut:
        """Ask the client; the task waits in input_required until it answers (get_replies)."""
        return TaskOut.of(
            await queue.agent_report(
                _target(), id, text=text, status=TaskStatus.INPUT_REQUIRED, reason="question"
            )
        )

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False))
    @tool_errors
    async def get_replies(
        id: task_id,
        cursor: Annotated[
            str | None, Field(description="A next_cursor from an earlier call.")
        ] = None,
    ) -> Replies:
        """The client's answers to your questions on this task."""
        page = await queue.replies(_target(), id, cursor)
        return Replies(
            replies=[UpdateOut.of(u) for u in page.updates], next_cursor=page.next_cursor
        )

    @server.tool(annotations=writes)
    @tool_errors
    async def complete_task(
        id: task_id,
        summary: Annotated[str | None, Field(description="What was done, in a few lines.")] = None,
    ) -> TaskOut:
        """Finish the task (complete)."""
        return TaskOut.of(
            await queue.agent_report(_target(), id, text=summary, status=TaskStatus.COMPLETE)
        )

    @server.tool(annotations=writes)
    @tool_errors
    async def fail_task(
        id: task_id,
        error: Annotated[str, Field(description="Why the task failed or cannot be done.")],
    ) -> TaskOut:
        """End the task in error, saying why."""
        return TaskOut.of(
            await queue.agent_report(
                _target(), id, text=error, status=TaskStatus.ERROR, reason=error.strip()[:200]
            )
        )

    return server


def agent_auth_settings(settings: config.Settings) -> AuthSettings:
    """Bearer-token auth for /agent/mcp (agent tokens only; no OAuth there)."""
    return AuthSettings(
        issuer_url=AnyHttpUrl(settings.listen_origin),
        resource_server_url=None,
    )
