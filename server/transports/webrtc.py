"""The WebRTC front door: one aiortc ``RTCPeerConnection`` per call, joined to the call model.

Signalling is the HTTP routes' job (:mod:`server.webrtc_route`); this module
checks an offer (:func:`check_offer`), answers it and runs the call:

* audio in: aiortc decodes Opus; :class:`~server.transports.webrtc_audio.InboundAudio`
  turns each frame into the call's 8 kHz mu-law (the receive buffer passes
  packets on as they arrive, see ``webrtc.receive_prefetch_frames``);
* audio out: the call's frames go to an :class:`~server.transports.webrtc_audio.OutboundTrack`
  that aiortc encodes to Opus;
* the ``voxgate`` data channel carries the call's events to the page and the
  page's commands in (:mod:`server.transports.datachannel`).

ICE: the server gathers host candidates on ``webrtc.ice_addresses`` (default:
every interface, or 127.0.0.1 on a host with no other) plus whatever the
configured STUN/TURN servers give; with only loopback addresses it also ignores
remote candidates and connectivity checks from other addresses, so a call on
loopback stays on loopback.  A call not connected within
``webrtc.connect_timeout_s``, or whose connection fails or closes, is torn down
with every task it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from typing import Any, Final

import aioice.ice
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp

from server.call import Call
from server.callevents import CallEvent
from server.config import WebRtcSection
from server.sdp import SdpError, SessionDescription, parse_sdp
from server.transport import AudioIn, CallStarted, Dtmf, Hangup, MarkPlayed, MediaStats, TextIn
from server.transports import datachannel
from server.transports.webrtc_audio import (
    CALL_RATE_HZ,
    InboundAudio,
    OutboundAudio,
    OutboundTrack,
    PassThroughJitterBuffer,
)

log = logging.getLogger(__name__)

CHANNEL_LABEL: Final = "voxgate"
MAX_PENDING_EVENTS: Final = 200
"""Events kept for a data channel that is not open yet; older ones are dropped."""
_RECEIVER_BUFFER_ATTR: Final = "_RTCRtpReceiver__jitter_buffer"


class OfferError(ValueError):
    """An offer voxgate cannot answer; ``str()`` is the reason (a 400 body)."""


# -- offers -------------------------------------------------------------------------------


def check_offer(sdp: str, max_bytes: int) -> SessionDescription:
    """Parse an offer and check that voxgate can answer it.

    It must carry an audio section offering Opus at 48 kHz, an ``a=mid`` in every
    section, ICE credentials and a DTLS fingerprint.  Raises :class:`OfferError`
    naming what is missing.
    """
    if len(sdp) > max_bytes:
        raise OfferError(f"offer too large ({len(sdp)} bytes > {max_bytes})")
    try:
        description = parse_sdp(sdp, max_bytes)
    except SdpError as exc:
        raise OfferError(f"malformed SDP: {exc}") from None
    audio = [m for m in description.media if m.kind == "audio" and m.port != 0]
    if not audio:
        raise OfferError("the offer has no audio section")
    media = audio[0]
    if not any(r.is_codec("opus") and r.clock_rate_hz == 48000 for r in media.rtpmaps.values()):
        offered = sorted({f"{r.encoding}/{r.clock_rate_hz}" for r in media.rtpmaps.values()})
        raise OfferError(
            "no supported audio codec: voxgate takes opus/48000, the offer has "
            + (", ".join(offered) or "none")
        )
    for section in description.media:
        if section.attribute("mid") is None:
            raise OfferError(f"the offer's {section.kind} section has no a=mid (JSEP needs one)")
    for name, what in (("ice-ufrag", "ICE credentials"), ("fingerprint", "a DTLS fingerprint")):
        if media.attribute(name) is None and description.attribute(name) is None:
            raise OfferError(f"the offer has no {what} (a={name})")
    if "ice-pwd" not in {k for k, _ in media.attributes + description.attributes}:
        raise OfferError("the offer has no ICE credentials (a=ice-pwd)")
    return description


def without_candidates_outside(sdp: str, allowed: Callable[[str], bool]) -> str:
    """``sdp`` minus the ``a=candidate`` lines whose address ``allowed`` refuses."""
    kept = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            fields = line.split()
            if len(fields) > 4 and not allowed(fields[4]):
                continue
        kept.append(line)
    return "\r\n".join(kept) + "\r\n"


# -- ICE addresses -------------------------------------------------------------------------


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name (mDNS .local): not loopback


class IcePolicy:
    """Which local addresses the server gathers on and which remote ones it accepts."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        self.addresses = addresses
        self.loopback_only = bool(addresses) and all(is_loopback(a) for a in addresses)

    def host_addresses(self, use_ipv4: bool, use_ipv6: bool) -> list[str]:
        """aioice's ``get_host_addresses``: the configured ones, or every interface."""
        if self.addresses:
            return [
                a
                for a in self.addresses
                if (use_ipv4 and ipaddress.ip_address(a).version == 4)
                or (use_ipv6 and ipaddress.ip_address(a).version == 6)
            ]
        found = _interface_addresses(use_ipv4, use_ipv6)
        return found or (["127.0.0.1"] if use_ipv4 else [])

    def accepts(self, address: str) -> bool:
        """Whether a remote candidate or check from ``address`` may be used."""
        return not self.loopback_only or is_loopback(address)


