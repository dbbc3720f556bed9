"""Slow and many clients: every request head and body in time, and room kept for everyone else."""

from __future__ import annotations

import json
import resource
import socket
import threading
import time
from pathlib import Path

from tests.conftest import Server
from tests.hostile.conftest import FAST, Watch, assert_openai_error


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (reading and discarding what it sends)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (TimeoutError, socket.timeout):
        return False
    except ConnectionResetError:
        return True
    return False


def test_a_slow_second_request_head_on_a_keep_alive_connection_is_cut(tmp_path: Path):
    server = Server(tmp_path, *FAST, "--head-timeout-s", "1.5")
    try:
        sock = connect(server)
        sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
        assert b"200 OK" in sock.recv(4096)
        started = time.monotonic()
        head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Slow: {'a' * 100}\r\n\r\n".encode()
        try:
            for byte in head:  # one byte every 0.3 s: the keep-alive timer alone would never fire
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_within(sock, 3) and time.monotonic() - started < 5
    finally:
        server.stop()


def test_a_slow_request_body_gets_a_408_and_the_connection_ends(tmp_path: Path):
    server = Server(tmp_path, *FAST, "--body-timeout-s", "1.5", "--body-min-rate", "4096")
    try:
        sock = connect(server)
        body = json.dumps({"model": "loopway-sim", "input": "x" * 500}).encode()
        sock.sendall(
            f"POST /v1/responses HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        started, answer = time.monotonic(), b""
        sock.settimeout(0.2)
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(65536)
            except (TimeoutError, socket.timeout):
                pass
            except (BrokenPipeError, ConnectionResetError):
                break
            if b"\r\n\r\n" in answer:
                break
        assert time.monotonic() - started < 5, "the body was not timed out"
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        sock.settimeout(5)
        while len(rest) < length:  # the body may come in a later segment than the head
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        assert_openai_error(json.loads(rest), "request_timeout")
    finally:
        server.stop()


def limit_files(count: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return apply


def test_slow_clients_cannot_take_every_connection(tmp_path: Path):
    """242 connections dribbling request heads at a server with 256 file descriptors (they used to lock
    everyone out): the oldest waiting ones are let go as others arrive, and nobody else notices."""
    server = Server(tmp_path, *FAST, preexec=limit_files(256))
    stop = threading.Event()

    def slowloris() -> None:
        sockets: list[socket.socket] = []
        while not stop.is_set():
            while len(sockets) < 242 and not stop.is_set():
                try:
                    sock = connect(server)
                    sock.sendall(b"GET /health HTTP/1.1\r\n")
                    sockets.append(sock)
                except OSError:
                    break
            for sock in list(sockets):  # a byte each, and replace those the server closed
                try:
                    sock.sendall(b"X")
                except OSError:
                    sockets.remove(sock)
                    sock.close()
            stop.wait(0.2)
        for sock in sockets:
            sock.close()

    try:
        attacker = threading.Thread(target=slowloris, daemon=True)
        attacker.start()
        time.sleep(2)  # let the attack fill the server
        with Watch(server):
            time.sleep(4)
        stop.set()
        attacker.join(timeout=10)
    finally:
        stop.set()
        server.stop()
