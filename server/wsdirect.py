"""Outbound WebSocket text frames written straight to the socket, for the media clock.

aiohttp's ``send_str`` is a coroutine: called from the media clock it would
need a task (or a queue and a writer task) per call per frame.  The server's
frames are unmasked and, with compression off, are a 2-4 byte header and the
payload, so this module writes them to the connection's transport itself, in
whole frames (aiohttp's own control frames, also written whole from the same
thread, never interleave with them).

A peer that stops reading fills the transport's write buffer: past
``limit_bytes`` frames are dropped and counted instead of buffered, and once
the peer has been stalled for ``stall_close_s`` the connection is aborted, so a
stuck peer costs bounded memory and never blocks the clock.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Final

log = logging.getLogger(__name__)

OP_TEXT: Final = 0x1
DEFAULT_LIMIT_BYTES: Final = 64 * 1024
"""About 3 s of Twilio media messages."""
DEFAULT_STALL_CLOSE_S: Final = 5.0


def server_text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | OP_TEXT, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x80 | OP_TEXT, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | OP_TEXT, 127, n) + payload


class DirectTextSender:
    """Writes text frames to one WebSocket's transport without awaiting.

    ``now_s`` comes from the event loop clock; ``label`` names the call in logs.
    """

    __slots__ = (
        "_closed",
        "_stalled_since",
        "_transport",
        "dropped",
        "label",
        "limit_bytes",
        "stall_close_s",
    )

    def __init__(
        self,
        transport: asyncio.Transport,
        label: str = "-",
        limit_bytes: int = DEFAULT_LIMIT_BYTES,
        stall_close_s: float = DEFAULT_STALL_CLOSE_S,
    ) -> None:
        self._transport = transport
        self.label = label
        self.limit_bytes = limit_bytes
        self.stall_close_s = stall_close_s
        self.dropped = 0
        self._stalled_since: float | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed or self._transport.is_closing()

    def send(self, message: str, now_s: float) -> bool:
        """Write ``message`` as one text frame; ``False`` if it was dropped."""
        if self.closed:
            return False
        if self._transport.get_write_buffer_size() > self.limit_bytes:
            self.dropped += 1
            if self._stalled_since is None:
                self._stalled_since = now_s
                log.warning("call %s: peer is not reading; dropping outbound frames", self.label)
            elif now_s - self._stalled_since >= self.stall_close_s:
                log.warning(
                    "call %s: peer stalled for %.1f s; closing the connection",
                    self.label,
                    now_s - self._stalled_since,
                )
                self.abort()
            return False
        self._stalled_since = None
        self._transport.write(server_text_frame(message.encode()))
        return True

    def stop(self) -> None:
        """Send nothing more (the WebSocket is closing through aiohttp)."""
        self._closed = True

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closed = True
        self._transport.abort()
