"""The client side: an async agent loop for any Responses server, over HTTP or WebSocket mode."""

from loopway.client.loop import AgentError, AgentLoop, RunResult, TurnTrace
from loopway.client.retry import RetryPolicy
from loopway.client.tools import ToolRegistry
from loopway.client.transports import (
    HttpChainedTransport,
    HttpStatelessTransport,
    Transport,
    WebSocketTransport,
    make_transport,
)

__all__ = [
    "AgentLoop",
    "AgentError",
    "RunResult",
    "TurnTrace",
    "ToolRegistry",
    "RetryPolicy",
    "Transport",
    "HttpStatelessTransport",
    "HttpChainedTransport",
    "WebSocketTransport",
    "make_transport",
]
