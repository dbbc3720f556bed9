"""``loopway serve``: the command line, where every flag also reads a ``LOOPWAY_*`` variable."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from loopway import __version__, logs
from loopway.engines.sim import SimSettings
from loopway.settings import Settings


class _Flag:
    def __init__(self, name: str, kind: Callable[[str], Any], default: Any, help: str) -> None:
        self.name, self.kind, self.default, self.help = name, kind, default, help

    @property
    def env(self) -> str:
        return "LOOPWAY_" + self.name.upper().replace("-", "_")

    def add(self, parser: argparse.ArgumentParser) -> None:
        raw = os.environ.get(self.env)
        default = self.kind(raw) if raw is not None else self.default
        parser.add_argument(
            f"--{self.name}", type=self.kind, default=default, help=f"{self.help} [env {self.env}; default {self.default!r}]"
        )


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


_s, _sim = Settings(), SimSettings()
SERVE_FLAGS = [
    _Flag("host", str, _s.host, "address to listen on"),
    _Flag("port", int, _s.port, "port to listen on"),
    _Flag("engine", str, _s.engine, "inference engine: sim, openai-chat or openai-responses"),
    _Flag(
        "store",
        str,
        _s.store,
        "response store: memory, sqlite:PATH or redis://HOST:PORT/DB (default: SQLite in the data dir)",
    ),
    _Flag(
        "data-dir",
        str,
        _s.data_dir,
        "where the SQLite store and the sealing key live (default: $XDG_DATA_HOME/loopway or ~/.local/share/loopway)",
    ),
    _Flag("max-body-bytes", int, _s.max_body_bytes, "largest HTTP request body accepted (413 beyond)"),
    _Flag("max-frame-bytes", int, _s.max_frame_bytes, "largest WebSocket frame accepted"),
    _Flag("websocket", _on_off, "on", "WebSocket mode on /v1/responses (off: upgrades are answered 426)"),
    _Flag("ws-connection-max-age-s", float, _s.ws_connection_max_age_s, "WebSocket connection age limit"),
    _Flag(
        "api-keys",
        str,
        _s.api_keys,
        "a file of 'KEY TENANT' lines (reloaded on SIGHUP); without it the server is open to anyone who can reach it",
    ),
    _Flag("rate-limit-rpm", int, _s.rate_limit_rpm, "requests per minute per tenant (0: off); 429 + retry-after"),
    _Flag(
        "max-connections-per-tenant",
        int,
        _s.max_connections_per_tenant,
        "open WebSocket connections per tenant (0: unlimited)",
    ),
    _Flag("ws-max-in-flight", int, _s.ws_max_in_flight, "responses in flight per WebSocket connection (more queue)"),
    _Flag("ws-max-streams", int, _s.ws_max_streams, "distinct named stream_id lanes per WebSocket connection"),
    _Flag(
        "handshake-timeout-s",
        float,
        _s.handshake_timeout_s,
        "close connections that have not sent a complete request head (or upgrade) by then",
    ),
    _Flag("ws-idle-timeout-s", float, _s.ws_idle_timeout_s, "close WebSocket connections idle this long"),
    _Flag("ws-ping-interval-s", float, _s.ws_ping_interval_s, "WebSocket keepalive ping interval (0: off)"),
    _Flag(
        "ws-durable-store",
        _on_off,
        "off",
        "store=true over WebSocket: persist before response.completed, "
        "giving up the overlap for kill -9 durability (on|off)",
    ),
    _Flag("drain-timeout-s", float, _s.drain_timeout_s, "on SIGTERM, how long in-flight responses may take"),
    _Flag("log-level", str, _s.log_level, "debug, info, warning or error"),
    _Flag("log-format", str, _s.log_format, "text, or json (one object a line, with response ids)"),
    _Flag("upstream", str, _s.upstream, "the upstream server's /v1 URL (openai-chat, openai-responses)"),
    _Flag("upstream-model", str, _s.upstream_model, "served models: NAME or PUBLIC=UPSTREAM, comma-separated"),
    _Flag("upstream-api-key-env", str, _s.upstream_api_key_env, "environment variable holding the upstream key"),
    _Flag("upstream-context-window", int, _s.upstream_context_window, "the upstream model's context window"),
    _Flag("upstream-timeout-s", float, _s.upstream_timeout_s, "upstream read timeout"),
    _Flag("upstream-retries", int, _s.upstream_retries, "connection retries before the first token"),
    _Flag("upstream-chain", _on_off, "off", "openai-responses: store turns upstream and chain them by id (on|off)"),
    _Flag("sim-models", _csv, ",".join(_sim.models), "model names the sim engine serves (comma-separated)"),
    _Flag("sim-context-window", int, _sim.context_window, "sim context window in tokens"),
    _Flag("sim-seed", int, _sim.seed, "sim seed: same seed and input, same output"),
    _Flag("sim-base-latency-ms", float, _sim.base_latency_ms, "sim time to first token before prefill"),
    _Flag("sim-prefill-tps", float, _sim.prefill_tokens_per_s, "sim prefill rate, uncached tokens per second"),
    _Flag("sim-decode-tps", float, _sim.decode_tokens_per_s, "sim decode rate, output tokens per second"),
    _Flag("sim-trace", str, _sim.trace, "a rollout file the sim engine replays (at turn k, these items)"),
]


def settings_from(args: argparse.Namespace) -> Settings:
    # argparse applies each flag's type to string defaults too, so every value here is already typed.
    return Settings(
        host=args.host,
        port=args.port,
        engine=args.engine,
        store=args.store,
        data_dir=args.data_dir,
        max_body_bytes=args.max_body_bytes,
        max_frame_bytes=args.max_frame_bytes,
        websocket=args.websocket,
        ws_connection_max_age_s=args.ws_connection_max_age_s,
        api_keys=args.api_keys,
        rate_limit_rpm=args.rate_limit_rpm,
        max_connections_per_tenant=args.max_connections_per_tenant,
        ws_idle_timeout_s=args.ws_idle_timeout_s,
        handshake_timeout_s=args.handshake_timeout_s,
        ws_max_in_flight=args.ws_max_in_flight,
        ws_max_streams=args.ws_max_streams,
        ws_ping_interval_s=args.ws_ping_interval_s,
        drain_timeout_s=args.drain_timeout_s,
        ws_durable_store=args.ws_durable_store,
        log_level=args.log_level,
        log_format=args.log_format,
        upstream=args.upstream,
        upstream_model=args.upstream_model,
        upstream_api_key_env=args.upstream_api_key_env,
        upstream_context_window=args.upstream_context_window,
        upstream_timeout_s=args.upstream_timeout_s,
        upstream_retries=args.upstream_retries,
        upstream_chain=args.upstream_chain,
        sim=SimSettings(
            models=args.sim_models,
            context_window=args.sim_context_window,
            seed=args.sim_seed,
            base_latency_ms=args.sim_base_latency_ms,
            prefill_tokens_per_s=args.sim_prefill_tps,
            decode_tokens_per_s=args.sim_decode_tps,
            trace=args.sim_trace,
        ),
    )


def serve(settings: Settings) -> int:
    import uvicorn

    from loopway.app import ConfigError, DrainingServer, build_service, create_app
    from loopway.core.auth import KeyFileError, KeyRing
    from loopway.engines.sim.trace import TraceError
    from loopway.transports.handshake import guarded_protocol

    logs.configure(settings.log_level, settings.log_format)
    try:
        service = build_service(settings)
        keys = KeyRing(settings.api_keys or None)
    except (ConfigError, TraceError, KeyFileError, OSError) as exc:
        print(f"loopway: {exc}", file=sys.stderr)
        return 2
    app = create_app(settings, service, keys)
    print(f"loopway {__version__}: engine {settings.engine} (models: {', '.join(m.id for m in service.engine.models())})")
    print(f"loopway: store {service.log.store.describe()}")
    if keys.open:
        print("loopway: auth OFF: no --api-keys, so anyone who can reach this port can use it")
    else:
        print(f"loopway: auth on: keys from {settings.api_keys} (kill -HUP reloads them)")
    websocket = f"ws://{settings.host}:{settings.port}/v1/responses" if settings.websocket else "off"
    print(f"loopway: listening on http://{settings.host}:{settings.port}/v1 (WebSocket mode: {websocket})", flush=True)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        ws_max_size=settings.ws_hard_frame_bytes(),
        ws_per_message_deflate=True,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        ws_ping_interval=settings.ws_ping_interval_s or None,
        ws_ping_timeout=settings.ws_ping_interval_s or None,
        http=guarded_protocol(settings.handshake_timeout_s),
    )
    DrainingServer(config, service, settings.drain_timeout_s).run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopway", description="An OpenAI Responses API server for agent loops.")
    parser.add_argument("--version", action="version", version=f"loopway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser("serve", help="serve the Responses API over HTTP and WebSocket")
    for flag in SERVE_FLAGS:
        flag.add(serve_parser)
    bench_parser = commands.add_parser("bench", help="the end-to-end transport benchmark (and 'overhead', 'generate')")
    from loopway.bench import cli as bench_cli

    bench_cli.add_arguments(bench_parser)
    from loopway import agent

    agent.add_arguments(commands.add_parser("agent", help="a small coding agent on loopway.client"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(settings_from(args))
    if args.command == "agent":
        from loopway import agent

        return agent.run(args)
    if args.command == "bench":
        from loopway.bench import cli as bench_cli

        return bench_cli.run(args)
    return 2
