"""SIP over UDP and TCP (RFC 3261 §18): sockets in, parsed messages out, bytes back.

:class:`SipTransport` listens on one address with UDP, TCP or both, and hands
every parsed message to its handler with the :class:`Peer` it came from.  It
never raises for bad input: an unparseable datagram is dropped (counted, and
logged at debug with its source); a TCP stream that goes out of sync is
closed.  Requests get ``received``/``rport`` stamped on their top Via (RFC
3581) before the handler sees them.

Where bytes go (:meth:`SipTransport.send`):

* UDP: a datagram to the peer's address, from the listening socket.
* TCP: the peer's connection while it is open; else the open connection to the
  same remote address; else a new connection, opened on demand.  What is sent
  while it connects waits in a bounded queue (:data:`TCP_QUEUE_MAX_MESSAGES`,
  :data:`TCP_QUEUE_MAX_BYTES`) and is written once connected.  One connection
  per remote address serves requests, responses and in-dialog requests both
  ways; requests arriving on a connection we opened are delivered like any
  other.  A response whose connection is gone goes to the top Via's
  ``received`` address (else its host) and sent-by port (RFC 3261 §18.2.2).
* Transport errors (connect refused or timed out, a reset or a closed
  connection, a full queue): every request sent on that connection and still
  without a final response gets a locally made ``503`` response, delivered to
  the handler like a received one (RFC 3261 §8.1.3.1, §17.1.4), so the client
  transaction ends at once instead of on Timer B/F.  While those are
  delivered, other sends to that address fail too: the ACK a client INVITE
  transaction makes for the 503 is dropped, not reconnected.  A request
  written again on the same connection while it awaits its final response is a
  retransmission and is not written (reliable transports do not retransmit).
* RFC 3261 §18.1.1, behind ``udp_request_limit_bytes`` (off by default): a
  request over that size meant for UDP goes over TCP to the same address and
  port, its top Via saying TCP, unless its next hop URI (first Route, else
  Request-URI) says ``transport=udp``.  Off by default because many trunks and
  PBXs listen on UDP only (Asterisk ships with the switch disabled), and a
  refused connection would fail calls that UDP carries fine.

Idle TCP connections (no bytes either way for :data:`TCP_IDLE_CLOSE_S`) are
closed, ours and the peers'; :meth:`SipTransport.close` closes them all.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, cast

from server.sip.message import (
    MAX_MESSAGE_BYTES,
    Address,
    Message,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    is_keepalive,
    make_response,
    parse_message,
    stamp_received,
)

log = logging.getLogger(__name__)

TransportName = Literal["udp", "tcp"]
TCP_IDLE_CLOSE_S: Final = 600.0
"""A TCP connection with no bytes either way for this long is closed (s)."""
TCP_CONNECT_TIMEOUT_S: Final = 10.0
"""An outbound TCP connect that takes longer is a transport error (s)."""
TCP_QUEUE_MAX_MESSAGES: Final = 64
"""Messages held for a connection still connecting; more are refused."""
TCP_QUEUE_MAX_BYTES: Final = 256 * 1024
"""Bytes held for a connection still connecting; more are refused."""
TCP_WRITE_BUFFER_MAX_BYTES: Final = 1024 * 1024
"""A connection whose peer leaves this much unread is closed as stuck."""
MAX_AWAITING: Final = 256
"""Requests per connection remembered until their final response (oldest dropped)."""
RFC3261_UDP_REQUEST_LIMIT: Final = 1300
"""RFC 3261 §18.1.1: over this size (bytes) with an unknown path MTU, use TCP."""
LOCAL_FAILURE_STATUS: Final = 503


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
    connects: int = 0
    """Outbound TCP connections attempted."""
    connect_failures: int = 0
    local_failures: int = 0
    """503 responses made here for requests a transport error stranded."""
    retransmissions_dropped: int = 0
    """Requests not written again on a TCP connection already carrying them."""
    switched_to_tcp: int = 0
    """UDP requests sent over TCP by the RFC 3261 §18.1.1 size rule."""


Handler = Callable[[Message, Peer], None]


class SipTransport:
    """UDP and/or TCP listeners on ``host:port`` feeding :attr:`handler`; see the module
    docstring for where :meth:`send` puts bytes."""

    def __init__(
        self,
        host: str,
        port: int,
        transports: tuple[TransportName, ...],
        handler: Handler | None = None,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        *,
        udp_request_limit_bytes: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.transports = transports
        self.handler = handler
        """Where parsed messages go; messages arriving while it is ``None`` are dropped."""
        self.max_message_bytes = max_message_bytes
        self.udp_request_limit_bytes = udp_request_limit_bytes
        """Requests for UDP over this size (bytes) go over TCP; ``None``: never
        (:data:`RFC3261_UDP_REQUEST_LIMIT` is the RFC's number)."""
        self.stats = TransportStats()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._connections: set[_TcpConnection] = set()
        self._by_address: dict[tuple[str, int], _TcpConnection] = {}
        """Remote address -> the connection requests and responses to it use."""
        self._awaiting: dict[str, _TcpConnection] = {}
        """Branch of a request sent over TCP -> its connection, until a final response."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

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
        """Close the listeners and every TCP connection; queued bytes are dropped and no
        local 503 is made for requests left without an answer."""
        self._closed = True
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for task in list(self._tasks):
            task.cancel()
        for connection in list(self._connections):
            connection.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
        self._by_address.clear()
        self._awaiting.clear()

    @property
    def connections(self) -> int:
        """TCP connections open or opening, both directions."""
        return len(self._connections)

    def send(self, data: bytes, peer: Peer) -> None:
        """Send ``data`` (one serialized message) to ``peer``; never raises.

        Failures are counted; a request that cannot reach a TCP peer is answered
        with a local 503 through :attr:`handler`, on a later loop iteration.
        """
        if self._closed:
            self.stats.send_failures += 1
            return
        try:
            if peer.transport == "tcp":
                self._send_tcp(data, peer)
                return
            limit = self.udp_request_limit_bytes
            if limit is not None and len(data) > limit and not _is_response(data):
                switched = _via_over_tcp(data)
                if switched is not None:
                    self.stats.switched_to_tcp += 1
                    self._send_tcp(switched, Peer("tcp", peer.address))
                    return
            if self._udp is None:
                self.stats.send_failures += 1
                return
            self._udp.sendto(data, peer.address)
            self.stats.sent += 1
        except OSError as exc:
            self.stats.send_failures += 1
            log.info("SIP to %s:%d failed: %s", peer.address[0], peer.address[1], exc)

    # -- TCP out ---------------------------------------------------------------------

    def _send_tcp(self, data: bytes, peer: Peer) -> None:
        connection = peer.connection
        if connection is None or connection.closed:
            address = peer.address
            if _is_response(data):
                address = _response_address(data, peer.address)
            connection = self._by_address.get(address)
            if connection is None or (connection.closed and connection.failed is None):
                connection = self._open(address)
        if connection.failed is not None:
            self.stats.send_failures += 1
            self._strand([data], connection.address, connection.failed)
            return
        branch = _awaited_branch(data)
        if branch is not None and connection.awaiting.get(branch) == data:
            self.stats.retransmissions_dropped += 1
            return
        if not connection.send(data):
            self.stats.send_failures += 1
            self._strand([data], connection.address, "TCP send queue full")
            return
        self.stats.sent += 1
        if branch is not None:
            connection.await_response(branch, data)
            self._awaiting[branch] = connection

    def _open(self, address: tuple[str, int]) -> _TcpConnection:
        connection = _TcpConnection(self, address)
        self._connections.add(connection)
        self._by_address[address] = connection
        self.stats.connects += 1
        log.debug("SIP TCP connecting to %s:%d", *address)
        task = asyncio.get_running_loop().create_task(self._connect(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return connection

    async def _connect(self, connection: _TcpConnection) -> None:
        host, port = connection.address
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: connection, host, port),
                TCP_CONNECT_TIMEOUT_S,
            )
        except TimeoutError:
            self.stats.connect_failures += 1
            self._connection_failed(connection, "TCP connect timed out")
        except (OSError, ValueError) as exc:  # ValueError: an address the OS rejects
            self.stats.connect_failures += 1
            errno = getattr(exc, "errno", None)
            why = os.strerror(errno) if errno else str(exc) or type(exc).__name__
            self._connection_failed(connection, f"TCP connect failed: {why}")

    def _connection_failed(self, connection: _TcpConnection, reason: str) -> None:
        """``connection`` is unusable: fail what it holds, keep its address failing
        for this loop iteration (see the module docstring), then forget it."""
        if connection.failed is not None:
            return
        connection.failed = reason
        connection.closed = True
        for branch in connection.awaiting:
            if self._awaiting.get(branch) is connection:
                del self._awaiting[branch]
        pending = connection.drain()
        self._connections.discard(connection)
        if self._closed:
            return
        log.info("SIP to %s:%d: %s", connection.address[0], connection.address[1], reason)
        self._strand(pending, connection.address, reason)
        asyncio.get_running_loop().call_soon(self._forget, connection)

    def _forget(self, connection: _TcpConnection) -> None:
        if self._by_address.get(connection.address) is connection:
            del self._by_address[connection.address]

    def _strand(self, messages: list[bytes], address: tuple[str, int], reason: str) -> None:
        """Answer each request in ``messages`` with a local 503, on the next iteration."""
        requests = [data for data in messages if _awaited_branch(data) is not None]
        if requests and not self._closed:
            asyncio.get_running_loop().call_soon(self._fail_requests, requests, address, reason)

    def _fail_requests(self, requests: list[bytes], address: tuple[str, int], reason: str) -> None:
        for data in requests:
            response = local_failure(data, f"{reason} ({address[0]}:{address[1]})")
            if response is None or self.handler is None or self._closed:
                continue
            self.stats.local_failures += 1
            try:
                self.handler(response, Peer("tcp", address))
            except Exception:
                log.exception("SIP handler failed on a local 503 for %s:%d", *address)

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
        elif message.status >= 200 and self._awaiting:
            self._answered(message)
        self.stats.received += 1
        if self.handler is None:
            return
        try:
            self.handler(message, peer)
        except Exception:
            # A bug in handling one message must not take the listener down.
            log.exception("SIP handler failed on a message from %s:%d", *peer.address)

    def _answered(self, response: Response) -> None:
        try:
            branch = response.branch
        except SipParseError:
            return
        if branch is None:
            return
        connection = self._awaiting.pop(branch, None)
        if connection is not None:
            connection.awaiting.pop(branch, None)

    def _accepted(self, connection: _TcpConnection) -> None:
        self._connections.add(connection)
        self._by_address.setdefault(connection.address, connection)

    def _lost(self, connection: _TcpConnection, exc: Exception | None) -> None:
        self._connections.discard(connection)
        if connection.awaiting:
            reason = "TCP connection reset" if exc is not None else "TCP connection closed"
            self._connection_failed(connection, reason)
        elif self._by_address.get(connection.address) is connection:
            del self._by_address[connection.address]


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: SipTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._owner._datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        log.debug("SIP UDP error: %s", exc)


class _TcpConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened by us: Content-Length framing, CRLF
    keepalive pongs, a bounded queue while connecting, idle close."""

    def __init__(self, owner: SipTransport, address: tuple[str, int] | None = None) -> None:
        self._owner = owner
        self._framer = StreamFramer(owner.max_message_bytes)
        self._transport: asyncio.Transport | None = None
        self._peer: Peer | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self.address: tuple[str, int] = address or ("", 0)
        """The remote address: where we connect, or where an accepted one came from."""
        self.outbound = address is not None
        self.closed = False
        self.failed: str | None = None
        """Why the connection became unusable (a transport error), else ``None``."""
        self.awaiting: dict[str, bytes] = {}
        """Branch -> bytes of each request sent here that awaits its final response."""

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if self.closed:  # closed while connecting
            self._transport.close()
            return
        if not self.outbound:
            host, port = transport.get_extra_info("peername")[:2]
            self.address = (host, port)
            self._owner._accepted(self)
        self._peer = Peer("tcp", self.address, self)
        queue, self._queue, self._queued_bytes = self._queue, [], 0
        for data in queue:
            self.write(data)
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

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        self._owner._lost(self, exc)

    # -- ours --------------------------------------------------------------------------

    @property
    def connecting(self) -> bool:
        return self._transport is None and not self.closed

    def send(self, data: bytes) -> bool:
        """Write ``data``, or queue it while connecting; False if the queue is full."""
        if self.connecting:
            if (
                len(self._queue) >= TCP_QUEUE_MAX_MESSAGES
                or self._queued_bytes + len(data) > TCP_QUEUE_MAX_BYTES
            ):
                return False
            self._queue.append(data)
            self._queued_bytes += len(data)
            return True
        self.write(data)
        return True

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or self.closed:
            return
        transport.write(data)
        self._touch()
        if transport.get_write_buffer_size() > TCP_WRITE_BUFFER_MAX_BYTES:
            log.info("SIP TCP to %s:%d: peer not reading: closing", *self.address)
            transport.abort()

    def await_response(self, branch: str, data: bytes) -> None:
        if len(self.awaiting) >= MAX_AWAITING:
            del self.awaiting[next(iter(self.awaiting))]
        self.awaiting[branch] = data

    def drain(self) -> list[bytes]:
        """Everything queued or awaiting an answer (queued first); both emptied."""
        out = self._queue + [d for d in self.awaiting.values() if d not in self._queue]
        self._queue, self._queued_bytes = [], 0
        self.awaiting = {}
        return out

    def close(self) -> None:
        """Close now; nothing more is written (``connection_lost`` follows once open)."""
        if self.closed:
            return
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def _idle_close(self) -> None:
        log.debug("SIP TCP %s:%d idle: closing", *self.address)
        self.awaiting.clear()  # nothing answered in that long: nobody waits any more
        self.close()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE_CLOSE_S, self._idle_close)


