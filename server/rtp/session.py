"""One SIP call's RTP media session: a UDP socket pair, latching, audio both ways, DTMF, RTCP.

:class:`RtpSession` joins the per-call pieces: packets (:mod:`server.rtp.packet`),
RFC 3550 sequence statistics (:mod:`server.rtp.seqtrack`), RTCP reports
(:mod:`server.rtp.rtcp`), RFC 4733 events (:mod:`server.rtp.dtmf`) and the codec
pipelines (:mod:`server.rtp.media`).  The call model sees 20 ms frames of 8 kHz
mu-law both ways and DTMF digits.

Receiving (per datagram, in the protocol callback; nothing here raises on packet
contents, every refusal is counted in :attr:`RtpSession.stats`):

* not RTP or malformed -> ``malformed``; a payload type other than the
  negotiated codec and telephone-event -> ``unknown_pt``.
* Symmetric RTP with safe latching: the first source (address and port, port
  not 0) whose packets pass RFC 3550 probation (2 in sequence) is latched, and
  RTP and RTCP go there from then on instead of the SDP address.  Packets from
  any other source are ignored (``wrong_source``) until the latched one has been
  silent for ``relatch_after_s``; source port 0 is never taken (``port_zero``).
  A re-INVITE that moves the peer's address lifts the latch.
* A new SSRC from the latched source replaces the current one after
  :data:`SSRC_SWITCH_PACKETS` of its packets in a row, in sequence (an RFC 3550
  reset: new statistics, the jitter buffer emptied); until then, or when two SSRCs
  interleave, its packets are ignored (``wrong_ssrc``).
* telephone-event packets go to :class:`~server.rtp.dtmf.DtmfReceiver`:
  ``on_dtmf(digit)`` once per key press, on its first packet.  Audio packets are
  decoded into the jitter buffer.

Ticking: :meth:`RtpSession.on_tick` before the call's own tick (one 20 ms frame
out of the jitter buffer -> ``on_audio``; media timeout; RTCP every
``rtcp_interval_s``, randomized x0.5-1.5), :meth:`RtpSession.end_tick` after it.

Sending: at most one 20 ms frame leaves per tick, so the stream is paced by the
media clock whatever the call does.  The first :meth:`RtpSession.send_frame` of a
tick goes out at once; later ones that tick wait in a short queue (up to
:data:`MAX_QUEUED_FRAMES`, oldest dropped) and leave on the following ticks; a
tick with nothing to send sends a frame of silence from ``end_tick``, so the
stream stays continuous (one SSRC, contiguous sequence numbers).  While not
sending (hold), nothing goes out, the timestamp keeps running with the clock,
and the first packet after the pause carries the marker bit.  Digits from
:meth:`RtpSession.send_digits` go as telephone-events on the same SSRC and
sequence space, alongside the audio.

Time: arrival times for the jitter buffer are put on the media clock's basis by
the offset between ``now_ms`` and the session's clock (the loop's, or the
``clock`` a replay passes) seen at the ticks; audio that arrives before the
first tick is not buffered (``early``).

Where RTCP goes (:attr:`RtpSession.rtcp_destination`): the source of the
peer's own RTCP once it arrived; else, with RTP latched, the latched host: at
the ``a=rtcp`` port (RFC 3605; RTP + 1 without it) when the SDP addresses are
that host (no NAT between us), at the latched RTP port + 1 when they are not
(a NAT maps RTCP to a port we cannot know: the next one is the usual guess),
at the latched RTP port itself under rtcp-mux; before latching, the SDP's
RTCP address and port.

Statistics: :attr:`RtpSession.stats` are plain counters bumped on the packet
path; :meth:`RtpSession.media_stats` gathers them with the jitter buffer's and
the sequence tracker's into a :class:`~server.transport.MediaStats` (it
allocates: for ``GET /calls/{id}`` and the end of the call, never per packet).

Sockets: the session reads through asyncio datagram endpoints on ``pair.rtp``
(and ``pair.rtcp`` unless rtcp-mux) and sends with the sockets' own ``sendto``
(never buffered: a packet the kernel refuses is counted in ``send_errors``).
:meth:`RtpSession.close` closes the endpoints, which closes the sockets; the
:class:`~server.rtp.portpool.PortPool` then releases the ports (its close of the
already-closed sockets does nothing).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from engine.jitter import FrameKind, JitterStats
from server.rtp.dtmf import DtmfEdge, DtmfError, DtmfReceiver, DtmfSender
from server.rtp.media import (
    ULAW_SILENCE_FRAME,
    WIRE_FRAME_BYTES,
    InboundAudio,
    OutboundAudio,
)
from server.rtp.packet import RTP_HEADER_SIZE, RtpError, RtpHeader, is_rtcp, parse_rtp
from server.rtp.packet import write_rtp_header_into as _write_header
from server.rtp.portpool import PortPair
from server.rtp.rtcp import (
    ReportBlock,
    RtcpBye,
    RtcpError,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    build_compound,
    dlsr_from_seconds,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    rtt_seconds,
)
from server.rtp.seqtrack import SeqStatus, SeqTracker
from server.sip.offeranswer import Negotiated
from server.transport import MediaStats

__all__ = [
    "MAX_QUEUED_FRAMES",
    "RTCP_INTERVAL_S",
    "SSRC_SWITCH_PACKETS",
    "RtpSession",
    "RtpStats",
]

log = logging.getLogger(__name__)

Address: TypeAlias = tuple[Any, ...]
"""A socket address as asyncio reports it: ``(host, port)``, or 4 fields for IPv6."""

_SendTo: TypeAlias = Callable[[Any, Address], int]
"""A socket's ``sendto(data, address)``."""

