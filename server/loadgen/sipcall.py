"""One simulated SIP caller for ``voxgate bench sip``: a minimal UAC over UDP and its RTP.

A :class:`SipCaller` places one call and measures what the server does with it:

1. INVITE (PCMU + telephone-event offer; RTP and RTCP on an even/odd port pair)
   over the worker's shared SIP socket, resent on Timer A until a response; 100/180
   are noted; the 200's SDP answer gives the server's RTP address; ACK (and
   again for every retransmitted 200).  A final non-2xx, or no answer within
   Timer B, is a failed call.  Setup time: INVITE sent -> 200 received (ms).
2. RTP from the call's own UDP socket, one 20 ms PCMU packet per :meth:`tick`
   (the worker calls it on a monotonic 20 ms grid): lead-in silence, an
   utterance, silence until its echo has played, a rest, the other utterance,
   and so on until the call's duration is over; then BYE (Timer E/F).
3. Every packet the server sends is measured on arrival (the kernel's receive
   timestamp when the socket gives one, so our own scheduling does not count):

   * lateness: ``arrival - (anchor + (ts - ts0) / 8000 s)``, where the anchor is
     the earliest such cadence seen so far in the call: how far behind its own
     20 ms grid the server's stream is (ms);
   * gaps: packets missing from the server's sequence (RFC 3550 A.3 loss);
   * the echo: after each utterance, the first non-silent frame starts the
     reply (reply latency: last utterance frame sent -> first reply frame) and
     :data:`REPLY_END_SILENCE_MS` of silence ends it.  The echo agent replays
     the caller's audio byte for byte, so the reply (silence trimmed) must be
     a slice of the utterance as the server decoded it: ``exact`` or not, and
     its length against the utterance's.  An inexact echo at 0 % loss means
     the server's jitter buffer made audio up (an underrun).

A call's failures (SIP status, timeouts, a missing reply, a BYE from the
server) are counted in :attr:`SipMetrics.errors`.  All callers of a worker share
one :class:`SipMetrics`.  Times are :func:`time.monotonic` seconds unless named.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import struct
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from server.rtp.packet import RtpError, RtpHeader, parse_rtp, write_rtp_header_into
from server.rtp.seqtrack import SeqStatus, SeqTracker
from server.sdp import SdpError, SessionDescription, parse_sdp
from server.sip.dialog import Dialog, new_branch, new_call_id, new_tag
from server.sip.message import (
    Message,
    Request,
    Response,
    SipParseError,
    make_request,
    make_response,
)
from server.sip.offeranswer import OfferAnswerError, accept_answer, make_offer
from server.sip.transaction import ClientInvite, ClientNonInvite, State

FRAME_S: Final = 0.020
FRAME_BYTES: Final = 160
"""One 20 ms PCMU frame (8000 Hz, one byte per sample)."""
PCMU_PT: Final = 0
TE_PT: Final = 101
RTP_CLOCK_HZ: Final = 8000
SILENCE: Final = b"\xff" * FRAME_BYTES
REPLY_END_SILENCE_MS: Final = 800
"""Silence after a reply started that ends it (longer than espeak's pauses between words)."""
SO_TIMESTAMPNS: Final = getattr(socket, "SO_TIMESTAMPNS", 35)
"""Linux: a ``struct timespec`` (CLOCK_REALTIME) of each datagram's arrival in the kernel."""
_TIMESPEC: Final = struct.Struct("@qq")
_MAX_DATAGRAM: Final = 2048
_ANCILLARY_BYTES: Final = socket.CMSG_SPACE(_TIMESPEC.size)
_ULAW_ZERO: Final = bytes.maketrans(b"\x7f", b"\xff")
"""mu-law has two zeros (0x7F, 0xFF); a decode/encode round trip keeps only 0xFF."""
_USER_AGENT: Final = "voxgate-bench"
_PENDING: Final = (State.TRYING, State.CALLING, State.PROCEEDING)


class SipTiming(msgspec.Struct, frozen=True, kw_only=True):
    """The caller's script (ms)."""

    lead_ms: int = 1000
    """Silence after the answer before the first utterance."""
    rest_ms: int = 1000
    """Silence after a reply ended before the next utterance."""
    reply_timeout_ms: int = 4000
    """How long after the end of an utterance its reply may take to start."""
    reply_end_timeout_ms: int = 15000
    """How long after the end of an utterance its reply may take to end."""


# ------------------------------------------------------------------------- metrics


def _samples() -> array[float]:
    return array("d")


@dataclass(slots=True)
class SipMetrics:
    """What the callers of one worker measured (ms unless named)."""

    setup_ms: array[float] = field(default_factory=_samples)
    """INVITE sent -> 200 received, per answered call."""
    lateness_ms: array[float] = field(default_factory=_samples)
    """Per server audio packet: behind the stream's best 20 ms cadence so far."""
    receive_delay_ms: array[float] = field(default_factory=_samples)
    """Per server packet: kernel arrival -> our code saw it (the generator's own lag)."""
    reply_ms: array[float] = field(default_factory=_samples)
    """Last frame of an utterance sent -> first frame of its echo received."""
    reply_ratio: array[float] = field(default_factory=_samples)
    """Echo length / utterance length (silence trimmed from both)."""
    jitter_ms: array[float] = field(default_factory=_samples)
    """Per call at its end: RFC 3550 interarrival jitter of the server's stream."""
    calls_started: int = 0
    calls_answered: int = 0
    calls_completed: int = 0
    """Answered, ran their whole duration, and their BYE got a 2xx."""
    packets_sent: int = 0
    packets_received: int = 0
    """Valid RTP from the server, all payload types."""
    packets_lost: int = 0
    """Gaps in the server's sequence numbers (RFC 3550 expected - received)."""
    duplicates: int = 0
    unknown_pt: int = 0
    wrong_ssrc: int = 0
    malformed: int = 0
    rtcp_received: int = 0
    kernel_timestamps: int = 0
    """Packets whose arrival time came from the kernel (the rest: from our clock)."""
    utterances: int = 0
    """Utterances sent to their end."""
    replies: int = 0
    replies_cut_off: int = 0
    """Utterances whose reply was still awaited (or playing) when the call's time was up."""
    replies_exact: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: SipMetrics) -> None:
        """Add ``other``'s samples, counts and errors to these."""
        for name in _SAMPLE_FIELDS:
            getattr(self, name).extend(getattr(other, name))
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, n in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + n


