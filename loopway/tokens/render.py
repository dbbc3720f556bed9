"""Items to tokens: a chat template over ``o200k_base``.

Each item renders on its own, so rendering a history item by item gives exactly the tokens of
rendering it whole: a continuation renders only its new items, and a stateless client that
resends identical history produces identical tokens (and identical prefix-cache hits).
Ids and statuses are not rendered: a resent item renders like the original output.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from functools import lru_cache

import bpe_openai
import msgspec

from loopway.protocol.items import (
    Compaction,
    ContentPart,
    FunctionCall,
    FunctionCallOutput,
    InputFile,
    InputImage,
    InputText,
    Item,
    ItemReference,
    McpApprovalRequest,
    McpApprovalResponse,
    McpCall,
    McpListTools,
    Message,
    OtherItem,
    OutputText,
    Reasoning,
    Refusal,
)
from loopway.protocol.tools import ToolSet

LOW_DETAIL_IMAGE_TOKENS = 85
TILE_TOKENS = 170
CHUNK_CHARS = 64 * 1024  # bpe-openai refuses a single text of 1,000,000 characters or 200,000 tokens


@lru_cache(maxsize=1)
def encoding() -> bpe_openai.Encoding:
    return bpe_openai.get_encoding("o200k_base")


def _opaque_tokens(seed: bytes, count: int) -> list[int]:
    """Stand-in token ids for content the model does not read as text (pixels, file bytes).

    Derived from the content, so different images never share a cached prefix.
    """
    digest = hashlib.blake2b(seed, digest_size=8).digest()
    base = struct.unpack("<Q", digest)[0]
    vocab = encoding().n_vocab - 1024
    return [(base + i * 2654435761) % vocab for i in range(count)]


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    return None


def image_token_count(image: InputImage) -> int:
    """OpenAI's tile arithmetic where the size is known (PNG data URLs); 765 tokens otherwise."""
    if image.detail == "low":
        return LOW_DETAIL_IMAGE_TOKENS
    url = image.image_url or ""
    size = None
    if url.startswith("data:") and "," in url:
        try:
            size = _png_size(base64.b64decode(url.split(",", 1)[1][:64] + "=="))
        except ValueError:
            size = None
    if size is None:
        return LOW_DETAIL_IMAGE_TOKENS + 4 * TILE_TOKENS
    width, height = size
    scale = min(1.0, 2048 / max(width, height, 1))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / max(min(width, height), 1))
    tiles = -(-int(width * scale) // 512) * -(-int(height * scale) // 512)
    return LOW_DETAIL_IMAGE_TOKENS + TILE_TOKENS * tiles


_END: tuple[int, ...] = ()


def encode_long(text: str) -> list[int]:
    """``o200k_base`` tokens of any text, encoded in chunks that end at whitespace where there is some.

    Chunk boundaries depend only on the text, so the same text always gives the same tokens (the
    prefix cache relies on it); a word is only ever split when it is longer than a chunk.
    """
    encode = encoding().encode_ordinary
    if len(text) <= CHUNK_CHARS:
        return encode(text)
    out: list[int] = []
    start = 0
    while start < len(text):
        end = min(start + CHUNK_CHARS, len(text))
        if end < len(text):
            cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
            end = cut if cut > start else end
        out += encode(text[start:end])
        start = end
    return out


@lru_cache(maxsize=64)
def _frame_open(role: str) -> tuple[int, ...]:
    """The opening of a message frame: encoded alone already, so caching it changes no token."""
    return tuple(encode_long(f"<|start|>{role}<|message|>"))


class Renderer:
    """Renders the header (instructions and tools) and each item to token ids."""

    def __init__(self) -> None:
        self._encode = encode_long

    def text(self, text: str) -> list[int]:
        return self._encode(text)

    def header(self, instructions: str | None, tools: ToolSet) -> list[int]:
        out: list[int] = []
        if instructions:
            out += self._encode(f"<|start|>developer<|message|>{instructions}<|end|>")
        if tools.functions:
            schema = msgspec.json.encode([t.echo() for t in tools.functions]).decode()
            out += self._encode(f"<|start|>tools<|message|>{schema}<|end|>")
        return out

    def item(self, item: Item) -> list[int]:
        if isinstance(item, Message):
            return self._frame(item.role, item.content)
        if isinstance(item, FunctionCall):
            name = f"{item.namespace}.{item.name}" if item.namespace else item.name
            return self._encode(f"<|start|>assistant to={name}<|call|>{item.arguments}<|end|>")
        if isinstance(item, FunctionCallOutput):
            return self._frame(f"tool {item.call_id}", item.output)
        if isinstance(item, Reasoning):  # the raw reasoning where there is some, else its summary
            thought = "".join(p.text for p in item.content) if item.content else "".join(s.text for s in item.summary)
            return self._encode(f"<|start|>assistant<|channel|>analysis<|message|>{thought}<|end|>")
        if isinstance(item, McpCall):
            name = f"{item.server_label}.{item.name}"
            answer = item.output if item.error is None else msgspec.json.encode({"error": item.error}).decode()
            return self._encode(
                f"<|start|>assistant to={name}<|call|>{item.arguments}<|end|>"
                f"<|start|>tool {name}<|message|>{answer or ''}<|end|>"
            )
        if isinstance(item, McpListTools):
            listed = item.error if item.error is not None else msgspec.json.encode(item.tools).decode()
            return self._encode(f"<|start|>tools {item.server_label}<|message|>{listed}<|end|>")
        if isinstance(item, (McpApprovalRequest, McpApprovalResponse)):
            return self._encode(
                f"<|start|>{item.__struct_config__.tag}<|message|>{msgspec.json.encode(item).decode()}<|end|>"
            )
        if isinstance(item, OtherItem):
            return self._encode(f"<|start|>{item.type}<|message|>{msgspec.json.encode(item.raw).decode()}<|end|>")
        if isinstance(item, (Compaction, ItemReference)):
            raise ValueError(f"{type(item).__name__} must be expanded before rendering")
        raise TypeError(type(item))

    def items(self, items: list[Item]) -> list[int]:
        out: list[int] = []
        for item in items:
            out += self.item(item)
        return out

    def _frame(self, role: str, content: str | list[ContentPart]) -> list[int]:
        if isinstance(content, str):  # renders exactly like one text part
            content = [InputText(text=content)]
        out = list(_frame_open(role))
        for part in content:
            out += self._part(part)
        out += _END
        return out

    def _part(self, part: ContentPart) -> list[int]:
        if isinstance(part, (InputText, OutputText)):
            return self._encode(part.text)
        if isinstance(part, Refusal):
            return self._encode(part.refusal)
        if isinstance(part, InputImage):
            seed = (part.image_url or part.file_id or "").encode()
            return _opaque_tokens(seed, image_token_count(part))
        if isinstance(part, InputFile):
            payload = part.file_data or part.file_url or part.file_id or ""
            header = self._encode(f"[file {part.filename or part.file_id or 'attachment'}]")
            return header + _opaque_tokens(payload.encode(), max(1, len(payload) * 3 // 16))
        raise TypeError(type(part))


class Prerendered(Renderer):
    """A renderer that answers from tokens rendered earlier, by object identity.

    A large request is rendered in a worker thread (``prerender``) so the event loop stays free; the
    turn is then built on the loop from these tokens, where the connection's shared buffers live.
    Anything not rendered ahead (a referenced item, the model's output) is rendered as usual.
    """

    def __init__(self, items: dict[int, list[int]], headers: dict[tuple[int, int], list[int]], keep: object) -> None:
        super().__init__()
        self._items = items
        self._headers = headers
        self._keep = keep  # the objects the ids belong to, alive as long as their ids are used

    def header(self, instructions: str | None, tools: ToolSet) -> list[int]:
        tokens = self._headers.get((id(instructions), id(tools)))
        return tokens if tokens is not None else super().header(instructions, tools)

    def item(self, item: Item) -> list[int]:
        tokens = self._items.get(id(item))
        return tokens if tokens is not None else super().item(item)


def prerender(instructions: str | None, tools: ToolSet, items: list[Item]) -> Prerendered:
    """Render a request's header and items now (in any thread) for a turn built later."""
    renderer = Renderer()
    rendered = {id(item): renderer.item(item) for item in items if not isinstance(item, (Compaction, ItemReference))}
    headers = {(id(instructions), id(tools)): renderer.header(instructions, tools)}
    return Prerendered(rendered, headers, (instructions, tools, items))


_END = tuple(encode_long("<|end|>"))
