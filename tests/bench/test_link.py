"""The link emulator against its own specification: delay, bandwidth, a shared link under load."""

from __future__ import annotations

import asyncio
import time

import pytest

from loopway.bench.link import PROFILES, LinkDirection, LinkProfile, LinkProxy


def test_serialization_then_propagation():
    link = LinkDirection(delay_s=0.02, bits_per_s=8_000_000)  # 1 MB/s
    assert link.schedule(now=0.0, size=1_000) == pytest.approx(0.001 + 0.02)
    assert link.schedule(now=0.0, size=1_000) == pytest.approx(0.002 + 0.02)  # queued behind the first
    assert link.schedule(now=1.0, size=0) == pytest.approx(1.02)  # an idle link starts now
    assert link.bytes == 2_000


def test_unlimited_bandwidth_is_pure_delay():
    link = LinkDirection(delay_s=0.005, bits_per_s=None)
    assert link.schedule(3.0, 10**9) == pytest.approx(3.005)


def test_profiles():
    wan = PROFILES["wan"]
    assert wan.round_trip_s == pytest.approx(0.040)
    assert wan.transfer_s(2_500_000, 12_500_000) == pytest.approx(1.0 + 1.0)
    assert PROFILES["loopback"].transfer_s(10**9, 10**9) == 0


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _sink_server(counts: list[int]) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(65536):
            total += len(data)
        counts.append(total)
        writer.write(b"done")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_round_trip_through_the_proxy_is_twice_the_delay():
    echo, port = await _echo_server()
    proxy = await LinkProxy(LinkProfile("t", one_way_delay_s=0.05), "127.0.0.1", port).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    samples = []
    for _ in range(3):
        start = time.perf_counter()
        writer.write(b"ping")
        await writer.drain()
        await reader.readexactly(4)
        samples.append(time.perf_counter() - start)
    writer.close()
    await proxy.aclose()
    echo.close()
    assert all(0.1 <= s < 0.13 for s in samples), samples


async def _upload(port: int, size: int) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.perf_counter()
    writer.write(b"x" * size)
    await writer.drain()
    writer.write_eof()
    await reader.read()
    writer.close()
    return time.perf_counter() - start


async def test_bandwidth_of_one_transfer_and_of_two_sharing_the_link():
    counts: list[int] = []
    sink, port = await _sink_server(counts)
    profile = LinkProfile("t", one_way_delay_s=0.01, up_bits_per_s=8_000_000, down_bits_per_s=None)  # 1 MB/s up
    proxy = await LinkProxy(profile, "127.0.0.1", port).start()
    alone = await _upload(proxy.port, 500_000)
    shared = await asyncio.gather(_upload(proxy.port, 500_000), _upload(proxy.port, 500_000))
    await proxy.aclose()
    sink.close()
    # 0.5 MB at 1 MB/s = 0.5 s (+ delay); two at once share the link: both end near 1.0 s.
    assert 0.5 <= alone < 0.6, alone
    assert all(0.95 <= t < 1.12 for t in shared), shared
    assert counts == [500_000] * 3 and proxy.up.bytes == 1_500_000
