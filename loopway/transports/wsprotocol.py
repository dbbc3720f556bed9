"""uvicorn's sans-I/O WebSocket protocol, with what loopway needs of it at the socket level.

- **Pre-framed writes**: the protocol offers itself to the app as a ``Wire`` (the ASGI scope
  extension ``loopway.wire``), so a connection's outbox frames several events and writes them in one
  ``transport.write``, past the ASGI ``send`` and its per-message await.
- **Deflate where it pays**: with permessage-deflate negotiated, messages under ``deflate_min_bytes``
  go out uncompressed (RFC 7692 lets an endpoint send any message uncompressed: RSV1 unset). A
  150-byte delta event costs more CPU to compress than its bytes cost to send.
- **Refused frames let go at once**: the ``websockets`` parser keeps the exception of a refused frame
  (too large after inflating, ``ws_max_size``), and its traceback kept the frame's inflated bytes
  alive until the cyclic collector came by, so a burst of compression bombs held tens of MB each.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

WIRE = "loopway.wire"  # the ASGI scope extension that carries the connection's Wire

log = logging.getLogger("loopway.ws")


class SelectiveDeflate(PerMessageDeflate):
    """permessage-deflate that compresses only messages of at least ``min_bytes``."""

    def __init__(self, negotiated: PerMessageDeflate, min_bytes: int) -> None:
        super().__init__(
            negotiated.remote_no_context_takeover,
            negotiated.local_no_context_takeover,
            negotiated.remote_max_window_bits,
            negotiated.local_max_window_bits,
            negotiated.compress_settings,
        )
        self.min_bytes = min_bytes

    def compresses(self, size: int) -> bool:
        return size >= self.min_bytes

    def encode(self, frame: Frame) -> Frame:
        if frame.opcode == Opcode.TEXT and frame.fin and not self.compresses(len(frame.data)):
            return frame  # a whole small message, sent as it is
        return super().encode(frame)


class SelectiveDeflateFactory(ServerPerMessageDeflateFactory):
    def __init__(self, min_bytes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_bytes = min_bytes

    def process_request_params(self, params: Any, accepted_extensions: Any) -> tuple[Any, Extension]:
        response, extension = super().process_request_params(params, accepted_extensions)
        assert isinstance(extension, PerMessageDeflate)
        return response, SelectiveDeflate(extension, self.min_bytes)


class LoopwayWebSocketProtocol(WebSocketsSansIOProtocol):
    """Configured per server by ``websocket_protocol``; see the module docstring."""

    deflate_min_bytes = 0  # 0: compress every message (the library's behaviour)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.config.ws_per_message_deflate and self.deflate_min_bytes > 0:
            deflate = SelectiveDeflateFactory(
                self.deflate_min_bytes,
                server_max_window_bits=12,
                client_max_window_bits=12,
                compress_settings={"memLevel": 5},
            )
            self.conn = ServerProtocol(extensions=[deflate], max_size=self.config.ws_max_size, logger=self.conn.logger)

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if self.handshake_initiated and not self.close_sent:
            self.scope["extensions"][WIRE] = self  # type: ignore[index]

    def handle_parser_exception(self) -> None:
        super().handle_parser_exception()
        failure = self.conn.parser_exc
        if failure is not None:
            failure.__traceback__ = None  # frees the refused frame's inflated payload now

    # The Wire interface -------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return not (self.close_sent or self.disconnected or self.transport.is_closing())

    @property
    def paused(self) -> bool:
        """The client is not reading: the transport's buffer is over its high-water mark."""
        return not self.writable.is_set()

    async def drained(self) -> None:
        await self.writable.wait()

    def write_texts(self, payloads: list[bytes]) -> None:
        """Frame each UTF-8 payload as a text message and write them all at once.

        A message that goes out uncompressed is framed here (a server frame is a 2-10 byte header
        and the payload, unmasked); one to compress goes through the connection's extensions, which
        keep the compressor's context. Every write holds whole frames, so pings and closes that
        uvicorn writes in between never split one."""
        if not self.open:
            return
        chunks: list[bytes] = []
        deflate = self.conn.extensions[0] if self.conn.extensions else None  # permessage-deflate is the only one
        try:
            for payload in payloads:
                if deflate is not None and (not isinstance(deflate, SelectiveDeflate) or deflate.compresses(len(payload))):
                    self.conn.send_text(payload)
                    chunks += self.conn.data_to_send()
                else:
                    chunks += (text_frame_header(len(payload)), payload)
        except InvalidState:  # closing under us: the receive side sees the disconnect
            return
        self.transport.write(b"".join(chunks))

    def abort(self) -> None:
        self.transport.abort()


def text_frame_header(length: int) -> bytes:
    """RFC 6455 §5.2: FIN + text opcode, then the payload length in 7, 7+16 or 7+64 bits; no mask."""
    if length < 126:
        return bytes((0x81, length))
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def websocket_protocol(deflate: bool, deflate_min_bytes: int) -> type[LoopwayWebSocketProtocol]:
    """The protocol class for one server: ``deflate`` is applied by uvicorn's own config."""

    class Configured(LoopwayWebSocketProtocol):
        pass

    Configured.deflate_min_bytes = deflate_min_bytes if deflate else 0
    return Configured


class AsgiWire:
    """The same interface over plain ASGI ``send``, for a server that is not uvicorn with the protocol
    above: writes go out in order from one task, and the outbox still coalesces."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self._queue: list[list[bytes]] = []
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None

    @property
    def open(self) -> bool:
        return not self._closed

    @property
    def paused(self) -> bool:
        return not self._idle.is_set()

    async def drained(self) -> None:
        await self._idle.wait()

    def write_texts(self, payloads: list[bytes]) -> None:
        if self._closed:
            return
        self._queue.append(payloads)
        self._idle.clear()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    def abort(self) -> None:
        """Plain ASGI cannot cut a connection: the nearest it has is a close frame 1011."""
        self._closed = True
        self._queue.clear()
        self._closing = asyncio.get_running_loop().create_task(self._send({"type": "websocket.close", "code": 1011}))

    async def _pump(self) -> None:
        try:
            while self._queue:
                for payload in self._queue.pop(0):
                    await self._send({"type": "websocket.send", "text": payload.decode()})
        except Exception:  # the client went away; the receive loop sees it
            self._closed = True
            self._queue.clear()
        finally:
            self._task = None
            self._idle.set()
