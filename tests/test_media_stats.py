"""Media statistics: the transport hook, RtpSession.media_stats, /calls/{id} and /metrics.

The end-to-end test places a real SIP call over UDP on 127.0.0.1 (a few lines of
SIP written here, RTP from ``server.rtp.packet``) against the application with
the echo agent, reads ``media`` in ``GET /calls/{id}`` and, after the BYE, the
counters in ``GET /metrics``.  Waits are bounded polls, never timed assertions.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from aiohttp.pytest_plugin import AiohttpClient, AiohttpServer
from prometheus_client.parser import text_string_to_metric_families

from server.app import build_app
from server.call import Call
from server.config import AgentSection, load_config
from server.metrics import Metrics
from server.rtp.packet import build_rtp
from server.rtp.portpool import PortPool
from server.rtp.rtcp import (
    ReportBlock,
    RtcpReceiverReport,
    RtcpSdes,
    build_compound,
    dlsr_from_seconds,
    ntp_from_unix,
    ntp_middle32,
)
from server.sdp import parse_sdp
from server.sip.message import Response, parse_message
from server.transport import MediaStats, media_stats_of
from tests.test_rtp_session import (  # noqa: F401  (pool is a fixture)
    PCMA,
    PEER_SSRC,
    Harness,
    harness,
    negotiated,
    pool,
)
from tests.udpports import free_udp_range

# -- the hook ------------------------------------------------------------------------------


class _Transport:
    """A transport without media statistics."""

    def send_audio(self, frame: bytes) -> None:
        pass

    def clear(self) -> None:
        pass

    def mark(self, name: str) -> None:
        pass

    def send_dtmf(self, digits: str) -> bool:
        return False

    def hangup(self) -> None:
        pass


class _MediaTransport(_Transport):
    def __init__(self, stats: MediaStats | None) -> None:
        self.stats = stats

    def media_stats(self) -> MediaStats | None:
        return self.stats


STATS = MediaStats(
    transport="rtp",
    codec="PCMU/8000",
    remote="127.0.0.1:4000",
    packets_in={"received": 52, "audio": 50, "lost": 2, "late": 1},
    frames_in={"played": 200, "concealed": 3, "silence": 1},
    packets_out={"sent": 190, "errors": 0},
    events={"latches": 1},
    playout={"current_delay_ms": 40, "target_delay_ms": 40, "buffered_frames": 2},
    jitter_ms=2.5,
    rtcp={"rtt_ms": None},
)


def test_the_hook_is_optional() -> None:
    assert media_stats_of(_Transport()) is None
    assert media_stats_of(_MediaTransport(None)) is None
    assert media_stats_of(_MediaTransport(STATS)) is STATS


def test_call_summary_has_media_only_when_the_transport_keeps_it() -> None:
    plain = Call("c1", _Transport(), AgentSection())
    assert "media" not in plain.summary()
    call = Call("c2", _MediaTransport(STATS), AgentSection())
    media = msgspec.json.decode(msgspec.json.encode(call.summary()))["media"]
    assert media == {
        "transport": "rtp",
        "codec": "PCMU/8000",
        "remote": "127.0.0.1:4000",
        "packets_in": {"received": 52, "audio": 50, "lost": 2, "late": 1},
        "frames_in": {"played": 200, "concealed": 3, "silence": 1},
        "packets_out": {"sent": 190, "errors": 0},
        "frames_out": {},
        "events": {"latches": 1},
        "playout": {"current_delay_ms": 40, "target_delay_ms": 40, "buffered_frames": 2},
        "jitter_ms": 2.5,
        "rtcp": {"rtt_ms": None},
    }


def test_metrics_add_an_ended_calls_media() -> None:
    metrics = Metrics()
    metrics.observe_call_media("sip", None)  # a transport without statistics: nothing
    metrics.observe_call_media("sip", STATS)
    metrics.observe_call_media("sip", STATS)
    value = metrics.registry.get_sample_value
    assert (
        value("voxgate_media_packets_in_total", {"transport": "sip", "outcome": "received"}) == 104
    )
    assert value("voxgate_media_packets_in_total", {"transport": "sip", "outcome": "late"}) == 2
    assert value("voxgate_media_frames_in_total", {"transport": "sip", "kind": "concealed"}) == 6
    assert value("voxgate_media_packets_out_total", {"transport": "sip", "outcome": "sent"}) == 380
    assert value("voxgate_media_events_total", {"transport": "sip", "event": "latches"}) == 2
    ratio = {"transport": "sip", "le": "0.02"}  # (3 + 1) / 200 = 0.02
    assert value("voxgate_media_concealment_ratio_bucket", ratio) == 2
    assert value("voxgate_media_concealment_ratio_bucket", {**ratio, "le": "0.01"}) == 0
    assert value("voxgate_media_jitter_seconds_count", {"transport": "sip"}) == 2
    assert value("voxgate_media_jitter_seconds_sum", {"transport": "sip"}) == pytest.approx(0.005)


# -- RtpSession.media_stats -------------------------------------------------------------


def _feed(h: Harness, seqs: list[int], *, ssrc: int = PEER_SSRC, pt: int = 0) -> None:
    """Packets with these sequence numbers (timestamps follow), straight into the session."""
    for seq in seqs:
        data = build_rtp(
            pt=pt, seq=seq & 0xFFFF, ts=(seq * 160) & 0xFFFFFFFF, ssrc=ssrc, payload=b"\xff" * 160
        )
        h.session.receive_rtp(data, h.peer.addr)


async def test_media_stats_count_a_pcmu_stream(pool: PortPool) -> None:  # noqa: F811
    h = await harness(pool, negotiated)
    try:
        h.tick()  # the first tick anchors arrival times
        _feed(h, [100, 101, 102, 103, 105, 106])  # 104 lost
        for _ in range(8):
            h.tick()
        media = h.session.media_stats()
        assert media.transport == "rtp" and media.codec == "PCMU/8000"
        assert media.remote == f"127.0.0.1:{h.peer.pair.rtp_port}"
        packets = media.packets_in
        assert (packets["received"], packets["probation"], packets["audio"]) == (6, 1, 5)
        assert packets["lost"] == 1
        assert media.frames_in["played"] == len(h.audio) == 8
        assert media.frames_in["concealed"] >= 1  # 104, then the end of the stream
        assert media.events["latches"] == 1
        assert media.packets_out["sent"] == 9  # one per tick
        assert media.playout["target_delay_ms"] >= 20
        assert media.jitter_ms is not None and media.rtcp == {}
    finally:
        await h.close()


async def test_counters_survive_a_codec_change_and_a_new_ssrc(pool: PortPool) -> None:  # noqa: F811
    h = await harness(pool, negotiated)
    try:
        h.tick()
        _feed(h, [0, 1, 2])
        for _ in range(6):
            h.tick()
        _feed(h, [3])  # in sequence, but its slot was played (concealed) already
        assert h.session.media_stats().packets_in["late"] == 1
        _feed(h, [3])  # again: a duplicate
        _feed(h, [5, 6])  # 4 lost
        before = h.session.media_stats().packets_in
        assert before["lost"] == 1
        # a re-INVITE moves to PCMA: a new jitter buffer, the counts go on
        h.session.update(negotiated(h.peer.pair.rtp_port, PCMA))
        after = h.session.media_stats().packets_in
        assert before["late"] == 3  # 3, 5 and 6: their slots were concealed already
        assert before["duplicate"] == 1
        assert after["late"] == before["late"] and after["duplicate"] == before["duplicate"]
        # a new SSRC takes over (3 in a row): RFC 3550 losses of the old one are kept
        _feed(h, [1000, 1001, 1002, 1004], ssrc=0x0BADCAFE, pt=8)
        media = h.session.media_stats()
        assert media.events["ssrc_changes"] == 1
        assert media.packets_in["lost"] == 2  # 4 of the first SSRC, 1003 of the second
    finally:
        await h.close()


async def test_the_peers_report_on_our_stream_gives_loss_jitter_and_rtt(
    pool: PortPool,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = await harness(pool, negotiated)
    try:
        now_s = 1_700_000_000.0
        monkeypatch.setattr("server.rtp.session.time.time", lambda: now_s)
        block = ReportBlock(
            h.session.ssrc,
            fraction_lost=26,
            cumulative_lost=7,
            highest_seq=1234,
            jitter=40,
            lsr=ntp_middle32(ntp_from_unix(now_s - 0.5)),
            dlsr=dlsr_from_seconds(0.2),
        )
        other = ReportBlock(0x01020304, 255, 99, 1, 800)  # about someone else: ignored
        report = build_compound(
            [RtcpReceiverReport(PEER_SSRC, (other, block)), RtcpSdes.cname(PEER_SSRC, "p")]
        )
        h.session.receive_rtcp(report, ("127.0.0.1", h.peer.pair.rtp_port + 1))
        rtcp = h.session.media_stats().rtcp
        assert rtcp["fraction_lost"] == 26 and rtcp["cumulative_lost"] == 7
        assert rtcp["jitter_ms"] == 5.0  # 40 units of the 8 kHz clock
        assert rtcp["rtt_ms"] == pytest.approx(300.0, abs=0.05)
        assert h.session.media_stats().events["rtcp_in"] == 1
    finally:
        await h.close()


# -- a real SIP call through the application ----------------------------------------------


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.queue.put_nowait(data)


class SipPhone:
    """Just enough of a UAC to place one call over UDP and hang it up."""

    def __init__(self, server_port: int) -> None:
        self.server = ("127.0.0.1", server_port)
        self.call_id = f"media-stats-{secrets.token_hex(4)}"
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.setblocking(False)
        self.rtp_port = self.rtp.getsockname()[1]
        self.to_tag = ""

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, self.inbox = await loop.create_datagram_endpoint(
            _Inbox, local_addr=("127.0.0.1", 0)
        )
        self.port = self.transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        self.transport.close()
        self.rtp.close()

    def _send(self, method: str, cseq: int, body: bytes = b"") -> None:
        to = "<sip:echo@127.0.0.1>" + (f";tag={self.to_tag}" if self.to_tag else "")
        lines = [
            f"{method} sip:echo@127.0.0.1:{self.server[1]} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            "From: <sip:tester@127.0.0.1>;tag=phone1",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:tester@127.0.0.1:{self.port}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body)}")
        self.transport.sendto("\r\n".join(lines).encode() + b"\r\n\r\n" + body, self.server)

    async def final(self, method: str) -> Response:
        """The final response to our ``method`` (provisional ones skipped)."""
        while True:
            message = parse_message(await asyncio.wait_for(self.inbox.queue.get(), 10))
            cseq = message.headers.get("CSeq") or ""
            if isinstance(message, Response) and message.status >= 200 and cseq.endswith(method):
                return message

    async def invite(self) -> int:
        """Place the call; the server's RTP port."""
        sdp = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {self.rtp_port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\n"
        ).encode()
        self._send("INVITE", 1, sdp)
        ok = await self.final("INVITE")
        assert ok.status == 200
        self.to_tag = ok.to_tag or ""
        self._send("ACK", 1)
        return parse_sdp(ok.body).media[0].port

    async def hang_up(self) -> None:
        self._send("BYE", 2)
        assert (await self.final("BYE")).status == 200


