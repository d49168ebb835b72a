"""SIP over UDP and TCP (RFC 3261 §18): sockets in, parsed messages out, bytes back.

:class:`SipTransport` listens on one address with UDP, TCP or both, and hands
every parsed message to its handler with the :class:`Peer` it came from.  It
never raises for bad input: an unparseable datagram is dropped (counted, and
logged at debug with its source); a TCP stream that goes out of sync is
closed.  Requests get ``received``/``rport`` stamped on their top Via (RFC
3581) before the handler sees them.  Responses go back where RFC 3261 §18.2.2
says: the same TCP connection, or the UDP source address and port.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal

from server.sip.message import (
    MAX_MESSAGE_BYTES,
    Message,
    Request,
    SipParseError,
    StreamFramer,
    is_keepalive,
    parse_message,
    stamp_received,
)

log = logging.getLogger(__name__)

TransportName = Literal["udp", "tcp"]
TCP_IDLE_CLOSE_S: Final = 600.0
"""An inbound TCP connection with nothing to say for this long is closed."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Where a message came from, and so where its responses go."""

    transport: TransportName
    address: tuple[str, int]
    connection: _TcpConnection | None = field(default=None, compare=False)

    @property
    def reliable(self) -> bool:
        return self.transport == "tcp"


@dataclass(slots=True)
class TransportStats:
    received: int = 0
    malformed: int = 0
    oversized: int = 0
    sent: int = 0
    send_failures: int = 0


Handler = Callable[[Message, Peer], None]


class SipTransport:
    """UDP and/or TCP listeners on ``host:port`` feeding :attr:`handler`."""

    def __init__(
        self,
        host: str,
        port: int,
        transports: tuple[TransportName, ...],
        handler: Handler | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.host = host
        self.port = port
        self.transports = transports
        self.handler = handler
        """Where parsed messages go; messages arriving while it is ``None`` are dropped."""
        self.max_message_bytes = max_message_bytes
        self.stats = TransportStats()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[_TcpConnection] = set()

    async def start(self) -> None:
        """Bind the listeners; with port 0, UDP picks a port and TCP takes the same."""
        loop = asyncio.get_running_loop()
        if "udp" in self.transports:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(self.host, self.port)
            )
            self._udp = transport
            self.port = transport.get_extra_info("sockname")[1]
        if "tcp" in self.transports:
            self._tcp = await loop.create_server(
                lambda: _TcpConnection(self), self.host, self.port, reuse_address=True
            )
            self.port = self._tcp.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for connection in list(self._connections):
                connection.close()
            await self._tcp.wait_closed()
            self._tcp = None

    def send(self, data: bytes, peer: Peer) -> None:
        """Send ``data`` to ``peer`` (over its connection, for TCP); never raises."""
        try:
            if peer.transport == "tcp":
                connection = peer.connection
                if connection is None or connection.closed:
                    self.stats.send_failures += 1
                    log.debug("SIP to %s:%d: TCP connection gone", *peer.address)
                    return
                connection.write(data)
            else:
                if self._udp is None:
                    self.stats.send_failures += 1
                    return
                self._udp.sendto(data, peer.address)
            self.stats.sent += 1
        except OSError as exc:
            self.stats.send_failures += 1
            log.info("SIP to %s:%d failed: %s", peer.address[0], peer.address[1], exc)

    # -- inbound ---------------------------------------------------------------------

    def _datagram(self, data: bytes, address: tuple[str, int]) -> None:
        if is_keepalive(data):
            return
        if len(data) > self.max_message_bytes:
            self.stats.oversized += 1
            log.debug("SIP from %s:%d: %d-byte datagram refused", *address, len(data))
            return
        try:
            message = parse_message(data, self.max_message_bytes)
        except SipParseError as exc:
            self.stats.malformed += 1
            log.debug("SIP from %s:%d dropped: %s", address[0], address[1], exc)
            return
        self._deliver(message, Peer("udp", address))

    def _deliver(self, message: Message, peer: Peer) -> None:
        if isinstance(message, Request):
            try:
                stamp_received(message, peer.address)
            except SipParseError as exc:  # no usable Via: no way to answer
                self.stats.malformed += 1
                log.debug("SIP from %s:%d dropped: %s", peer.address[0], peer.address[1], exc)
                return
        self.stats.received += 1
        if self.handler is None:
            return
        try:
            self.handler(message, peer)
        except Exception:
            # A bug in handling one message must not take the listener down.
            log.exception("SIP handler failed on a message from %s:%d", *peer.address)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    """One inbound TCP connection: Content-Length framing, CRLF keepalive pongs."""

    def __init__(self, owner: SipTransport) -> None:
        self._owner = owner
        self._framer = StreamFramer(owner.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._peer: Peer | None = None
        self._idle: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("peername")[:2]
        self._peer = Peer("tcp", (host, port), self)
        self._owner._connections.add(self)
        self._touch()

    def data_received(self, data: bytes) -> None:
        peer = self._peer
        if peer is None:
            return
        self._touch()
        try:
            messages = self._framer.feed(data)
        except SipParseError as exc:
            self._owner.stats.malformed += 1
            log.info("SIP TCP from %s:%d out of sync (%s): closing", *peer.address, exc)
            self.close()
            return
        if self._framer.pong_due:
            self.write(b"\r\n")
        for message in messages:
            self._owner._deliver(message, peer)

    def write(self, data: bytes) -> None:
        if self._transport is not None and not self.closed:
            self._transport.write(data)

    def close(self) -> None:
        if not self.closed and self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        self._owner._connections.discard(self)

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE_CLOSE_S, self.close)
