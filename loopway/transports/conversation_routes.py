"""HTTP routes of the Conversations API: each parses, calls ``core.records.conversation_store`` once, and frames."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from loopway.core.service import ResponsesService
from loopway.settings import Settings
from loopway.transports.http import HttpApi, int_query, json_response, order_query, tenant_of


def routes(service: ResponsesService, settings: Settings) -> list[Route]:
    api = HttpApi(service, settings)  # for reading bodies within the server's limits
    conversations = service.conversations

    async def create(request: Request) -> Response:
        return json_response(await conversations.create(await api.body(request), tenant_of(request)))

    async def retrieve(request: Request) -> Response:
        return json_response(await conversations.retrieve(request.path_params["conversation_id"], tenant_of(request)))

    async def update(request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        return json_response(await conversations.update(conversation_id, await api.body(request), tenant_of(request)))

    async def delete(request: Request) -> Response:
        return json_response(await conversations.delete(request.path_params["conversation_id"], tenant_of(request)))

    async def add_items(request: Request) -> Response:
        conversation_id = request.path_params["conversation_id"]
        return json_response(await conversations.add_items(conversation_id, await api.body(request), tenant_of(request)))

    async def list_items(request: Request) -> Response:
        page = await conversations.list_items(
            request.path_params["conversation_id"],
            tenant_of(request),
            limit=int_query(request, "limit", 20, 1, 100),
            order=order_query(request),
            after=request.query_params.get("after"),
        )
        return json_response(page)

    async def item(request: Request) -> Response:
        path = request.path_params
        return json_response(await conversations.item(path["conversation_id"], path["item_id"], tenant_of(request)))

    async def delete_item(request: Request) -> Response:
        path = request.path_params
        return json_response(await conversations.delete_item(path["conversation_id"], path["item_id"], tenant_of(request)))

    base = "/v1/conversations"
    return [
        Route(base, create, methods=["POST"]),
        Route(base + "/{conversation_id}", retrieve, methods=["GET"]),
        Route(base + "/{conversation_id}", update, methods=["POST"]),
        Route(base + "/{conversation_id}", delete, methods=["DELETE"]),
        Route(base + "/{conversation_id}/items", add_items, methods=["POST"]),
        Route(base + "/{conversation_id}/items", list_items, methods=["GET"]),
        Route(base + "/{conversation_id}/items/{item_id}", item, methods=["GET"]),
        Route(base + "/{conversation_id}/items/{item_id}", delete_item, methods=["DELETE"]),
    ]
