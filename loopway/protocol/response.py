"""The Response object and its usage, as OpenAI returns them.

Every key of the schema's required set (and of the Open Responses suite's stricter set) is
always present; absent values encode as ``null``. Like items and events, these structs are
``gc=False``: they never refer back to anything that refers to them.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from loopway.protocol.items import (
    Compaction,
    FunctionCall,
    McpApprovalRequest,
    McpCall,
    McpListTools,
    Message,
    OtherItem,
    Reasoning,
    encode_hook,
    parse_item,
)

Status = Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
OutputItem = Message | FunctionCall | Reasoning | Compaction | McpListTools | McpCall | McpApprovalRequest | OtherItem


class InputTokensDetails(msgspec.Struct, gc=False):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int = 0


class Usage(msgspec.Struct, gc=False):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int = 0

    @classmethod
    def of(cls, input_tokens: int, cached_tokens: int, output_tokens: int, reasoning_tokens: int = 0) -> Usage:
        return cls(
            input_tokens=input_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=cached_tokens, cache_write_tokens=input_tokens - cached_tokens
            ),
            output_tokens=output_tokens,
            output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens),
            total_tokens=input_tokens + output_tokens,
        )


class ResponseError(msgspec.Struct, gc=False):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct, gc=False):
    reason: str


class Response(msgspec.Struct, gc=False, kw_only=True):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    background: bool = False
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    model: str
    output: list[Any] = msgspec.field(default_factory=list)  # OutputItem; Any so decoding can defer to parse_item
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    prompt_cache_key: str | None = None
    reasoning: dict[str, Any] | None = None
    safety_identifier: str | None = None
    service_tier: str = "default"
    store: bool = True
    temperature: float = 1.0
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}, "verbosity": "medium"})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = msgspec.field(default_factory=list)
    top_logprobs: int = 0
    top_p: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    truncation: str = "disabled"
    # OpenAI's schema allows no null here; an unfinished response reports zero usage.
    usage: Usage = msgspec.field(default_factory=Usage)
    user: str | UnsetType = UNSET  # absent unless the request set it (the schema allows no null)
    conversation: dict[str, str] | UnsetType = UNSET  # {"id": "conv_…"} when the request named one
    metadata: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.status in ("completed", "incomplete", "failed", "cancelled")


ENCODER = msgspec.json.Encoder(enc_hook=encode_hook)


def encode(response: Response) -> bytes:
    return ENCODER.encode(response)


def decode(data: bytes) -> Response:
    """Decode a stored Response; hosted-tool items come back as plain dicts in ``OtherItem``."""
    raw = msgspec.json.decode(data)
    output = raw.pop("output", [])
    response = msgspec.convert(raw, Response)
    response.output = [parse_item(item, f"output[{i}]") for i, item in enumerate(output)]
    return response
