"""Conversation items and their content parts, as typed structs.

Clients are lenient in what they send (Codex omits ``type`` on messages, sends item ids and
tool-specific items loopway does not run), so :func:`parse_items` normalises first, then
converts each item with msgspec, turning its validation errors into ``ApiError``s that name the
offending parameter path.

Items are ``gc=False`` structs: they hold strings, numbers and sequences of parts, never a
reference back, so the cyclic collector need not track them. A connection cache holds thousands, and
untracked objects neither trigger collections nor lengthen them. A list is always tracked, though, so
an item entering a conversation is ``settle``d: its lists of parts become tuples, which the collector
stops tracking the first time it sees them. (``OtherItem`` wraps arbitrary JSON and stays tracked.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from loopway.protocol import ids
from loopway.protocol.errors import ApiError, invalid_request


class InputText(msgspec.Struct, gc=False, tag="input_text", tag_field="type"):
    text: str


class InputImage(msgspec.Struct, gc=False, tag="input_image", tag_field="type", omit_defaults=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: str = "auto"


class InputFile(msgspec.Struct, gc=False, tag="input_file", tag_field="type", omit_defaults=True):
    file_id: str | None = None
    file_url: str | None = None
    file_data: str | None = None
    filename: str | None = None


class OutputText(msgspec.Struct, gc=False, tag="output_text", tag_field="type"):
    text: str
    # Empty tuples by default (a shared constant the GC does not track); decoded JSON gives tuples too.
    annotations: tuple[Any, ...] = ()
    logprobs: tuple[Any, ...] = ()


class Refusal(msgspec.Struct, gc=False, tag="refusal", tag_field="type"):
    refusal: str


class SummaryText(msgspec.Struct, gc=False, tag="summary_text", tag_field="type"):
    text: str


class ReasoningText(msgspec.Struct, gc=False, tag="reasoning_text", tag_field="type"):
    text: str


ContentPart = InputText | InputImage | InputFile | OutputText | Refusal
Role = Literal["user", "assistant", "system", "developer"]


class Message(msgspec.Struct, gc=False, tag="message", tag_field="type", omit_defaults=True):
    role: Role
    content: str | Sequence[ContentPart]  # a list as decoded or built; a tuple once settled
    id: str | None = None
    status: str | None = None
    phase: str | None = None


class FunctionCall(msgspec.Struct, gc=False, tag="function_call", tag_field="type", omit_defaults=True):
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None
    namespace: str | None = None


class FunctionCallOutput(msgspec.Struct, gc=False, tag="function_call_output", tag_field="type", omit_defaults=True):
    call_id: str
    output: str | Sequence[ContentPart]
    id: str | None = None
    status: str | None = None


class Reasoning(msgspec.Struct, gc=False, tag="reasoning", tag_field="type", omit_defaults=True):
    summary: Sequence[SummaryText]
    id: str | None = None
    content: Sequence[ReasoningText] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class ItemReference(msgspec.Struct, gc=False, tag="item_reference", tag_field="type"):
    id: str


class Compaction(msgspec.Struct, gc=False, tag="compaction", tag_field="type", omit_defaults=True):
    encrypted_content: str
    id: str | None = None


class McpListedTool(msgspec.Struct, gc=False, omit_defaults=True):
    """One tool an MCP server offers, as ``mcp_list_tools`` lists it."""

    name: str
    input_schema: dict[str, Any]
    description: str | None = None
    annotations: dict[str, Any] | None = None


class McpListTools(msgspec.Struct, gc=False, tag="mcp_list_tools", tag_field="type"):
    """The tools an MCP server offered: the model calls them while this item is in its context."""

    server_label: str
    tools: Sequence[McpListedTool]
    id: str | None = None
    error: str | None = None


class McpCall(msgspec.Struct, gc=False, tag="mcp_call", tag_field="type"):
    """A call the server ran on an MCP server: the model's arguments and the tool's answer."""

    server_label: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None
    output: str | None = None
    error: dict[str, Any] | str | None = None
    approval_request_id: str | None = None


class McpApprovalRequest(msgspec.Struct, gc=False, tag="mcp_approval_request", tag_field="type"):
    """A call the model wants to make that waits for the client's approval (the response ends)."""

    server_label: str
    name: str
    arguments: str
    id: str | None = None


