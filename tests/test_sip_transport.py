"""The SIP transport's outbound TCP on 127.0.0.1: connect on demand, one connection per
address, the bounded queue, transport errors as local 503s, and the RFC 3261 §18.1.1
size rule; plus fuzzing of its wire helpers."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.loadgen.runner import free_port
from server.sip import transport as transport_module
from server.sip.message import (
    Message,
    Request,
    Response,
    StreamFramer,
    make_request,
    make_response,
    parse_message,
)
from server.sip.transaction import ClientNonInvite
from server.sip.transport import (
    RFC3261_UDP_REQUEST_LIMIT,
    TCP_QUEUE_MAX_MESSAGES,
    Peer,
    SipTransport,
    _awaited_branch,
    _response_address,
    _via_over_tcp,
    local_failure,
)
from server.sip.uac import Login
from tests.mutations import mutated_lines
from tests.test_sip_sipp_uas import outbound_ua


def request(
    method: str = "OPTIONS",
    branch: str = "z9hG4bK-1",
    *,
    transport: str = "TCP",
    uri: str = "sip:peer@127.0.0.1",
    body: bytes = b"",
    route: tuple[str, ...] = (),
) -> bytes:
    return make_request(
        method,
        uri,
        call_id="c1@voxgate",
        from_addr="<sip:voxgate@127.0.0.1>;tag=f1",
        to_addr="<sip:peer@127.0.0.1>",
        cseq=1,
        via=f"SIP/2.0/{transport} 127.0.0.1:5062;branch={branch};rport",
        route=route,
        body=body,
        content_type="application/sdp" if body else None,
    ).serialize()


class FakePeer:
    """A TCP SIP peer: records what each accepted connection carries, can answer."""

    def __init__(self) -> None:
        self.connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.messages: list[tuple[int, Message]] = []
        self.raw = bytearray()
        self.server: asyncio.Server | None = None
        self.port = 0
        self.on_message: Callable[[int, Message], None] | None = None

    async def start(self, port: int = 0) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.connections)
        self.connections.append((reader, writer))
        framer = StreamFramer()
        while data := await reader.read(65536):
            self.raw += data
            for message in framer.feed(data):
                self.messages.append((index, message))
                if self.on_message is not None:
                    self.on_message(index, message)

    def write(self, index: int, data: bytes) -> None:
        self.connections[index][1].write(data)

    def reset(self, index: int) -> None:
        """Close connection ``index`` with a TCP RST."""
        writer = self.connections[index][1]
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def close(self) -> None:
        for _, writer in self.connections:
            writer.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.01)


class Collector:
    def __init__(self) -> None:
        self.messages: list[tuple[Message, Peer]] = []

    def __call__(self, message: Message, peer: Peer) -> None:
        self.messages.append((message, peer))

    def responses(self) -> list[Response]:
        return [m for m, _ in self.messages if isinstance(m, Response)]


@pytest.fixture
async def fake(loop: asyncio.AbstractEventLoop) -> AsyncIterator[FakePeer]:
    peer = FakePeer()
    await peer.start()
    try:
        yield peer
    finally:
        await peer.close()


@pytest.fixture
async def sip(loop: asyncio.AbstractEventLoop) -> AsyncIterator[tuple[SipTransport, Collector]]:
    collector = Collector()
    transport = SipTransport("127.0.0.1", 0, ("udp", "tcp"), collector)
    await transport.start()
    try:
        yield transport, collector
    finally:
        await transport.close()


def refused_port() -> int:
    """A loopback port nothing listens on (TCP)."""
    return free_port()


# -- connect on demand, reuse -------------------------------------------------------------


async def test_connects_on_demand_and_reuses_the_connection_both_ways(
    sip: tuple[SipTransport, Collector], fake: FakePeer
) -> None:
    transport, collector = sip
    to = Peer("tcp", ("127.0.0.1", fake.port))
    first, second = request(branch="z9hG4bK-a"), request(branch="z9hG4bK-b")
    transport.send(first, to)
    transport.send(second, to)  # queued while connecting
    await until(lambda: len(fake.messages) == 2)
    assert bytes(fake.raw) == first + second
    assert transport.stats.connects == 1 and len(fake.connections) == 1

    # Their answers and a request of theirs come back on our connection.
    reply = make_response(parse_message(first), 200).serialize()  # type: ignore[arg-type]
    bye = request("BYE", "z9hG4bK-theirs", uri="sip:voxgate@127.0.0.1:5062")
    fake.write(0, reply + b"\r\n\r\n" + bye)
    await until(lambda: len(collector.messages) == 2)
    (response, _), (incoming, p2) = collector.messages
    assert isinstance(response, Response) and response.status == 200
    assert isinstance(incoming, Request) and incoming.method == "BYE"
    assert p2.address == ("127.0.0.1", fake.port) and p2.connection is not None

    # Our answer to their BYE, and a later request, use the same connection.
    ok = make_response(incoming, 200).serialize()
    transport.send(ok, p2)
    transport.send(request(branch="z9hG4bK-c"), Peer("tcp", ("127.0.0.1", fake.port)))
    await until(lambda: len(fake.messages) == 4)
    assert [index for index, _ in fake.messages] == [0, 0, 0, 0]
    assert transport.stats.connects == 1 and transport.connections == 1
    assert b"\r\n" in fake.raw  # the keepalive pong went back
    assert transport.stats.local_failures == 0


async def test_a_retransmission_on_the_same_connection_is_not_written(
    sip: tuple[SipTransport, Collector], fake: FakePeer
) -> None:
    transport, _ = sip
    to = Peer("tcp", ("127.0.0.1", fake.port))
    data = request(branch="z9hG4bK-r")
    transport.send(data, to)
    await until(lambda: len(fake.messages) == 1)
    transport.send(data, to)
    transport.send(request(branch="z9hG4bK-s"), to)
    await until(lambda: len(fake.messages) == 2)
    assert transport.stats.retransmissions_dropped == 1
    assert [m.branch for _, m in fake.messages] == ["z9hG4bK-r", "z9hG4bK-s"]


async def test_the_queue_while_connecting_is_bounded(
    sip: tuple[SipTransport, Collector], fake: FakePeer
) -> None:
    transport, collector = sip
    to = Peer("tcp", ("127.0.0.1", fake.port))
    for i in range(TCP_QUEUE_MAX_MESSAGES + 1):
        transport.send(request(branch=f"z9hG4bK-q{i}"), to)
    assert collector.messages == []  # failures are reported on a later iteration
    await until(lambda: len(fake.messages) == TCP_QUEUE_MAX_MESSAGES and bool(collector.messages))
    assert len(fake.messages) == TCP_QUEUE_MAX_MESSAGES
    [refused] = collector.responses()
    assert refused.status == 503 and refused.branch == f"z9hG4bK-q{TCP_QUEUE_MAX_MESSAGES}"
    assert "queue full" in refused.reason
    assert transport.stats.send_failures == 1


# -- transport errors -------------------------------------------------------------------------


async def test_connect_refused_answers_each_waiting_request_with_a_local_503(
    sip: tuple[SipTransport, Collector],
) -> None:
    transport, collector = sip
    port = refused_port()
    to = Peer("tcp", ("127.0.0.1", port))
    transport.send(request("REGISTER", "z9hG4bK-x"), to)
    transport.send(request("INVITE", "z9hG4bK-y"), to)
    transport.send(request("ACK", "z9hG4bK-y"), to)  # no answer is due for an ACK
    await until(lambda: len(collector.messages) == 2)
    responses = collector.responses()
    assert [(r.status, r.branch, r.cseq().method) for r in responses] == [
        (503, "z9hG4bK-x", "REGISTER"),
        (503, "z9hG4bK-y", "INVITE"),
    ]
    assert responses[0].reason == (
        f"Service Unavailable: TCP connect failed: Connection refused (127.0.0.1:{port})"
    )
    assert [peer.address for _, peer in collector.messages] == [("127.0.0.1", port)] * 2
    assert transport.stats.connect_failures == 1 and transport.connections == 0


async def test_a_transaction_fails_at_once_and_its_ack_does_not_reconnect(
    sip: tuple[SipTransport, Collector],
) -> None:
    """A client transaction over a refused connection ends with the 503 (not Timer F);
    what is sent to that address while the 503s are delivered is dropped."""
    transport, collector = sip
    to = Peer("tcp", ("127.0.0.1", refused_port()))
    finals: list[int] = []
    tx = ClientNonInvite(
        request("OPTIONS", "z9hG4bK-t"),
        lambda data: transport.send(data, to),
        asyncio.get_running_loop(),
        True,
        on_final=finals.append,
    )

    def handler(message: Message, peer: Peer) -> None:
        collector(message, peer)
        assert isinstance(message, Response)
        tx.on_response(message.status)
        transport.send(request("ACK", "z9hG4bK-t"), to)

    transport.handler = handler
    await until(lambda: bool(finals))
    assert finals == [503]
    await asyncio.sleep(0.05)
    assert transport.stats.connects == 1 and transport.connections == 0
    tx.terminate()


async def test_a_reset_fails_the_requests_still_waiting_on_that_connection(
    sip: tuple[SipTransport, Collector], fake: FakePeer
) -> None:
    transport, collector = sip
    to = Peer("tcp", ("127.0.0.1", fake.port))
    answered, waiting = request(branch="z9hG4bK-1"), request("INVITE", "z9hG4bK-2")
    transport.send(answered, to)
    transport.send(waiting, to)
    await until(lambda: len(fake.messages) == 2)
    fake.write(0, make_response(parse_message(answered), 200).serialize())  # type: ignore[arg-type]
    await until(lambda: len(collector.messages) == 1)
    fake.reset(0)
    await until(lambda: len(collector.messages) == 2)
    [ok, failed] = collector.responses()
    assert ok.status == 200
    assert failed.status == 503 and failed.branch == "z9hG4bK-2"
    assert failed.reason.startswith("Service Unavailable: TCP connection reset")

    # The next request opens a new connection.
    transport.send(request(branch="z9hG4bK-3"), to)
    await until(lambda: len(fake.messages) == 3)
    assert fake.messages[-1][0] == 1 and transport.stats.connects == 2


async def test_a_response_whose_connection_closed_goes_to_the_via_sent_by(
    sip: tuple[SipTransport, Collector], fake: FakePeer
) -> None:
    """RFC 3261 §18.2.2: a new connection to ``received`` and the sent-by port."""
    transport, collector = sip
    _, writer = await asyncio.open_connection("127.0.0.1", transport.port)
    options = make_request(
        "OPTIONS",
        f"sip:voxgate@127.0.0.1:{transport.port}",
        call_id="c9",
        from_addr="<sip:peer@127.0.0.1>;tag=p",
        to_addr="<sip:voxgate@127.0.0.1>",
        cseq=7,
        via=f"SIP/2.0/TCP 127.0.0.1:{fake.port};branch=z9hG4bK-o",
    ).serialize()
    writer.write(options)
    await until(lambda: len(collector.messages) == 1)
    writer.close()
    await until(lambda: transport.connections == 0)
    incoming, peer = collector.messages[0]
    assert isinstance(incoming, Request) and peer.connection is not None
    transport.send(make_response(incoming, 200).serialize(), peer)
    await until(lambda: len(fake.messages) == 1)
    [(_, response)] = fake.messages
    assert isinstance(response, Response) and response.status == 200
    assert response.call_id == "c9"


async def test_idle_connections_close_and_close_ends_them_all(
    sip: tuple[SipTransport, Collector], fake: FakePeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport, _ = sip
    monkeypatch.setattr(transport_module, "TCP_IDLE_CLOSE_S", 0.1)
    transport.send(request(), Peer("tcp", ("127.0.0.1", fake.port)))
    await until(lambda: len(fake.messages) == 1)
    await until(lambda: transport.connections == 0)
    assert transport.connections == 0
    monkeypatch.setattr(transport_module, "TCP_IDLE_CLOSE_S", 600.0)
    transport.send(request(branch="z9hG4bK-2"), Peer("tcp", ("127.0.0.1", fake.port)))
    await until(lambda: len(fake.messages) == 2)
    assert transport.connections == 1
    await transport.close()
    await until(lambda: transport.connections == 0)
    assert transport.connections == 0
    transport.send(request(branch="z9hG4bK-3"), Peer("tcp", ("127.0.0.1", fake.port)))
    assert transport.stats.send_failures == 1 and transport.stats.connects == 2


async def test_an_outbound_call_to_a_refused_tcp_address_fails_with_503(
    sip: tuple[SipTransport, Collector],
) -> None:
    transport, _ = sip
    ua = outbound_ua(transport)

    class Session:
        reason: str | None = None

        def offer(self) -> bytes:
            return b"v=0\r\n"

        def accept(self, answer: bytes) -> None: ...

        def confirmed(self, ack_body: bytes) -> None: ...

        def update(self, offer: bytes | None) -> bytes:
            return b""

        def ended(self, reason: str) -> None:
            self.reason = reason

    session = Session()
    port = refused_port()
    handle = ua.invite(
        f"sip:bob@127.0.0.1:{port}",
        from_uri="sip:alice@127.0.0.1",
        sessions=lambda invite, control: session,
        login=Login("alice", "x"),
        destination=Peer("tcp", ("127.0.0.1", port)),
    )
    await until(lambda: handle.state == "failed")
    assert handle.state == "failed" and handle.status == 503  # not Timer B's 408
    assert session.reason == "failed_503"
    await asyncio.sleep(0.05)
    assert transport.stats.connects == 1  # the 503's ACK did not reconnect
    ua.shutdown()


# -- RFC 3261 §18.1.1 ------------------------------------------------------------------------


def big_invite(size: int, *, route: tuple[str, ...] = (), uri: str = "sip:peer@127.0.0.1") -> bytes:
    """An INVITE of exactly ``size`` bytes (``size`` at least about 300)."""
    body = b"v" * 100
    while True:
        data = request("INVITE", "z9hG4bK-big", transport="UDP", route=route, uri=uri, body=body)
        if len(data) == size:
            return data
        body = b"v" * (len(body) + size - len(data))


@pytest.fixture
async def udp_peer(loop: asyncio.AbstractEventLoop) -> AsyncIterator[tuple[socket.socket, int]]:
    """A UDP socket and a TCP listener (a FakePeer is bound to the same port by the test)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock, sock.getsockname()[1]
    finally:
        sock.close()


