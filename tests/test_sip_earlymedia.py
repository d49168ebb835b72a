"""Early media on calls we place: the SDP of a 18x is the answer for now (RFC 3264,
RFC 6337 §3.1), the RTP session starts, the agent waits for the 2xx.

Through the user agent on a manual clock (what the session is told), through
:class:`~server.transports.sip.SipCall` (what media and call it runs), and end to
end: ``POST /calls``'s dialer in an in-process server dialling sipp, which
answers 183 with SDP and RTP, then 200 (or 486).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.pytest_plugin import AiohttpServer
from hypothesis import given, settings
from hypothesis import strategies as st

from server.app import CallRegistry, build_app
from server.calls_route import DIALER_KEY, CallRequest, Dialer
from server.config import load_config
from server.loadgen.runner import free_port
from server.metrics import Metrics
from server.rtp.portpool import PortPool
from server.sip.message import make_request
from server.sip.ua import CallControl, MediaRefused
from server.transports.sip import SipCall, SipMedia
from tests import speech
from tests.mutations import mutated_lines
from tests.rtppcap import write_pcmu_pcap
from tests.test_sip_sipp_uas import Sipp, until
from tests.test_sip_uac import ANSWER, Uac, ok_headers
from tests.udpports import free_udp_range

G729_ANSWER = ANSWER.replace(b"RTP/AVP 0", b"RTP/AVP 18") + b"a=rtpmap:18 G729/8000\r\n"
OTHER_ANSWER = ANSWER.replace(b"6000", b"6002")


# -- the user agent ------------------------------------------------------------------------


def test_183_with_sdp_is_early_media_and_the_200_answer_follows() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 100)
    u.answer(invite, 180)  # no SDP: only ringing
    u.answer(invite, 183, body=ANSWER)
    assert u.sessions[0].log == [("offer", None), ("early", ANSWER)]
    assert handle.state == "proceeding" and handle.early_answer == ANSWER
    u.answer(invite, 183, body=ANSWER)  # the same answer again: nothing new
    assert u.ua.stats.early_media == 1
    u.answer(invite, 200, headers=ok_headers(), body=ANSWER)
    assert u.sessions[0].log == [("offer", None), ("early", ANSWER), ("accept", ANSWER)]
    assert handle.state == "answered" and len(u.sent("ACK")) == 1


def test_a_later_18x_with_another_answer_replaces_the_early_one() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 183, body=ANSWER)
    u.answer(invite, 183, body=OTHER_ANSWER)
    u.answer(invite, 200, headers=ok_headers(), body=OTHER_ANSWER)
    assert [entry for entry in u.sessions[0].log if entry[0] != "offer"] == [
        ("early", ANSWER),
        ("early", OTHER_ANSWER),
        ("accept", OTHER_ANSWER),
    ]
    assert handle.state == "answered"


def test_a_2xx_without_sdp_keeps_the_early_answer() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 183, body=ANSWER)
    u.answer(invite, 200, headers=ok_headers())
    assert u.sessions[0].log[-1] == ("accept", ANSWER)
    assert handle.state == "answered" and u.sent("BYE") == []


def test_an_unusable_early_answer_is_ignored_and_the_2xx_decides() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 183, body=G729_ANSWER)
    assert handle.early_answer == b"" and u.ua.stats.early_media == 0
    u.answer(invite, 200, headers=ok_headers())  # no answer anywhere: hung up
    (bye,) = u.sent("BYE")
    assert 'text="no_answer_sdp"' in (bye.headers.get("Reason") or "")


def test_a_failure_after_early_media_ends_the_session() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 183, body=ANSWER)
    u.answer(invite, 486)
    (ack,) = u.sent("ACK")
    assert ack.branch == invite.branch
    assert handle.state == "failed" and handle.status == 486
    assert u.sessions[0].log[-2:] == [("early", ANSWER), ("ended", "failed_486")]


def test_no_early_media_once_we_cancel() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    handle.hangup("user")
    u.answer(invite, 183, body=ANSWER)
    assert len(u.sent("CANCEL")) == 1
    assert [entry[0] for entry in u.sessions[0].log] == ["offer"]


# -- SipCall ---------------------------------------------------------------------------------


class Control:
    def __init__(self) -> None:
        self.hangups: list[str] = []

    def hangup(self, reason: str) -> None:
        self.hangups.append(reason)


def pcmu_answer(port: int = 6000) -> bytes:
    """A callee's answer taking PCMU (which our offers always carry), RTP to ``port``."""
    head = b"v=0\r\no=callee 7 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    return head + b"m=audio %d RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n" % port