_SAMPLE_FIELDS: Final = (
    "setup_ms",
    "lateness_ms",
    "receive_delay_ms",
    "reply_ms",
    "reply_ratio",
    "jitter_ms",
)
_COUNT_FIELDS: Final = (
    "calls_started",
    "calls_answered",
    "calls_completed",
    "packets_sent",
    "packets_received",
    "packets_lost",
    "duplicates",
    "unknown_pt",
    "wrong_ssrc",
    "malformed",
    "rtcp_received",
    "kernel_timestamps",
    "utterances",
    "replies",
    "replies_cut_off",
    "replies_exact",
)


class SipMetricsWire(msgspec.Struct, frozen=True, kw_only=True):
    """:class:`SipMetrics` between processes: each sample array as float64 bytes."""

    samples: dict[str, bytes]
    counts: dict[str, int]
    errors: dict[str, int]

    @classmethod
    def of(cls, m: SipMetrics) -> SipMetricsWire:
        return cls(
            samples={name: getattr(m, name).tobytes() for name in _SAMPLE_FIELDS},
            counts={name: getattr(m, name) for name in _COUNT_FIELDS},
            errors=dict(m.errors),
        )

    def metrics(self) -> SipMetrics:
        m = SipMetrics(errors=dict(self.errors))
        for name in _SAMPLE_FIELDS:
            getattr(m, name).frombytes(self.samples.get(name, b""))
        for name in _COUNT_FIELDS:
            setattr(m, name, self.counts.get(name, 0))
        return m


# ------------------------------------------------------------------------ the audio


@dataclass(frozen=True, slots=True)
class Utterance:
    """One thing the caller says: its 20 ms PCMU frames, and what its echo must match."""

    frames: tuple[bytes, ...]
    expected: bytes
    """The audio as the server decodes it (one mu-law zero), silence trimmed at both ends."""

    @classmethod
    def from_ulaw(cls, ulaw: bytes) -> Utterance:
        if not ulaw.strip(b"\xff\x7f"):
            raise ValueError("an utterance needs audio that is not silence")
        if len(ulaw) % FRAME_BYTES:
            ulaw += SILENCE[: FRAME_BYTES - len(ulaw) % FRAME_BYTES]
        frames = tuple(ulaw[i : i + FRAME_BYTES] for i in range(0, len(ulaw), FRAME_BYTES))
        return cls(frames, ulaw.translate(_ULAW_ZERO).strip(b"\xff"))


