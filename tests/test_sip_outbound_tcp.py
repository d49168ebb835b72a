"""Our SIP client side over TCP against real peers on 127.0.0.1.

sipp (``-t t1``) plays the trunk: a registrar with digest that makes us refresh at
once, and a callee that challenges, answers and sends audio.  ``voxgate serve``
runs with a ``transport = "tcp"`` trunk; in-process tests drive the user agent and
the transport directly.  A port nothing listens on stands for a dead trunk: the
transport error must come back as a 503 at once, and registration must retry.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from server.loadgen.runner import SpawnedServer, free_port, spawn_server
from server.sip import registration as registration_module
from server.sip.message import Message, Request, StreamFramer, make_response
from server.sip.registration import Registration
from server.sip.transport import Peer, SipTransport
from server.sip.ua import CallControl, UserAgent
from server.sip.uac import Login
from tests.peers.baresip import LoopbackCapture
from tests.rtppcap import write_pcmu_pcap
from tests.test_sip_outbound import post
from tests.test_sip_sipp import SCENARIOS, sipp_binary
from tests.test_sip_sipp_uas import SdpSession, outbound_ua
from tests.udpports import free_udp_range

ALICE = Login("alice", "s3cret")


class SippTcp:
    """One sipp UAS run over TCP (``-t t1``) in ``tmp_path``."""

    def __init__(self, scenario: str, tmp_path: Path, port: int | None = None) -> None:
        self.scenario = scenario
        self.tmp_path = tmp_path
        self.port = port or free_port()
        self.media_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        shutil.copy(SCENARIOS / self.scenario, self.tmp_path / self.scenario)
        self.process = subprocess.Popen(
            [
                sipp_binary(),
                *("-sf", self.scenario, "-m", "1", "-t", "t1"),
                *("-i", "127.0.0.1", "-p", str(self.port)),
                *("-mi", "127.0.0.1", "-mp", str(self.media_port)),
                *("-nostdin", "-timeout", "30s", "-timeout_error", "-trace_err", "-trace_msg"),
            ],
            cwd=self.tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    @property
    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.tmp_path.glob("*.log"))
        )

    def check(self, code: int | None) -> None:
        if code != 0:
            pytest.fail(f"sipp {self.scenario} exited {code}:\n{self.logs()}")

    def wait(self, timeout_s: float = 40) -> None:
        assert self.process is not None
        try:
            code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        self.check(code)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def trunk_config(
    tmp_path: Path, registrar_port: int, *, register: bool, media_timeout_s: float = 30
) -> tuple[Path, tuple[int, int]]:
    rtp = free_udp_range(100)
    config = tmp_path / "voxgate.toml"
    config.write_text(
        '[agent]\nname = "echo"\n'
        f'[sip]\nrtp_ports = "{rtp[0]}-{rtp[1]}"\nmedia_timeout_s = {media_timeout_s}\n'
        "[[sip.trunks]]\n"
        f'name = "carrier"\nregistrar = "127.0.0.1:{registrar_port}"\ntransport = "tcp"\n'
        f'username = "alice"\npassword = "s3cret"\nregister = {str(register).lower()}\n'
    )
    return config, rtp


def http_base(server: SpawnedServer) -> str:
    return "http" + server.url[len("ws") : -len("/twilio")]


# -- voxgate serve ----------------------------------------------------------------------------


def test_a_tcp_trunk_registers_with_digest_and_refreshes(tmp_path: Path) -> None:
    sipp = SippTcp("uas_registrar_tcp.xml", tmp_path)
    sipp.start()
    config, _ = trunk_config(tmp_path, sipp.port, register=True)
    server = spawn_server(0, 200, tmp_path / "server.log", config, sip_port=free_port())
    try:
        sipp.wait()
    finally:
        sipp.stop()
        server.stop()


def test_post_calls_through_a_tcp_trunk_digest_media_and_bye(tmp_path: Path) -> None:
    """The INVITE (and its retry with credentials) goes over TCP; sipp answers and
    plays audio, the echo comes back, and our media timeout's BYE ends the call."""
    if not LoopbackCapture.available():
        pytest.skip("capturing on lo needs CAP_NET_RAW (root)")
    sipp = SippTcp("uas_auth_echo_tcp.xml", tmp_path)
    t = np.arange(8000 * 2) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.int16)
    write_pcmu_pcap(tmp_path / "in_pcmu.pcap", tone, sport=sipp.media_port)
    config, rtp = trunk_config(tmp_path, sipp.port, register=False, media_timeout_s=1.5)
    sipp.start()
    server = spawn_server(0, 200, tmp_path / "server.log", config, sip_port=free_port())
    try:
        with LoopbackCapture(rtp) as capture:
            status, body = post(http_base(server) + "/calls", {"to": "bob", "trunk": "carrier"})
            assert status == 201, body
            sipp.wait()
        to_sipp = [d for d in capture.datagrams if d.destination[1] == sipp.media_port]
        from_sipp = [d for d in capture.datagrams if d.source[1] == sipp.media_port]
        assert len(from_sipp) >= 50, "sipp's audio did not reach voxgate"
        assert len(to_sipp) >= 50, "no RTP came back from voxgate"
        assert {d.source[0] for d in to_sipp} == {"127.0.0.1"}
    finally:
        sipp.stop()
        server.stop()


