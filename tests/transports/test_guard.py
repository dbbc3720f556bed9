"""The connection guard's own rules, without sockets: the cap it derives and whom it evicts."""

from __future__ import annotations

import resource

from loopway.transports.guard import RESERVED_FDS, ConnectionGuard, default_max_connections


class Connection:
    def __init__(self) -> None:
        self.transport = self
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_the_default_cap_leaves_room_for_the_servers_own_files():
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert default_max_connections(32) == max(16, soft - RESERVED_FDS - 32)
    assert ConnectionGuard(0, 5.0).max_connections == default_max_connections(32)
    assert ConnectionGuard(100, 5.0).max_connections == 100


def test_the_one_waiting_longest_for_a_request_head_is_evicted_never_the_newcomer():
    guard = ConnectionGuard(2, 5.0)
    oldest, younger, newcomer = Connection(), Connection(), Connection()
    for connection in (oldest, younger, newcomer):
        guard.waiting[connection] = None
    assert guard.evict_one(newcomer) and oldest.closed and not younger.closed
    assert list(guard.waiting) == [younger, newcomer]
    assert guard.evict_one(newcomer) and younger.closed
    assert not guard.evict_one(newcomer) and not newcomer.closed  # every other one is busy: nobody to evict
