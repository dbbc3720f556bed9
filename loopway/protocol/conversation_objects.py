"""The Conversations API's bodies and objects (``ConversationResource``, ``ConversationItemList``,
``DeletedConversationResource`` in OpenAI's schema): parsing and shapes, no I/O."""

from __future__ import annotations

from typing import Any

import msgspec

from loopway.protocol.errors import invalid_request, missing_parameter
from loopway.protocol.items import Item, item_id, normalized, parse_input, to_builtins
from loopway.protocol.request import check_metadata, shape_check

MAX_ITEMS_PER_REQUEST = 20  # OpenAI adds at most 20 items per create or items.create
CONVERSATION = "conv"


class CreateConversationBody(msgspec.Struct, kw_only=True):
    items: list[Any] | None = None
    metadata: dict[str, Any] | None = None


class UpdateConversationBody(msgspec.Struct, kw_only=True):
    metadata: dict[str, Any] | None = None


class AddItemsBody(msgspec.Struct, kw_only=True):
    items: list[Any] | None = None


def parse_items(raw: list[Any] | None, param: str = "items") -> list[Item]:
    """Items to add, each with an id (``msg_…``, ``fc_…``) if it came without one."""
    if raw is None:
        return []
    if len(raw) > MAX_ITEMS_PER_REQUEST:
        raise invalid_request(
            f"Invalid '{param}': array too long. Expected an array with maximum length {MAX_ITEMS_PER_REQUEST}, "
            f"but got an array with length {len(raw)} instead.",
            param=param,
            code="array_above_max_length",
        )
    return [normalized(item) for item in parse_input(raw, param)]


def parse_create(raw: Any) -> tuple[list[Item], dict[str, str]]:
    body: CreateConversationBody = shape_check(raw, CreateConversationBody)
    return parse_items(body.items), check_metadata(body.metadata)


def parse_update(raw: Any) -> dict[str, str]:
    body: UpdateConversationBody = shape_check(raw, UpdateConversationBody)
    if body.metadata is None:
        raise missing_parameter("metadata")
    return check_metadata(body.metadata)


def parse_add(raw: Any) -> list[Item]:
    body: AddItemsBody = shape_check(raw, AddItemsBody)
    if body.items is None:
        raise missing_parameter("items")
    return parse_items(body.items)


def conversation_object(conversation_id: str, created_at: int, metadata: dict[str, str]) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation", "created_at": created_at, "metadata": metadata}


def deleted(conversation_id: str) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation.deleted", "deleted": True}


def item_list(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def item_record(item: Item) -> tuple[str, bytes]:
    """An item as a store keeps it: its id, and its JSON as it goes on the wire."""
    return item_id(item), msgspec.json.encode(to_builtins(item))
