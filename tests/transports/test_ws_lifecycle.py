"""Connection lifecycle inside one process: aborted clients leak nothing; turns record stage times."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Callable, Iterator

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame
from websockets.protocol import State
from websockets.sync.client import connect
from websockets.uri import parse_uri

from loopway.bench.server import InProcessServer
from loopway.engines.sim import SimSettings
from loopway.settings import Settings
from tests.conftest import MODEL, READ_FILE


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    settings = Settings(
        port=0,
        store="memory",
        data_dir=str(tmp_path_factory.mktemp("inproc")),
        sim=SimSettings(decode_tokens_per_s=500, base_latency_ms=1),
    )
    with InProcessServer(settings) as server:
        yield server


def server_tasks(server: InProcessServer) -> int:
    loop = server.loop
    return asyncio.run_coroutine_threadsafe(_count_tasks(), loop).result(timeout=10)


async def _count_tasks() -> int:
    return len(asyncio.all_tasks())


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def abort_cycle(url: str) -> None:
    """Open a turn, read its first event, then reset the socket with no close handshake.

    The client is websockets' sans-I/O protocol over a plain socket: a threaded client lives in
    this process too, and what it keeps after an abort would read as the server's memory."""
    uri = parse_uri(url)
    client = ClientProtocol(uri, extensions=[ClientPerMessageDeflateFactory()])
    with socket.create_connection((uri.host, uri.port), timeout=10) as sock:
        client.send_request(client.connect())
        sock.sendall(b"".join(client.data_to_send()))
        _receive_until(sock, client, lambda: client.state is State.OPEN)
        create = {"type": "response.create", "model": MODEL, "input": "write a long story", "store": False}
        client.send_text(json.dumps(create).encode())
        sock.sendall(b"".join(client.data_to_send()))
        _receive_until(sock, client, lambda: any(isinstance(e, Frame) for e in client.events_received()))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _receive_until(sock: socket.socket, client: ClientProtocol, done: Callable[[], bool]) -> None:
    while not done():
        data = sock.recv(65536)
        assert data, "the server closed the connection"
        client.receive_data(data)


def settle(server: InProcessServer, expected_tasks: int) -> int:
    for _ in range(200):
        tasks = server_tasks(server)
        if tasks <= expected_tasks and not server.service.open_connections:
            return tasks
        asyncio.run(asyncio.sleep(0.02))
    return server_tasks(server)


def test_a_thousand_aborted_connections_leak_no_tasks_or_memory(inproc: InProcessServer):
    url = inproc.url.replace("http://", "ws://") + "/responses"
    for _ in range(50):  # warm up allocators and caches
        abort_cycle(url)
    baseline_tasks = settle(inproc, 10_000)
    baseline_rss = rss_kib()
    for _ in range(1000):
        abort_cycle(url)
    assert settle(inproc, baseline_tasks) <= baseline_tasks
    assert not inproc.service.open_connections
    assert rss_kib() - baseline_rss < 30 * 1024  # KiB: no per-connection growth (a leak would be ~1000x)


def test_each_turn_records_its_stage_times(inproc: InProcessServer):
    url = inproc.url.replace("http://", "ws://") + "/responses"
    with connect(url) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "response.create",
                    "model": MODEL,
                    "input": "Please read src/app.py",
                    "tools": [READ_FILE],
                    "store": False,
                }
            )
        )
        while (event := json.loads(ws.recv(timeout=10)))["type"] != "response.completed":
            pass
        times = inproc.service.pipeline.stage_log.get(event["response"]["id"])
        assert times is not None
    assert times.validate > 0 and times.render > 0 and times.ttft > 0 and times.decode > 0
    assert times.queue >= 0 and times.persist == 0  # store=false: nothing persisted
    assert "validate;dur=" in times.header()