class McpApprovalResponse(msgspec.Struct, gc=False, tag="mcp_approval_response", tag_field="type", omit_defaults=True):
    """The client's answer to an ``mcp_approval_request``: the call runs in the next response, or not."""

    approval_request_id: str
    approve: bool
    id: str | None = None
    reason: str | None = None


McpItem = McpListTools | McpCall | McpApprovalRequest | McpApprovalResponse


class OtherItem(msgspec.Struct):
    """An item of a type loopway carries but does not interpret (hosted-tool calls and outputs).

    It is kept verbatim so that a client resending its history loses nothing; the model sees it
    as its JSON text.
    """

    type: str
    raw: dict[str, Any]


Item = (
    Message
    | FunctionCall
    | FunctionCallOutput
    | Reasoning
    | ItemReference
    | Compaction
    | McpListTools
    | McpCall
    | McpApprovalRequest
    | McpApprovalResponse
    | OtherItem
)

_TYPED: dict[str, type] = {
    "message": Message,
    "function_call": FunctionCall,
    "function_call_output": FunctionCallOutput,
    "reasoning": Reasoning,
    "item_reference": ItemReference,
    "compaction": Compaction,
    "mcp_list_tools": McpListTools,
    "mcp_call": McpCall,
    "mcp_approval_request": McpApprovalRequest,
    "mcp_approval_response": McpApprovalResponse,
}

# Item types of the OpenAI schema that loopway accepts in history without running them.
PASSTHROUGH_TYPES = frozenset(
    {
        "custom_tool_call",
        "custom_tool_call_output",
        "web_search_call",
        "file_search_call",
        "computer_call",
        "computer_call_output",
        "code_interpreter_call",
        "image_generation_call",
        "local_shell_call",
        "local_shell_call_output",
        "shell_call",
        "shell_call_output",
        "apply_patch_call",
        "apply_patch_call_output",
        "tool_search_call",
        "tool_search_output",
    }
)

# The compaction trigger asks for compaction now; it carries no content of its own.
COMPACTION_TRIGGER = "compaction_trigger"


def _convert_error(exc: msgspec.ValidationError, param: str) -> ApiError:
    text = str(exc)
    where = ""
    if " - at `$" in text:
        text, _, where = text.partition(" - at `$")
        where = where.rstrip("`")
    return invalid_request(f"Invalid input: {text}.", param=param + where, code="invalid_type")


