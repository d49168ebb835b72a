"""A lean RFC 6455 WebSocket client for the load generator: text messages in and out.

Hundreds of simulated calls share one process, so the client is an
:class:`asyncio.Protocol` that parses frames in ``data_received`` and hands each
text message to a callback at once: no task, queue or future per message.
Client frames are masked with a fresh 32-bit key each, as the RFC requires.
Only what a media-stream peer needs is implemented: text and close frames,
ping/pong, fragmented messages; binary frames from the server are reported as
errors.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
from collections.abc import Callable
from typing import Final, cast
from urllib.parse import urlsplit

_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_MESSAGE_BYTES: Final = 1 << 20

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_ABNORMAL: Final = 1006
"""Not sent on the wire: the connection ended without a close frame."""


class HandshakeError(Exception):
    """The server did not switch protocols (``status`` is its HTTP status, 0 if unreadable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def accept_key(key: str) -> str:
    """``Sec-WebSocket-Accept`` the server must answer for ``Sec-WebSocket-Key`` ``key``."""
    return base64.b64encode(hashlib.sha1(key.encode() + _ACCEPT_GUID).digest()).decode()


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """``payload`` XOR the repeating 4-byte ``mask`` (masking and unmasking are the same)."""
    n = len(payload)
    if n == 0:
        return b""
    key = (mask * ((n + 3) // 4))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def encode_client_frame(opcode: int, payload: bytes, mask: bytes) -> bytes:
    """One final (FIN) client frame, masked with ``mask`` (4 bytes)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return header + mask + mask_payload(payload, mask)


TextHandler = Callable[[str], None]
CloseHandler = Callable[[int, str], None]
OpenHandler = Callable[[], None]


class WebSocketClient(asyncio.Protocol):
    """One client connection; see :func:`connect`.

    Callbacks run inside ``data_received``: ``on_open()`` once the handshake
    succeeded, ``on_text(message)`` per text message, ``on_close(code, reason)``
    exactly once when the connection ends for any reason (code 1006 without a
    close frame, or a :class:`HandshakeError`'s status when the upgrade failed).
    """

    def __init__(
        self,
        url: str,
        on_open: OpenHandler,
        on_text: TextHandler,
        on_close: CloseHandler,
        rng: random.Random | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or not parts.hostname:
            raise ValueError(f"load generator needs a ws:// URL, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._on_open = on_open
        self._on_text = on_text
        self._on_close = on_close
        self._rng = rng or random.Random()
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._open = False
        self._closed = False
        self._close_sent = False
        self._fragments: list[bytes] = []
        self._fragment_opcode = 0
        self.bytes_sent = 0

    @property
    def is_open(self) -> bool:
        """Handshake done, no close frame sent or received."""
        return self._open and not self._close_sent and not self._closed

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = transport = cast(asyncio.Transport, transport)
        request = (
            f"GET {self._path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {self._key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        )
        transport.write(request.encode("ascii"))

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._open and not self._read_handshake():
            return
        self._read_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(CLOSE_ABNORMAL, str(exc) if exc else "connection lost")

    # -- sending ---------------------------------------------------------------------

    def send_text(self, message: str) -> None:
        """Send one text message (dropped silently once closing)."""
        if self._transport is None or not self.is_open:
            return
        frame = encode_client_frame(OP_TEXT, message.encode(), self._new_mask())
        self.bytes_sent += len(frame)
        self._transport.write(frame)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake; the server's close frame ends the connection."""
        if self._transport is None or self._close_sent or self._closed:
            return
        self._close_sent = True
        if not self._open:
            self._transport.close()
            return
        payload = struct.pack("!H", code) + reason.encode()[:120]
        self._transport.write(encode_client_frame(OP_CLOSE, payload, self._new_mask()))

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()

    def _new_mask(self) -> bytes:
        return self._rng.getrandbits(32).to_bytes(4, "big")

    # -- receiving -------------------------------------------------------------------

    def _read_handshake(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > 16384:
                self._fail_handshake(0, "handshake response too long")
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        lines = head.split("\r\n")
        status_parts = lines[0].split(" ", 2)
        try:
            status = int(status_parts[1])
        except (IndexError, ValueError):
            self._fail_handshake(0, f"bad status line {lines[0]!r}")
            return False
        if status != 101:
            self._fail_handshake(status, f"upgrade refused: {lines[0]}")
            return False
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("sec-websocket-accept") != accept_key(self._key):
            self._fail_handshake(0, "wrong Sec-WebSocket-Accept")
            return False
        self._open = True
        self._on_open()
        return True

    def _fail_handshake(self, status: int, reason: str) -> None:
        self._finish(status, reason)
        if self._transport is not None:
            self._transport.close()

    def _read_frames(self) -> None:
        buf = self._buf
        pos = 0
        size = len(buf)
        while not self._closed and size - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b1 & 0x80:
                self._protocol_error("server frames must not be masked")
                return
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if n > MAX_MESSAGE_BYTES:
                self._protocol_error(f"frame of {n} bytes is too large")
                return
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            self._on_frame(b0 & 0x80 != 0, b0 & 0x0F, payload)
        del buf[:pos]

    def _on_frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode == OP_TEXT and fin and not self._fragments:
            self._deliver(payload)
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._fragments:
                self._protocol_error("new message inside a fragmented one")
                return
            self._fragment_opcode = opcode
            self._fragments.append(payload)
            if fin:
                self._end_fragments()
        elif opcode == OP_CONTINUATION:
            if not self._fragments:
                self._protocol_error("continuation without a message")
                return
            self._fragments.append(payload)
            if sum(map(len, self._fragments)) > MAX_MESSAGE_BYTES:
                self._protocol_error("message too large")
                return
            if fin:
                self._end_fragments()
        elif opcode == OP_CLOSE:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else CLOSE_NO_STATUS
            reason = payload[2:].decode("utf-8", "replace")
            if not self._close_sent:
                self._close_sent = True
                assert self._transport is not None
                echo = payload[:2] if len(payload) >= 2 else b""
                self._transport.write(encode_client_frame(OP_CLOSE, echo, self._new_mask()))
            self._finish(code, reason)
            assert self._transport is not None
            self._transport.close()
        elif opcode == OP_PING:
            if self._transport is not None and not self._close_sent:
                self._transport.write(encode_client_frame(OP_PONG, payload, self._new_mask()))
        elif opcode == OP_PONG:
            pass
        else:
            self._protocol_error(f"unknown opcode {opcode:#x}")

    def _end_fragments(self) -> None:
        data = b"".join(self._fragments)
        self._fragments.clear()
        if self._fragment_opcode == OP_TEXT:
            self._deliver(data)
        else:
            self._protocol_error("binary message on a text protocol")

    def _deliver(self, payload: bytes) -> None:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            self._protocol_error("text message is not UTF-8")
            return
        self._on_text(text)

    def _protocol_error(self, reason: str) -> None:
        self.close(CLOSE_PROTOCOL_ERROR, reason)
        self._finish(CLOSE_PROTOCOL_ERROR, reason)
        if self._transport is not None:
            self._transport.abort()

    def _finish(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(code, reason)


async def open_connection(client: WebSocketClient) -> None:
    """Open ``client``'s TCP connection and start the handshake.

    Returns once TCP is connected; ``on_open`` may run before this returns
    (the server's answer can arrive in the same loop iteration), so keep a
    reference to ``client`` before awaiting.  ``OSError`` propagates.
    """
    loop = asyncio.get_running_loop()
    await loop.create_connection(lambda: client, client.host, client.port)