class Calls:
    """SipCalls for calls we place, on real RTP ports, without SIP."""

    def __init__(self) -> None:
        config = load_config(environ={}, overrides={"agent.name": "echo", "sip.port": 0})
        self.registry = CallRegistry(config, Metrics())
        low, high = free_udp_range(10)
        self.pool = PortPool("127.0.0.1", low, high)
        self.media = SipMedia()
        self.invite = make_request(
            "INVITE",
            "sip:bob@127.0.0.1:5080",
            call_id="early@test",
            from_addr="<sip:voxgate@127.0.0.1>;tag=us",
            to_addr="<sip:bob@127.0.0.1:5080>",
            cseq=1,
            via="SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKe1",
        )

    def make(self, control: CallControl) -> SipCall:
        return SipCall(
            self.invite,
            control,
            registry=self.registry,
            config=self.registry.config.sip,
            pool=self.pool,
            media=self.media,
            agent=None,
        )


async def test_sip_call_runs_early_media_without_the_call() -> None:
    calls = Calls()
    control = Control()
    sip_call = calls.make(control)
    assert b"PCMU/8000" in sip_call.offer()
    sip_call.early(pcmu_answer())
    rtp = sip_call.rtp
    assert rtp is not None and sip_call.call is None and calls.registry.calls == {}
    assert rtp.media.on_hold and rtp.media.remote_port == 6000  # no media timeout yet
    assert sip_call in calls.media.calls and sip_call.early_media_packets == 0
    with pytest.raises(MediaRefused):
        sip_call.early(b"v=0\r\nnot sdp")
    assert sip_call.rtp is rtp and rtp.media.remote_port == 6000  # still the first answer
    sip_call.early(pcmu_answer(6002))
    assert sip_call.rtp is rtp and rtp.media.remote_port == 6002 and rtp.media.on_hold
    sip_call.accept(pcmu_answer(6002))
    assert sip_call.rtp is rtp and not rtp.media.on_hold
    assert sip_call.call is not None and list(calls.registry.by_id) == ["early@test"]
    sip_call.ended("done")
    assert rtp.closed and calls.pool.in_use == 0 and calls.registry.calls == {}
    assert control.hangups == []


async def test_sip_call_failure_after_early_media_frees_the_ports() -> None:
    calls = Calls()
    sip_call = calls.make(Control())
    sip_call.offer()
    sip_call.early(pcmu_answer())
    rtp = sip_call.rtp
    assert rtp is not None and calls.pool.in_use == 1
    sip_call.ended("failed_486")
    assert rtp.closed and sip_call.rtp is None and calls.pool.in_use == 0
    assert sip_call.call is None and calls.registry.calls == {}


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\r\n")


@settings(max_examples=60, deadline=None)
@given(
    lines=mutated_lines(
        _lines(pcmu_answer()),
        piece=st.binary(min_size=1, max_size=3),
        new_line=st.sampled_from(
            [b"m=audio 0 RTP/AVP 0", b"c=IN IP4 0.0.0.0", b"a=sendonly", b"m=video 9 RTP/AVP 96"]
        )
        | st.binary(max_size=40),
        max_rounds=4,
    )
)
def test_any_early_answer_is_taken_or_refused(lines: list[bytes]) -> None:
    """A mangled 183 answer either starts early media or raises MediaRefused: nothing else."""

    async def check() -> None:
        calls = Calls()
        sip_call = calls.make(Control())
        sip_call.offer()
        try:
            sip_call.early(b"\r\n".join(lines))
        except MediaRefused:
            assert sip_call.rtp is None
        else:
            assert sip_call.rtp is not None and sip_call.call is None
        sip_call.ended("done")
        assert calls.pool.in_use == 0

    asyncio.run(check())


# -- end to end: the server's dialer against sipp as the callee --------------------------------