RTCP_INTERVAL_S: Final = 5.0
"""Mean interval between our RTCP reports (RFC 3550 §6.2 minimum), seconds."""
SSRC_SWITCH_PACKETS: Final = 3
"""Packets of a new SSRC in a row (none of the current one between) before it takes over."""
MAX_QUEUED_FRAMES: Final = 10
"""Outbound 20 ms frames waiting for their tick (200 ms); older ones are dropped."""
_BYE_REASON_MAX: Final = 100


@dataclass(slots=True)
class RtpStats:
    """Counters of one session (packets unless named otherwise)."""

    packets_in: int = 0
    """Datagrams received on the RTP socket (all of them)."""
    malformed: int = 0
    """Not RTP (bad version, truncated, reserved payload type ...)."""
    unknown_pt: int = 0
    """A payload type that was not negotiated."""
    port_zero: int = 0
    """From source port 0 (never latched)."""
    wrong_source: int = 0
    """From another address than the latched one."""
    wrong_ssrc: int = 0
    """Another SSRC than the current one, not (yet) taken over."""
    probation: int = 0
    """Spent on RFC 3550 source validation."""
    duplicates: int = 0
    jumps: int = 0
    """Sequence jumps not (yet) confirmed; dropped."""
    bad_payload: int = 0
    """Audio payloads that were undecodable or not a whole number of 20 ms frames."""
    early: int = 0
    """Audio packets before the first tick (not buffered)."""
    audio_in: int = 0
    """Audio packets put into the jitter buffer."""
    dtmf_in: int = 0
    """telephone-event packets accepted."""
    digits_in: int = 0
    """Key presses reported through ``on_dtmf``."""
    latches: int = 0
    relatches: int = 0
    """Latches that replaced a silent source."""
    ssrc_changes: int = 0
    frames_in: int = 0
    """20 ms frames handed to ``on_audio``."""
    frames_concealed: int = 0
    """Of those, frames made up by loss concealment (the buffer's CONCEALED)."""
    frames_silence: int = 0
    """Of those, silence for a gap nothing covered (SILENCE, or EMPTY after the start):
    a loss longer than concealment, a sender pause (DTX, hold), a stream restart."""
    packets_out: int = 0
    """RTP packets sent (audio and telephone-events)."""
    octets_out: int = 0
    """Payload bytes sent."""
    frames_out: int = 0
    """20 ms frames the call offered (``send_frame``)."""
    silence_out: int = 0
    """20 ms frames of silence sent to fill a tick."""
    frames_dropped: int = 0
    """Outbound frames dropped: queue full, or offered while not sending."""
    digits_out: int = 0
    send_errors: int = 0
    """Datagrams the kernel refused (would block, unreachable ...)."""
    socket_errors: int = 0
    """Errors the sockets reported on receive."""
    rtcp_in: int = 0
    rtcp_malformed: int = 0
    rtcp_byes_in: int = 0
    rtcp_out: int = 0
    timeouts: int = 0


class _RtpProtocol(asyncio.DatagramProtocol):
    def __init__(self, session: RtpSession) -> None:
        self._session = session

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._session.receive_rtp(data, addr)

    def error_received(self, exc: Exception) -> None:
        self._session.stats.socket_errors += 1


class _RtcpProtocol(_RtpProtocol):
    def datagram_received(self, data: bytes, addr: Address) -> None:
        self._session.receive_rtcp(data, addr)


def _usable(address: str, port: int) -> tuple[str, int] | None:
    """``(address, port)`` if packets can go there: an IP literal, not unspecified, port not 0."""
    if not 0 < port < 65536:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None  # a host name: wait for latching rather than resolve per packet
    return None if ip.is_unspecified else (address, port)


