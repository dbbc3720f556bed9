"""Attacks on the dashboard: viewers that never read, too many viewers, and what stays served."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx

from tests.conftest import Server
from tests.hostile.conftest import FAST, Watch


def stalled_viewer(server: Server) -> socket.socket:
    """Ask for the feed and never read it: the socket's buffers fill, the server must skip frames."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(f"GET /dashboard/feed HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
    return sock


def test_stalled_viewers_cost_one_snapshot_each_and_a_reader_still_gets_the_newest(tmp_path: Path):
    server = Server(tmp_path, *FAST)
    root = server.url.removesuffix("/v1")
    try:
        with Watch(server, rss_bound_mib=120) as watch:
            stalled = [stalled_viewer(server) for _ in range(7)]
            time.sleep(6)  # about six snapshots each: the stalled viewers' buffers are long full
            with httpx.stream("GET", root + "/dashboard/feed", timeout=10) as feed:
                lines = (line for line in feed.iter_lines() if line.startswith("data:"))
                first = json.loads(next(lines)[5:])
                second = json.loads(next(lines)[5:])
            assert second["at"] - first["at"] < 2.5  # fresh, about a second apart
            assert second["totals"]["turns"] >= watch.completed - 5  # the watch's turns are on it
            for sock in stalled:
                sock.close()
    finally:
        server.stop()


def test_a_ninth_viewer_is_refused_and_a_closed_one_frees_its_place(tmp_path: Path):
    server = Server(tmp_path, *FAST)
    root = server.url.removesuffix("/v1")
    try:
        viewers = [stalled_viewer(server) for _ in range(8)]
        time.sleep(0.5)
        refused = httpx.get(root + "/dashboard/feed", timeout=10)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_viewers"
        assert refused.headers["retry-after"] == "5"
        viewers.pop().close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the closed viewer at its next write
            with httpx.stream("GET", root + "/dashboard/feed", timeout=10) as feed:
                if feed.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed viewer's place was never freed"
            time.sleep(0.5)
        for sock in viewers:
            sock.close()
    finally:
        server.stop()