@dataclass(slots=True)
class CallerEnv:
    """What every caller of one worker shares."""

    loop: asyncio.AbstractEventLoop
    send_sip: Callable[[bytes], None]
    """Writes a SIP message to the server (the worker's shared UDP socket)."""
    sip_local: tuple[str, int]
    """Our SIP socket's address (Via, Contact)."""
    server: tuple[str, int]
    """The server's SIP address."""
    user: str
    """Request-URI user part (the agent route)."""
    utterances: tuple[Utterance, ...]
    timing: SipTiming
    rtp_ports: RtpPorts
    metrics: SipMetrics
    realtime_offset_s: float = field(default_factory=lambda: time.time() - time.monotonic())
    """CLOCK_REALTIME - CLOCK_MONOTONIC, to put kernel timestamps on the monotonic clock."""


class Phase(enum.Enum):
    INVITING = "inviting"
    LEAD = "lead"
    SPEAK = "speak"
    WAIT = "wait"
    REST = "rest"
    HANGING_UP = "hanging_up"
    DONE = "done"


class RtpPorts:
    """UDP port pairs for callers: RTP on an even port, RTCP on the next one (RFC 3550 §11).

    Ports are tried round robin in ``[low, high)``; a pair that cannot be bound
    (in use) is skipped.  The sockets are non-blocking and ask the kernel for
    arrival timestamps where it gives them.
    """

    def __init__(self, host: str, low: int, high: int) -> None:
        if not 1024 <= low < high <= 65536 or high - low < 2:
            raise ValueError(f"bad RTP port range {low}-{high}")
        self.host = host
        self.low = low + low % 2
        self.high = high
        self._next = self.low

    def open_pair(self) -> tuple[socket.socket, socket.socket]:
        """Bound (RTP, RTCP) sockets; OSError when no pair in the range is free."""
        for _ in range((self.high - self.low) // 2):
            port = self._next
            self._next = port + 2 if port + 3 < self.high else self.low
            opened: list[socket.socket] = []
            try:
                for p in (port, port + 1):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    opened.append(sock)
                    sock.setblocking(False)
                    sock.bind((self.host, p))
                    # Without it, arrival times come from our own clock.
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                for sock in opened:
                    sock.close()
                continue
            return opened[0], opened[1]
        raise OSError(f"no free UDP port pair in {self.low}-{self.high}")


# ------------------------------------------------------------------------ the caller


def non_2xx_ack(invite: Request, response: Response) -> bytes:
    """The hop-by-hop ACK of a failure response to ``invite`` (RFC 3261 §17.1.1.3):
    the INVITE's Request-URI, Via (same branch), From, Call-ID and CSeq number, and
    the response's To (with the tag the server gave)."""
    ack = make_request(
        "ACK",
        invite.uri,
        call_id=invite.call_id or "",
        from_addr=invite.headers.get("From") or "",
        to_addr=response.headers.get("To") or invite.headers.get("To") or "",
        cseq=invite.cseq().number,
        via=invite.headers.get("Via") or "",
    )
    return ack.serialize()


class SipCaller:
    """One call: :meth:`start`, then :meth:`on_sip` per message for its Call-ID and
    :meth:`tick` every 20 ms once :attr:`media_started`; ``on_done`` is called once
    when the call is over (whatever the outcome)."""

    def __init__(
        self,
        env: CallerEnv,
        index: int,
        *,
        duration_s: float,
        ssrc: int,
        on_done: Callable[[SipCaller], None],
    ) -> None:
        self.env = env
        self.index = index
        self.duration_s = duration_s
        self.on_done = on_done
        host = env.sip_local[0]
        self.call_id = new_call_id(host)
        self.phase = Phase.INVITING
        self.media_started = False
        self._answered = False
        self._ssrc = ssrc
        self._seq = ssrc & 0xFFFF
        self._ts = (ssrc * 7919) & 0xFFFFFFFF
        self._marker = True
        self._packet = bytearray(12 + FRAME_BYTES)
        self._header = RtpHeader()
        self._rtp: socket.socket | None = None
        self._rtcp: socket.socket | None = None
        self._dest: tuple[str, int] | None = None
        self._invite: Request | None = None
        self._invite_tx: ClientInvite | None = None
        self._last_response: Response | None = None
        self._dialog: Dialog | None = None
        self._ack: bytes | None = None
        self._bye_tx: ClientNonInvite | None = None
        self._offer: SessionDescription | None = None
        self._started_at = 0.0
        self._end_at = 0.0
        self._phase_until = 0.0
        # The echo of the current utterance.
        self._utterance: Utterance | None = None
        self._next_utterance = index % len(env.utterances)
        self._frame = 0
        self._utterance_end = 0.0
        self._reply_start = 0.0
        self._reply = bytearray()
        self._silent_run = 0
        self._reply_end_frames = REPLY_END_SILENCE_MS // 20
        self._overlap_counted = False
        # The server's stream.
        self._remote_ssrc = -1
        self._tracker = SeqTracker()
        self._ts0 = -1
        self._anchor = 0.0

    # -- signalling --------------------------------------------------------------------

    def _via(self) -> str:
        host, port = self.env.sip_local
        return f"SIP/2.0/UDP {host}:{port};branch={new_branch()};rport"

    def start(self) -> None:
        """Open the RTP/RTCP sockets and send the INVITE."""
        env = self.env
        env.metrics.calls_started += 1
        host, sip_port = env.sip_local
        try:
            self._rtp, self._rtcp = env.rtp_ports.open_pair()
        except OSError:
            env.metrics.error("rtp_socket")
            self._finish()
            return
        env.loop.add_reader(self._rtp.fileno(), self._on_rtp)
        env.loop.add_reader(self._rtcp.fileno(), self._on_rtcp)
        rtp_port = self._rtp.getsockname()[1]
        offer = make_offer(
            local_ip=host,
            rtp_port=rtp_port,
            session_id=self._ssrc & 0x7FFFFFFF,
            session_version=1,
            codecs=("PCMU",),
        )
        self._offer = offer
        server_host, server_port = env.server
        self._invite = make_request(
            "INVITE",
            f"sip:{env.user}@{server_host}:{server_port}",
            call_id=self.call_id,
            from_addr=f"<sip:caller{self.index}@{host}>;tag={new_tag()}",
            to_addr=f"<sip:{env.user}@{server_host}:{server_port}>",
            cseq=1,
            via=self._via(),
            contact=f"<sip:caller{self.index}@{host}:{sip_port}>",
            headers=(("User-Agent", _USER_AGENT), ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")),
            body=offer.serialize(),
            content_type="application/sdp",
        )
        self._started_at = time.monotonic()
        self._end_at = self._started_at + self.duration_s
        self._invite_tx = ClientInvite(
            self._invite.serialize(),
            env.send_sip,
            env.loop,
            False,
            on_response=self._on_invite_status,
            make_ack=self._non_2xx_ack,
        )

    def on_sip(self, message: Message, source: tuple[str, int]) -> None:
        """A SIP message with this call's Call-ID."""
        if isinstance(message, Request):
            self._on_request(message, source)
            return
        try:
            method = message.cseq().method
        except SipParseError:
            self.env.metrics.error("sip_bad_response")
            return
        self._last_response = message
        if method == "INVITE":
            if self._invite_tx is not None and not self._invite_tx.terminated:
                self._invite_tx.on_response(message.status)
            elif 200 <= message.status < 300 and self._ack is not None:
                self.env.send_sip(self._ack)  # a retransmitted 200: ACK it again
        elif method == "BYE" and self._bye_tx is not None:
            self._bye_tx.on_response(message.status)

    def _on_invite_status(self, status: int) -> None:
        if self.phase is not Phase.INVITING:
            return
        if status < 200:
            return
        if status >= 300:
            self.env.metrics.error("invite_timeout" if status == 408 else f"invite_{status}")
            self._finish()
            return
        response = self._last_response
        assert response is not None and self._invite is not None and self._offer is not None
        now = time.monotonic()
        metrics = self.env.metrics
        try:
            self._dialog = Dialog.as_uac(self._invite, response)
        except SipParseError as exc:
            metrics.error(f"bad_200: {str(exc)[:60]}")
            self._finish()
            return
        self._ack = self._dialog.request("ACK", via=self._via()).serialize()
        self.env.send_sip(self._ack)
        try:
            media = accept_answer(self._offer, parse_sdp(response.body))
        except (SdpError, OfferAnswerError) as exc:
            metrics.error(f"bad_answer: {str(exc)[:60]}")
            self.hang_up()
            return
        if media.codec.payload_type != PCMU_PT:
            metrics.error(f"codec_{media.codec.name}")
        self._answered = True
        metrics.calls_answered += 1
        metrics.setup_ms.append((now - self._started_at) * 1000)
        self._dest = (media.remote_address, media.remote_port)
        self.phase = Phase.LEAD
        self._phase_until = now + self.env.timing.lead_ms / 1000
        self.media_started = True

    def _non_2xx_ack(self) -> bytes:
        invite, response = self._invite, self._last_response
        assert invite is not None and response is not None
        return non_2xx_ack(invite, response)

    def _on_request(self, request: Request, source: tuple[str, int]) -> None:
        if request.method == "ACK":
            return
        status = 200 if request.method in ("BYE", "OPTIONS") else 501
        try:
            self.env.send_sip(make_response(request, status).serialize())
        except (SipParseError, ValueError):
            self.env.metrics.error("sip_bad_request")
            return
        if request.method == "BYE" and self.phase not in (Phase.HANGING_UP, Phase.DONE):
            reason = request.headers.get("Reason") or ""
            self.env.metrics.error(f"server_bye {reason[:60]}".strip())
            self._finish()

    def hang_up(self) -> None:
        """Send BYE (the call's time is up); the call is done at its final response."""
        if self.phase in (Phase.HANGING_UP, Phase.DONE):
            return
        dialog = self._dialog
        if self.phase is Phase.WAIT:
            self.env.metrics.replies_cut_off += 1
        self._close_media()
        if dialog is None:
            self._finish()
            return
        self.phase = Phase.HANGING_UP
        bye = dialog.request("BYE", via=self._via(), headers=(("User-Agent", _USER_AGENT),))
        self._bye_tx = ClientNonInvite(
            bye.serialize(), self.env.send_sip, self.env.loop, False, on_final=self._on_bye_status
        )

    def _on_bye_status(self, status: int) -> None:
        if not self._answered:
            pass  # hung up at once: the answer was unusable (an error already)
        elif 200 <= status < 300:
            self.env.metrics.calls_completed += 1
        else:
            self.env.metrics.error("bye_timeout" if status == 408 else f"bye_{status}")
        self._finish()

    def abort(self, error: str) -> None:
        """Give up on the call (the worker's deadline passed)."""
        if self.phase is not Phase.DONE:
            self.env.metrics.error(error)
            self._finish()

    def _finish(self) -> None:
        if self.phase is Phase.DONE:
            return
        self.phase = Phase.DONE
        self._close_media()
        for tx in (self._invite_tx, self._bye_tx):
            # A completed transaction stays: it ACKs (INVITE) or absorbs retransmitted finals.
            if tx is not None and tx.state in _PENDING:
                tx.terminate()
        self.on_done(self)

    def _close_media(self) -> None:
        self.media_started = False
        if self._tracker.valid:
            metrics = self.env.metrics
            metrics.packets_lost += max(0, self._tracker.lost)
            metrics.duplicates += self._tracker.duplicates
            metrics.jitter_ms.append(self._tracker.jitter * 1000 / RTP_CLOCK_HZ)
            self._tracker = SeqTracker()
        for sock in (self._rtp, self._rtcp):
            if sock is not None:
                self.env.loop.remove_reader(sock.fileno())
                sock.close()
        self._rtp = self._rtcp = None

    # -- sending -----------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """One 20 ms frame to the server (or, once the duration is over, BYE)."""
        if not self.media_started:
            return
        if now >= self._end_at:
            self.hang_up()
            return
        self._advance(now)
        if self.phase is Phase.SPEAK:
            utterance = self._utterance
            assert utterance is not None
            payload = utterance.frames[self._frame]
            self._frame += 1
            if self._frame == len(utterance.frames):
                self.env.metrics.utterances += 1
                self._utterance_end = now
                self._reply_start = 0.0
                self._overlap_counted = False
                self.phase = Phase.WAIT
        else:
            payload = SILENCE
        self._send(payload)

    def _advance(self, now: float) -> None:
        phase = self.phase
        timing = self.env.timing
        if phase is Phase.LEAD or phase is Phase.REST:
            if now >= self._phase_until:
                utterances = self.env.utterances
                self._utterance = utterances[self._next_utterance]
                self._next_utterance = (self._next_utterance + 1) % len(utterances)
                self._frame = 0
                self.phase = Phase.SPEAK
        elif phase is Phase.WAIT:
            waited_ms = (now - self._utterance_end) * 1000
            if not self._reply_start and waited_ms > timing.reply_timeout_ms:
                self._rest("no_reply", now)
            elif waited_ms > timing.reply_end_timeout_ms:
                self._rest("no_reply_end", now)

    def _rest(self, error: str | None, now: float) -> None:
        if error is not None:
            self.env.metrics.error(error)
        self.phase = Phase.REST
        self._phase_until = now + self.env.timing.rest_ms / 1000

    def _send(self, payload: bytes) -> None:
        sock, dest = self._rtp, self._dest
        if sock is None or dest is None:
            return
        packet = self._packet
        write_rtp_header_into(
            packet, pt=PCMU_PT, seq=self._seq, ts=self._ts, ssrc=self._ssrc, marker=self._marker
        )
        packet[12:] = payload
        self._marker = False
        self._seq += 1
        self._ts += FRAME_BYTES
        try:
            sock.sendto(packet, dest)
        except OSError:
            self.env.metrics.error("rtp_send_failed")
            return
        self.env.metrics.packets_sent += 1

    # -- receiving ---------------------------------------------------------------------

    def _on_rtcp(self) -> None:
        sock = self._rtcp
        if sock is None:
            return
        try:
            sock.recv(_MAX_DATAGRAM)
        except OSError:
            return
        self.env.metrics.rtcp_received += 1

    def _on_rtp(self) -> None:
        sock = self._rtp
        if sock is None:
            return
        try:
            data, ancillary, _flags, _source = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.env.metrics.error("rtp_receive_failed")
            return
        now = time.monotonic()
        env = self.env
        metrics = env.metrics
        arrival = now
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                seconds, nanoseconds = _TIMESPEC.unpack_from(raw)
                arrival = seconds + nanoseconds * 1e-9 - env.realtime_offset_s
                metrics.kernel_timestamps += 1
                metrics.receive_delay_ms.append((now - arrival) * 1000)
        try:
            header = parse_rtp(data, self._header)
        except RtpError:
            metrics.malformed += 1
            return
        pt = header.payload_type
        if pt != PCMU_PT:
            if pt != TE_PT:
                metrics.unknown_pt += 1
            return
        ssrc = header.ssrc
        if ssrc != self._remote_ssrc:
            if self._remote_ssrc >= 0:
                metrics.wrong_ssrc += 1
                return
            self._remote_ssrc = ssrc
        metrics.packets_received += 1
        tracker = self._tracker
        status = tracker.update(header.sequence)
        ts = header.timestamp
        tracker.update_jitter(ts, int(arrival * RTP_CLOCK_HZ))
        if status is SeqStatus.DUPLICATE:
            return
        if self._ts0 < 0:
            self._ts0 = ts
            self._anchor = arrival
        elapsed = (ts - self._ts0) & 0xFFFFFFFF
        if elapsed < 0x80000000:  # not from before the first packet
            cadence = arrival - elapsed / RTP_CLOCK_HZ
            self._anchor = min(self._anchor, cadence)
            metrics.lateness_ms.append((cadence - self._anchor) * 1000)
        start = header.payload_offset
        self._on_audio(data[start : start + header.payload_length], arrival)

    def _on_audio(self, payload: bytes, arrival: float) -> None:
        """The echo: find the reply to the last utterance in the server's audio."""
        phase = self.phase
        silent = payload == SILENCE
        if phase is Phase.SPEAK:
            if not silent and not self._overlap_counted:
                self._overlap_counted = True
                self.env.metrics.error("reply_during_utterance")
            return
        if phase is not Phase.WAIT:
            return
        if not self._reply_start:
            if silent:
                return
            self._reply_start = arrival
            self._reply = bytearray(payload)
            self._silent_run = 0
            self.env.metrics.reply_ms.append((arrival - self._utterance_end) * 1000)
            return
        self._reply += payload
        if not silent:
            self._silent_run = 0
            return
        self._silent_run += 1
        if self._silent_run >= self._reply_end_frames:
            self._judge_reply()
            self._rest(None, arrival)

    def _judge_reply(self) -> None:
        metrics = self.env.metrics
        utterance = self._utterance
        assert utterance is not None
        heard = bytes(self._reply).strip(b"\xff")
        self._reply = bytearray()
        metrics.replies += 1
        metrics.reply_ratio.append(len(heard) / len(utterance.expected))
        if heard and utterance.expected.find(heard) >= 0:
            metrics.replies_exact += 1