def parse_item(raw: Any, param: str) -> Item:
    """Validate one input item; ``param`` names it in errors (e.g. ``input[3]``)."""
    if not isinstance(raw, dict):
        raise invalid_request(f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type")
    item_type = raw.get("type")
    if item_type is None:
        # Easy input messages and Codex's history items come without a type.
        if "role" in raw:
            item_type = "message"
        elif "id" in raw:
            item_type = "item_reference"
        else:
            raise invalid_request(
                f"Missing required parameter: '{param}.type'.", param=f"{param}.type", code="missing_required_parameter"
            )
        raw = {**raw, "type": item_type}
    if not isinstance(item_type, str):
        raise invalid_request(
            f"Invalid type for '{param}.type': expected a string.", param=f"{param}.type", code="invalid_type"
        )
    cls = _TYPED.get(item_type)
    if cls is not None:
        try:
            return msgspec.convert(raw, cls)
        except msgspec.ValidationError as exc:
            raise _convert_error(exc, param) from None
    if item_type in PASSTHROUGH_TYPES:
        return OtherItem(type=item_type, raw=raw)
    raise invalid_request(
        f"Invalid value: '{item_type}'. Supported item types are: " + ", ".join(sorted([*_TYPED, *PASSTHROUGH_TYPES])) + ".",
        param=f"{param}.type",
        code="invalid_value",
    )


def parse_input(raw: Any, param: str = "input") -> list[Item]:
    """``input`` as a string (one user message) or a list of items."""
    if isinstance(raw, str):
        return [Message(role="user", content=raw)]
    if not isinstance(raw, list):
        raise invalid_request(
            f"Invalid type for '{param}': expected a string or an array of items.", param=param, code="invalid_type"
        )
    return [parse_item(item, f"{param}[{i}]") for i, item in enumerate(raw)]


def settle(item: Item) -> Item:
    """A finished item's lists of parts as tuples, in place (see the module docstring: the GC)."""
    if isinstance(item, Message) and isinstance(item.content, list):
        item.content = tuple(item.content)
    elif isinstance(item, FunctionCallOutput) and isinstance(item.output, list):
        item.output = tuple(item.output)
    elif isinstance(item, Reasoning):
        if isinstance(item.summary, list):
            item.summary = tuple(item.summary)
        if isinstance(item.content, list):
            item.content = tuple(item.content)
    elif isinstance(item, McpListTools) and isinstance(item.tools, list):
        item.tools = tuple(item.tools)
    return item


def text_of(content: str | Sequence[ContentPart]) -> str:
    """The text a content field carries (text parts only), joined."""
    if isinstance(content, str):
        return content
    out = []
    for part in content:
        if isinstance(part, (InputText, OutputText)):
            out.append(part.text)
        elif isinstance(part, Refusal):
            out.append(part.refusal)
    return "".join(out)


_ID_PREFIX = {
    Message: ids.MESSAGE,
    FunctionCall: ids.FUNCTION_CALL,
    FunctionCallOutput: ids.FUNCTION_CALL_OUTPUT,
    Reasoning: ids.REASONING,
    Compaction: ids.COMPACTION,
    McpListTools: ids.MCP_LIST_TOOLS,
    McpCall: ids.MCP_CALL,
    McpApprovalRequest: ids.MCP_APPROVAL_REQUEST,
    McpApprovalResponse: ids.MCP_APPROVAL_RESPONSE,
}


def normalized(item: Item) -> Item:
    """An input item as it is stored and listed: with an id, a status and content parts.

    Normalising never changes what the model sees (rendering treats a string and one text part
    alike), only how the item is listed by ``input_items``.
    """
    if isinstance(item, OtherItem):
        item.raw.setdefault("id", ids.new_id(ids.ITEM))
        return item
    if getattr(item, "id", None) is None and type(item) in _ID_PREFIX:
        item.id = ids.new_id(_ID_PREFIX[type(item)])
    if isinstance(item, Message):
        if isinstance(item.content, str):
            part = OutputText(text=item.content) if item.role == "assistant" else InputText(text=item.content)
            item.content = [part]
        item.status = item.status or "completed"
    elif isinstance(item, (FunctionCall, FunctionCallOutput, McpCall)):
        item.status = item.status or "completed"
    return item


def item_id(item: Item) -> str:
    if isinstance(item, OtherItem):
        return str(item.raw.get("id", ""))
    return getattr(item, "id", None) or ""


def encode_hook(obj: Any) -> Any:
    """msgspec ``enc_hook``: pass-through items encode as the dict the client sent."""
    if isinstance(obj, OtherItem):
        return obj.raw
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


ENCODER = msgspec.json.Encoder(enc_hook=encode_hook)


def to_builtins(item: Item) -> dict[str, Any]:
    if isinstance(item, OtherItem):
        return item.raw
    return msgspec.to_builtins(item)


def items_from_json(data: bytes) -> list[Item]:
    """Decode a stored JSON list of items (written by ``ENCODER``)."""
    return [parse_item(raw, f"item[{i}]") for i, raw in enumerate(msgspec.json.decode(data))]