async def until(condition: Callable[[], Any], limit_s: float = 10.0) -> None:
    """Poll ``condition`` (a bound, not a timed assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not await condition():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def _metric(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_a_sip_call_shows_its_media_in_calls_and_metrics(
    aiohttp_server: AiohttpServer, aiohttp_client: AiohttpClient
) -> None:
    sip_port = free_udp_range(2)[0]
    low, high = free_udp_range(8)
    config = load_config(
        environ={},
        overrides={
            "agent.name": "echo",
            "sip.host": "127.0.0.1",
            "sip.port": sip_port,
            "sip.transports": ["udp"],
            "sip.rtp_ports": f"{low}-{high}",
        },
    )
    server = await aiohttp_server(build_app(config), host="127.0.0.1")
    client = await aiohttp_client(server)
    phone = SipPhone(sip_port)
    await phone.open()
    try:
        server_rtp = await phone.invite()
        for k in range(30):  # 0.6 s of silence at the pace of a real caller
            data = build_rtp(pt=0, seq=k, ts=k * 160, ssrc=PEER_SSRC, payload=b"\xff" * 160)
            phone.rtp.sendto(data, ("127.0.0.1", server_rtp))
            await asyncio.sleep(0.02)
        summary: dict[str, Any] = {}

        async def all_received() -> bool:
            response = await client.get(f"/calls/{phone.call_id}")
            assert response.status == 200
            summary.update(await response.json())
            return bool(summary["media"]["packets_in"]["received"] == 30)

        await until(all_received)
        media = summary["media"]
        assert media["transport"] == "rtp" and media["codec"] == "PCMU/8000"
        assert media["remote"] == f"127.0.0.1:{phone.rtp_port}"
        assert media["packets_in"]["audio"] + media["packets_in"]["probation"] >= 29
        assert media["packets_in"]["wrong_source"] == media["packets_in"]["malformed"] == 0
        assert media["frames_in"]["played"] > 0
        assert media["packets_out"]["sent"] > 0
        assert media["events"]["latches"] == 1
        assert media["playout"]["target_delay_ms"] >= 20
        assert media["jitter_ms"] is not None
        await phone.hang_up()
        labels = {"transport": "sip", "outcome": "received"}
        text = ""

        async def counted() -> bool:
            nonlocal text
            text = await (await client.get("/metrics")).text()
            return _metric(text, "voxgate_media_packets_in_total", labels) is not None

        await until(counted)
        assert _metric(text, "voxgate_media_packets_in_total", labels) == 30
        played = _metric(
            text, "voxgate_media_frames_in_total", {"transport": "sip", "kind": "played"}
        )
        assert played is not None and played > 0
        events = {"transport": "sip", "event": "latches"}
        assert _metric(text, "voxgate_media_events_total", events) == 1
        assert _metric(text, "voxgate_media_jitter_seconds_count", {"transport": "sip"}) == 1
        ratio_count = "voxgate_media_concealment_ratio_count"
        assert _metric(text, ratio_count, {"transport": "sip"}) == 1
    finally:
        phone.close()


async def test_webrtc_reports_its_receive_buffer_and_frames() -> None:
    from types import SimpleNamespace

    from aiortc.rtp import RtpPacket

    from server.transports.webrtc import _RECEIVER_BUFFER_ATTR, WebRtcTransport
    from server.transports.webrtc_audio import InboundAudio, PassThroughJitterBuffer

    buffer = PassThroughJitterBuffer()
    for seq in (1, 2, 2, 3, 1):  # a duplicate and a late one are dropped
        buffer.add(RtpPacket(payload_type=111, sequence_number=seq, timestamp=seq * 960))
    receiver = SimpleNamespace(**{_RECEIVER_BUFFER_ATTR: buffer})
    video = SimpleNamespace(kind="video", receiver=SimpleNamespace())
    audio = SimpleNamespace(kind="audio", receiver=receiver)
    inbound = InboundAudio()
    inbound.frames, inbound.concealed_frames = 50, 2
    session: Any = SimpleNamespace(
        pc=SimpleNamespace(getTransceivers=lambda: [video, audio]), inbound=inbound
    )
    media = WebRtcTransport(session).media_stats()
    assert media == MediaStats(
        transport="webrtc",
        codec="opus/48000",
        packets_in={"received": 5, "audio": 3, "late": 2},
        frames_in={"played": 52, "silence": 2},
    )
