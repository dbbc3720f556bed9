"""Configuration: one typed object, built from flags and ``LOOPWAY_*`` environment variables.

Every flag has an environment variable of the same name (``--max-body-bytes`` ↔
``LOOPWAY_MAX_BODY_BYTES``); a flag on the command line wins over the environment.
"""

from __future__ import annotations

import base64
import os
import secrets
from pathlib import Path

import msgspec

from loopway.engines.sim import SimSettings
from loopway.protocol.bounds import JsonBounds


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "loopway"


class Settings(msgspec.Struct, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    engine: str = "sim"
    store: str = ""  # "memory", "sqlite:PATH"; empty: SQLite in the data dir
    data_dir: str = ""
    max_body_bytes: int = 32 * 1024 * 1024
    max_frame_bytes: int = 16 * 1024 * 1024  # after decompression; larger frames close the socket with 1009
    max_json_values: int = 1_000_000  # JSON values in one body or frame, bounded before decoding
    max_json_depth: int = 64
    max_input_items: int = 50_000
    offload_bytes: int = 256 * 1024  # bodies and frames larger than this are parsed and prepared off the loop
    body_timeout_s: float = 30.0  # a request body must arrive within this, plus 1 s per body_min_rate bytes
    body_min_rate: int = 4096
    max_connections: int = 0  # open connections (HTTP and WebSocket); 0: from the file-descriptor limit
    allowed_hosts: list[str] = msgspec.field(default_factory=list)  # empty: the bound address (+ localhost)
    allowed_origins: list[str] = msgspec.field(default_factory=list)  # browser origins allowed besides our own
    require_json: bool = True  # POST bodies must say Content-Type: application/json (no simple CORS requests)
    websocket: bool = True  # off: upgrades get 426, and clients such as Codex fall back to HTTP
    ws_connection_max_age_s: float = 3600.0
    ws_max_in_flight: int = 16
    ws_max_streams: int = 32
    ws_max_queued: int = 64  # response.create waiting for a lane, per connection
    ws_max_pending_bytes: int = 64 * 1024 * 1024  # frames of requests queued or running, per connection
    api_keys: str = ""  # a file of "KEY TENANT" lines; empty: the server is open
    rate_limit_rpm: int = 0  # requests per minute per tenant (HTTP requests and response.create); 0: off
    max_connections_per_tenant: int = 0  # open WebSocket connections per tenant; 0: unlimited
    head_timeout_s: float = 10.0  # every request head (or upgrade) must arrive within this
    ws_idle_timeout_s: float = 900.0  # close a connection with nothing in flight and no frame for this long
    ws_ping_interval_s: float = 20.0  # keepalive pings; a peer that misses the pong is dropped
    ws_flush_ms: float = 10.0  # under load, deltas ready within one tick leave as one event; 0: never coalesce
    ws_deflate: bool = True  # offer permessage-deflate to clients that ask for it
    ws_deflate_min_bytes: int = 512  # messages smaller than this go out uncompressed (0: compress all)
    http_cache_mb: int = 256  # per worker: recent stored conversations kept rendered for HTTP continuations
    workers: int = 1  # server processes sharing the port; 0: one per core
    drain_timeout_s: float = 30.0  # on SIGTERM, how long in-flight responses (background too) may take
    background_claim_s: float = 15.0  # a dead process's background runs are ended this long after it stopped
    ws_durable_store: bool = False  # store=true over WebSocket: persist before response.completed (no overlap)
    log_level: str = "info"
    log_format: str = "text"  # or "json"
    reasoning_keys_file: str = ""  # reasoning encryption keys, newest first; empty: the data dir's
    upstream: list[str] = msgspec.field(default_factory=list)  # /v1 URLs of the upstream's replicas
    route: str = "affinity"  # which replica takes a turn: affinity, round-robin, least-loaded
    upstream_probe_s: float = 5.0  # health probe of each replica every this often; 0: off
    upstream_model: str = ""  # "name" or "public=upstream", comma-separated
    upstream_api_key_env: str = ""  # the environment variable holding the upstream's key
    upstream_context_window: int = 128_000
    upstream_timeout_s: float = 600.0
    upstream_retries: int = 2
    upstream_chain: bool = False  # openai-responses: chain upstream ids instead of resending the input
    upstream_reasoning_field: str = "auto"  # openai-chat: where earlier reasoning goes on assistant messages
    faults: str = ""  # failing on purpose, for client developers (docs/faults.md); empty: never
    fault_metadata: bool = False  # a request's metadata["loopway_fault"] may name its own fault
    admin_keys: str = ""  # a file of "KEY TENANT" lines for the dashboard; with --api-keys it is required
    mcp_allow: str = ""  # MCP servers loopway may call (docs/mcp.md): URL prefixes, hosts, networks; none by default
    mcp_call_timeout_s: float = 30.0
    mcp_list_timeout_s: float = 15.0
    mcp_max_output_bytes: int = 1 << 20  # one answer from an MCP server, after decompression
    sim: SimSettings = msgspec.field(default_factory=SimSettings)

    def json_bounds(self) -> JsonBounds:
        return JsonBounds(
            max_values=self.max_json_values, max_depth=self.max_json_depth, max_input_items=self.max_input_items
        )

    def reasoning_keys(self) -> list[bytes]:
        """Keys for reasoning's ``encrypted_content``: ``--reasoning-keys`` (the newest first, one base64
        key a line), else a file in the data dir created on first use; with the memory store, one key
        per process (nothing is written to disk)."""
        if self.reasoning_keys_file:
            return load_keys(Path(self.reasoning_keys_file))
        if self.store == "memory":
            return [secrets.token_bytes(32)]
        return load_keys(self.data_path() / "reasoning.keys")

    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    def store_url(self) -> str:
        return self.store or f"sqlite:{self.data_path() / 'loopway.sqlite3'}"

    def secret(self) -> bytes:
        """The sealing key for ``encrypted_content``: kept in the data dir so tokens survive restarts.

        With the memory store nothing is written to disk, so the key lives as long as the process.
        """
        if self.store == "memory":
            return secrets.token_bytes(32)
        path = self.data_path() / "secret.key"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
        return path.read_bytes()


def load_keys(path: Path) -> list[bytes]:
    """Keys from ``path`` (one base64 key a line, the newest first), created with one key if absent."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    keys = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            key = base64.b64decode(line, validate=True)
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(f"{path}:{number}: expected a base64-encoded 32-byte key")
        keys.append(key)
    if not keys:
        raise ValueError(f"{path}: no keys")
    return keys
