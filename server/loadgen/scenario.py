"""One simulated Twilio caller: what it says, when, and what it measures.

The scenario loops until the call's duration is over, then sends ``stop``:

1. lead-in silence;
2. utterance A;
3. silence while waiting for the echo of A (turn latency: last frame of A
   sent -> first reply frame received); once the reply has played for
   ``barge_after_ms``,
4. utterance B, which barges in (barge-in latency: first frame of B sent ->
   ``clear`` received, and -> last reply frame received);
5. silence while the echo of B plays to its end mark (a second turn latency);
6. rest, then again from 2.

Caller audio is real time: one 20 ms μ-law ``media`` message per tick, from
payloads base64-encoded once per process (:class:`Clips`).  The far end plays
reply audio like Twilio with no jitter buffer (:class:`Player`): marks are
answered when the audio before them has played, and all pending marks at
once on ``clear``.

All times are :func:`time.monotonic` seconds, passed in; nothing here does
I/O, so the whole scenario is testable tick by tick.
"""

from __future__ import annotations

import base64
import enum
from array import array
from dataclasses import dataclass, field

import msgspec

from server.transports.twilio import OutboundClear, OutboundMark, OutboundMedia

FRAME_S = 0.020
FRAME_BYTES = 160
ULAW_SILENCE = b"\xff" * FRAME_BYTES

ServerMessage = OutboundMedia | OutboundMark | OutboundClear
_decode_server = msgspec.json.Decoder(ServerMessage).decode


def b64_frames(ulaw: bytes) -> list[str]:
    """Base64 payloads of each whole 20 ms frame of μ-law audio (a partial tail is padded)."""
    if len(ulaw) % FRAME_BYTES:
        ulaw += ULAW_SILENCE[: FRAME_BYTES - len(ulaw) % FRAME_BYTES]
    return [
        base64.b64encode(ulaw[i : i + FRAME_BYTES]).decode("ascii")
        for i in range(0, len(ulaw), FRAME_BYTES)
    ]


@dataclass(frozen=True, slots=True)
class Clips:
    """The caller's two utterances as base64 frame payloads, shared by all calls."""

    utterance_a: list[str]
    utterance_b: list[str]
    silence: str = field(default_factory=lambda: b64_frames(ULAW_SILENCE)[0])

    @classmethod
    def from_ulaw(cls, utterance_a: bytes, utterance_b: bytes) -> Clips:
        if not utterance_a or not utterance_b:
            raise ValueError("both utterances need audio")
        return cls(b64_frames(utterance_a), b64_frames(utterance_b))


class Timing(msgspec.Struct, frozen=True, kw_only=True):
    """Scenario timing (ms); the defaults make one cycle last about 8 s with espeak speech."""

    lead_ms: int = 1000
    barge_after_ms: int = 600
    rest_ms: int = 1000
    reply_timeout_ms: int = 4000
    """How long after the end of an utterance its reply may take to start."""
    clear_timeout_ms: int = 2000
    """How long after the end of utterance B the ``clear`` may take."""
    reply_end_timeout_ms: int = 15000
    """How long a reply may take to play out to its end mark."""


@dataclass(slots=True)
class CallMetrics:
    """What callers measured; latencies in ms.  One per call, or merged per worker."""

    turn_ms: array[float] = field(default_factory=lambda: array("d"))
    clear_ms: array[float] = field(default_factory=lambda: array("d"))
    yield_ms: array[float] = field(default_factory=lambda: array("d"))
    lateness_ms: array[float] = field(default_factory=lambda: array("d"))
    """Per reply frame: how much later than the reply's best cadence so far it arrived."""
    gap_ms: array[float] = field(default_factory=lambda: array("d"))
    """Per reply frame after the first: time since the previous frame arrived."""
    underruns: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    turns: int = 0
    barge_ins: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def merge(self, other: CallMetrics) -> None:
        """Add ``other``'s samples and counts to these."""
        for name in _SAMPLE_FIELDS:
            getattr(self, name).extend(getattr(other, name))
        for name in _COUNT_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for kind, count in other.errors.items():
            self.errors[kind] = self.errors.get(kind, 0) + count


_SAMPLE_FIELDS = ("turn_ms", "clear_ms", "yield_ms", "lateness_ms", "gap_ms")
_COUNT_FIELDS = ("underruns", "frames_sent", "frames_received", "turns", "barge_ins")