_interface_addresses = aioice.ice.get_host_addresses


def install_ice_policy(policy: IcePolicy) -> None:
    """Make aioice gather host candidates per ``policy`` (process-wide).

    aioice skips loopback and offers no setting for its host addresses; its
    module function is the one place to decide them.
    """
    aioice.ice.get_host_addresses = policy.host_addresses


def _guard_checks(pc: RTCPeerConnection, policy: IcePolicy) -> None:
    """Ignore connectivity checks from addresses ``policy`` refuses (loopback-only)."""
    if not policy.loopback_only:
        return
    dtls = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    connections: list[Any] = []
    for transport in dtls:
        connection = getattr(transport.transport.iceGatherer, "_connection", None)
        if connection is None:
            log.warning("aiortc changed: cannot keep ICE checks on loopback")
            return
        if all(connection is not c for c in connections):
            connections.append(connection)
    for connection in connections:
        received = connection.request_received

        def guarded(
            message: Any, addr: tuple[str, int], protocol: Any, inner: Any = received
        ) -> None:
            if policy.accepts(addr[0]):
                inner(message, addr, protocol)

        connection.request_received = guarded


def _shorten_receive_buffer(pc: RTCPeerConnection, prefetch: int) -> None:
    """Replace aiortc's audio receive buffer (4 packets held) per ``prefetch``."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if transceiver.kind != "audio" or not hasattr(receiver, _RECEIVER_BUFFER_ATTR):
            if transceiver.kind == "audio":
                log.warning("aiortc changed: cannot shorten its audio receive buffer")
            continue
        buffer = PassThroughJitterBuffer() if prefetch == 0 else JitterBuffer(16, prefetch)
        setattr(receiver, _RECEIVER_BUFFER_ATTR, buffer)


def ice_servers(config: WebRtcSection) -> list[RTCIceServer]:
    return [
        RTCIceServer(urls=list(s.urls), username=s.username, credential=s.credential)
        for s in config.ice_servers
    ]


# -- one call ------------------------------------------------------------------------------


CallFactory = Callable[[str, "WebRtcTransport"], Call]
"""Builds the call for ``call_id`` on ``transport`` and registers it."""


class WebRtcTransport:
    """:class:`server.transport.Transport` and call listener of one peer connection."""

    def __init__(self, session: WebRtcSession, packet_ms: int = 20) -> None:
        self._session = session
        self._out = OutboundAudio()
        self.track = OutboundTrack(self._mark_reached, packet_ms=packet_ms)

    def send_audio(self, frame: bytes) -> None:
        self.track.push(self._out.convert(frame))

    def clear(self) -> None:
        self.track.clear()

    def mark(self, name: str) -> None:
        self.track.mark(name)

    def send_dtmf(self, digits: str) -> bool:
        return False  # the page has no keypad to play to

    def hangup(self) -> None:
        """The call hangs up: close the connection (the call ends itself)."""
        self._session.close("local_hangup", end_call=False)

    def media_stats(self) -> MediaStats | None:
        """Inbound counts (the optional transport hook): packets through our receive
        buffer (``late``: dropped as late or duplicate) and 20 ms frames handed to the
        call (``silence``: filled in for lost packets).  aiortc's own layers are not seen."""
        session = self._session
        packets: dict[str, int] = {}
        for transceiver in session.pc.getTransceivers():
            buffer = getattr(transceiver.receiver, _RECEIVER_BUFFER_ATTR, None)
            if transceiver.kind == "audio" and isinstance(buffer, PassThroughJitterBuffer):
                received = buffer.passed + buffer.dropped
                packets = {"received": received, "audio": buffer.passed, "late": buffer.dropped}
        inbound = session.inbound
        frames = {
            "played": inbound.frames + inbound.concealed_frames,
            "silence": inbound.concealed_frames,
        }
        return MediaStats(
            transport="webrtc", codec="opus/48000", packets_in=packets, frames_in=frames
        )

    def on_call_event(self, event: CallEvent) -> None:
        self._session.send_event(datachannel.encode_event(event))

    def _mark_reached(self, name: str, played: bool) -> None:
        call = self._session.call
        if call is not None:
            call.on_event(MarkPlayed(name, played))


