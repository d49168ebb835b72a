"""Our SIP client side against sipp acting as UAS (callee and registrar), on 127.0.0.1.

The user agent and its UDP transport run in-process; sipp runs one scenario from
``tests/sipp/`` and exits 0 only if every message it expected arrived as
scripted, including credentials that verify (``verifyauth``).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from server.loadgen.runner import free_port
from server.sdp import parse_sdp
from server.sip.message import Request
from server.sip.offeranswer import Negotiated, Negotiation
from server.sip.registration import Registration
from server.sip.transport import Peer, SipTransport
from server.sip.ua import CallControl, InviteSession, Refused, UserAgent
from server.sip.uac import Login
from tests.test_sip_sipp import SCENARIOS, sipp_binary

ALICE = Login("alice", "s3cret")


class SdpSession:
    """An OutboundSession with real offer/answer and no media."""

    def __init__(self) -> None:
        self.negotiation = Negotiation(local_ip="127.0.0.1", rtp_port=free_port(), session_id=7)
        self.media: Negotiated | None = None
        self.ended_reason: str | None = None

    def offer(self) -> bytes:
        return self.negotiation.offer().serialize()

    def accept(self, answer: bytes) -> None:
        self.media = self.negotiation.accept(parse_sdp(answer))

    def confirmed(self, ack_body: bytes) -> None:
        pass

    def update(self, offer: bytes | None) -> bytes:
        return self.offer()

    def ended(self, reason: str) -> None:
        self.ended_reason = reason


class Sipp:
    """One sipp UAS run in ``tmp_path``."""

    def __init__(self, scenario: str, tmp_path: Path) -> None:
        self.scenario = scenario
        self.tmp_path = tmp_path
        self.port = free_port()
        self.media_port = free_port()
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        shutil.copy(SCENARIOS / self.scenario, self.tmp_path / self.scenario)
        self.process = await asyncio.create_subprocess_exec(
            sipp_binary(),
            *("-sf", self.scenario, "-m", "1", "-t", "u1"),
            *("-i", "127.0.0.1", "-p", str(self.port)),
            *("-mi", "127.0.0.1", "-mp", str(self.media_port)),
            *("-nostdin", "-timeout", "20s", "-timeout_error", "-trace_err", "-trace_msg"),
            cwd=self.tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(0.3)  # let it bind (our Timer A/E would cover a miss anyway)

    async def finished(self) -> None:
        assert self.process is not None
        try:
            code = await asyncio.wait_for(self.process.wait(), 25)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            pytest.fail(f"sipp {self.scenario} did not finish:\n{self.logs()}")
        if code != 0:
            pytest.fail(f"sipp {self.scenario} exited {code}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp_path.glob("*.log"))
        )

    def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


def outbound_ua(transport: SipTransport) -> UserAgent:
    """A UA on ``transport`` (started) that places calls and refuses incoming ones (603)."""

    def refuse(request: Request, control: CallControl) -> InviteSession:
        raise Refused(603)

    ua = UserAgent(
        transport.send,
        asyncio.get_running_loop(),
        contact=f"sip:voxgate@127.0.0.1:{transport.port}",
        via_host=f"127.0.0.1:{transport.port}",
        sessions=refuse,
    )
    transport.handler = ua.on_message
    return ua


@pytest.fixture
async def agent(loop: asyncio.AbstractEventLoop) -> AsyncIterator[tuple[UserAgent, SipTransport]]:
    transport = SipTransport("127.0.0.1", 0, ("udp",))
    await transport.start()
    try:
        yield outbound_ua(transport), transport
    finally:
        await transport.close()


async def until(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            return
        await asyncio.sleep(0.02)


async def test_outbound_call_answered_after_a_digest_challenge(
    agent: tuple[UserAgent, SipTransport], tmp_path: Path
) -> None:
    ua, _ = agent
    sipp = Sipp("uas_auth_answer.xml", tmp_path)
    await sipp.start()
    try:
        sessions: list[SdpSession] = []

        def make(invite: Request, control: CallControl) -> SdpSession:
            sessions.append(SdpSession())
            return sessions[-1]

        handle = ua.invite(
            f"sip:+15551234567@127.0.0.1:{sipp.port}",
            from_uri="sip:alice@127.0.0.1",
            sessions=make,
            login=ALICE,
        )
        await until(lambda: handle.state in ("answered", "failed"))
        assert handle.state == "answered", handle.reason
        media = sessions[0].media
        assert media is not None and media.codec.name == "PCMU"
        assert media.remote_port == sipp.media_port
        assert media.telephone_event is not None
        assert ua.calls == 1
        await asyncio.sleep(0.3)
        handle.hangup("done")
        await sipp.finished()
        assert handle.state == "ended" and sessions[0].ended_reason == "done"
    finally:
        sipp.stop()


async def test_registration_with_digest_and_unregister(
    agent: tuple[UserAgent, SipTransport], tmp_path: Path
) -> None:
    ua, transport = agent
    sipp = Sipp("uas_registrar.xml", tmp_path)
    registration = Registration(
        name="sipp",
        aor="sip:alice@127.0.0.1",
        registrar_uri=f"sip:127.0.0.1:{sipp.port}",
        contact=ua.contact,
        via_sent_by=ua.via_host,
        destination=Peer("udp", ("127.0.0.1", sipp.port)),
        send=transport.send,
        scheduler=asyncio.get_running_loop(),
        responses=ua,
        login=ALICE,
        expires_s=300,
    )
    await sipp.start()
    try:
        registration.start()
        await until(lambda: registration.state in ("registered", "failed"))
        assert registration.state == "registered", registration.last_error
        assert registration.granted_s == 120
        registration.stop()
        await until(lambda: registration.state == "unregistered")
        assert registration.state == "unregistered" and registration.last_error is None
        await sipp.finished()
    finally:
        if registration.state != "unregistered":
            registration.stop()
        sipp.stop()
