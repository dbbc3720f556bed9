"""``loopway serve``: the command line, where every flag also reads a ``LOOPWAY_*`` variable."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

from loopway import __version__, logs
from loopway.engines.sim import SimSettings
from loopway.settings import Settings


class _Flag:
    """One ``serve`` flag: its settings field (of ``Settings``, or of ``SimSettings`` for ``sim-*``),
    its parser, its help; the default is the field's own, and ``LOOPWAY_<NAME>`` overrides it."""

    def __init__(
        self, name: str, kind: Callable[[str], Any], help: str, field: str | None = None, repeat: bool = False
    ) -> None:
        self.name, self.kind, self.help, self.repeat = name, kind, help, repeat
        self.sim = name.startswith("sim-")
        self.field = field or (name.removeprefix("sim-") if self.sim else name).replace("-", "_")

    @property
    def env(self) -> str:
        return "LOOPWAY_" + self.name.upper().replace("-", "_")

    @property
    def default(self) -> str:
        value = getattr(SimSettings() if self.sim else Settings(), self.field)
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, list):
            return ",".join(value)
        return "" if value is None else str(value)

    def add(self, parser: argparse.ArgumentParser) -> None:
        default = os.environ.get(self.env, self.default)
        if self.repeat:  # each use extends the list; none: the environment's (``settings_from``)
            parser.add_argument(
                f"--{self.name}",
                type=self.kind,
                action="extend",
                default=None,
                dest=self.name.replace("-", "_"),
                help=f"{self.help} [env {self.env}, comma-separated]",
            )
            return
        parser.add_argument(
            f"--{self.name}",
            type=self.kind,
            default=default,
            dest=self.name.replace("-", "_"),
            help=f"{self.help} [env {self.env}; default {self.default!r}]",
        )


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _workers(value: str) -> int:
    if value == "auto":
        return 0
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {value!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError("workers must be 0 ('auto') or more")
    return count


def _optional(value: str) -> str | None:
    return value or None


def _fault_spec(value: str) -> str:
    """Checked here so a bad SPEC stops ``serve`` with the clause that is wrong."""
    from loopway.core.ops.fault_injection import FaultSpecError, parse_spec

    try:
        parse_spec(value)
    except FaultSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _mcp_allow(value: str) -> str:
    from loopway.mcp.allow import AllowSpecError, McpAllowList

    try:
        McpAllowList.parse(value)
    except AllowSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


SERVE_FLAGS = [
    _Flag("host", str, "address to listen on"),
    _Flag("workers", _workers, "server processes sharing the port, each a full server ('auto': one per core)"),
    _Flag("port", int, "port to listen on"),
    _Flag("engine", str, "inference engine: sim, openai-chat or openai-responses"),
    _Flag("store", str, "response store: memory, sqlite:PATH or redis://HOST:PORT/DB (default: SQLite in the data dir)"),
    _Flag("data-dir", str, "where the SQLite store and the sealing key live (default: $XDG_DATA_HOME/loopway)"),
    _Flag("websocket", _on_off, "WebSocket mode on /v1/responses (off: upgrades are answered 426)"),
    # Who may call, and from where.
    _Flag("api-keys", str, "a file of 'KEY TENANT' lines (reloaded on SIGHUP); without it the server is open"),
    _Flag(
        "allowed-hosts",
        _csv,
        "Host header names served besides the bound address and localhost (comma-separated; '*': any); "
        "unset: only those when bound to loopback, any host otherwise",
    ),
    _Flag("allowed-origins", _csv, "browser Origins allowed besides the server's own (comma-separated; '*': any)"),
    _Flag("require-json", _on_off, "POST bodies must be Content-Type: application/json (on|off)"),
    # How much a client may ask for.
    _Flag("max-body-bytes", int, "largest HTTP request body accepted (413 beyond)"),
    _Flag("max-frame-bytes", int, "largest WebSocket message, after decompression (the socket closes with 1009)"),
    _Flag("max-json-values", int, "JSON values in one body or frame, counted before decoding"),
    _Flag("max-json-depth", int, "how deep a body or frame may nest JSON"),
    _Flag("max-input-items", int, "input items in one request"),
    _Flag("http-cache-mb", int, "per worker: MB of recent stored conversations kept rendered for HTTP continuations"),
    _Flag("offload-bytes", int, "bodies and frames larger than this are parsed and tokenized off the event loop"),
    _Flag("rate-limit-rpm", int, "requests per minute per tenant (0: off); 429 + retry-after"),
    # How long and how many.
    _Flag("max-connections", int, "open connections, HTTP and WebSocket (0: from the file-descriptor limit)"),
    _Flag("max-connections-per-tenant", int, "open WebSocket connections per tenant (0: unlimited)"),
    _Flag("head-timeout-s", float, "every request head (the first and each keep-alive one) must arrive within this"),
    _Flag("body-timeout-s", float, "a request body must arrive within this, plus 1 s per --body-min-rate bytes"),
    _Flag("body-min-rate", int, "bytes per second a slow request body must keep up"),
    _Flag("ws-connection-max-age-s", float, "WebSocket connection age limit"),
    _Flag("ws-idle-timeout-s", float, "close WebSocket connections idle this long"),
    _Flag("ws-ping-interval-s", float, "WebSocket keepalive ping interval (0: off)"),
    _Flag("ws-flush-ms", float, "under load, WebSocket deltas ready within this tick leave as one event (0: never)"),
    _Flag("ws-deflate", _on_off, "offer permessage-deflate on WebSocket connections (on|off)"),
    _Flag("ws-deflate-min-bytes", int, "WebSocket messages smaller than this are sent uncompressed (0: compress all)"),
    _Flag("ws-max-in-flight", int, "responses in flight per WebSocket connection (more queue)"),
    _Flag("ws-max-streams", int, "distinct named stream_id lanes per WebSocket connection"),
    _Flag("ws-max-queued", int, "response.create waiting for a lane, per WebSocket connection"),
    _Flag("ws-max-pending-bytes", int, "bytes of requests queued or running, per WebSocket connection"),
    _Flag(
        "ws-durable-store",
        _on_off,
        "store=true over WebSocket: persist before response.completed, "
        "giving up the overlap for kill -9 durability (on|off)",
    ),
    _Flag("drain-timeout-s", float, "on SIGTERM, how long in-flight responses (background ones too) may take"),
    _Flag("background-claim-s", float, "a stopped process's unfinished background responses end as failed after this"),
    _Flag("log-level", str, "debug, info, warning or error"),
    _Flag("log-format", str, "text, or json (one object a line, with response ids)"),
    _Flag(
        "reasoning-keys",
        str,
        "a file of reasoning encryption keys (base64, newest first; older ones still "
        "decrypt); default: reasoning.keys in the data dir",
        "reasoning_keys_file",
    ),
    # Looking inside, and failing on purpose.
    _Flag("admin-keys", str, "a file of 'KEY TENANT' lines that open /dashboard (needed with --api-keys)"),
    _Flag(
        "faults",
        _fault_spec,
        "fail on purpose, for testing clients: 'seed=N; KIND=RATE [PARAM=V ...]; ...' (docs/faults.md)",
    ),
    _Flag("fault-metadata", _on_off, "let a request's metadata['loopway_fault'] name its own fault (on|off)"),
    # Remote MCP tools.
    _Flag(
        "mcp-allow",
        _mcp_allow,
        "MCP servers this server may call for 'mcp' tools: URL prefixes, hosts (*.domain), addresses or "
        "networks, comma-separated; private and loopback addresses only when listed (none by default)",
    ),
    _Flag("mcp-call-timeout-s", float, "the longest one MCP tool call may take"),
    _Flag("mcp-list-timeout-s", float, "the longest listing an MCP server's tools may take"),
    _Flag("mcp-max-output-bytes", int, "the most one MCP server's answer may hold (after decompression)"),
    # Upstream engines.
    _Flag(
        "upstream",
        _csv,
        "an upstream server's /v1 URL (openai-chat, openai-responses); repeat it, or give a comma list, "
        "for replicas of one model",
        repeat=True,
    ),
    _Flag("route", str, "which upstream replica takes a turn: affinity, round-robin or least-loaded"),
    _Flag("upstream-probe-s", float, "health probe of each upstream replica every this many seconds (0: off)"),
    _Flag("upstream-model", str, "served models: NAME or PUBLIC=UPSTREAM, comma-separated"),
    _Flag("upstream-api-key-env", str, "environment variable holding the upstream key"),
    _Flag("upstream-context-window", int, "the upstream model's context window"),
    _Flag("upstream-timeout-s", float, "upstream read timeout"),
    _Flag("upstream-retries", int, "connection retries before the first token"),
    _Flag("upstream-chain", _on_off, "openai-responses: store turns upstream and chain them by id (on|off)"),
    _Flag(
        "upstream-reasoning-field",
        str,
        "openai-chat: the assistant-message field earlier reasoning goes back "
        "in: reasoning_content, reasoning, none, or auto (the one the upstream streams)",
    ),
    # The simulated engine.
    _Flag("sim-models", _csv, "model names the sim engine serves (comma-separated)"),
    _Flag("sim-context-window", int, "sim context window in tokens"),
    _Flag("sim-seed", int, "sim seed: same seed and input, same output"),
    _Flag("sim-base-latency-ms", float, "sim time to first token before prefill"),
    _Flag("sim-prefill-tps", float, "sim prefill rate, uncached tokens per second", "prefill_tokens_per_s"),
    _Flag("sim-decode-tps", float, "sim decode rate, output tokens per second", "decode_tokens_per_s"),
    _Flag(
        "sim-reasoning-models",
        _csv,
        "sim models that reason by default (effort medium); others reason when the request sets reasoning.effort",
    ),
    _Flag("sim-max-output-tokens", int, "the most the sim says in one response when the request sets no limit"),
    _Flag("sim-trace", _optional, "a rollout file the sim engine replays (at turn k, these items)"),
    _Flag("sim-kv-cache-tokens", int, "sim prefix-cache capacity in tokens, least recently used evicted (0: unbounded)"),
    _Flag("sim-shared-prefill", _on_off, "concurrent sim requests queue for one prefill throughput (on|off)"),
    _Flag("sim-decode-slowdown", float, "how much each other sequence in the batch slows a sim decode step (0: none)"),
]


def settings_from(args: argparse.Namespace) -> Settings:
    # argparse applies each flag's type to string defaults too, so every value here is already typed.
    values = {flag: getattr(args, flag.name.replace("-", "_")) for flag in SERVE_FLAGS}
    for flag in SERVE_FLAGS:
        if flag.repeat and values[flag] is None:
            values[flag] = flag.kind(os.environ.get(flag.env, flag.default))
    sim = SimSettings(**{flag.field: value for flag, value in values.items() if flag.sim})
    return Settings(**{flag.field: value for flag, value in values.items() if not flag.sim}, sim=sim)


def serve(settings: Settings) -> int:
    from loopway import serving

    logs.configure(settings.log_level, settings.log_format)
    return serving.serve(settings)


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
