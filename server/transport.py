"""The common call model every front door maps its wire protocol onto.

A transport module (``server/transports/<protocol>.py``) turns what the far
end sends into the events below (frozen msgspec Structs: every inbound media
frame builds one, and a Struct costs a tenth of a frozen dataclass), and
carries out the four outbound actions of :class:`Transport`.  Times are
milliseconds of the call's media clock.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias, runtime_checkable

import msgspec


class CallStarted(msgspec.Struct, frozen=True):
    """The far end identified the call (once, before any audio).

    ``codec``/``rate_hz`` describe inbound audio (see :mod:`engine.format`);
    ``parameters`` are carrier-supplied key/values (e.g. Twilio's
    ``customParameters``) handed to the agent unchanged.
    """

    call_id: str
    stream_id: str
    codec: str
    rate_hz: int
    parameters: dict[str, str] = msgspec.field(default_factory=dict)


class AudioIn(msgspec.Struct, frozen=True):
    """One chunk of inbound audio, encoded as ``codec`` at ``rate_hz``.

    ``timestamp_ms`` is the far end's presentation time when it gives one,
    else ``None``.
    """

    payload: bytes
    codec: str
    rate_hz: int
    timestamp_ms: int | None


class Dtmf(msgspec.Struct, frozen=True):
    """A key the caller pressed: one of ``0-9 * # A-D``."""

    digit: str


class TextIn(msgspec.Struct, frozen=True):
    """A message the caller typed (browser pages); the agent answers it as a turn."""

    text: str


class MarkPlayed(msgspec.Struct, frozen=True):
    """The far end reached a mark: ``played`` is False when it came back because of a clear."""

    name: str
    played: bool


class Hangup(msgspec.Struct, frozen=True):
    """The far end ended the stream; ``reason`` says how (for logs and metrics)."""

    reason: str


TransportEvent: TypeAlias = CallStarted | AudioIn | Dtmf | TextIn | MarkPlayed | Hangup


class Transport(Protocol):
    """Outbound side of one live call, implemented by each front door.

    ``send_audio`` takes one frame already encoded in the transport's wire
    codec; ``clear`` empties the far end's buffer (barge-in); ``mark`` asks to
    be told (by a :class:`MarkPlayed`) when everything sent so far has played;
    ``send_dtmf`` sends keys (``0-9 * # A-D``) and says False when the front
    door has no way to; ``hangup`` ends the call, idempotently.  None of them may block the media
    clock: a slow peer is the transport's problem to detect and drop.
    """

    def send_audio(self, frame: bytes) -> None: ...

    def clear(self) -> None: ...

    def mark(self, name: str) -> None: ...

    def send_dtmf(self, digits: str) -> bool: ...

    def hangup(self) -> None: ...


class MediaStats(msgspec.Struct, frozen=True, kw_only=True):
    """One call's media-path counters, as a transport that keeps them reports them.

    Every count is since the call started; a transport fills what it tracks and
    leaves the rest empty.  ``packets_in`` maps an outcome to packets (always
    ``received``: every datagram; then ``audio``, ``lost``, ``late``,
    ``duplicate``, ``discarded``, the refusals ...); ``frames_in`` maps a kind
    to 20 ms frames handed to the call (``played`` all of them; of those
    ``concealed`` made up by loss concealment, ``silence`` gaps nothing covered);
    ``packets_out``/``frames_out`` the same for what we send; ``events``
    counts happenings that are not packets (latches, SSRC changes, RTCP
    reports).  ``playout`` is the jitter buffer now (``current_delay_ms``,
    ``target_delay_ms``, ``buffered_frames``); ``jitter_ms`` the RFC 3550
    interarrival jitter estimate (ms; None: not measured); ``rtcp`` what the
    peer's own reports said about our stream (``fraction_lost`` in 1/256,
    ``cumulative_lost``, ``jitter_ms``, ``rtt_ms``).
    """

    transport: str
    """Which media path: ``rtp``, ``webrtc``."""
    codec: str = ""
    remote: str | None = None
    """Where our media goes now (``host:port``), if the transport knows."""
    packets_in: dict[str, int] = msgspec.field(default_factory=dict)
    frames_in: dict[str, int] = msgspec.field(default_factory=dict)
    packets_out: dict[str, int] = msgspec.field(default_factory=dict)
    frames_out: dict[str, int] = msgspec.field(default_factory=dict)
    events: dict[str, int] = msgspec.field(default_factory=dict)
    playout: dict[str, int] = msgspec.field(default_factory=dict)
    jitter_ms: float | None = None
    rtcp: dict[str, float | int | None] = msgspec.field(default_factory=dict)


@runtime_checkable
class MediaStatsSource(Protocol):
    """The optional hook of a :class:`Transport` that keeps media statistics.

    ``media_stats()`` is called for ``GET /calls/{id}`` and once when the call
    ends (for ``/metrics``), never per frame; None: nothing to report (yet).
    """

    def media_stats(self) -> MediaStats | None: ...


def media_stats_of(transport: object) -> MediaStats | None:
    """``transport``'s media statistics, or None when it keeps none."""
    if isinstance(transport, MediaStatsSource):
        return transport.media_stats()
    return None