class Player:
    """The far end's playout of reply audio, as a zero-buffer player hears it.

    A reply segment runs from its first frame to the server's mark (or a
    ``clear``).  Within it each frame plays right after the previous one, or on
    arrival if the player ran dry: that arrival is an underrun, a gap heard.
    """

    __slots__ = ("_anchor", "_index", "_last", "metrics", "play_end", "segment_open")

    def __init__(self, metrics: CallMetrics) -> None:
        self.metrics = metrics
        self.play_end = 0.0
        self.segment_open = False
        self._anchor = 0.0
        self._index = 0
        self._last = 0.0

    def on_frame(self, now: float, measure: bool) -> bool:
        """A reply frame arrived; ``True`` if it starts a new segment."""
        metrics = self.metrics
        metrics.frames_received += 1
        if not self.segment_open:
            self.segment_open = True
            self._anchor = now
            self._index = 0
            self._last = now
            self.play_end = max(now, self.play_end) + FRAME_S
            return True
        self._index += 1
        if measure:
            cadence = now - FRAME_S * self._index
            self._anchor = min(self._anchor, cadence)
            metrics.lateness_ms.append((cadence - self._anchor) * 1000)
            metrics.gap_ms.append((now - self._last) * 1000)
            if now > self.play_end:
                metrics.underruns += 1
        self._last = now
        self.play_end = max(now, self.play_end) + FRAME_S
        return False

    def end_segment(self) -> None:
        self.segment_open = False

    def clear(self, now: float) -> None:
        """Drop buffered audio (Twilio ``clear``)."""
        self.segment_open = False
        self.play_end = now


class Phase(enum.Enum):
    LEAD = "lead"
    SPEAK_A = "speak_a"
    WAIT_A = "wait_a"
    SPEAK_B = "speak_b"
    WAIT_B = "wait_b"
    REST = "rest"
    STOPPED = "stopped"