# --------------------------------------------------------------------------- wire helpers


def _is_response(data: bytes) -> bool:
    return data.startswith(b"SIP/")


def _awaited_branch(data: bytes) -> str | None:
    """The top Via branch of a request that expects a response (not ACK), else ``None``."""
    if _is_response(data) or data.startswith(b"ACK "):
        return None
    try:
        message = parse_message(data)
        return message.branch if isinstance(message, Request) else None
    except SipParseError:
        return None


def _response_address(data: bytes, fallback: tuple[str, int]) -> tuple[str, int]:
    """Where a response goes over a new connection (RFC 3261 §18.2.2): the top Via's
    ``received`` (else its host) and sent-by port (else 5060)."""
    try:
        via = parse_message(data).top_via()
    except SipParseError:
        return fallback
    return (via.received or via.address, via.port or 5060)


def _via_over_tcp(data: bytes) -> bytes | None:
    """``data`` (a request) with its top Via saying TCP, or ``None`` when it must stay
    on UDP: its next hop says ``transport=udp``, or it does not parse."""
    try:
        request = parse_message(data)
        if not isinstance(request, Request):
            return None
        routes = request.headers.get_all("Route")
        hop = Address.parse(routes[0]).uri if routes else request.request_uri()
        if (hop.transport or "").lower() == "udp":
            return None
        vias = request.headers.get_all("Via")
        top = Via.parse(vias[0])
    except (SipParseError, IndexError):
        return None
    top.transport = "TCP"
    vias[0] = str(top)
    request.headers.set_all("Via", vias)
    return request.serialize()


def local_failure(data: bytes, reason: str) -> Response | None:
    """The 503 a transport error stands for (RFC 3261 §8.1.3.1), answering the request
    ``data``; its reason phrase says what failed.  ``None`` if ``data`` is no request."""
    try:
        request = parse_message(data)
        if not isinstance(request, Request) or request.method == "ACK":
            return None
        phrase = f"Service Unavailable: {reason}".replace("\r", " ").replace("\n", " ")
        return make_response(request, LOCAL_FAILURE_STATUS, phrase[:200])
    except (SipParseError, ValueError):
        return None