@pytest.fixture
async def server(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[Dialer, CallRegistry]]:
    low, high = free_udp_range(20)
    config = load_config(
        environ={},
        overrides={
            "agent.name": "echo",
            "sip.port": free_port(),
            "sip.transports": ["udp"],
            "sip.rtp_ports": f"{low}-{high}",
        },
    )
    app = build_app(config)
    await aiohttp_server(app, host="127.0.0.1")
    yield app[DIALER_KEY], app["registry"]


def write_pcaps(tmp_path: Path) -> None:
    """tone.pcap: 1.5 s of a 425 Hz tone (ringback); early.pcap: that tone, then
    speech for the agent, as one stream (one SSRC, running sequence numbers) that
    goes on across the 200 as a real callee's does."""
    t = np.arange(12000) / 8000
    tone = (6000 * np.sin(2 * np.pi * 425 * t)).astype(np.int16)
    write_pcmu_pcap(tmp_path / "tone.pcap", tone)
    utterance = speech.speech("hello this is the answered call", 8000)
    gap = np.zeros(8000, np.int16)
    write_pcmu_pcap(tmp_path / "early.pcap", np.concatenate([tone, gap, utterance, gap]))


async def dial(dialer: Dialer, sipp: Sipp) -> Any:
    return await dialer.dial(CallRequest(to=f"sip:bob@127.0.0.1:{sipp.port}"))


async def test_early_rtp_is_latched_before_the_200_and_the_call_then_runs(
    server: tuple[Dialer, CallRegistry], tmp_path: Path
) -> None:
    dialer, registry = server
    write_pcaps(tmp_path)
    sipp = Sipp("uas_early_media.xml", tmp_path)
    await sipp.start()
    try:
        handle = await dial(dialer, sipp)
        sip_call = handle.session
        assert isinstance(sip_call, SipCall)
        await until(lambda: sip_call.rtp is not None and sip_call.rtp.stats.audio_in >= 25)
        rtp = sip_call.rtp
        assert rtp is not None and rtp.stats.audio_in >= 25, handle.state
        # Before the 200: media runs, the call (and its agent) does not.
        assert handle.state == "proceeding" and sip_call.call is None
        assert handle.call_id not in registry.by_id
        assert rtp.latched == ("127.0.0.1", sipp.media_port) and rtp.stats.latches == 1
        assert rtp.stats.frames_out == 0  # only silence leaves: nobody speaks yet
        await until(lambda: handle.state != "proceeding")
        assert handle.state == "answered", handle.reason
        assert sip_call.early_media_packets is not None and sip_call.early_media_packets >= 50
        assert sip_call.rtp is rtp and not rtp.media.on_hold  # the same stream goes on
        assert handle.call_id in registry.by_id
        early = sip_call.early_media_packets
        # The speech after the 200 reaches the echo agent, which answers it.
        await until(lambda: rtp.stats.frames_out > 0)
        assert rtp.stats.audio_in >= early + 50 and rtp.stats.frames_out > 0
        assert rtp.stats.latches == 1 and rtp.stats.wrong_source == 0
        handle.hangup("done")
        await sipp.finished()
        assert handle.state == "ended" and rtp.closed
        assert handle.call_id not in registry.by_id
    finally:
        sipp.stop()


async def test_early_media_then_486_tears_the_media_down(
    server: tuple[Dialer, CallRegistry], tmp_path: Path
) -> None:
    dialer, registry = server
    write_pcaps(tmp_path)
    sipp = Sipp("uas_early_busy.xml", tmp_path)
    await sipp.start()
    try:
        handle = await dial(dialer, sipp)
        sip_call = handle.session
        assert isinstance(sip_call, SipCall)
        await until(lambda: sip_call.rtp is not None and sip_call.rtp.stats.audio_in >= 25)
        rtp = sip_call.rtp
        assert rtp is not None and rtp.latched == ("127.0.0.1", sipp.media_port)
        await until(lambda: handle.state == "failed")
        assert handle.state == "failed" and handle.status == 486
        assert rtp.closed and sip_call.rtp is None and sip_call.call is None
        assert registry.calls == {}
        await sipp.finished()  # our ACK of the 486 arrived
    finally:
        sipp.stop()