def test_a_dead_tcp_trunk_fails_fast_and_the_server_keeps_serving(tmp_path: Path) -> None:
    dead = free_port()
    config, _ = trunk_config(tmp_path, dead, register=True)
    log = tmp_path / "server.log"
    server = spawn_server(0, 200, log, config, sip_port=free_port())
    try:
        base = http_base(server)
        status, body = post(base + "/calls", {"to": "bob", "trunk": "carrier"})
        assert status == 201, body  # the INVITE is on its way; it fails with a 503 at once
        status, _ = post(base + "/calls", {"to": "carol", "trunk": "carrier"})
        assert status == 201
        assert server.process.poll() is None
        text = ""
        for _ in range(100):
            text = log.read_text(errors="replace")
            if "registration failed" in text:
                break
            time.sleep(0.05)
        assert (
            f"registration failed (503 Service Unavailable: TCP connect failed: "
            f"Connection refused (127.0.0.1:{dead})); retry in 30 s" in text
        )
        assert "Traceback" not in text
    finally:
        server.stop()


# -- in process ---------------------------------------------------------------------------


@pytest.fixture
async def agent(loop: asyncio.AbstractEventLoop) -> AsyncIterator[tuple[UserAgent, SipTransport]]:
    transport = SipTransport("127.0.0.1", 0, ("udp", "tcp"))
    await transport.start()
    ua = outbound_ua(transport)
    try:
        yield ua, transport
    finally:
        ua.shutdown()
        await transport.close()


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.02)


def register_to(ua: UserAgent, transport: SipTransport, port: int) -> Registration:
    return Registration(
        name="carrier",
        aor="sip:alice@127.0.0.1",
        registrar_uri=f"sip:127.0.0.1:{port}",
        contact=ua.contact,
        via_sent_by=ua.via_host,
        destination=Peer("tcp", ("127.0.0.1", port)),
        send=transport.send,
        scheduler=asyncio.get_running_loop(),
        responses=ua,
        login=ALICE,
        expires_s=300,
    )


async def test_an_outbound_call_over_tcp_reuses_the_connection_for_ack_and_bye(
    agent: tuple[UserAgent, SipTransport], tmp_path: Path
) -> None:
    ua, transport = agent
    sipp = SippTcp("uas_auth_echo_tcp.xml", tmp_path)
    write_pcmu_pcap(tmp_path / "in_pcmu.pcap", np.zeros(1600, np.int16), sport=sipp.media_port)
    sipp.start()
    try:
        sessions: list[SdpSession] = []

        def make(invite: Request, control: CallControl) -> SdpSession:
            sessions.append(SdpSession())
            return sessions[-1]

        await asyncio.sleep(0.3)  # let sipp listen
        handle = ua.invite(
            f"sip:+15551234567@127.0.0.1:{sipp.port}",
            from_uri="sip:alice@127.0.0.1",
            sessions=make,
            login=ALICE,
            destination=Peer("tcp", ("127.0.0.1", sipp.port)),
        )
        await until(lambda: handle.state in ("answered", "failed"))
        assert handle.state == "answered", handle.reason
        media = sessions[0].media
        assert media is not None and media.remote_port == sipp.media_port
        handle.hangup("done")
        await until(lambda: sipp.exit_code is not None)
        sipp.check(sipp.exit_code)
        # INVITE, its retry, both ACKs and the BYE: all on the one connection.
        assert transport.stats.connects == 1 and transport.stats.local_failures == 0
        assert handle.state == "ended" and sessions[0].ended_reason == "done"
    finally:
        sipp.stop()


async def test_registration_over_a_refused_connection_fails_then_retries(
    agent: tuple[UserAgent, SipTransport], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ua, transport = agent
    monkeypatch.setattr(registration_module, "RETRY_MIN_S", 1.0)
    sipp = SippTcp("uas_registrar_tcp.xml", tmp_path)
    registration = register_to(ua, transport, sipp.port)
    registration.start()
    await until(lambda: registration.state == "failed")
    assert registration.state == "failed"
    assert registration.last_error is not None
    assert registration.last_error.startswith("503 Service Unavailable: TCP connect failed")
    sipp.start()  # the registrar comes up: the retry (1 s later) registers
    try:
        await until(lambda: registration.granted_s == 120)
        assert registration.state == "registered", registration.last_error
        await until(lambda: sipp.exit_code is not None)
        sipp.check(sipp.exit_code)
        assert transport.stats.connect_failures == 1
    finally:
        registration.stop()
        sipp.stop()


class ClosingRegistrar:
    """A TCP registrar that grants 1 s and closes the connection after each answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, Request]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        index = self.connections
        framer = StreamFramer()
        while data := await reader.read(65536):
            messages: list[Message] = list(framer.feed(data))
            for message in messages:
                assert isinstance(message, Request)
                self.requests.append((index, message))
                contact = message.headers.get("Contact") or ""
                reply = make_response(
                    message, 200, to_tag="r", headers=(("Contact", f"{contact};expires=1"),)
                )
                writer.write(reply.serialize())
                await writer.drain()
                writer.close()
                return

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def test_a_refresh_reconnects_when_the_registrar_closed_the_connection(
    agent: tuple[UserAgent, SipTransport],
) -> None:
    ua, transport = agent
    registrar = ClosingRegistrar()
    port = await registrar.start()
    registration = register_to(ua, transport, port)
    registration.start()
    try:
        await until(lambda: len(registrar.requests) >= 3)
        assert [index for index, _ in registrar.requests[:3]] == [1, 2, 3]
        cseqs = [r.cseq().number for _, r in registrar.requests[:3]]
        assert cseqs == [1, 2, 3]
        assert len({r.call_id for _, r in registrar.requests}) == 1
        for _, request in registrar.requests:
            assert request.top_via().transport == "TCP"
            assert request.headers.get("Contact") == f"<{ua.contact};transport=tcp>"
        assert registration.state == "registered" and transport.stats.local_failures == 0
    finally:
        registration.stop()
        await registrar.close()
