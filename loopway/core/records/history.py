"""Rebuilding a conversation from the store: the slow path of ``previous_response_id``.

The model sees ``previous input + previous output + new input``, recursively, so a stored
response's context is found by walking its ``previous_response_id`` chain. This is O(history)
and touches the store once per turn of the chain; the WebSocket connection cache exists to avoid it.
"""

from __future__ import annotations

from loopway.core.context.parent import Parent
from loopway.core.ops import offload
from loopway.core.records.persistence import ResponseLog
from loopway.protocol import response as wire
from loopway.protocol.errors import invalid_request, previous_response_not_found
from loopway.protocol.items import Item, ItemReference, item_id, items_from_json
from loopway.store.base import StoredResponse


async def chain(log: ResponseLog, response_id: str, tenant: str) -> list[StoredResponse]:
    """The tenant's records from the start of the conversation to ``response_id``, oldest first."""
    records: list[StoredResponse] = []
    next_id: str | None = response_id
    while next_id is not None:
        record = await log.get(next_id, tenant)
        if record is None:
            if not records:
                raise previous_response_not_found(response_id)
            break  # an ancestor was deleted: the context starts after it
        records.append(record)
        next_id = record.previous_response_id
    records.reverse()
    return records


def _context(records: list[StoredResponse], include_last_output: bool) -> list[Item]:
    items: list[Item] = []
    for i, record in enumerate(records):
        items += items_from_json(record.input_items)
        if include_last_output or i < len(records) - 1:
            items += wire.decode(record.response).output
    return items


async def load_parent(log: ResponseLog, response_id: str, tenant: str) -> Parent:
    records = await chain(log, response_id, tenant)
    response = wire.decode(records[-1].response)
    if response.status in ("queued", "in_progress"):
        raise invalid_request(
            f"Previous response with id '{response_id}' is still in progress.",
            param="previous_response_id",
            code="previous_response_in_progress",
        )
    size = sum(len(r.input_items) + len(r.response) for r in records)
    items = await offload.call(size > offload.LARGE_CONTEXT_BYTES, lambda: _context(records, include_last_output=True))
    return Parent(response=response, items=items, replica=records[-1].replica, stored_bytes=size)


async def stored_items(log: ResponseLog, item_ids: list[str], tenant: str) -> dict[str, Item]:
    """Items of the tenant's stored responses, by id: what ``item_reference`` may name besides the
    context (as OpenAI resolves any stored item of the project). Ids not found are left out."""
    found: dict[str, Item] = {}
    for wanted in item_ids:
        response_id = await log.find_item(tenant, wanted)
        record = await log.get(response_id, tenant) if response_id else None
        if record is None:
            continue
        for item in [*items_from_json(record.input_items), *wire.decode(record.response).output]:
            if item_id(item) == wanted and not isinstance(item, ItemReference):
                found[wanted] = item
                break
    return found


async def input_items(log: ResponseLog, record: StoredResponse) -> list[Item]:
    """Everything the model was given as input for this response (its whole context)."""
    records = await chain(log, record.id, record.tenant)
    return _context(records, include_last_output=False)
