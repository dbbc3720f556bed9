"""``loopway serve``: one server process, or a supervisor and ``--workers N`` of them on one port.

Each worker is a whole server (engine, store client, core, transports, its own event loop) with
its own listening socket on the same port (``SO_REUSEPORT``): the kernel spreads new connections
evenly over the workers by a hash of each connection's addresses. (One socket shared by every worker,
as gunicorn and uvicorn do it, measured badly for long-lived WebSockets: uvloop accepts every pending
connection at once, so a burst of sessions landed on whichever worker woke first, which then starved
while the others idled; on a 16-core machine, 600 sessions on 4 workers ran at 221% of 400%, and
hundreds of clients timed out their pings.) A WebSocket session lives on the worker that accepted it,
with its connection cache. Only processes of the same user can join a port's group.

What the workers share, and what they do not:

- the **store** (SQLite in WAL mode, or Redis): an HTTP ``previous_response_id`` finds its parent
  whichever worker stored it. ``--store memory`` is refused with more than one worker;
- **rate limits and per-tenant WebSocket caps**: one shared-memory table (``core.ops.tallies``);
- **metrics**: ``/metrics`` from any worker reads every worker's (``core.ops.metrics``);
- **draining**: SIGTERM (or SIGINT) to the supervisor reaches every worker; each finishes its
  in-flight responses within ``--drain-timeout-s`` and closes its sockets with 1012. SIGHUP
  (reload the API keys) reaches every worker too;
- per worker: ``--max-connections`` (file descriptors are a process's), the connection caches,
  background runs (a cancel reaches the run only on the worker running it).

A worker that dies is replaced; one that cannot start (a bad flag, an unusable store) stops the
server with its message.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from multiprocessing.connection import wait
from typing import TYPE_CHECKING, Any

import msgspec

from loopway import __version__
from loopway.settings import Settings

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

    from loopway.app import DrainingServer, WorkerShare


class Startup(Exception):
    """The server cannot start; the message says why (exit status 2)."""


def serve(settings: Settings) -> int:
    workers = settings.workers or len(os.sched_getaffinity(0))
    try:
        return serve_workers(settings, workers) if workers > 1 else serve_one(settings)
    except Startup as exc:
        print(f"loopway: {exc}", file=sys.stderr)
        return 2


def serve_one(
    settings: Settings,
    sock: socket.socket | None = None,
    share: WorkerShare | None = None,
    ready: Event | None = None,
    quiet: bool = False,
) -> int:
    """``ready``: an event a worker sets once it serves."""
    server = build_server(settings, share)
    if ready is not None:
        server.on_started = ready.set
    if not quiet:
        service = server.service
        models = [m.id for m in service.engine.models()]
        keys_open = server.config.app.state.keys.open
        announce(settings, models, service.log.store.describe(), keys_open, workers=1)
    server.run(sockets=[sock] if sock is not None else None)
    return 0


def build_server(settings: Settings, share: WorkerShare | None = None) -> DrainingServer:
    """The uvicorn server for one process, with loopway's protocols; ``Startup`` if it cannot be built."""
    import uvicorn

    from loopway.app import ConfigError, DrainingServer, build_service, create_app
    from loopway.core.ops.auth import KeyFileError, KeyRing
    from loopway.engines.sim.trace import TraceError
    from loopway.transports.guard import ConnectionGuard, guarded_protocol
    from loopway.transports.wsprotocol import websocket_protocol

    try:
        service = build_service(settings, share)
        keys = KeyRing(settings.api_keys or None)
    except (ConfigError, TraceError, KeyFileError, OSError, ValueError) as exc:
        raise Startup(str(exc)) from None
    config = uvicorn.Config(
        create_app(settings, service, keys),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_deflate,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        ws_ping_interval=settings.ws_ping_interval_s or None,
        ws_ping_timeout=settings.ws_ping_interval_s or None,
        http=guarded_protocol(ConnectionGuard(settings.max_connections, settings.head_timeout_s)),
        ws=websocket_protocol(settings.ws_deflate, settings.ws_deflate_min_bytes),
    )
    return DrainingServer(config, service, settings.drain_timeout_s)


def announce(settings: Settings, models: list[str], store: str, keys_open: bool, workers: int) -> None:
    print(f"loopway {__version__}: engine {settings.engine} (models: {', '.join(models)})")
    print(f"loopway: store {store}")
    if keys_open:
        print("loopway: auth OFF: no --api-keys, so anyone who can reach this port can use it")
    else:
        print(f"loopway: auth on: keys from {settings.api_keys} (kill -HUP reloads them)")
    if settings.faults or settings.fault_metadata:
        named = "; requests may name their own (metadata.loopway_fault)" if settings.fault_metadata else ""
        print(f"loopway: FAULTS ON: failing requests on purpose ({settings.faults or 'none drawn'}){named}")
    if settings.mcp_allow:
        print(f"loopway: MCP tools: this server may call MCP servers at {settings.mcp_allow}")
    else:
        print("loopway: MCP tools off: no --mcp-allow, so 'mcp' tools are refused")
    dashboard = f"http://{settings.host}:{settings.port}/dashboard"
    if settings.admin_keys:
        print(f"loopway: dashboard on {dashboard} (admin keys from {settings.admin_keys})")
    elif keys_open:
        print(f"loopway: dashboard on {dashboard} (loopback clients only)")
    else:
        print("loopway: dashboard off (start with --admin-keys to open it)")
    websocket = f"ws://{settings.host}:{settings.port}/v1/responses" if settings.websocket else "off"
    workers_note = f", {workers} workers" if workers > 1 else ""
    print(
        f"loopway: listening on http://{settings.host}:{settings.port}/v1 (WebSocket mode: {websocket}{workers_note})",
        flush=True,
    )


