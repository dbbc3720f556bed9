"""What operations read of a turn that ended: metrics, logs and the dashboard see it through this.

``core.turn.turn.Turn`` is one. Operations sit below the turn (the turn uses their stage times and
injected faults), so they name the few fields they read instead of importing the turn.
"""

from __future__ import annotations

from typing import Protocol

from loopway.core.ops.timing import StageTimes
from loopway.protocol.request import CreateRequest
from loopway.protocol.response import Response


class TurnView(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def tenant(self) -> str: ...

    @property
    def request(self) -> CreateRequest: ...

    @property
    def response(self) -> Response: ...

    @property
    def times(self) -> StageTimes: ...
