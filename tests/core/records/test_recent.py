"""Recent conversations: bounded in bytes, least recently used out, per tenant."""

from __future__ import annotations

from loopway.core.context.conversation import Conversation
from loopway.core.records.recent import BYTES_PER_TOKEN, RecentConversations
from loopway.protocol.items import Message
from loopway.protocol.response import Response
from loopway.protocol.tools import EMPTY_TOOLS
from loopway.tokens.render import Renderer

R = Renderer()


def entry(n: int, words: int = 50) -> tuple[Response, Conversation]:
    response = Response(id=f"resp_{n}", created_at=0, model="m", status="completed", output=[])
    conversation = Conversation.start(R, None, EMPTY_TOOLS, [Message(role="user", content="word " * words)])
    return response, conversation


def test_a_hit_is_the_rendered_conversation_for_that_tenant_only():
    recent = RecentConversations(1 << 20)
    response, conversation = entry(1)
    recent.remember("a", response, conversation)
    parent = recent.parent("a", "resp_1")
    assert parent is not None and parent.conversation is conversation and parent.response is response
    assert recent.parent("b", "resp_1") is None
    assert recent.parent("a", "resp_2") is None


def test_bounded_in_bytes_least_recently_used_first_out():
    one = len(entry(0)[1].tokens) * BYTES_PER_TOKEN
    recent = RecentConversations(3 * one)
    for n in range(3):
        recent.remember("t", *entry(n))
    recent.parent("t", "resp_0")  # used: now the most recent
    recent.remember("t", *entry(3))
    assert [recent.parent("t", f"resp_{n}") is not None for n in range(4)] == [True, False, True, True]
    assert recent.size <= recent.max_bytes


def test_a_conversation_larger_than_the_bound_is_not_kept():
    recent = RecentConversations(100)
    recent.remember("t", *entry(0, words=500))
    assert len(recent) == 0 and recent.size == 0


def test_forgetting_a_tenant_leaves_the_others():
    recent = RecentConversations(1 << 20)
    recent.remember("a", *entry(1))
    recent.remember("b", *entry(2))
    recent.forget_tenant("a")
    assert recent.parent("a", "resp_1") is None and recent.parent("b", "resp_2") is not None
    assert recent.size == len(entry(2)[1].tokens) * BYTES_PER_TOKEN