# Several workers -----------------------------------------------------------------------------------


def serve_workers(settings: Settings, count: int) -> int:
    if settings.store == "memory":
        raise Startup(
            f"--workers {count} needs a store the workers share: --store sqlite:PATH (the default) or "
            "--store redis://HOST:PORT/DB; with --store memory each worker would see only its own responses"
        )
    if settings.port == 0:
        raise Startup(f"--workers {count} needs a fixed --port: each worker listens on it")
    metrics_dir = tempfile.mkdtemp(prefix="loopway-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        _multiprocess_metrics()
        share = _prepare(settings, metrics_dir, count)
        _bind(settings).close()  # the port is free (or already ours): say so now, not from each worker
        return Supervisor(settings, count, share).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _multiprocess_metrics() -> None:
    """prometheus_client picks where values live when first imported; make sure it is the shared files."""
    from prometheus_client import values

    values.ValueClass = values.get_value_class()


def _prepare(settings: Settings, metrics_dir: str, count: int) -> WorkerShare:
    """Checks the configuration once, and creates what the workers would race to create (key files,
    the store's schema) and what they share (the tallies, which must exist before the fork).
    Announces the server. Nothing it opens stays open: the workers fork from a process with no
    threads and no sockets."""
    import asyncio

    from loopway.app import ConfigError, WorkerShare, make_engine, make_store
    from loopway.core.ops.auth import KeyFileError, KeyRing
    from loopway.core.ops.tallies import SharedTallies

    try:
        settings.secret()
        settings.reasoning_keys()
        engine = make_engine(settings)
        store = make_store(settings)
        keys = KeyRing(settings.api_keys or None)
    except (ConfigError, KeyFileError, OSError, ValueError) as exc:
        raise Startup(str(exc)) from None
    announce(settings, [m.id for m in engine.models()], store.describe(), keys.open, count)

    async def close() -> None:
        await store.aclose()
        await engine.aclose()

    asyncio.run(close())
    return WorkerShare(rates=SharedTallies(), connections=SharedTallies(), metrics_dir=metrics_dir)


def _bind(settings: Settings) -> socket.socket:
    """One worker's socket in the port's ``SO_REUSEPORT`` group, bound but not yet listening: the
    server listens once its application has started, so the kernel never hands a connection to a
    worker that is still starting (or failing to)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise Startup(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None
    return sock


def _worker_main(settings: Settings, share: WorkerShare, ready: Event) -> None:
    from loopway import logs

    os.setpgrp()  # Ctrl-C reaches the supervisor alone, which passes one SIGTERM on (a second would cut the drain)
    logs.configure(settings.log_level, settings.log_format)
    threading.Thread(target=_follow_supervisor, args=(os.getppid(),), daemon=True, name="supervisor watch").start()
    try:
        serve_one(settings, _bind(settings), share, ready, quiet=True)
    except Startup as exc:
        print(f"loopway: worker {os.getpid()}: {exc}", file=sys.stderr)
        sys.exit(2)


def _follow_supervisor(supervisor: int) -> None:
    """A worker whose supervisor died (even by SIGKILL) drains and stops rather than serve on alone."""
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


class Supervisor:
    """Starts the workers, replaces one that dies, and passes signals on."""

    def __init__(self, settings: Settings, count: int, share: WorkerShare) -> None:
        self.settings, self.count, self.share = settings, count, share
        self.context = multiprocessing.get_context("fork")
        self.workers: dict[int, tuple[multiprocessing.process.BaseProcess, Event]] = {}  # index -> (process, ready)
        self.stopping = False

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        for index in range(self.count):
            self._start(index)
        status = 0
        while self.workers and status == 0:
            sentinels = {process.sentinel: index for index, (process, _) in self.workers.items()}
            for ready in wait(list(sentinels), timeout=0.5):
                status = self._ended(sentinels[ready])  # type: ignore[index]
            if self.stopping:
                break
        self._stop_all()
        return status

    def _start(self, index: int) -> None:
        ready = self.context.Event()
        share = msgspec.structs.replace(self.share, worker=index, workers=self.count)
        name = f"loopway-worker-{index}"
        process = self.context.Process(target=_worker_main, args=(self.settings, share, ready), name=name)
        process.start()
        self.workers[index] = (process, ready)

    def _ended(self, index: int) -> int:
        """A worker exited: replace it, unless the server is stopping or it could not even start."""
        process, ready = self.workers.pop(index)
        process.join()
        _mark_dead(process.pid)
        self.share.connections.forget(float(index))  # its sockets died with it
        if self.stopping:
            return 0
        if not ready.is_set():
            print(f"loopway: worker {index} exited at start-up (status {process.exitcode}); stopping", file=sys.stderr)
            return 2
        print(f"loopway: worker {index} exited (status {process.exitcode}); starting another", file=sys.stderr)
        self._start(index)
        return 0

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def _reload(self, signum: int, frame: Any) -> None:
        for process, _ in self.workers.values():
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(process.pid, signal.SIGHUP)  # type: ignore[arg-type]

    def _stop_all(self) -> None:
        """SIGTERM to each worker (each drains), then wait; whoever outlives the drain is killed."""
        self.stopping = True
        for process, _ in self.workers.values():
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(process.pid, signal.SIGTERM)  # type: ignore[arg-type]
        deadline = time.monotonic() + self.settings.drain_timeout_s + 5
        for process, _ in self.workers.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
            _mark_dead(process.pid)
        self.workers.clear()


def _mark_dead(pid: int | None) -> None:
    if pid is not None and "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