async def test_a_large_udp_request_goes_over_tcp_when_the_rule_is_on(
    loop: asyncio.AbstractEventLoop, udp_peer: tuple[socket.socket, int]
) -> None:
    sock, port = udp_peer
    fake = FakePeer()
    await fake.start(port)
    transport = SipTransport(
        "127.0.0.1", 0, ("udp",), Collector(), udp_request_limit_bytes=RFC3261_UDP_REQUEST_LIMIT
    )
    await transport.start()
    try:
        to = Peer("udp", ("127.0.0.1", port))
        large = big_invite(1301)
        assert len(large) == 1301
        transport.send(large, to)
        transport.send(large, to)  # a Timer A retransmission: not written twice over TCP
        await until(lambda: len(fake.messages) == 1)
        expected = large.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP", 1)
        assert bytes(fake.raw) == expected
        assert transport.stats.switched_to_tcp == 2 and transport.stats.retransmissions_dropped == 1

        at_limit = big_invite(1300)
        pinned = big_invite(1400, route=("<sip:127.0.0.1;lr;transport=udp>",))
        pinned_uri = big_invite(1400, uri="sip:peer@127.0.0.1;transport=UDP")
        response = b"SIP/2.0 200 OK\r\n" + large[len(b"INVITE sip:peer@127.0.0.1 SIP/2.0\r\n") :]
        for data in (at_limit, pinned, pinned_uri, response):
            transport.send(data, to)
            assert await loop.sock_recv(sock, 65536) == data
        assert len(fake.messages) == 1
    finally:
        await transport.close()
        await fake.close()


