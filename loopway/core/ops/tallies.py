"""Per-tenant numbers that every worker process of one server shares: rate buckets, open sockets.

``LocalTallies`` is a dict, for one process. ``SharedTallies`` is the same interface over an
anonymous shared memory map and a lock created before the workers fork, so a limit holds across
``--workers`` as it does within one: a tenant's requests take tokens from one bucket whichever
worker answers them. An update is a few hundred nanoseconds under an uncontended lock.

The lock is an ``fcntl`` record lock on a file made before the fork, behind a thread lock: the
kernel releases it when the process holding it dies, so a worker killed mid-update (``kill -9``)
never wedges the others, as a ``multiprocessing`` lock it held would.

The shared table has fixed room (``slots`` tenants, open addressing on a keyed hash of the tenant);
a server with more tenants than that counts the newcomers per worker, and says so once in the log.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Protocol

log = logging.getLogger("loopway.limits")

Pair = tuple[float, float]
_SLOT = struct.Struct("=qdd")  # tenant key (0: empty), two values


class Tallies(Protocol):
    def update(self, tenant: str, default: Pair, change: Callable[[Pair], Pair]) -> Pair:
        """Replace the tenant's pair (``default`` when it has none) by ``change(pair)``, atomically;
        returns the new pair."""
        ...

    def update_all(self, keys: Sequence[str], default: Pair, change: Callable[[list[Pair]], list[Pair]]) -> list[Pair]:
        """The same for several keys at once: ``change`` sees every pair and returns them all."""
        ...

    def forget(self, second: float) -> None:
        """Zero the first value of every pair whose second is ``second`` (a dead worker's counts)."""
        ...


class LocalTallies:
    def __init__(self) -> None:
        self._pairs: dict[str, Pair] = {}

    def update(self, tenant: str, default: Pair, change: Callable[[Pair], Pair]) -> Pair:
        return self.update_all([tenant], default, lambda pairs: [change(pairs[0])])[0]

    def update_all(self, keys: Sequence[str], default: Pair, change: Callable[[list[Pair]], list[Pair]]) -> list[Pair]:
        pairs = change([self._pairs.get(key, default) for key in keys])
        self._pairs.update(zip(keys, pairs, strict=True))
        return pairs

    def forget(self, second: float) -> None:
        for key, (first, other) in list(self._pairs.items()):
            if other == second:
                self._pairs[key] = (0.0, other)


class _ProcessLock:
    """Exclusive across the forked workers and their threads; the kernel drops it with its holder."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # inherited by every worker; record locks are per process
        self._threads = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            fcntl.lockf(self._file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._file, fcntl.LOCK_UN)


class SharedTallies:
    """Create before forking; every process that inherits it sees the same numbers."""

    def __init__(self, slots: int = 16_384) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * _SLOT.size)  # anonymous and MAP_SHARED: shared across fork
        self._lock = _ProcessLock()
        self._local = LocalTallies()  # tenants past the table's room
        self._warned = False

    def update(self, tenant: str, default: Pair, change: Callable[[Pair], Pair]) -> Pair:
        return self.update_all([tenant], default, lambda pairs: [change(pairs[0])])[0]

    def update_all(self, keys: Sequence[str], default: Pair, change: Callable[[list[Pair]], list[Pair]]) -> list[Pair]:
        hashed = [_key(key) for key in keys]
        with self._lock.held():
            offsets, pairs = [], []
            for key in hashed:  # one at a time: a new key claims its slot before the next looks for one
                offset = self._find(key)
                if offset is None:
                    return self._overflow(keys, default, change)
                stored, a, b = _SLOT.unpack_from(self._map, offset)
                if stored != key:
                    (a, b) = default
                    _SLOT.pack_into(self._map, offset, key, a, b)
                offsets.append(offset)
                pairs.append((a, b))
            changed = change(pairs)
            for key, offset, pair in zip(hashed, offsets, changed, strict=True):
                _SLOT.pack_into(self._map, offset, key, *pair)
            return changed

    def forget(self, second: float) -> None:
        with self._lock.held():
            for offset in range(0, self.slots * _SLOT.size, _SLOT.size):
                stored, a, b = _SLOT.unpack_from(self._map, offset)
                if stored and b == second:
                    _SLOT.pack_into(self._map, offset, stored, 0.0, b)
        self._local.forget(second)

    def _find(self, key: int) -> int | None:
        """The slot holding ``key``, or the empty one where it goes; None when the table is full."""
        start = key % self.slots
        for probe in range(self.slots):
            offset = ((start + probe) % self.slots) * _SLOT.size
            stored = _SLOT.unpack_from(self._map, offset)[0]
            if stored in (key, 0):
                return offset
        return None

    def _overflow(self, keys: Sequence[str], default: Pair, change: Callable[[list[Pair]], list[Pair]]) -> list[Pair]:
        if not self._warned:
            self._warned = True
            log.warning("more than %d tenants: limits for the newest are counted per worker", self.slots)
        return self._local.update_all(keys, default, change)


def _key(tenant: str) -> int:
    """A non-zero 63-bit key for the tenant (0 marks an empty slot)."""
    digest = hashlib.blake2b(tenant.encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") & (1 << 63) - 1) or 1
