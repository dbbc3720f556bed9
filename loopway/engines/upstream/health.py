"""Whether a replica takes requests: passive (failures) and active (probes) health, sans-I/O.

A failure (refused connection, timeout, 5xx, a stream that broke before its first byte) marks the
replica down at once, for a backoff that doubles with each failure in a row (1 s, 2 s, … 30 s). A
down replica takes no request until its backoff has passed; then one request or probe may try it
(the backoff is pushed forward as it starts, so two requests in a row never both try it). Any
success, a probe's or a request's, brings it back.
"""

from __future__ import annotations


class Health:
    def __init__(self, base_s: float = 1.0, max_s: float = 30.0) -> None:
        self.base_s, self.max_s = base_s, max_s
        self.up = True
        self.failures = 0  # in a row
        self.retry_at = 0.0

    def _backoff(self) -> float:
        return min(self.max_s, self.base_s * 2 ** max(0, self.failures - 1))

    def available(self, now: float) -> bool:
        return self.up or now >= self.retry_at

    def trying(self, now: float) -> None:
        """A request goes to it: a down replica's one trial holds off the next until it ends."""
        if not self.up:
            self.retry_at = now + self._backoff()

    def failed(self, now: float) -> bool:
        """Returns whether this failure took it down (it was up)."""
        was_up = self.up
        self.up = False
        self.failures += 1
        self.retry_at = now + self._backoff()
        return was_up

    def succeeded(self) -> bool:
        """Returns whether this success brought it back (it was down)."""
        was_down = not self.up
        self.up, self.failures = True, 0
        return was_down
