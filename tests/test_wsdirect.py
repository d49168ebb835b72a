"""Direct outbound WebSocket frames: encoding, dropping for a stalled peer, disconnecting it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.loadgen.wsclient import WebSocketClient
from server.wsdirect import DirectTextSender, server_text_frame


def parse_with_client(frames: bytes) -> list[str]:
    """Feed server frames to the load generator's independent RFC 6455 parser."""
    received: list[str] = []
    client = WebSocketClient("ws://127.0.0.1:1/x", lambda: None, received.append, lambda c, r: None)
    client._open = True  # past the handshake
    client.data_received(frames)
    return received


@given(st.lists(st.text(max_size=70_000), min_size=1, max_size=4))
def test_frames_round_trip_through_a_client_parser(messages: list[str]) -> None:
    wire = b"".join(server_text_frame(m.encode()) for m in messages)
    assert parse_with_client(wire) == messages


@pytest.mark.parametrize(("size", "header"), [(125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_length_encodings(size: int, header: int) -> None:
    frame = server_text_frame(b"x" * size)
    assert len(frame) == header + size
    assert frame[0] == 0x81  # FIN + text
    assert frame[1] & 0x80 == 0  # servers never mask


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.buffered = 0
        self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def test_frames_are_written_whole_while_the_peer_reads() -> None:
    transport = FakeTransport()
    sender = DirectTextSender(transport, "CA1", limit_bytes=1000)
    assert sender.send('{"event":"clear"}', 0.0)
    assert transport.written == [server_text_frame(b'{"event":"clear"}')]
    assert sender.dropped == 0


def test_a_stalled_peer_loses_frames_then_the_connection() -> None:
    transport = FakeTransport()
    sender = DirectTextSender(transport, "CA1", limit_bytes=1000, stall_close_s=5.0)
    transport.buffered = 5000  # the peer stopped reading
    for i in range(245):  # 0 .. 4.88 s
        assert not sender.send("x", i * 0.02)
    assert not transport.aborted
    assert sender.dropped == 245
    assert not sender.send("x", 5.0)
    assert transport.aborted
    assert sender.closed
    assert not sender.send("x", 5.02)
    assert transport.written == []


def test_a_peer_that_catches_up_is_not_disconnected() -> None:
    transport = FakeTransport()
    sender = DirectTextSender(transport, "CA1", limit_bytes=1000, stall_close_s=5.0)
    transport.buffered = 5000
    assert not sender.send("x", 0.0)
    transport.buffered = 0
    assert sender.send("x", 3.0)
    transport.buffered = 5000
    assert not sender.send("x", 6.0)  # a new stall starts counting now
    assert not transport.aborted
    assert sender.dropped == 2


def test_nothing_is_sent_after_stop() -> None:
    transport = FakeTransport()
    sender = DirectTextSender(transport)
    sender.stop()
    assert not sender.send("x", 0.0)
    assert transport.written == []
