"""The shared views: the CLI's status and the MCP queue_status show the same figures."""

from datetime import UTC, datetime

from nexus_bridge.domain import QueueCounts, TargetPolicy, TaskStatus
from nexus_bridge.queue import TargetSummary
from nexus_bridge.views import TargetOut, queue_figures, target_row

SEEN = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)


def _summary(name: str, stalled: int, **counts: int) -> TargetSummary:
    by_status = {status: counts.get(status.value, 0) for status in TaskStatus}
    return TargetSummary(
        policy=TargetPolicy(name=name, transport="agent", one_at_a_time=True, description="d"),
        by_status=by_status,
        last_seen_at=SEEN,
        reachable=True,
        stalled=stalled,
    )


def test_queue_figures_count_every_status_and_sum_the_stalled_tasks_of_the_targets() -> None:
    counts = QueueCounts(
        by_status={status: i for i, status in enumerate(TaskStatus)},
        total_updates=7,
        current_task=None,
        ignored_messages=2,
    )
    figures = queue_figures(counts, [_summary("a", 1), _summary("b", 2)])
    assert list(figures) == [
        *(status.value for status in TaskStatus),
        "total_updates",
        "ignored_messages",
        "current_task",
        "current_task_id",
        "stalled",
    ]
    assert figures["in_progress"] == counts.by_status[TaskStatus.IN_PROGRESS]
    assert figures["stalled"] == 3
    assert figures["current_task"] is None
    assert figures["ignored_messages"] == 2


def test_the_cli_target_row_is_the_mcp_target_view_with_the_handed_over_tasks_summed() -> None:
    summary = _summary(
        "box", 1, pending=4, acknowledged=1, in_progress=2, input_required=3, complete=9
    )
    assert TargetOut.of(summary).pending == 4  # the same figure the MCP view shows
    assert target_row(summary) == {
        "name": "box",
        "transport": "agent",
        "dispatch": "one_at_a_time",
        "pending": 4,
        "with_agent": 6,
        "stalled": 1,
        "last_seen_at": SEEN.isoformat(),
    }
