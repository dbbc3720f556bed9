"""``response.create`` / ``POST /v1/responses`` bodies: decoding and validation.

Two steps, so errors are precise: msgspec checks the shape of every top-level field
(``CreateBody``), then :func:`validate_create` checks ranges and cross-field rules and parses
items and tools into typed structs (``CreateRequest``). Unknown fields are ignored, as OpenAI
clients send extras (``client_metadata``, ``prompt_cache_key``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

import msgspec

from loopway.protocol import bounds
from loopway.protocol.bounds import DEFAULT_BOUNDS, JsonBounds
from loopway.protocol.errors import invalid_request, invalid_value, missing_parameter
from loopway.protocol.items import COMPACTION_TRIGGER, Item, parse_input, text_of
from loopway.protocol.tools import ToolChoice, ToolSet, parse_tool_choice, parse_tools


class CreateBody(msgspec.Struct, kw_only=True):
    """The top-level fields of a create request, shape-checked only."""

    model: str | None = None
    input: str | list[Any] | None = None
    instructions: str | list[Any] | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    background: bool | None = None
    max_output_tokens: int | None = None
    max_tool_calls: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    metadata: dict[str, Any] | None = None
    text: dict[str, Any] | None = None
    reasoning: dict[str, Any] | None = None
    truncation: str | None = None
    include: list[str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    service_tier: str | None = None
    context_management: list[Any] | None = None
    # WebSocket mode only.
    generate: bool | None = None
    stream_id: str | None = None


class JsonSchemaFormat(msgspec.Struct):
    name: str
    schema: dict[str, Any]
    strict: bool | None = None
    description: str | None = None


class CreateRequest(msgspec.Struct, kw_only=True):
    """A validated create request; what the turn pipeline consumes."""

    model: str
    input: list[Item]
    instructions: str | None
    tools: ToolSet
    tool_choice: ToolChoice
    parallel_tool_calls: bool
    previous_response_id: str | None
    store: bool
    stream: bool
    background: bool
    max_output_tokens: int | None
    max_tool_calls: int | None
    temperature: float
    top_p: float
    top_logprobs: int
    presence_penalty: float
    frequency_penalty: float
    metadata: dict[str, str]
    text: dict[str, Any]
    json_schema: JsonSchemaFormat | None
    reasoning: dict[str, Any]
    truncation: Literal["auto", "disabled"]
    include: list[str]
    user: str | None
    safety_identifier: str | None
    prompt_cache_key: str | None
    service_tier: str
    compact_threshold: int | None
    compact_now: bool
    generate: bool
    stream_id: str | None
    conversation: str | None = None  # a Conversations API object whose items are the context


INCLUDABLE = frozenset(
    {
        "file_search_call.results",
        "web_search_call.results",
        "web_search_call.action.sources",
        "message.input_image.image_url",
        "computer_call_output.output.image_url",
        "code_interpreter_call.outputs",
        "reasoning.encrypted_content",
        "message.output_text.logprobs",
    }
)
_FORMAT_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def decode_json(data: bytes, limits: JsonBounds = DEFAULT_BOUNDS) -> Any:
    return bounds.decode(data, limits)


def shape_check(raw: Any, cls: type) -> Any:
    """msgspec's type check of a decoded body, as an OpenAI-shaped error."""
    if not isinstance(raw, dict):
        raise invalid_request("The request body must be a JSON object.", code="invalid_type")
    try:
        return msgspec.convert(raw, cls)
    except msgspec.ValidationError as exc:
        text, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`") or None
        raise invalid_request(
            f"Invalid type for '{param}': {text}." if param else f"{text}.", param=param, code="invalid_type"
        ) from None


def _range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise invalid_request(
            f"Invalid '{name}': {value} is out of range; expected a value between {low} and {high}.",
            param=name,
            code="invalid_value",
        )


def check_metadata(raw: dict[str, Any] | None) -> dict[str, str]:
    """OpenAI's metadata rules: at most 16 pairs, keys ≤ 64 characters, string values ≤ 512."""
    if raw is None:
        return {}
    if len(raw) > 16:
        raise invalid_request(
            "Invalid 'metadata': at most 16 key-value pairs are allowed.",
            param="metadata",
            code="object_above_max_properties",
        )
    for key, value in raw.items():
        if len(key) > 64:
            raise invalid_request(
                f"Invalid 'metadata': key '{key[:20]}...' is longer than 64 characters.",
                param="metadata",
                code="invalid_value",
            )
        if not isinstance(value, str):
            raise invalid_request(
                f"Invalid type for 'metadata.{key}': expected a string.", param=f"metadata.{key}", code="invalid_type"
            )
        if len(value) > 512:
            raise invalid_request(
                f"Invalid 'metadata.{key}': value is longer than 512 characters.",
                param=f"metadata.{key}",
                code="string_above_max_length",
            )
    return dict(raw)


def _text_format(raw: dict[str, Any] | None) -> tuple[dict[str, Any], JsonSchemaFormat | None]:
    text = {"format": {"type": "text"}, "verbosity": "medium"}
    if raw is None:
        return text, None
    fmt = raw.get("format") or {"type": "text"}
    if not isinstance(fmt, dict):
        raise invalid_request(
            "Invalid type for 'text.format': expected an object.", param="text.format", code="invalid_type"
        )
    verbosity = raw.get("verbosity", "medium")
    if verbosity not in ("low", "medium", "high"):
        raise invalid_value("text.verbosity", verbosity, ["low", "medium", "high"])
    text = {"format": fmt, "verbosity": verbosity}
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        return text, None
    if kind != "json_schema":
        raise invalid_value("text.format.type", kind, ["text", "json_schema", "json_object"])
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str):
        raise missing_parameter("text.format.name")
    if not _FORMAT_NAME.match(name):
        raise invalid_request(
            f"Invalid 'text.format.name': '{name}'. Expected a string of a-z, A-Z, 0-9, '_' or '-', at most 64 long.",
            param="text.format.name",
            code="invalid_value",
        )
    if not isinstance(schema, dict):
        raise missing_parameter("text.format.schema")
    strict = fmt.get("strict")
    return text, JsonSchemaFormat(name=name, schema=schema, strict=strict, description=fmt.get("description"))


def _compaction(raw: list[Any] | None) -> int | None:
    if not raw:
        return None
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or entry.get("type") != "compaction":
            raise invalid_value(
                f"context_management[{i}].type", entry.get("type") if isinstance(entry, dict) else entry, ["compaction"]
            )
        threshold = entry.get("compact_threshold")
        if threshold is not None:
            if not isinstance(threshold, int) or threshold < 1000:
                raise invalid_request(
                    "Invalid 'context_management[0].compact_threshold': expected an integer >= 1000.",
                    param=f"context_management[{i}].compact_threshold",
                    code="invalid_value",
                )
            return threshold
    return None


def _split_compaction_trigger(raw: Any) -> tuple[Any, bool]:
    """A trailing ``compaction_trigger`` item asks for compaction before this turn."""
    if not isinstance(raw, list):
        return raw, False
    for i, item in enumerate(raw):
        if isinstance(item, dict) and item.get("type") == COMPACTION_TRIGGER:
            if i != len(raw) - 1:
                raise invalid_request(
                    "'compaction_trigger' must be the last input item.", param=f"input[{i}]", code="invalid_value"
                )
            return raw[:-1], True
    return raw, False


STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,256}")  # used with fullmatch: no trailing newline slips through
_RANGES = (
    ("temperature", 0, 2),
    ("top_p", 0, 1),
    ("top_logprobs", 0, 20),
    ("presence_penalty", -2, 2),
    ("frequency_penalty", -2, 2),
)


def valid_stream_id(value: object) -> bool:
    return isinstance(value, str) and STREAM_ID.fullmatch(value) is not None


# Rules of a create body, each a small check that raises the OpenAI-shaped error; ``websocket``
# says which transport the body came on. Checked in order, so the first broken rule is the one reported.


def _model_is_named(body: CreateBody, websocket: bool) -> None:
    if not body.model:
        raise missing_parameter("model")


def _numbers_in_range(body: CreateBody, websocket: bool) -> None:
    for name, low, high in _RANGES:
        _range(name, getattr(body, name), low, high)
    if body.max_output_tokens is not None and body.max_output_tokens < 16:
        raise invalid_request(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
            f"but got {body.max_output_tokens} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    if body.max_tool_calls is not None and body.max_tool_calls < 1:
        raise invalid_request(
            f"Invalid 'max_tool_calls': integer below minimum value. Expected a value >= 1, "
            f"but got {body.max_tool_calls} instead.",
            param="max_tool_calls",
            code="integer_below_min_value",
        )


def _known_values(body: CreateBody, websocket: bool) -> None:
    if body.truncation not in (None, "auto", "disabled"):
        raise invalid_value("truncation", body.truncation, ["auto", "disabled"])
    for entry in body.include or []:
        if entry not in INCLUDABLE:
            raise invalid_value("include", entry, sorted(INCLUDABLE))


def _conversation_shape(body: CreateBody, websocket: bool) -> None:
    if body.conversation is None:
        return
    if body.previous_response_id is not None:
        raise invalid_request(
            "Parameters 'conversation' and 'previous_response_id' cannot be used together.",
            param="conversation",
            code="invalid_value",
        )
    if conversation_id(body.conversation) is None:
        raise invalid_request(
            "Invalid 'conversation': expected a conversation id, or an object with its 'id'.",
            param="conversation",
            code="invalid_value",
        )


def conversation_id(value: str | dict[str, Any] | None) -> str | None:
    """``"conv_…"`` or ``{"id": "conv_…"}``, as ``ConversationParam`` allows."""
    raw = value.get("id") if isinstance(value, dict) else value
    return raw if isinstance(raw, str) and 0 < len(raw) <= 256 else None


def _background_is_stored_http(body: CreateBody, websocket: bool) -> None:
    if body.background and websocket:
        raise invalid_request(
            "'background' is not supported in WebSocket mode.", param="background", code="unsupported_parameter"
        )
    if body.background and body.store is False:
        raise invalid_request(
            "Background responses must be stored: 'background' requires 'store' to be true.",
            param="store",
            code="invalid_value",
        )


def _websocket_only_fields(body: CreateBody, websocket: bool) -> None:
    if not websocket:
        for name, used in (("stream_id", body.stream_id is not None), ("generate", body.generate is False)):
            if used:
                raise invalid_request(f"'{name}' is only supported in WebSocket mode.", param=name, code="unknown_parameter")
    if body.stream_id is not None and not valid_stream_id(body.stream_id):
        raise invalid_request(
            "Invalid 'stream_id': expected 1 to 256 characters of A-Z, a-z, 0-9, '_', '.' or '-'.",
            param="stream_id",
            code="invalid_stream_id",
        )


def _input_is_given(body: CreateBody, websocket: bool) -> None:
    if body.input is None and body.previous_response_id is None and body.generate is not False:
        raise missing_parameter("input")


RULES: tuple[Callable[[CreateBody, bool], None], ...] = (
    _model_is_named,
    _numbers_in_range,
    _known_values,
    _conversation_shape,
    _background_is_stored_http,
    _websocket_only_fields,
    _input_is_given,
)


def _instructions(raw: str | list[Any] | None) -> str | None:
    if not isinstance(raw, list):
        return raw
    return "\n".join(text_of(getattr(item, "content", "")) for item in parse_input(raw, "instructions"))


def validate_create(body: CreateBody, *, websocket: bool = False) -> CreateRequest:
    """Check every rule, then parse items, tools and formats into the typed request."""
    for rule in RULES:
        rule(body, websocket)
    raw_input, compact_now = _split_compaction_trigger(body.input)
    tools = parse_tools(body.tools)
    text, json_schema = _text_format(body.text)
    reasoning = body.reasoning or {}
    return CreateRequest(
        model=body.model or "",
        input=parse_input(raw_input) if raw_input is not None else [],
        instructions=_instructions(body.instructions),
        tools=tools,
        tool_choice=parse_tool_choice(body.tool_choice, tools),
        parallel_tool_calls=True if body.parallel_tool_calls is None else body.parallel_tool_calls,
        previous_response_id=body.previous_response_id,
        store=True if body.store is None else body.store,
        stream=bool(body.stream),
        background=bool(body.background),
        max_output_tokens=body.max_output_tokens,
        max_tool_calls=body.max_tool_calls,
        temperature=1.0 if body.temperature is None else float(body.temperature),
        top_p=1.0 if body.top_p is None else float(body.top_p),
        top_logprobs=body.top_logprobs or 0,
        presence_penalty=float(body.presence_penalty or 0.0),
        frequency_penalty=float(body.frequency_penalty or 0.0),
        metadata=check_metadata(body.metadata),
        text=text,
        json_schema=json_schema,
        reasoning={"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        truncation=body.truncation or "disabled",
        include=list(body.include or []),
        user=body.user,
        safety_identifier=body.safety_identifier,
        prompt_cache_key=body.prompt_cache_key,
        service_tier=body.service_tier or "default",
        compact_threshold=_compaction(body.context_management),
        compact_now=compact_now,
        generate=body.generate is not False,
        conversation=conversation_id(body.conversation),
        stream_id=body.stream_id,
    )


def create_from(raw: Any, *, websocket: bool = False, limits: JsonBounds = DEFAULT_BOUNDS) -> CreateRequest:
    """A decoded create body (a ``response.create`` frame, or a JSON body) to a validated request."""
    bounds.check_input_items(raw, limits)
    return validate_create(shape_check(raw, CreateBody), websocket=websocket)


def parse_create(data: bytes, *, websocket: bool = False, limits: JsonBounds = DEFAULT_BOUNDS) -> CreateRequest:
    return create_from(decode_json(data, limits), websocket=websocket, limits=limits)
