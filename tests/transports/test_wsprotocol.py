"""Deflate where it pays: small messages go out uncompressed, and a client still reads every one."""

from __future__ import annotations

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode

from loopway.transports.wsprotocol import SelectiveDeflate


def pair(min_bytes: int) -> tuple[SelectiveDeflate, PerMessageDeflate]:
    server = SelectiveDeflate(PerMessageDeflate(False, False, 12, 12, {"memLevel": 5}), min_bytes)
    client = PerMessageDeflate(False, False, 12, 12)
    return server, client


def test_small_messages_are_sent_as_they_are_and_large_ones_compressed():
    server, _ = pair(512)
    small = server.encode(Frame(Opcode.TEXT, b'{"type":"response.output_text.delta","delta":"hi"}'))
    large = server.encode(Frame(Opcode.TEXT, b'{"text":"' + b"abc " * 500 + b'"}'))
    assert not small.rsv1 and small.data.startswith(b'{"type"')
    assert large.rsv1 and len(large.data) < 200


def test_a_client_decodes_a_mix_of_compressed_and_plain_messages_with_context_takeover():
    server, client = pair(64)
    messages = [b"x" * 10, b"hello world " * 20, b"y" * 5, b"hello world " * 20 + b"again", b"z"]
    decoded = [client.decode(server.encode(Frame(Opcode.TEXT, m))).data for m in messages]
    assert decoded == messages


def test_zero_threshold_compresses_everything():
    server, _ = pair(0)
    assert server.encode(Frame(Opcode.TEXT, b"tiny")).rsv1


def test_frames_framed_by_hand_parse_as_the_library_frames_them():
    from websockets.frames import Frame as Parsed
    from websockets.streams import StreamReader

    from loopway.transports.wsprotocol import text_frame_header

    for size in (0, 1, 125, 126, 65535, 65536, 70000):
        payload = b"x" * size
        reader = StreamReader()
        reader.feed_data(text_frame_header(size) + payload)
        parser = Parsed.parse(reader.read_exact, mask=False)
        try:
            next(parser)
        except StopIteration as done:
            frame = done.value
        assert frame.opcode == Opcode.TEXT and frame.fin and frame.data == payload


async def test_the_asgi_wire_sends_in_order_from_one_task_and_closes_when_the_client_is_gone():
    import asyncio

    from loopway.transports.wsprotocol import AsgiWire

    sent: list[str] = []

    async def send(message: dict) -> None:
        await asyncio.sleep(0)
        sent.append(message["text"])

    wire = AsgiWire(send)
    wire.write_texts([b"a", b"b"])
    wire.write_texts([b"c"])
    assert wire.paused
    await wire.drained()
    assert sent == ["a", "b", "c"] and not wire.paused and wire.open

    async def gone(message: dict) -> None:
        raise OSError("client went away")

    broken = AsgiWire(gone)
    broken.write_texts([b"x"])
    await broken.drained()
    assert not broken.open
    broken.write_texts([b"y"])  # nothing more is queued for a closed wire
    assert not broken.paused