class Caller:
    """The scenario of one call: :meth:`tick` every 20 ms, :meth:`on_message` per server message.

    Both return the text messages to send now, in order.
    """

    def __init__(
        self,
        call_sid: str,
        clips: Clips,
        timing: Timing,
        *,
        start_s: float,
        duration_s: float,
        metrics: CallMetrics | None = None,
    ) -> None:
        self.call_sid = call_sid
        self.stream_sid = "MZ" + call_sid[2:]
        self.clips = clips
        self.timing = timing
        self.metrics = metrics if metrics is not None else CallMetrics()
        self.player = Player(self.metrics)
        self.end_s = start_s + duration_s
        self.phase = Phase.LEAD
        self._phase_until = start_s + timing.lead_ms / 1000
        self._seq = 0
        self._chunk = 0
        self._clip: list[str] = []
        self._clip_pos = 0
        self._utterance_end = 0.0  # when the last frame of the utterance was sent
        self._reply_start = 0.0  # when the first reply frame arrived (0: not yet)
        self._barge_start = 0.0
        self._last_reply_frame = 0.0
        self._cleared = False
        self._end_mark: str | None = None
        self._pending_marks: list[tuple[float, str]] = []
        prefix = f'{{"event":"media","sequenceNumber":"%d","streamSid":"{self.stream_sid}",'
        self._media_template = (
            prefix + '"media":{"track":"inbound","chunk":"%d","timestamp":"%d","payload":"%s"}}'
        )

    # -- messages the caller sends ------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def opening(self) -> list[str]:
        """``connected`` and ``start``, sent once the socket is open."""
        start = {
            "event": "start",
            "sequenceNumber": str(self._next_seq()),
            "streamSid": self.stream_sid,
            "start": {
                "streamSid": self.stream_sid,
                "accountSid": "AC" + "0" * 32,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": {"loadgen": "1"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
        connected = {"event": "connected", "protocol": "Call", "version": "1.0.0"}
        return [msgspec.json.encode(connected).decode(), msgspec.json.encode(start).decode()]

    def _mark_message(self, name: str) -> str:
        message = {
            "event": "mark",
            "sequenceNumber": str(self._next_seq()),
            "streamSid": self.stream_sid,
            "mark": {"name": name},
        }
        return msgspec.json.encode(message).decode()

    def _stop_message(self) -> str:
        message = {
            "event": "stop",
            "sequenceNumber": str(self._next_seq()),
            "streamSid": self.stream_sid,
            "stop": {"accountSid": "AC" + "0" * 32, "callSid": self.call_sid},
        }
        return msgspec.json.encode(message).decode()

    # -- the scenario ---------------------------------------------------------------------

    def tick(self, now: float) -> list[str]:
        """Messages for this 20 ms tick: marks that finished playing, one media frame (or stop)."""
        if self.phase is Phase.STOPPED:
            return []
        out = self._due_marks(now)
        if now >= self.end_s:
            self.phase = Phase.STOPPED
            out.append(self._stop_message())
            return out
        self._advance(now)
        payload = self._next_payload(now)
        self._chunk += 1
        out.append(
            self._media_template % (self._next_seq(), self._chunk, (self._chunk - 1) * 20, payload)
        )
        self.metrics.frames_sent += 1
        return out

    def _speak(self, clip: list[str], phase: Phase) -> None:
        self.phase = phase
        self._clip = clip
        self._clip_pos = 0

    def _advance(self, now: float) -> None:
        """Phase changes due at ``now`` (before this tick's frame is chosen)."""
        timing = self.timing
        phase = self.phase
        if phase in (Phase.LEAD, Phase.REST) and now >= self._phase_until:
            self._speak(self.clips.utterance_a, Phase.SPEAK_A)
        elif phase is Phase.WAIT_A:
            if self._reply_start and now - self._reply_start >= timing.barge_after_ms / 1000:
                self._speak(self.clips.utterance_b, Phase.SPEAK_B)
                self._barge_start = now
                self._last_reply_frame = 0.0
                self._cleared = False
                self.metrics.barge_ins += 1
            elif not self._reply_start and now - self._utterance_end > (
                timing.reply_timeout_ms / 1000
            ):
                self._give_up("no_reply", now)
        elif phase is Phase.WAIT_B:
            if not self._cleared and now - self._utterance_end > timing.clear_timeout_ms / 1000:
                self._give_up("no_clear", now)
            elif not self._reply_start and now - self._utterance_end > (
                timing.reply_timeout_ms / 1000
            ):
                self._give_up("no_reply", now)
            elif now - self._utterance_end > timing.reply_end_timeout_ms / 1000:
                self._give_up("no_reply_end", now)

    def _give_up(self, error: str, now: float) -> None:
        self.metrics.error(error)
        self._rest(now)

    def _rest(self, now: float) -> None:
        self.phase = Phase.REST
        self._phase_until = now + self.timing.rest_ms / 1000

    def _next_payload(self, now: float) -> str:
        if self.phase not in (Phase.SPEAK_A, Phase.SPEAK_B):
            return self.clips.silence
        payload = self._clip[self._clip_pos]
        self._clip_pos += 1
        if self._clip_pos == len(self._clip):  # the utterance's last frame goes now
            self._utterance_end = now
            self._reply_start = 0.0
            self._end_mark = None
            self.phase = Phase.WAIT_A if self.phase is Phase.SPEAK_A else Phase.WAIT_B
        return payload

    # -- what the server sends ------------------------------------------------------------

    def on_message(self, text: str, now: float) -> list[str]:
        """Handle one server message; returns messages to send at once (marks after ``clear``)."""
        try:
            message = _decode_server(text)
        except msgspec.DecodeError:
            self.metrics.error("bad_message")
            return []
        if message.streamSid != self.stream_sid:
            self.metrics.error("wrong_stream_sid")
            return []
        if isinstance(message, OutboundMedia):
            self._on_media(message, now)
            return []
        if isinstance(message, OutboundMark):
            self._on_mark(message.mark.name)
            return []
        return self._on_clear(now)

    def _on_media(self, message: OutboundMedia, now: float) -> None:
        if len(message.media.payload) != FRAME_BYTES:
            self.metrics.error("bad_frame_size")
        phase = self.phase
        # From the first frame of B until the clear, the server is expected to pause
        # and drop its reply: those frames count for the yield, not for pacing.
        barging = phase in (Phase.SPEAK_B, Phase.WAIT_B) and not self._cleared
        starts = self.player.on_frame(now, measure=not barging)
        if barging:
            self._last_reply_frame = now
        elif phase in (Phase.WAIT_A, Phase.WAIT_B) and starts and not self._reply_start:
            self._reply_start = now
            self.metrics.turn_ms.append((now - self._utterance_end) * 1000)
            self.metrics.turns += 1
        elif phase in (Phase.SPEAK_A, Phase.SPEAK_B) and starts:
            self.metrics.error("reply_during_utterance")

    def _on_mark(self, name: str) -> None:
        self.player.end_segment()
        self._pending_marks.append((self.player.play_end, name))
        if self.phase is Phase.WAIT_B and self._reply_start:
            self._end_mark = name

    def _on_clear(self, now: float) -> list[str]:
        self.player.clear(now)
        marks = [self._mark_message(name) for _, name in self._pending_marks]
        self._pending_marks.clear()
        if self.phase in (Phase.SPEAK_B, Phase.WAIT_B) and not self._cleared:
            self._cleared = True
            self.metrics.clear_ms.append((now - self._barge_start) * 1000)
            last = max(self._last_reply_frame, self._barge_start)
            self.metrics.yield_ms.append((last - self._barge_start) * 1000)
        else:
            self.metrics.error("unexpected_clear")
        return marks

    def _due_marks(self, now: float) -> list[str]:
        out: list[str] = []
        while self._pending_marks and self._pending_marks[0][0] <= now:
            _, name = self._pending_marks.pop(0)
            out.append(self._mark_message(name))
            if name == self._end_mark and self.phase is Phase.WAIT_B:
                self._end_mark = None
                self._rest(now)
        return out
