"""Recent stored responses' conversations, rendered, for HTTP continuations on the same worker.

An HTTP ``previous_response_id`` turn used to rebuild its context from the store every time: walk
the chain, decode every record, render every item, O(history) per turn. When the parent was
answered by this process not long ago, its conversation (items and rendered tokens, as the turn
left it) is still here, and the continuation renders only its new items, like a WebSocket
continuation. A miss falls back to the store as before.

What keeps it correct:

- only ``store=true`` responses enter (a ``store=false`` one is not continuable over HTTP), keyed
  by tenant and id;
- a hit is used only after the store confirms the parent still exists: a response deleted by
  another worker or replica is not continued from here;
- deleting a response here forgets every entry of that tenant (an entry may hold a deleted
  ancestor's items; deletes are rare, and the store rebuilds what is forgotten).

Bounded in bytes (``--http-cache-mb``, per worker), least recently used first out. An entry's size
is estimated from its token count: a cached 100k-token conversation measured 0.71 MB (items, token
ids and block hashes), so 8 bytes a token. Conversations of one chain share their buffers
(``tokens.sequence``), so the estimate counts shared memory more than once: the bound is
conservative.
"""

from __future__ import annotations

from collections import OrderedDict

import msgspec

from loopway.core.context.conversation import Conversation
from loopway.core.context.parent import Parent
from loopway.protocol.response import Response

BYTES_PER_TOKEN = 8


class _Entry(msgspec.Struct, gc=False):
    response: Response
    conversation: Conversation
    size: int
    replica: str | None


class RecentConversations:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, tenant: str, response: Response, conversation: Conversation, replica: str | None = None) -> None:
        size = len(conversation.tokens) * BYTES_PER_TOKEN
        if size > self.max_bytes:
            return
        key = (tenant, response.id)
        old = self._entries.pop(key, None)
        if old is not None:
            self.size -= old.size
        self._entries[key] = _Entry(response, conversation, size, replica)
        self.size += size
        while self.size > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.size -= evicted.size

    def parent(self, tenant: str, response_id: str) -> Parent | None:
        entry = self._entries.get((tenant, response_id))
        if entry is None:
            return None
        self._entries.move_to_end((tenant, response_id))
        return Parent(response=entry.response, conversation=entry.conversation, replica=entry.replica)

    def forget_tenant(self, tenant: str) -> None:
        for key in [key for key in self._entries if key[0] == tenant]:
            self.size -= self._entries.pop(key).size
