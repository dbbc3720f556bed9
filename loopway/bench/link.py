"""Link emulation for benchmarks: propagation delay and bandwidth per direction, in user space.

This kernel has no netem, so a TCP proxy stands in for the link. The model (``LinkDirection``) is
a serializing link: a chunk starts transmitting when it arrives or when the link is free,
whichever is later, takes ``size × 8 ÷ bandwidth`` seconds on the wire, and arrives one
propagation delay after its last bit left. All connections through the proxy share each
direction's capacity, as flows on one real link do. Connection setup itself is not delayed (it
happens once per run in every mode).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import msgspec

CHUNK = 16 * 1024  # read size: fine-grained enough that delivery tracks serialization closely


class LinkProfile(msgspec.Struct, frozen=True):
    name: str
    one_way_delay_s: float = 0.0
    up_bits_per_s: float | None = None  # client → server
    down_bits_per_s: float | None = None  # server → client

    @property
    def round_trip_s(self) -> float:
        return 2 * self.one_way_delay_s

    def transfer_s(self, up_bytes: int, down_bytes: int) -> float:
        """Serialization time of this many bytes each way (no delay, no contention)."""
        up = up_bytes * 8 / self.up_bits_per_s if self.up_bits_per_s else 0.0
        down = down_bytes * 8 / self.down_bits_per_s if self.down_bits_per_s else 0.0
        return up + down


PROFILES = {
    "loopback": LinkProfile("loopback"),
    "wan": LinkProfile("wan", one_way_delay_s=0.020, up_bits_per_s=20e6, down_bits_per_s=100e6),
}


class LinkDirection:
    """One direction of the link (sans-I/O): when does a chunk sent now arrive?"""

    def __init__(self, delay_s: float, bits_per_s: float | None) -> None:
        self.delay_s = delay_s
        self.bits_per_s = bits_per_s
        self.busy_until = 0.0
        self.bytes = 0

    def schedule(self, now: float, size: int) -> float:
        self.bytes += size
        start = max(now, self.busy_until)
        end = start + (size * 8 / self.bits_per_s if self.bits_per_s else 0.0)
        self.busy_until = end
        return end + self.delay_s


class LinkProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target`` through an emulated link."""

    def __init__(
        self, profile: LinkProfile, target_host: str, target_port: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.profile = profile
        self.target = (target_host, target_port)
        self.up = LinkDirection(profile.one_way_delay_s, profile.up_bits_per_s)
        self.down = LinkDirection(profile.one_way_delay_s, profile.down_bits_per_s)
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        for task in (self._pump(client_reader, server_writer, self.up), self._pump(server_reader, client_writer, self.down)):
            t = asyncio.create_task(task)
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: LinkDirection) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.create_task(self._deliver(queue, writer))
        try:
            while chunk := await reader.read(CHUNK):
                queue.put_nowait((link.schedule(self._clock(), len(chunk)), chunk))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await deliver

    async def _deliver(self, queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter) -> None:
        try:
            while (entry := await queue.get()) is not None:
                at, chunk = entry
                wait = at - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
