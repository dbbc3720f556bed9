"""Assembling the server: engine, store, core and transports from one ``Settings``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from loopway.core.context.reasoning import ReasoningVault
from loopway.core.context.sealing import Sealer
from loopway.core.ops.auth import KeyRing
from loopway.core.ops.fault_injection import FaultInjector, FaultSpecError
from loopway.core.ops.limits import ConnectionLimiter, RateLimiter
from loopway.core.ops.metrics import Metrics
from loopway.core.ops.tallies import SharedTallies
from loopway.core.records.persistence import ResponseLog
from loopway.core.records.recent import RecentConversations
from loopway.core.service import ResponsesService
from loopway.core.turn.pipeline import TurnPipeline
from loopway.engines.base import Engine
from loopway.engines.sim import SimEngine
from loopway.engines.upstream.engines import ChatEngine, ResponsesEngine, UpstreamSettings, parse_model_map
from loopway.engines.upstream.fleet import ROUTES, FleetObserver
from loopway.mcp.allow import AllowSpecError
from loopway.mcp.client import McpLimits
from loopway.mcp.sessions import McpRuntime, McpSettings
from loopway.settings import Settings
from loopway.store.base import Store
from loopway.store.memory import MemoryStore
from loopway.store.redis import RedisStore
from loopway.store.sqlite import SqliteStore, StoreOpenError
from loopway.transports import chat_routes, conversation_routes, dashboard_routes, http, ws
from loopway.transports.edge import EdgeMiddleware, EdgePolicy
from loopway.transports.outbox import FlushClock

log = logging.getLogger("loopway")


class ConfigError(ValueError):
    pass


def make_engine(settings: Settings, observer: FleetObserver | None = None) -> Engine:
    if settings.engine == "sim":
        return SimEngine(settings.sim)
    if settings.engine in ("openai-chat", "openai-responses"):
        if settings.route not in ROUTES:
            raise ConfigError(f"unknown route {settings.route!r} (use {', '.join(ROUTES)})")
        if not settings.upstream or not settings.upstream_model:
            raise ConfigError(f"engine {settings.engine} needs --upstream URL and --upstream-model NAME")
        key = os.environ.get(settings.upstream_api_key_env) if settings.upstream_api_key_env else None
        if settings.upstream_api_key_env and key is None:
            raise ConfigError(f"--upstream-api-key-env names {settings.upstream_api_key_env}, which is not set")
        upstream = UpstreamSettings(
            urls=list(dict.fromkeys(url.rstrip("/") for url in settings.upstream)),
            models=parse_model_map(settings.upstream_model),
            api_key=key,
            context_window=settings.upstream_context_window,
            timeout_s=settings.upstream_timeout_s,
            retries=settings.upstream_retries,
            route=settings.route,
            probe_s=settings.upstream_probe_s,
            chain=settings.upstream_chain,
            reasoning_field=settings.upstream_reasoning_field,
        )
        kind = ChatEngine if settings.engine == "openai-chat" else ResponsesEngine
        return kind(upstream, observer)
    raise ConfigError(f"unknown engine {settings.engine!r} (available: sim, openai-chat, openai-responses)")


def make_store(settings: Settings) -> Store:
    url = settings.store_url()
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite:"):
        try:
            return SqliteStore(url.removeprefix("sqlite:"))
        except StoreOpenError as exc:
            raise ConfigError(f"store {exc}") from None
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url)
    raise ConfigError(f"unknown store {url!r} (use 'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB')")


class WorkerShare(msgspec.Struct):
    """What the workers of one ``--workers N`` server share: limits' tallies (shared memory, made
    before the fork) and the directory their metrics are written to."""

    rates: SharedTallies
    connections: SharedTallies
    metrics_dir: str
    worker: int = 0  # this worker's index (the supervisor's), and how many there are
    workers: int = 1


def build_service(settings: Settings, share: WorkerShare | None = None) -> ResponsesService:
    metrics = Metrics(share.metrics_dir if share else None)
    engine = make_engine(settings, metrics)
    pipeline = TurnPipeline(
        engine, Sealer(settings.secret()), vault=ReasoningVault(settings.reasoning_keys()), mcp=make_mcp(settings)
    )
    return ResponsesService(
        engine,
        pipeline,
        ResponseLog(make_store(settings)),
        metrics=metrics,
        limiter=RateLimiter(settings.rate_limit_rpm, tallies=share.rates if share else None),
        connection_limit=ConnectionLimiter(
            settings.max_connections_per_tenant,
            tallies=share.connections if share else None,
            worker=share.worker if share else 0,
            workers=share.workers if share else 1,
        ),
        background_claim_s=settings.background_claim_s,
        recent=RecentConversations(settings.http_cache_mb << 20),
        faults=make_faults(settings),
    )


def make_mcp(settings: Settings) -> McpRuntime:
    limits = McpLimits(
        call_timeout_s=settings.mcp_call_timeout_s,
        list_timeout_s=settings.mcp_list_timeout_s,
        max_response_bytes=settings.mcp_max_output_bytes,
    )
    try:
        return McpRuntime(McpSettings(allow=settings.mcp_allow, limits=limits))
    except AllowSpecError as exc:
        raise ConfigError(f"--mcp-allow: {exc}") from None


def make_faults(settings: Settings) -> FaultInjector | None:
    try:
        worker = multiprocessing.current_process().name  # "loopway-worker-N" under --workers N
        return FaultInjector.of(settings.faults, settings.fault_metadata, worker if worker != "MainProcess" else "")
    except FaultSpecError as exc:
        raise ConfigError(f"--faults: {exc}") from None


def edge_policy(settings: Settings) -> EdgePolicy:
    return EdgePolicy.of(settings.host, settings.allowed_hosts, settings.allowed_origins, settings.require_json)


def create_app(
    settings: Settings | None = None, service: ResponsesService | None = None, keys: KeyRing | None = None
) -> Starlette:
    settings = settings or Settings()
    service = service or build_service(settings)
    keys = keys or KeyRing(settings.api_keys or None)
    admin_keys = KeyRing(settings.admin_keys) if settings.admin_keys else None
    clock = FlushClock(settings.ws_flush_ms / 1000)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread: no signals
            loop.add_signal_handler(signal.SIGHUP, lambda: [ring.reload() for ring in (keys, admin_keys) if ring])
        service.background.keep_claims()  # and end what a stopped process left running
        service.engine.start()
        stop_watching_gc = service.metrics.watch_gc()
        refresher = asyncio.create_task(_refresh_metrics(service)) if service.metrics.multiprocess_dir else None
        gc.collect()
        gc.freeze()  # start-up's objects (modules, tokenizer tables) are never scanned by a collection again
        try:
            yield
        finally:
            stop_watching_gc()
            clock.stop()
            if refresher is not None:
                refresher.cancel()
            await service.aclose()
            await service.log.store.aclose()
            await service.engine.aclose()
            if service.pipeline.mcp is not None:
                await service.pipeline.mcp.aclose()

    app = Starlette(
        routes=[
            *ws.routes(service, settings, keys, clock),
            *http.routes(service, settings),
            *conversation_routes.routes(service, settings),
            *_engine_routes(service, settings),
            *dashboard_routes.routes(service, dashboard_routes.DashboardGate(keys, admin_keys)),
        ],
        exception_handlers=http.exception_handlers(),
        lifespan=lifespan,
        middleware=[
            Middleware(
                EdgeMiddleware,
                keys=keys,
                policy=edge_policy(settings),
                limiter=service.limiter,
                observe=service.observe_error,
            )
        ],
    )
    app.state.service = service
    app.state.settings = settings
    app.state.keys = keys
    return app


def _engine_routes(service: ResponsesService, settings: Settings) -> list[Route]:
    """The sim also answers Chat Completions, to stand in for an engine fleet (docs/upstream.md)."""
    return chat_routes.routes(service.engine, settings) if isinstance(service.engine, SimEngine) else []


async def _refresh_metrics(service: ResponsesService) -> None:
    """A worker's live gauges, written where the other workers' scrapes read them."""
    while True:
        service.metrics.refresh()
        await asyncio.sleep(1.0)


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain first: stop accepting, let in-flight responses finish, then shut down.

    uvicorn alone would close open WebSockets at once (1012) and cut their responses short.
    """

    def __init__(self, config: uvicorn.Config, service: ResponsesService, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.service = service
        self.drain_timeout_s = drain_timeout_s
        self.on_started: Callable[[], None] | None = None  # a worker tells its supervisor it serves

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_started is not None:
            self.on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections while the old ones finish
        await self.service.drain(self.drain_timeout_s)
        await super().shutdown(sockets)