def _missing(tracker: SeqTracker) -> int:
    """Sequence numbers of ``tracker``'s stream never received (RFC 3550's expected
    minus received, without letting duplicates hide losses as RTCP's count does)."""
    return max(0, tracker.lost + tracker.duplicates)


def _same_host(sdp_address: str, host: object) -> bool:
    """Whether an SDP address names ``host`` (an address as the socket reported it)."""
    if sdp_address == host:
        return True
    try:
        return ipaddress.ip_address(sdp_address) == ipaddress.ip_address(str(host))
    except ValueError:
        return False


class RtpSession:
    """The RTP/RTCP media of one call (see the module docstring for the rules).

    ``media`` is what offer/answer settled (the peer's payload type numbers).
    ``on_audio(frame)`` gets 160 bytes of 8 kHz mu-law per tick once the caller's
    audio has started; ``on_dtmf(digit)`` one of ``0-9 * # A-D`` per key press;
    ``on_timeout()`` is called once when no RTP arrived for ``media_timeout_s``
    (0: never) while receiving and not on hold.  ``cname`` goes in RTCP SDES.
    ``relatch_after_s``: how long the latched source must be silent before
    another may take its place; ``rtcp_interval_s``: mean RTCP report interval;
    ``min_delay_ms``/``max_delay_ms``: the jitter buffer's playout delay bounds.
    ``clock``: the time source (s, monotonic), the event loop's by default; a
    replay passes a manual one.  Must be created on the running event loop.
    """

    def __init__(
        self,
        pair: PortPair,
        media: Negotiated,
        *,
        on_audio: Callable[[bytes], None],
        on_dtmf: Callable[[str], None],
        on_timeout: Callable[[], None],
        media_timeout_s: float,
        cname: str,
        relatch_after_s: float = 1.0,
        rtcp_interval_s: float = RTCP_INTERVAL_S,
        min_delay_ms: int = 20,
        max_delay_ms: int = 200,
        wait_for_peer: bool = False,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if media_timeout_s < 0 or relatch_after_s < 0 or rtcp_interval_s <= 0:
            raise ValueError("timeouts must be >= 0 s and the RTCP interval > 0 s")
        if not 0 < len(cname.encode("utf-8")) <= 255:
            raise ValueError(f"the RTCP CNAME must be 1-255 bytes of UTF-8, got {cname!r}")
        self._loop = asyncio.get_running_loop()
        self._time: Callable[[], float] = clock or self._loop.time
        self.pair = pair
        self.media = media
        self._on_audio = on_audio
        self._on_dtmf = on_dtmf
        self._on_timeout = on_timeout
        self.media_timeout_s = media_timeout_s
        self.cname = cname
        self.relatch_after_s = relatch_after_s
        self.rtcp_interval_s = rtcp_interval_s
        self._min_delay_ms = min_delay_ms
        self._max_delay_ms = max_delay_ms
        self.wait_for_peer = wait_for_peer
        """Send nothing until the peer's RTP latched (its SDP address may be unreachable)."""
        self.stats = RtpStats()
        self.ssrc = secrets.randbits(32)
        """Our SSRC (random, kept for the whole call)."""
        self._seq = secrets.randbits(16)
        self._frame_ts = secrets.randbits(32)  # RTP timestamp of the next 20 ms frame
        self._packet_ts = 0  # RTP timestamp of the next audio packet
        self._restart_packets = True  # the next frame starts a new run of packets
        self._marker = True  # the next audio packet carries the marker bit
        self._sent_tick = False
        self._queue: deque[bytes | bytearray | memoryview] = deque()
        self._header = RtpHeader()
        self._rtp_sendto: _SendTo = pair.rtp.sendto
        self._rtcp_sendto: _SendTo = pair.rtp.sendto if media.rtcp_mux else pair.rtcp.sendto
        self._transports: list[asyncio.DatagramTransport] = []
        self._closed = False
        self._starting = False
        # receive side
        now_s = self._time()
        self._source: Address | None = None  # the candidate or latched RTP source
        self._latched = False
        self._remote_ssrc = -1
        self._tracker = SeqTracker()
        self._pending: SeqTracker | None = None
        self._pending_ssrc = -1
        self._pending_run = 0
        self._last_rx_s = now_s
        self._timed_out = False
        self._offset_ms: int | None = None  # media-clock ms minus loop ms, from the ticks
        # RTCP
        self._rtcp_source: Address | None = None
        self._lsr = 0
        self._lsr_at_s = 0.0
        self._reported_packets = 0
        self._next_rtcp_s = now_s + rtcp_interval_s * random.uniform(0.25, 0.75)
        self._peer_report: ReportBlock | None = None  # the peer's last report on our stream
        self._rtt_s: float | None = None
        # statistics of what a codec change or a new SSRC replaced
        self._retired_jitter: list[JitterStats] = []
        self._lost_before = 0
        self._configure(media)
        self._dest = self._rtp_destination()

    # -- configuration ---------------------------------------------------------------

    def _configure(self, media: Negotiated, *, started: bool = False) -> None:
        """Codec pipelines and payload types for ``media`` (a new call or a codec change).

        ``started``: the caller's audio has begun (it then goes on without a pause).
        """
        codec = media.codec
        self._audio_pt = codec.payload_type
        self._clock_rate_hz = codec.clock_rate_hz
        self._inbound = InboundAudio(
            codec, min_delay_ms=self._min_delay_ms, max_delay_ms=self._max_delay_ms
        )
        self._inbound.started = started
        self._outbound = OutboundAudio(codec, media.ptime_ms)
        self._packet = bytearray(RTP_HEADER_SIZE + max(self._outbound.max_payload_bytes, 4))
        self._packet_view = memoryview(self._packet)
        self._payload_view = self._packet_view[RTP_HEADER_SIZE:]
        self._restart_packets = True
        self._marker = True
        self._configure_events(media)

    def _configure_events(self, media: Negotiated) -> None:
        event = media.telephone_event
        if event is None:
            self._te_pt = -1
            self._dtmf_rx: DtmfReceiver | None = None
            self._dtmf_tx: DtmfSender | None = None
            return
        self._te_pt = event.payload_type
        self._dtmf_rx = DtmfReceiver()
        self._dtmf_tx = DtmfSender(event.payload_type, event.clock_rate_hz, packet_ms=20)

    def update(self, media: Negotiated) -> None:
        """Apply a re-INVITE's result: hold/resume, direction, codec, peer address.

        The SSRC and sequence numbers go on.  A new codec or packet time gets new
        codec pipelines (and an empty jitter buffer); a new peer address lifts the
        latch; a change of hold or direction restarts the media-timeout window.
        """
        old = self.media
        self.media = media
        if old.codec != media.codec or old.ptime_ms != media.ptime_ms:
            self._retired_jitter.append(JitterStats.of(self._inbound.jitter))
            self._configure(media, started=self._inbound.started)
        elif old.telephone_event != media.telephone_event:
            self._configure_events(media)
        if (old.remote_address, old.remote_port) != (media.remote_address, media.remote_port):
            self._latched = False
            self._source = None
            self._rtcp_source = None
        if old.rtcp_mux != media.rtcp_mux:
            self._rtcp_sendto = self.pair.rtp.sendto if media.rtcp_mux else self.pair.rtcp.sendto
        if (old.on_hold, old.receiving) != (media.on_hold, media.receiving):
            self._last_rx_s = self._time()
        self._dest = self._rtp_destination()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start receiving (RTP, and RTCP on its own socket unless rtcp-mux)."""
        if self._closed or self._starting:
            return
        self._starting = True
        loop = self._loop
        rtp, _ = await loop.create_datagram_endpoint(lambda: _RtpProtocol(self), sock=self.pair.rtp)
        self._transports.append(rtp)
        if not self.media.rtcp_mux and not self.closed:
            rtcp, _ = await loop.create_datagram_endpoint(
                lambda: _RtcpProtocol(self), sock=self.pair.rtcp
            )
            self._transports.append(rtcp)
        if self.closed:  # closed while we were starting
            for transport in self._transports:
                transport.close()
            self._transports.clear()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, reason: str = "") -> None:
        """Send an RTCP report with BYE (``reason``), stop receiving and sending; idempotent."""
        if self._closed:
            return
        self._closed = True
        bye = RtcpBye((self.ssrc,), reason[:_BYE_REASON_MAX] or None)
        self._send_rtcp(self._time(), bye)
        for transport in self._transports:
            transport.close()
        self._transports.clear()
        self._queue.clear()
        log.debug("rtp %d closed (%s): %s", self.pair.rtp_port, reason, self.stats)

    # -- where packets go --------------------------------------------------------------

    @property
    def latched(self) -> Address | None:
        """The latched RTP source, or None (then packets go to the SDP address)."""
        return self._source if self._latched else None

    @property
    def destination(self) -> Address | None:
        """Where RTP goes now: the latched source, else the SDP address (None: nowhere)."""
        return self._dest

    @property
    def rtcp_destination(self) -> Address | None:
        """Where RTCP goes now (the rules are in the module docstring); None: nowhere."""
        if self._rtcp_source is not None:
            return self._rtcp_source
        media = self.media
        source = self._source
        if self._latched and source is not None:
            host = source[0]
            if media.rtcp_mux:
                port = source[1]
            elif (
                _same_host(media.remote_address, host)
                and _same_host(media.remote_rtcp_address, host)
                and 0 < media.remote_rtcp_port < 65536
            ):
                port = media.remote_rtcp_port  # not NATed: the SDP's a=rtcp port holds
            else:
                port = source[1] + 1
            return (host, port, *source[2:]) if port < 65536 else None
        if self.wait_for_peer:
            return None
        return _usable(media.remote_rtcp_address, media.remote_rtcp_port)

    def _rtp_destination(self) -> Address | None:
        if self._latched and self._source is not None:
            return self._source
        if self.wait_for_peer:
            return None
        return _usable(self.media.remote_address, self.media.remote_port)

    @property
    def remote_ssrc(self) -> int | None:
        """The peer's current SSRC, once a packet was taken."""
        return None if self._remote_ssrc < 0 else self._remote_ssrc

    def jitter_stats(self) -> JitterStats:
        """A snapshot of the (current codec's) jitter buffer's counters."""
        return JitterStats.of(self._inbound.jitter)

    @property
    def inbound(self) -> InboundAudio:
        """The receive pipeline (read it, do not drive it): ``last_kind``, ``jitter`` ..."""
        return self._inbound

    def media_stats(self) -> MediaStats:
        """Every counter of the session so far, for ``GET /calls/{id}`` and metrics.

        Counts cover the whole call: jitter-buffer counters of codecs a re-INVITE
        replaced and RFC 3550 losses of SSRCs that were replaced are included.
        """
        stats = self.stats
        now = JitterStats.of(self._inbound.jitter)
        jb = (*self._retired_jitter, now)
        tracker = self._tracker
        codec = self.media.codec
        dest = self._dest
        report = self._peer_report
        rtcp: dict[str, float | int | None] = {}
        if report is not None:
            rtcp = {
                "fraction_lost": report.fraction_lost,
                "cumulative_lost": report.cumulative_lost,
                "jitter_ms": round(report.jitter * 1000 / codec.clock_rate_hz, 2),
                "rtt_ms": None if self._rtt_s is None else round(self._rtt_s * 1000, 2),
            }
        return MediaStats(
            transport="rtp",
            codec=f"{codec.name}/{codec.clock_rate_hz}",
            remote=None if dest is None else f"{dest[0]}:{dest[1]}",
            packets_in={
                "received": stats.packets_in,
                "audio": stats.audio_in,
                "dtmf": stats.dtmf_in,
                "lost": self._lost_before + _missing(tracker),
                "late": sum(s.late for s in jb),
                "duplicate": stats.duplicates + sum(s.duplicates for s in jb),
                "discarded": sum(s.discarded for s in jb),
                "malformed": stats.malformed,
                "unknown_pt": stats.unknown_pt,
                "wrong_source": stats.wrong_source,
                "wrong_ssrc": stats.wrong_ssrc,
                "port_zero": stats.port_zero,
                "probation": stats.probation,
                "jump": stats.jumps,
                "bad_payload": stats.bad_payload,
                "early": stats.early,
            },
            frames_in={
                "played": stats.frames_in,
                "concealed": stats.frames_concealed,
                "silence": stats.frames_silence,
                "inserted": sum(s.inserted for s in jb),
                "dropped": sum(s.dropped for s in jb),
            },
            packets_out={"sent": stats.packets_out, "errors": stats.send_errors},
            frames_out={
                "offered": stats.frames_out,
                "silence": stats.silence_out,
                "dropped": stats.frames_dropped,
            },
            events={
                "latches": stats.latches,
                "relatches": stats.relatches,
                "ssrc_changes": stats.ssrc_changes,
                "resyncs": sum(s.resyncs for s in jb),
                "digits_in": stats.digits_in,
                "digits_out": stats.digits_out,
                "rtcp_in": stats.rtcp_in,
                "rtcp_malformed": stats.rtcp_malformed,
                "rtcp_byes_in": stats.rtcp_byes_in,
                "rtcp_out": stats.rtcp_out,
                "timeouts": stats.timeouts,
                "socket_errors": stats.socket_errors,
            },
            playout={
                "current_delay_ms": now.current_delay_ms,
                "target_delay_ms": now.target_delay_ms,
                "buffered_frames": now.buffered_frames,
            },
            jitter_ms=(
                round(tracker.jitter * 1000 / self._clock_rate_hz, 2) if tracker.valid else None
            ),
            rtcp=rtcp,
        )

    # -- receiving ---------------------------------------------------------------------

    def receive_rtp(self, data: bytes, addr: Address) -> None:
        """One datagram from the RTP socket (the protocol callback; public for tests)."""
        stats = self.stats
        stats.packets_in += 1
        if self._closed:
            return
        if self.media.rtcp_mux and is_rtcp(data):
            self.receive_rtcp(data, addr)
            return
        try:
            header = parse_rtp(data, self._header)
        except RtpError as exc:
            stats.malformed += 1
            log.debug("rtp %d: dropped a datagram from %s: %s", self.pair.rtp_port, addr, exc)
            return
        pt = header.payload_type
        if pt == self._audio_pt:
            audio = True
        elif pt == self._te_pt:
            audio = False
        else:
            stats.unknown_pt += 1
            return
        now_s = self._time()
        if addr != self._source and not self._take_source(addr, header.ssrc, now_s):
            return
        if header.ssrc == self._remote_ssrc:
            self._pending_run = 0
            status = self._tracker.update(header.sequence)
        else:
            taken = self._take_ssrc(header.ssrc, header.sequence)
            if taken is None:
                return
            status = taken
        self._last_rx_s = now_s
        if not self._latched and self._tracker.valid:
            self._latch(addr)
        if status is SeqStatus.DUPLICATE:
            stats.duplicates += 1
            return
        if status is SeqStatus.PROBATION:
            stats.probation += 1
            return
        if status is SeqStatus.JUMP:
            stats.jumps += 1
            return
        if not audio:
            self._receive_event(header, now_s)
            return
        if status is SeqStatus.RESTART:
            self._inbound.reset()
        self._tracker.update_jitter(header.timestamp, int(now_s * self._clock_rate_hz))
        offset = self._offset_ms
        if offset is None:
            stats.early += 1
            return
        arrival_ms = int(now_s * 1000) + offset
        if self._inbound.put(
            header.payload,
            header.sequence,
            self._tracker.extended_seq,
            header.timestamp,
            arrival_ms,
        ):
            stats.audio_in += 1
        else:
            stats.bad_payload += 1

    def _take_source(self, addr: Address, ssrc: int, now_s: float) -> bool:
        """Whether a packet from a new source ``addr`` may become the stream (it does if so)."""
        if addr[1] == 0:
            self.stats.port_zero += 1
            return False
        if self._latched:
            if now_s - self._last_rx_s < self.relatch_after_s:
                self.stats.wrong_source += 1
                return False
            self.stats.relatches += 1
            log.info(
                "rtp %d: %s silent for %.1f s: latching anew",
                self.pair.rtp_port,
                self._source,
                now_s - self._last_rx_s,
            )
            self._latched = False
            self._dest = self._rtp_destination()
        self._source = addr
        self._new_stream(ssrc, SeqTracker())
        return True

    def _take_ssrc(self, ssrc: int, seq: int) -> SeqStatus | None:
        """A packet of another SSRC: its status once that SSRC takes over, else None."""
        pending = self._pending
        if pending is None or ssrc != self._pending_ssrc:
            pending = self._pending = SeqTracker()
            self._pending_ssrc = ssrc
            self._pending_run = 0
        status = pending.update(seq)
        self._pending_run += 1
        if self._pending_run < SSRC_SWITCH_PACKETS or not pending.valid:
            self.stats.wrong_ssrc += 1
            return None
        log.info("rtp %d: SSRC %#010x replaces %#010x", self.pair.rtp_port, ssrc, self._remote_ssrc)
        self.stats.ssrc_changes += 1
        self._new_stream(ssrc, pending)
        return status

    def _new_stream(self, ssrc: int, tracker: SeqTracker) -> None:
        """RFC 3550 reset: statistics, jitter buffer and DTMF state start over for ``ssrc``."""
        self._remote_ssrc = ssrc
        self._lost_before += _missing(self._tracker)
        self._tracker = tracker
        self._pending = None
        self._pending_ssrc = -1
        self._pending_run = 0
        self._lsr = 0
        self._inbound.reset()
        if self._dtmf_rx is not None:
            self._dtmf_rx = DtmfReceiver()

    def _latch(self, addr: Address) -> None:
        self._latched = True
        self.stats.latches += 1
        self._dest = self._rtp_destination()
        media = self.media
        log.info(
            "rtp %d: latched %s (SDP said %s:%d)",
            self.pair.rtp_port,
            addr,
            media.remote_address,
            media.remote_port,
        )

    def _receive_event(self, header: RtpHeader, now_s: float) -> None:
        receiver = self._dtmf_rx
        if receiver is None:
            return
        self.stats.dtmf_in += 1
        edges = receiver.feed(header.timestamp, header.marker, header.payload, int(now_s * 1000))
        for edge in edges:
            if edge.edge is DtmfEdge.DOWN and edge.digit != "!":  # flash is no key
                self.stats.digits_in += 1
                self._on_dtmf(edge.digit)

    def receive_rtcp(self, data: bytes, addr: Address) -> None:
        """One datagram from the RTCP socket (or an RTCP one on the muxed RTP socket)."""
        if self._closed:
            return
        try:
            packets = parse_rtcp(data)
        except RtcpError as exc:
            self.stats.rtcp_malformed += 1
            log.debug("rtp %d: dropped RTCP from %s: %s", self.pair.rtp_port, addr, exc)
            return
        self.stats.rtcp_in += 1
        if self._rtcp_source is None and addr[1] != 0:
            source = self._source
            if not self._latched or (source is not None and addr[0] == source[0]):
                self._rtcp_source = addr
        for packet in packets:
            if isinstance(packet, RtcpSenderReport) and packet.ssrc == self._remote_ssrc:
                self._lsr = packet.lsr
                self._lsr_at_s = self._time()
            elif isinstance(packet, RtcpBye):
                self.stats.rtcp_byes_in += 1
            if isinstance(packet, RtcpSenderReport | RtcpReceiverReport):
                for block in packet.reports:
                    if block.ssrc == self.ssrc:
                        self._take_peer_report(block)

    def _take_peer_report(self, block: ReportBlock) -> None:
        """The peer's report block on our stream: its view of loss, jitter and the RTT."""
        self._peer_report = block
        try:
            now = ntp_middle32(ntp_from_unix(time.time()))
        except RtcpError:
            return
        rtt = rtt_seconds(now, block.lsr, block.dlsr)
        if rtt is not None:
            self._rtt_s = rtt

    # -- ticking -----------------------------------------------------------------------

    def on_tick(self, now_ms: int) -> None:
        """Once per 20 ms media tick, before the call's: caller audio, timeouts, RTCP.

        ``now_ms`` is the media clock (ms); it also anchors arrival times.
        """
        if self._closed:
            return
        now_s = self._time()
        offset = now_ms - int(now_s * 1000)
        current = self._offset_ms
        # A late tick makes the offset look smaller: keep the largest, unless the clock moved.
        if current is None or offset > current or current - offset > 1000:
            self._offset_ms = offset
        self._sent_tick = False
        inbound = self._inbound
        frame = inbound.pull(now_ms)
        if frame is not None:
            stats = self.stats
            stats.frames_in += 1
            kind = inbound.last_kind
            if kind is not FrameKind.NORMAL and kind is not FrameKind.INSERTED:
                if kind is FrameKind.CONCEALED:
                    stats.frames_concealed += 1
                else:
                    stats.frames_silence += 1
            self._on_audio(frame)
        if self._dtmf_rx is not None:
            self._dtmf_rx.poll(int(now_s * 1000))
        self._check_timeout(now_s)
        if now_s >= self._next_rtcp_s and not self._closed:
            self._send_rtcp(now_s)
            self._next_rtcp_s = now_s + self.rtcp_interval_s * random.uniform(0.5, 1.5)

    def _check_timeout(self, now_s: float) -> None:
        media = self.media
        if (
            self._timed_out
            or not self.media_timeout_s
            or not media.receiving
            or media.on_hold
            or now_s - self._last_rx_s < self.media_timeout_s
        ):
            return
        self._timed_out = True
        self.stats.timeouts += 1
        log.info("rtp %d: no RTP for %.1f s", self.pair.rtp_port, now_s - self._last_rx_s)
        self._on_timeout()

    def end_tick(self) -> None:
        """After the call's tick: if no frame left this tick, send a queued one or silence."""
        if self._closed or self._sent_tick:
            return
        queue = self._queue
        if queue:
            self._emit(queue.popleft())
        else:
            if self.media.sending and self._dest is not None:
                self.stats.silence_out += 1
            self._emit(ULAW_SILENCE_FRAME)

    # -- sending -----------------------------------------------------------------------

    def send_frame(self, ulaw: bytes | bytearray | memoryview) -> None:
        """Send one 20 ms frame of 8 kHz mu-law (160 bytes) on this tick, or the next free one."""
        if len(ulaw) != WIRE_FRAME_BYTES:
            raise ValueError(f"a frame is {WIRE_FRAME_BYTES} bytes of mu-law, got {len(ulaw)}")
        if self._closed:
            return
        self.stats.frames_out += 1
        queue = self._queue
        if self._sent_tick:
            if not self.media.sending:
                self.stats.frames_dropped += 1
                return
            if len(queue) >= MAX_QUEUED_FRAMES:
                queue.popleft()
                self.stats.frames_dropped += 1
            queue.append(ulaw)
            return
        if queue:
            queue.append(ulaw)
            ulaw = queue.popleft()
        self._emit(ulaw)

    def clear(self) -> None:
        """Drop outbound frames still waiting for their tick (barge-in)."""
        self.stats.frames_dropped += len(self._queue)
        self._queue.clear()

    def send_digits(self, digits: str, duration_ms: int = 160) -> None:
        """Queue RFC 4733 digits (``0-9 * # A-D``), each held ``duration_ms``; they go out
        one packet per tick while sending, with the audio.

        Raises :class:`~server.rtp.dtmf.DtmfError` for a bad digit or duration, or
        when the peer negotiated no telephone-event.
        """
        sender = self._dtmf_tx
        if sender is None:
            raise DtmfError("the peer accepted no telephone-event: cannot send digits")
        sender.send(digits, duration_ms)
        self.stats.digits_out += len(digits)

    def _emit(self, frame: bytes | bytearray | memoryview) -> None:
        """This tick's frame: encode and send its packets (and a telephone-event, if due)."""
        self._sent_tick = True
        outbound = self._outbound
        ts = self._frame_ts
        self._frame_ts = (ts + outbound.samples_per_frame) & 0xFFFFFFFF
        dest = self._dest
        if dest is None or not self.media.sending:
            if not self._restart_packets:  # a pause: start afresh, with the marker
                outbound.reset()
                self._restart_packets = True
                self._marker = True
            if self._queue:
                self.stats.frames_dropped += len(self._queue)
                self._queue.clear()
            return
        if self._restart_packets:
            self._restart_packets = False
            self._packet_ts = ts
        outbound.push(frame)
        payload = self._payload_view
        while size := outbound.pop_into(payload):
            self._send_rtp(self._audio_pt, self._packet_ts, self._marker, size, dest)
            self._marker = False
            self._packet_ts = (self._packet_ts + outbound.samples_per_packet) & 0xFFFFFFFF
        sender = self._dtmf_tx
        if sender is not None and sender.busy:
            event = sender.tick(ts)
            if event is not None:
                size = len(event.payload)
                payload[:size] = event.payload
                self._send_rtp(event.payload_type, event.timestamp, event.marker, size, dest)

    def _send_rtp(self, pt: int, ts: int, marker: bool, size: int, dest: Address) -> None:
        _write_header(self._packet, pt=pt, seq=self._seq, ts=ts, ssrc=self.ssrc, marker=marker)
        self._seq = (self._seq + 1) & 0xFFFF
        stats = self.stats
        try:
            self._rtp_sendto(self._packet_view[: RTP_HEADER_SIZE + size], dest)
        except OSError:
            stats.send_errors += 1
            return
        stats.packets_out += 1
        stats.octets_out += size

    # -- RTCP --------------------------------------------------------------------------

    def _send_rtcp(self, now_s: float, *extra: RtcpPacket) -> None:
        """A compound report (SR if we sent since the last one, else RR) + SDES + ``extra``."""
        dest = self.rtcp_destination
        if dest is None:
            return
        blocks: tuple[ReportBlock, ...] = ()
        tracker = self._tracker
        if tracker.valid and self._remote_ssrc >= 0:
            report = tracker.take_report()
            lsr = self._lsr
            dlsr = dlsr_from_seconds(now_s - self._lsr_at_s) if lsr else 0
            blocks = (
                ReportBlock(
                    self._remote_ssrc,
                    report.fraction_lost,
                    report.cumulative_lost,
                    report.highest_seq,
                    report.jitter,
                    lsr,
                    dlsr,
                ),
            )
        stats = self.stats
        first: RtcpPacket
        if stats.packets_out > self._reported_packets:
            first = RtcpSenderReport(
                self.ssrc,
                ntp_from_unix(time.time()),
                self._frame_ts,
                stats.packets_out,
                stats.octets_out,
                blocks,
            )
        else:
            first = RtcpReceiverReport(self.ssrc, blocks)
        self._reported_packets = stats.packets_out
        try:
            data = build_compound((first, RtcpSdes.cname(self.ssrc, self.cname), *extra))
            self._rtcp_sendto(data, dest)
        except (RtcpError, OSError) as exc:
            stats.send_errors += 1
            log.debug("rtp %d: RTCP not sent: %s", self.pair.rtp_port, exc)
            return
        stats.rtcp_out += 1
