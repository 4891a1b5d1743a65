"""The tools' published output schemas are lean (no ``$ref``, nullable scalars as type lists)
and accept exactly the documents pydantic's own schemas accept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema.validators import validator_for
from pydantic import BaseModel

from nexus_bridge.mcp_tools import (
    MessageDetail,
    MessageList,
    PullResult,
    QueueStatusResult,
    SendResult,
    lean_schema,
)

UPDATE = {
    "seq": 7,
    "message_id": None,
    "kind": "agent",
    "content": "halfway",
    "created_at": "2026-11-29T10:00:00.000000+00:00",
}
TASK = {
    "id": "0b1c",
    "target": "homelab",
    "content": "check the UPS",
    "status": "pending",
    "status_reason": None,
    "urgent": False,
    "created_at": "2026-11-29T10:00:00.000000+00:00",
    "updated_at": "2026-11-29T10:00:00.000000+00:00",
    "acknowledged_at": None,
    "started_at": None,
    "ended_at": None,
}
DOCUMENTS: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (PullResult, {"updates": [UPDATE], "next_cursor": "7", "has_more": False}),
    (
        PullResult,
        {"updates": [{**UPDATE, "message_id": 12}], "next_cursor": "7", "has_more": False},
    ),
    (PullResult, {"updates": [{**UPDATE, "kind": "other"}], "next_cursor": "7", "has_more": False}),
    (PullResult, {"updates": [{**UPDATE, "message_id": "0b1c"}], "next_cursor": "7"}),
    (MessageList, {"messages": [TASK], "next_before": None}),
    (MessageList, {"messages": [{**TASK, "status": None}], "next_before": None}),
    (MessageList, {"messages": [{**TASK, "idle_seconds": "long"}], "next_before": None}),
    (MessageDetail, {**TASK, "delivery": None, "updates": [UPDATE]}),
    (MessageDetail, {**TASK, "delivery": {"state": "sent"}, "updates": []}),
    (SendResult, {"queued": True, "id": "0b1c", "status": "pending", "reason": None}),
    (SendResult, {"queued": False, "id": "0b1c", "status": "pending", "reason": "duplicate"}),
    (SendResult, {"queued": False, "id": "0b1c", "status": "pending", "reason": "other"}),
    (SendResult, {"queued": False, "id": "0b1c", "status": "pending", "reason": 3}),
    (SendResult, {"queued": True, "id": "0b1c", "status": "pending"}),
]


def valid(schema: dict[str, Any], document: Any) -> bool:
    return validator_for(schema)(schema).is_valid(document)


@pytest.mark.parametrize(("model", "document"), DOCUMENTS)
def test_the_lean_schema_accepts_exactly_what_the_full_one_accepts(
    model: type[BaseModel], document: dict[str, Any]
) -> None:
    full = model.model_json_schema()
    assert valid(lean_schema(full), document) == valid(full, document)


@pytest.mark.parametrize(
    "model", [PullResult, MessageList, MessageDetail, QueueStatusResult, SendResult]
)
def test_the_lean_schema_has_no_references_and_no_nullable_any_of(model: type[BaseModel]) -> None:
    lean = lean_schema(model.model_json_schema())
    assert "$ref" not in json.dumps(lean)
    assert list(nullable_scalars(lean)) == []


def nullable_scalars(schema: Any) -> Iterator[Any]:
    """Every ``anyOf: [scalar, null]`` left in ``schema``."""
    if isinstance(schema, list):
        for item in schema:
            yield from nullable_scalars(item)
    elif isinstance(schema, dict):
        options = schema.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            yield from (o for o in options if o.get("type") not in ("null", "object"))
        for value in schema.values():
            yield from nullable_scalars(value)
