"""When a failed turn is worth sending again, and how long to wait first: one policy for every transport.

| what went wrong | what the client does |
|---|---|
| 408, 409, 429 or ≥ 500 (an HTTP status, or a socket's ``error`` event) | wait (``retry-after``, else backoff), send again |
| ``response.failed`` with ``server_error`` or ``rate_limit_exceeded`` | wait, run the turn again |
| ``previous_response_not_found`` | send the whole context, without ``previous_response_id`` |
| ``websocket_connection_limit_reached``; a socket closed or cut | a new socket (with ``store=false``, the whole context) |
| an HTTP stream cut before its terminal event | wait, send again |
| anything else (a 400, a 401, a failure of the request itself) | give up: the caller sees it |

The waits are the openai SDKs': 0.5 s doubling to 8 s, with jitter, or what the server's
``retry-after-ms`` / ``retry-after`` asks for (up to a minute).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping
from typing import Any

import msgspec

RETRY_STATUS = frozenset({408, 409, 429})
RETRY_FAILURE_CODES = frozenset({"server_error", "rate_limit_exceeded"})


class Recovery(enum.Enum):
    RETRY = "retry"  # wait, then send the same request again
    RESEND_FULL = "resend_full"  # send the whole context at once
    RECONNECT = "reconnect"  # a new socket, then send again
    GIVE_UP = "give_up"


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    max_attempts: int = 6  # sends of one turn, the first included
    initial_delay_s: float = 0.5
    max_delay_s: float = 8.0
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, headers: Mapping[str, Any] | None = None) -> float:
        """Seconds to wait before send number ``attempt + 1`` (``attempt`` ≥ 1 failed already)."""
        asked = retry_after(headers or {})
        if asked is not None:
            return min(asked, self.max_retry_after_s)
        backoff = min(self.max_delay_s, self.initial_delay_s * 2 ** max(0, attempt - 1))
        return backoff * (1 - 0.25 * random.random())


def retry_after(headers: Mapping[str, Any]) -> float | None:
    """What ``retry-after-ms`` (OpenAI's) or ``retry-after`` (seconds) ask for, if either parses."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except (TypeError, ValueError):
            continue
    return None


def for_error(status: int, error: Mapping[str, Any]) -> Recovery:
    """An HTTP error answer, or a socket's ``error`` event."""
    code = error.get("code")
    if code == "previous_response_not_found":
        return Recovery.RESEND_FULL
    if code == "websocket_connection_limit_reached":
        return Recovery.RECONNECT
    if status in RETRY_STATUS or status >= 500:
        return Recovery.RETRY
    return Recovery.GIVE_UP


def for_response(response: Mapping[str, Any]) -> Recovery | None:
    """A terminal response: None when it stands (completed, incomplete, or failed for good)."""
    if response.get("status") != "failed":
        return None
    code = (response.get("error") or {}).get("code")
    return Recovery.RETRY if code in RETRY_FAILURE_CODES else None
