"""The Conversations API through the official SDK's ``client.conversations``, and responses that
run on a conversation over HTTP, SSE and WebSocket."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.conftest import MODEL, Serve, Server, metric_samples, metric_value
from tests.openapi import validate

ALICE, BOB = "sk-alice-0123456789abcdef", "sk-bob-0123456789abcdef"


def user(text: str) -> dict:
    return {"type": "message", "role": "user", "content": text}


def raw(client: OpenAI, path: str) -> dict:
    response = httpx.get(str(client.base_url).rstrip("/") + path, headers={"authorization": f"Bearer {client.api_key}"})
    return response.json()


@pytest.mark.parametrize("store", ["memory", "sqlite", "redis"])
def test_conversation_objects_and_their_items(tmp_path: Path, store: str):
    redis = None
    if store == "redis":
        from tests.conftest import RedisServer

        redis = RedisServer(tmp_path / "redis")
    url = {"memory": "memory", "sqlite": f"sqlite:{tmp_path}/db.sqlite3", "redis": redis.url if redis else ""}[store]
    server = Server(tmp_path, "--store", url)
    client = OpenAI(base_url=server.url, api_key="sk-test", max_retries=0)
    try:
        conversation = client.conversations.create(items=[user("first"), user("second")], metadata={"topic": "demo"})
        validate("ConversationResource", raw(client, f"/conversations/{conversation.id}"))
        assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "demo"}
        updated = client.conversations.update(conversation.id, metadata={"topic": "changed"})
        assert client.conversations.retrieve(conversation.id).metadata == updated.metadata == {"topic": "changed"}

        added = client.conversations.items.create(conversation.id, items=[user("third"), user("fourth")])
        assert [item.content[0].text for item in added.data] == ["third", "fourth"]
        listing = raw(client, f"/conversations/{conversation.id}/items?order=asc")
        validate("ConversationItemList", listing)
        assert [item["content"][0]["text"] for item in listing["data"]] == ["first", "second", "third", "fourth"]

        newest = client.conversations.items.list(conversation.id, limit=3)  # newest first by default
        assert [i.content[0].text for i in newest.data] == ["fourth", "third", "second"] and newest.has_more
        everything = [i.content[0].text for i in client.conversations.items.list(conversation.id, limit=1, order="asc")]
        assert everything == ["first", "second", "third", "fourth"]  # the SDK's auto-pagination, one by one

        second = listing["data"][1]["id"]
        assert client.conversations.items.retrieve(second, conversation_id=conversation.id).id == second
        assert client.conversations.items.delete(second, conversation_id=conversation.id).id == conversation.id
        with pytest.raises(openai.NotFoundError):
            client.conversations.items.retrieve(second, conversation_id=conversation.id)
        assert len(client.conversations.items.list(conversation.id).data) == 3

        deleted = raw(client, f"/conversations/{conversation.id}")
        assert deleted["id"] == conversation.id
        gone = client.conversations.delete(conversation.id)
        assert gone.deleted and gone.object == "conversation.deleted"
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conversation.id)
    finally:
        server.stop()
        if redis is not None:
            redis.stop()


def test_bad_bodies_are_openai_shaped_400s(client: OpenAI):
    with pytest.raises(openai.BadRequestError) as too_many:
        client.conversations.create(items=[user(str(i)) for i in range(21)])
    assert too_many.value.code == "array_above_max_length" and too_many.value.param == "items"
    with pytest.raises(openai.BadRequestError) as metadata:
        client.conversations.create(metadata={f"k{i}": "v" for i in range(17)})
    assert metadata.value.param == "metadata"
    conversation = client.conversations.create()
    with pytest.raises(openai.BadRequestError) as missing:
        client.conversations.items.create(conversation.id, items=None)  # type: ignore[arg-type]
    assert missing.value.code == "missing_required_parameter"
    with pytest.raises(openai.BadRequestError) as bad_item:
        client.conversations.items.create(conversation.id, items=[{"type": "message", "role": "wizard", "content": "x"}])
    assert bad_item.value.param is not None and bad_item.value.param.startswith("items")
    with pytest.raises(openai.NotFoundError) as after:
        client.conversations.items.list(conversation.id, after="msg_nope")
    assert after.value.param == "after"
    for odd in (f"{conversation.id}:ids", "conv_../x", "x" * 300):  # never a store key built from arbitrary text
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(odd)


@pytest.fixture(scope="module")
def secured(serve: Serve, tmp_path_factory: pytest.TempPathFactory) -> Server:
    tmp = tmp_path_factory.mktemp("conversation-keys")
    (tmp / "keys.txt").write_text(f"{ALICE} alice\n{BOB} bob\n")
    return serve("--api-keys", str(tmp / "keys.txt"), "--store", "memory")


def test_another_tenants_conversation_does_not_exist_for_you(secured: Server):
    alice = OpenAI(base_url=secured.url, api_key=ALICE, max_retries=0)
    bob = OpenAI(base_url=secured.url, api_key=BOB, max_retries=0)
    conversation = alice.conversations.create(items=[user("alice's secret")])
    for attempt in (
        lambda: bob.conversations.retrieve(conversation.id),
        lambda: bob.conversations.items.list(conversation.id),
        lambda: bob.conversations.items.create(conversation.id, items=[user("x")]),
        lambda: bob.conversations.delete(conversation.id),
        lambda: bob.responses.create(model=MODEL, conversation=conversation.id, input="what did she say?"),
    ):
        with pytest.raises(openai.NotFoundError):
            attempt()
    assert [i.content[0].text for i in alice.conversations.items.list(conversation.id)] == ["alice's secret"]


# Responses on a conversation ----------------------------------------------------------------------


def texts(client: OpenAI, conversation_id: str) -> list[tuple[str, str]]:
    listing = client.conversations.items.list(conversation_id, order="asc", limit=100)
    return [(item.type, getattr(item, "role", "")) for item in listing.data]


def test_responses_run_on_a_conversation_over_http_and_sse(client: OpenAI):
    conversation = client.conversations.create(items=[user("Remember the number 7.")])
    first = client.responses.create(model=MODEL, conversation=conversation.id, input="What was it?")
    assert first.conversation is not None and first.conversation.id == conversation.id
    validate("Response", json.loads(first.model_dump_json(exclude_unset=True)))
    counted = client.responses.input_tokens.count(model=MODEL, conversation=conversation.id, input="Again?")
    events = list(client.responses.create(model=MODEL, conversation={"id": conversation.id}, input="Again?", stream=True))
    second = events[-1].response
    assert counted.input_tokens == second.usage.input_tokens  # the count sees the conversation too
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens  # the first turn is context
    assert texts(client, conversation.id) == [
        ("message", "user"),
        ("message", "user"),
        ("message", "assistant"),
        ("message", "user"),
        ("message", "assistant"),
    ]


def test_a_conversation_continued_over_a_websocket(client: OpenAI):
    conversation = client.conversations.create(items=[user("We are fixing the config loader.")])
    client.responses.create(model=MODEL, conversation=conversation.id, input="Start with the tests.")
    usage = []
    with client.responses.connect() as conn:
        for text in ("Now read the loader.", "Now fix it."):
            conn.response.create(model=MODEL, conversation=conversation.id, input=text, store=False)
            done = next(e for e in conn if e.type in ("response.completed", "response.failed", "error"))
            assert done.type == "response.completed", done
            usage.append(done.response.usage.input_tokens)
    assert usage[1] > usage[0]  # the socket's second turn sees the first
    assert len(texts(client, conversation.id)) == 7  # 1 + three turns of input and output


def test_conversation_and_previous_response_id_together_is_a_400(client: OpenAI):
    conversation = client.conversations.create()
    earlier = client.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.BadRequestError) as both:
        client.responses.create(model=MODEL, conversation=conversation.id, previous_response_id=earlier.id, input="x")
    assert both.value.param == "conversation"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.responses.create(model=MODEL, conversation="conv_unknown", input="x")
    assert unknown.value.param == "conversation"


def test_a_socket_keeps_a_conversation_rendered_while_only_it_writes(server: Server, client: OpenAI):
    def hits() -> float:
        return metric_value(metric_samples(server), "loopway_connection_cache_total", result="hit")

    conversation = client.conversations.create(items=[user("We are fixing the config loader.")])
    with client.responses.connect() as conn:

        def turn(text: str) -> int:
            expected = client.responses.input_tokens.count(model=MODEL, conversation=conversation.id, input=text)
            conn.response.create(model=MODEL, conversation=conversation.id, input=text, store=False)
            done = next(e for e in conn if e.type in ("response.completed", "response.failed", "error"))
            assert done.type == "response.completed", done
            assert done.response.usage.input_tokens == expected.input_tokens  # the same context, cached or not
            return done.response.usage.input_tokens

        turn("Read the loader.")  # read from the store
        before = hits()
        turn("Now the tests.")  # rendered on this socket, at the version it left
        assert hits() == before + 1
        client.conversations.items.create(conversation.id, items=[user("A note from another client.")])
        turn("Go on.")  # someone else wrote: read from the store again, the note included
        assert hits() == before + 1
        listing = client.conversations.items.list(conversation.id, order="asc", limit=100).data
        client.conversations.items.delete(listing[1].id, conversation_id=conversation.id)
        turn("And finish.")  # a deleted item is a change too
        assert hits() == before + 1
        turn("Thanks.")
        assert hits() == before + 2