async def test_a_large_udp_request_stays_on_udp_by_default(
    loop: asyncio.AbstractEventLoop, udp_peer: tuple[socket.socket, int]
) -> None:
    sock, port = udp_peer
    transport = SipTransport("127.0.0.1", 0, ("udp",), Collector())
    await transport.start()
    try:
        large = big_invite(4000)
        transport.send(large, Peer("udp", ("127.0.0.1", port)))
        assert await loop.sock_recv(sock, 65536) == large
        assert transport.stats.switched_to_tcp == 0 and transport.stats.connects == 0
    finally:
        await transport.close()


# -- wire helpers --------------------------------------------------------------------------


def test_local_failure_is_a_503_answering_the_request_byte_for_byte() -> None:
    data = request("REGISTER", "z9hG4bK-w")
    response = local_failure(data, "TCP connect timed out (192.0.2.1:5060)")
    assert response is not None
    assert response.serialize() == (
        b"SIP/2.0 503 Service Unavailable: TCP connect timed out (192.0.2.1:5060)\r\n"
        b"Via: SIP/2.0/TCP 127.0.0.1:5062;branch=z9hG4bK-w;rport\r\n"
        b"From: <sip:voxgate@127.0.0.1>;tag=f1\r\n"
        b"To: <sip:peer@127.0.0.1>\r\n"
        b"Call-ID: c1@voxgate\r\n"
        b"CSeq: 1 REGISTER\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert local_failure(request("ACK"), "x") is None
    assert local_failure(b"SIP/2.0 200 OK\r\n\r\n", "x") is None
    assert local_failure(request(), "a\r\nb") is not None


def test_the_response_address_follows_received_and_sent_by() -> None:
    via = "SIP/2.0/TCP client.example:5070;branch=z9hG4bK-1;received=192.0.2.7;rport=40000"
    response = b"SIP/2.0 200 OK\r\nVia: " + via.encode() + b"\r\nContent-Length: 0\r\n\r\n"
    assert _response_address(response, ("h", 1)) == ("192.0.2.7", 5070)
    bare = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 192.0.2.8\r\nContent-Length: 0\r\n\r\n"
    assert _response_address(bare, ("h", 1)) == ("192.0.2.8", 5060)
    assert _response_address(b"garbage", ("h", 1)) == ("h", 1)


REAL = [
    request("INVITE", "z9hG4bK-m", transport="UDP", body=b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n"),
    request("REGISTER", "z9hG4bK-n", route=("<sip:proxy.example;lr>",)),
    local_failure(request(), "x").serialize(),  # type: ignore[union-attr]
]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_the_wire_helpers_never_raise_on_random_bytes(data: bytes) -> None:
    _awaited_branch(data)
    _response_address(data, ("h", 1))
    _via_over_tcp(data)
    local_failure(data, "reason")


def mutated(message: bytes) -> st.SearchStrategy[bytes]:
    return mutated_lines(
        message.split(b"\r\n"),
        piece=st.sampled_from([b";", b":", b",", b"<", b">", b" ", b"\x00", b"\xff", b"9" * 12]),
        new_line=st.sampled_from(
            [b"Via: SIP/2.0/UDP", b"Route: <sip:x;transport=udp>", b"Via: ;;", b"CSeq: x"]
        ),
        max_rounds=4,
    ).map(b"\r\n".join)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(REAL).flatmap(mutated))
def test_the_wire_helpers_never_raise_on_mutated_messages(data: bytes) -> None:
    _awaited_branch(data)
    _response_address(data, ("h", 1))
    switched = _via_over_tcp(data)
    if switched is not None:
        message = parse_message(switched)
        assert message.top_via().transport == "TCP"
    response = local_failure(data, "reason")
    if response is not None:
        assert parse_message(response.serialize()).status == 503  # type: ignore[union-attr]


async def test_a_failed_connection_leaves_no_request_behind(
    sip: tuple[SipTransport, Collector],
) -> None:
    transport, collector = sip
    transport.send(request("INVITE", "z9hG4bK-z"), Peer("tcp", ("127.0.0.1", refused_port())))
    await until(lambda: len(collector.messages) == 1)
    await asyncio.sleep(0.02)
    assert transport._awaiting == {} and transport._by_address == {}