class WebRtcSession:
    """One browser call: its peer connection, call, data channel and tasks.

    ``on_closed(session, reason)`` is called once, after everything stopped.
    """

    def __init__(
        self,
        call_id: str,
        config: WebRtcSection,
        policy: IcePolicy,
        make_call: CallFactory,
        on_closed: Callable[[WebRtcSession, str], None],
    ) -> None:
        self.call_id = call_id
        self._config = config
        self._policy = policy
        self._make_call = make_call
        self._on_closed = on_closed
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=ice_servers(config)))
        self.transport = WebRtcTransport(self, config.send_packet_ms)
        self.call: Call | None = None
        self.inbound = InboundAudio()
        self.channel: RTCDataChannel | None = None
        self._pending: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._timeout: asyncio.TimerHandle | None = None
        self._started = False
        self.closed = False
        self.end_reason: str | None = None
        self.done = asyncio.Event()
        """Set once the peer connection is closed and every task has ended."""

    async def answer(self, offer_sdp: str) -> str:
        """Apply the offer and return the answer SDP; raises :class:`OfferError`."""
        pc = self.pc
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_datachannel)
        pc.on("connectionstatechange", self._on_connection_state)
        if self._policy.loopback_only:
            offer_sdp = without_candidates_outside(offer_sdp, self._policy.accepts)
        # Our transceiver first, Opus only: aiortc takes it for the offer's audio
        # section, and its codec preferences decide the answer.
        ours = pc.addTransceiver(self.transport.track, direction="sendrecv")
        opus = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.name.lower() == "opus"]
        ours.setCodecPreferences(opus)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except Exception as exc:  # aiortc raises many kinds for offers it cannot take
            raise OfferError(f"the offer was refused: {exc or type(exc).__name__}") from None
        audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
        if not audio or audio[0] is not ours:
            raise OfferError("the offer has no usable audio section")
        for extra in audio[1:]:
            extra.direction = "inactive"
        _shorten_receive_buffer(pc, self._config.receive_prefetch_frames)
        try:
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            raise OfferError(f"no answer to this offer: {exc or type(exc).__name__}") from None
        _guard_checks(pc, self._policy)
        self.call = self._make_call(self.call_id, self.transport)
        self.call.listener = self.transport
        loop = asyncio.get_running_loop()
        self._timeout = loop.call_later(self._config.connect_timeout_s, self._connect_timed_out)
        return pc.localDescription.sdp

    async def add_candidates(self, fragment: str) -> None:
        """Apply a trickle-ICE SDP fragment (RFC 8840): its candidates and end-of-candidates."""
        mid: str | None = None
        for raw in fragment.splitlines():
            line = raw.strip()
            if line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=candidate:"):
                try:
                    candidate = candidate_from_sdp(line[len("a=") :])
                except (ValueError, IndexError, AssertionError) as exc:
                    raise OfferError(f"bad candidate line: {exc or 'unparseable'}") from None
                if not self._policy.accepts(candidate.ip):
                    continue
                candidate.sdpMid = mid
                if mid is None:
                    candidate.sdpMLineIndex = 0
                await self.pc.addIceCandidate(candidate)
            elif line == "a=end-of-candidates":
                await self.pc.addIceCandidate(None)

    # -- events from aiortc ------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self.closed:
            self._spawn(self._read_audio(track), "webrtc-audio-in")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL_LABEL:
            log.info("call %s: ignoring data channel %r", self.call_id, channel.label)
            return
        self.channel = channel
        channel.on("open", self._on_channel_open)
        channel.on("message", self._on_message)
        if channel.readyState == "open":
            self._on_channel_open()

    def _on_channel_open(self) -> None:
        channel = self.channel
        if channel is None or self.closed:
            return
        channel.send(datachannel.encode_hello(self.call_id))
        pending, self._pending = self._pending, []
        for message in pending:
            channel.send(message)

    def _on_message(self, data: str | bytes) -> None:
        call = self.call
        if call is None or self.closed:
            return
        try:
            command = datachannel.decode_command(data)
        except datachannel.CommandError as exc:
            log.info("call %s: data channel message refused: %s", self.call_id, exc)
            self.send_event(datachannel.encode_error(str(exc)))
            return
        if isinstance(command, datachannel.TextCommand):
            call.on_event(TextIn(command.text))
        elif isinstance(command, datachannel.DtmfCommand):
            for digit in command.digits:
                call.on_event(Dtmf(digit))
        else:
            self.close("remote_hangup")

    async def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("call %s: connection %s", self.call_id, state)
        if state == "connected" and not self._started and self.call is not None:
            self._started = True
            if self._timeout is not None:
                self._timeout.cancel()
            self.call.on_event(
                CallStarted(self.call_id, self.call_id, "opus", 48000, {"transport": "webrtc"})
            )
        elif state in ("failed", "closed"):
            self.close(f"connection_{state}")

    def _connect_timed_out(self) -> None:
        self._timeout = None
        if not self._started:
            log.warning(
                "call %s: not connected after %.1f s (ICE/DTLS); tearing down",
                self.call_id,
                self._config.connect_timeout_s,
            )
            self.close("connect_timeout")

    async def _read_audio(self, track: MediaStreamTrack) -> None:
        inbound = self.inbound
        while not self.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                self.close("remote_ended")
                return
            call = self.call
            if call is None or not self._started:
                continue
            pcm = frame.to_ndarray()  # type: ignore[union-attr]
            channels = len(frame.layout.channels)  # type: ignore[union-attr]
            ulaw = inbound.convert(pcm, channels, frame.pts)
            call.on_event(AudioIn(ulaw, "pcmu", CALL_RATE_HZ, None))

    # -- outbound ----------------------------------------------------------------------

    def send_event(self, message: str) -> None:
        """Send a data-channel message now, or once the channel opens."""
        channel = self.channel
        if channel is not None and channel.readyState == "open":
            channel.send(message)
            return
        self._pending.append(message)
        if len(self._pending) > MAX_PENDING_EVENTS:
            del self._pending[0]

    # -- teardown ----------------------------------------------------------------------

    def close(self, reason: str, *, end_call: bool = True) -> None:
        """End the call and close the connection (idempotent); :attr:`done` is set after."""
        if self.closed:
            return
        self.closed = True
        self.end_reason = reason
        if self._timeout is not None:
            self._timeout.cancel()
            self._timeout = None
        if self.call is not None and end_call:
            self.call.on_event(Hangup(reason))  # the bye goes out while the channel is open
        self.transport.track.stop()
        asyncio.get_running_loop().create_task(self._teardown(reason), name="webrtc-teardown")

    async def _teardown(self, reason: str) -> None:
        track = self.transport.track
        log.info(
            "call %s: webrtc closed (%s): frames in %d (%d concealed), out %d (%d silence)",
            self.call_id,
            reason,
            self.inbound.frames,
            self.inbound.concealed_frames,
            track.sent_frames,
            track.silence_frames,
        )
        current = asyncio.current_task()
        with contextlib.suppress(Exception):
            await self.pc.close()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._on_closed(self, reason)
        self.done.set()

    def _spawn(self, work: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
