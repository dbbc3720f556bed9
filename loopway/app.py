"""Assembling the server: engine, store, core and transports from one ``Settings``."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette

from loopway.core.persistence import ResponseLog
from loopway.core.pipeline import TurnPipeline
from loopway.core.sealing import Sealer
from loopway.core.service import ResponsesService
from loopway.engines.base import Engine
from loopway.engines.sim import SimEngine
from loopway.settings import Settings
from loopway.store.base import Store
from loopway.store.memory import MemoryStore
from loopway.store.sqlite import SqliteStore
from loopway.transports import http, ws

log = logging.getLogger("loopway")


class ConfigError(ValueError):
    pass


def make_engine(settings: Settings) -> Engine:
    if settings.engine == "sim":
        return SimEngine(settings.sim)
    raise ConfigError(f"unknown engine {settings.engine!r} (available: sim)")


def make_store(settings: Settings) -> Store:
    url = settings.store_url()
    if url == "memory":
        return MemoryStore()
    if url.startswith("sqlite:"):
        return SqliteStore(url.removeprefix("sqlite:"))
    raise ConfigError(f"unknown store {url!r} (use 'memory' or 'sqlite:PATH')")


def build_service(settings: Settings) -> ResponsesService:
    engine = make_engine(settings)
    pipeline = TurnPipeline(engine, Sealer(settings.secret()))
    return ResponsesService(engine, pipeline, ResponseLog(make_store(settings)))


def create_app(settings: Settings | None = None, service: ResponsesService | None = None) -> Starlette:
    settings = settings or Settings()
    service = service or build_service(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await service.aclose()
            await service.log.store.aclose()
            await service.engine.aclose()

    app = Starlette(routes=[*ws.routes(service, settings), *http.routes(service, settings)],
                    exception_handlers=http.exception_handlers(), lifespan=lifespan)
    app.state.service = service
    app.state.settings = settings
    return app
