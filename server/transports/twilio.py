"""Twilio Media Streams: the whole wire format, with no sockets.

Inbound text frames decode (one :func:`decode` call each) into the tagged union
:data:`TwilioMessage`; a :class:`TwilioStream` per WebSocket turns them into
:mod:`server.transport` events and builds the outbound ``media``/``mark``/``clear``
text frames.  The webhook side is :func:`twiml_connect_stream` and the
``X-Twilio-Signature`` check (:func:`compute_signature`, :func:`validate_signature`).

Audio is raw μ-law (G.711u), 8000 Hz, mono, base64 in JSON; μ-law is one byte per
sample, so every non-empty payload is a whole number of samples.

How the socket owner uses a :class:`StreamFault`: ``close_code is None`` means log
the reason with the call id and ignore that one message (media/dtmf/mark before
``start``, a wrong ``streamSid``, invalid JSON, an unknown event, bad base64,
anything after ``stop``); otherwise close this WebSocket with that close code
(a second ``start``, a ``start`` that cannot be served, ``stop`` before ``start``,
an oversize frame).  No fault ever concerns another call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Final, TypeAlias, cast

import msgspec

from server.transport import AudioIn, CallStarted, Dtmf, Hangup, MarkPlayed, TransportEvent

MAX_MESSAGE_BYTES: Final = 64 * 1024
"""Largest inbound text frame accepted, in UTF-8 bytes (checked before parsing)."""

CLOSE_POLICY_VIOLATION: Final = 1008
"""WebSocket close code for a peer that broke the protocol."""

CLOSE_MESSAGE_TOO_BIG: Final = 1009
"""WebSocket close code for a frame over :data:`MAX_MESSAGE_BYTES`."""

CODEC: Final = "pcmu"
"""Codec of Twilio audio in both directions (see :mod:`engine.format`)."""

RATE_HZ: Final = 8000
"""Sample rate of Twilio audio in both directions."""

MAX_PARAMETER_CHARS: Final = 500
"""Twilio's bound: each ``<Parameter>``'s name plus value must be shorter than this."""

MAX_OUTSTANDING_MARKS: Final = 1024
"""Marks remembered while awaiting their echo; the oldest is forgotten beyond this
(carriers that never answer marks must not grow the ledger without bound)."""

DTMF_DIGITS: Final = frozenset("0123456789*#ABCD")
"""Keys delivered as :class:`~server.transport.Dtmf`; other digits are ignored."""

INBOUND_TRACK: Final = "inbound"
"""``media.track`` of the caller's audio; the only track fed to the engine."""

DTMF_TRACK: Final = "inbound_track"
"""``dtmf.track`` of the caller's keys (Twilio names it differently from media)."""

_MULAW_ENCODING: Final = "audio/x-mulaw"

# Counters on the wire are decimal strings; compat carriers send numbers.  The
# decoder runs with ``strict=False`` so both arrive here as ``int`` (it also reads
# "1e3" as 1000 and "null" as absent, both harmless here).
WireCount: TypeAlias = Annotated[int, msgspec.Meta(ge=0)]
NonEmptyBytes: TypeAlias = Annotated[bytes, msgspec.Meta(min_length=1)]


class TwilioProtocolError(ValueError):
    """An inbound frame that is not a valid Twilio Media Streams message."""


class UnknownEventError(TwilioProtocolError):
    """A well-formed message whose ``event`` this module does not know."""

    def __init__(self, event: str) -> None:
        super().__init__(f"unknown Twilio event {event!r}")
        self.event = event


class MessageTooLargeError(TwilioProtocolError):
    """A frame over :data:`MAX_MESSAGE_BYTES`, refused before parsing."""


# ----------------------------------------------------------------- inbound


class _Inbound(msgspec.Struct, tag_field="event", frozen=True, gc=False):
    """Base of the inbound messages: tagged by ``event``; unknown fields are ignored."""


class ConnectedMessage(_Inbound, tag="connected", frozen=True):
    """First message on the socket; ``protocol``/``version`` may be absent (compat carriers)."""

    protocol: str | None = None
    version: str | None = None


class MediaFormat(msgspec.Struct, frozen=True, gc=False):
    """Inbound audio format; Twilio always sends μ-law at 8000 Hz mono."""

    encoding: str = _MULAW_ENCODING
    sampleRate: int = RATE_HZ
    channels: int = 1


class StartInfo(msgspec.Struct, frozen=True, gc=False):
    """Body of ``start``: who the call is and what the stream carries."""

    streamSid: str
    callSid: str
    accountSid: str = ""
    tracks: list[str] = msgspec.field(default_factory=lambda: [INBOUND_TRACK])
    customParameters: dict[str, str] = msgspec.field(default_factory=dict)
    mediaFormat: MediaFormat = msgspec.field(default_factory=MediaFormat)


class StartMessage(_Inbound, tag="start", frozen=True):
    """The stream began (once, after ``connected``)."""

    streamSid: str
    start: StartInfo
    sequenceNumber: WireCount | None = None


class MediaInfo(msgspec.Struct, frozen=True, gc=False):
    """Body of ``media``: ``payload`` is raw μ-law (base64-decoded here),
    ``timestamp`` ms since the stream started, ``chunk`` counts from 1."""

    track: str
    payload: NonEmptyBytes
    chunk: WireCount | None = None
    timestamp: WireCount | None = None


class MediaMessage(_Inbound, tag="media", frozen=True):
    """One chunk of audio from Twilio (20 ms, 160 bytes, in practice)."""

    streamSid: str
    media: MediaInfo
    sequenceNumber: WireCount | None = None


class DtmfInfo(msgspec.Struct, frozen=True, gc=False):
    """Body of ``dtmf``: ``track`` is ``inbound_track``, ``digit`` one key."""

    track: str
    digit: str


class DtmfMessage(_Inbound, tag="dtmf", frozen=True):
    """The caller pressed a key (bidirectional streams only)."""

    streamSid: str
    dtmf: DtmfInfo
    sequenceNumber: WireCount | None = None


class MarkInfo(msgspec.Struct, frozen=True, gc=False):
    """Body of ``mark``: the name we sent."""

    name: str


class MarkMessage(_Inbound, tag="mark", frozen=True):
    """Twilio reached (or, after a ``clear``, dropped) the audio before one of our marks."""

    streamSid: str
    mark: MarkInfo
    sequenceNumber: WireCount | None = None


class StopInfo(msgspec.Struct, frozen=True, gc=False):
    """Body of ``stop``."""

    accountSid: str = ""
    callSid: str = ""


class StopMessage(_Inbound, tag="stop", frozen=True):
    """The stream ended; Twilio closes the socket next."""

    streamSid: str
    stop: StopInfo = msgspec.field(default_factory=StopInfo)
    sequenceNumber: WireCount | None = None


TwilioMessage: TypeAlias = (
    ConnectedMessage | StartMessage | MediaMessage | DtmfMessage | MarkMessage | StopMessage
)

_StreamMessage: TypeAlias = StartMessage | MediaMessage | DtmfMessage | MarkMessage | StopMessage

KNOWN_EVENTS: Final = frozenset(("connected", "start", "media", "dtmf", "mark", "stop"))

_decoder: Final[msgspec.json.Decoder[TwilioMessage]] = msgspec.json.Decoder(
    TwilioMessage, strict=False
)


class _EventProbe(msgspec.Struct, gc=False):
    event: object = None


_probe_decoder: Final = msgspec.json.Decoder(_EventProbe)


def decode(data: str | bytes) -> TwilioMessage:
    """Parse one inbound text frame into its typed message.

    Raises :class:`MessageTooLargeError` for frames over :data:`MAX_MESSAGE_BYTES`
    (before parsing), :class:`UnknownEventError` for an ``event`` not in
    :data:`KNOWN_EVENTS`, and :class:`TwilioProtocolError` for invalid JSON,
    missing or ill-typed fields, bad base64 or an empty ``media.payload``.
    """
    n_bytes = len(data)
    if isinstance(data, str) and n_bytes * 4 > MAX_MESSAGE_BYTES and not data.isascii():
        try:
            n_bytes = len(data.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise TwilioProtocolError("message is not valid UTF-8 text") from exc
    if n_bytes > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(
            f"message of {n_bytes} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
        )
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        event = _probe_event(data)
        if isinstance(event, str) and event not in KNOWN_EVENTS:
            raise UnknownEventError(event) from None
        raise TwilioProtocolError(f"invalid Twilio message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise TwilioProtocolError(f"invalid JSON: {exc}") from None
    except UnicodeError as exc:
        raise TwilioProtocolError("message is not valid UTF-8 text") from exc


def _probe_event(data: str | bytes) -> object:
    """The ``event`` member of a JSON object, or None (error path only)."""
    try:
        return _probe_decoder.decode(data).event
    except (msgspec.DecodeError, UnicodeError):
        return None


def decode_payload(b64: str | bytes) -> bytes:
    """Raw μ-law bytes of a base64 ``media.payload`` (for payloads handled as text).

    :func:`decode` already does this for inbound messages; raises
    :class:`TwilioProtocolError` on bad base64 or an empty result.
    """
    try:
        ulaw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TwilioProtocolError(f"media payload is not valid base64: {exc}") from None
    if not ulaw:
        raise TwilioProtocolError("media payload is empty")
    return ulaw


# ---------------------------------------------------------------- outbound


class OutboundMediaInfo(msgspec.Struct, gc=False):
    """Body of outbound ``media``: raw μ-law, base64-encoded by msgspec."""

    payload: bytes


class OutboundMedia(msgspec.Struct, tag_field="event", tag="media", gc=False):
    """Audio for Twilio to play (the hot path uses a pre-built text template instead)."""

    streamSid: str
    media: OutboundMediaInfo


class OutboundMarkInfo(msgspec.Struct, gc=False):
    """Body of outbound ``mark``."""

    name: str


class OutboundMark(msgspec.Struct, tag_field="event", tag="mark", gc=False):
    """Ask Twilio to echo ``mark.name`` once the audio sent before it has played."""

    streamSid: str
    mark: OutboundMarkInfo


class OutboundClear(msgspec.Struct, tag_field="event", tag="clear", gc=False):
    """Drop Twilio's buffered audio; pending marks come back."""

    streamSid: str


_encoder: Final = msgspec.json.Encoder()
# msgspec writes ``bytes`` as a quoted base64 JSON string, faster than binascii.
_json_base64: Final = msgspec.json.Encoder().encode
_MEDIA_SUFFIX: Final = "}}"


@lru_cache(maxsize=1024)
def _payload_prefix(stream_sid: str) -> str:
    """Outbound ``media`` text of one stream before the payload (a quoted JSON string)."""
    _check_stream_sid(stream_sid)
    sid_json = _encoder.encode(stream_sid).decode("utf-8")
    return f'{{"event":"media","streamSid":{sid_json},"media":{{"payload":'


def encode_media(stream_sid: str, ulaw: bytes) -> str:
    """``{"event":"media","streamSid":…,"media":{"payload":<base64 μ-law>}}``.

    ``ulaw`` is raw μ-law at 8000 Hz, any non-empty length, no file header.
    Built from a cached per-stream prefix, the payload and a constant suffix.
    """
    prefix = _payload_prefix(stream_sid)
    if not ulaw:
        raise ValueError("outbound media payload is empty")
    return prefix + _json_base64(ulaw).decode("ascii") + _MEDIA_SUFFIX


def encode_mark(stream_sid: str, name: str) -> str:
    """``{"event":"mark","streamSid":…,"mark":{"name":…}}``."""
    _check_stream_sid(stream_sid)
    if not name:
        raise ValueError("mark name is empty")
    message = OutboundMark(streamSid=stream_sid, mark=OutboundMarkInfo(name=name))
    return _encoder.encode(message).decode("utf-8")


def encode_clear(stream_sid: str) -> str:
    """``{"event":"clear","streamSid":…}``."""
    _check_stream_sid(stream_sid)
    return _encoder.encode(OutboundClear(streamSid=stream_sid)).decode("utf-8")


def _check_stream_sid(stream_sid: str) -> None:
    if not stream_sid:
        raise ValueError("streamSid is empty")


# ----------------------------------------------------------- per-call state


@dataclass(frozen=True, slots=True)
class StreamFault:
    """An inbound message the stream refused.

    ``close_code`` is None when the caller should log ``reason`` and ignore the
    message, else the WebSocket close code for this one socket.
    """

    reason: str
    close_code: int | None = None


@dataclass(slots=True)
class TwilioCounters:
    """Per-stream counts for metrics (all monotonic)."""

    messages: int = 0
    """Inbound frames handed to the stream, valid or not."""
    bad_messages: int = 0
    """Frames that failed to decode or were refused with a :class:`StreamFault`."""
    sequence_gaps: int = 0
    """Times ``sequenceNumber`` was not the previous one plus one."""
    media_in: int = 0
    """Inbound-track media frames delivered as :class:`~server.transport.AudioIn`."""
    media_ignored: int = 0
    """Media frames of other tracks (e.g. ``outbound`` on ``both_tracks``), not fed to audio."""
    dtmf_ignored: int = 0
    """``dtmf`` messages with an unknown digit or track."""
    media_out: int = 0
    marks_sent: int = 0
    clears_sent: int = 0
    marks_played: int = 0
    marks_cleared: int = 0
    marks_unknown: int = 0
    """Echoes of marks never sent, already resolved, or forgotten."""


class MarkLedger:
    """Marks sent and not yet echoed, oldest first, each flagged played-or-cleared.

    A mark is *pending* until a ``clear`` is sent; from then on its echo means
    the audio before it was dropped, not played.
    """

    __slots__ = ("_will_play", "max_outstanding")

    def __init__(self, max_outstanding: int = MAX_OUTSTANDING_MARKS) -> None:
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be >= 1, got {max_outstanding}")
        self.max_outstanding = max_outstanding
        self._will_play: dict[str, bool] = {}

    def __len__(self) -> int:
        return len(self._will_play)

    def __contains__(self, name: object) -> bool:
        return name in self._will_play

    def add(self, name: str) -> None:
        """Record a mark just sent; a name still awaiting its echo is refused."""
        if not name:
            raise ValueError("mark name is empty")
        if name in self._will_play:
            raise ValueError(f"mark {name!r} is already awaiting its echo")
        if len(self._will_play) >= self.max_outstanding:
            del self._will_play[next(iter(self._will_play))]
        self._will_play[name] = True

    def clear(self) -> None:
        """A ``clear`` was sent: every mark outstanding now will come back as cleared."""
        for name in self._will_play:
            self._will_play[name] = False

    def resolve(self, name: str) -> bool | None:
        """Forget an echoed mark: True if played, False if cleared, None if unknown."""
        return self._will_play.pop(name, None)

    def pending(self) -> list[str]:
        """Names still expected to play, oldest first."""
        return [name for name, will_play in self._will_play.items() if will_play]


class TwilioStream:
    """State of one Media Streams WebSocket: ids, sequence, mark ledger, counters.

    ``bidirectional`` comes from the route (``<Connect><Stream>``); a ``start``
    whose tracks include ``outbound`` makes the stream unidirectional anyway.
    The outbound helpers return None whenever nothing may be sent (before
    ``start``, after ``stop``, or on a unidirectional stream).
    """

    __slots__ = (
        "_bidirectional",
        "_live",
        "_mark_serial",
        "_next_sequence",
        "_send_prefix",
        "_started",
        "_stopped",
        "account_sid",
        "call_sid",
        "counters",
        "marks",
        "parameters",
        "protocol",
        "stream_sid",
        "tracks",
        "version",
    )

    def __init__(self, *, bidirectional: bool = True) -> None:
        self.protocol: str | None = None
        self.version: str | None = None
        self.stream_sid: str | None = None
        self.call_sid: str | None = None
        self.account_sid: str | None = None
        self.tracks: tuple[str, ...] = ()
        self.parameters: dict[str, str] = {}
        self.counters = TwilioCounters()
        self.marks = MarkLedger()
        self._bidirectional = bidirectional
        self._started = False
        self._stopped = False
        self._live = False  # started and not stopped
        self._next_sequence = -1  # -1: no sequenceNumber seen yet
        self._mark_serial = 0
        self._send_prefix = ""  # media prefix while sending is allowed, else ""

    @property
    def bidirectional(self) -> bool:
        """The far end plays what we send (route is bidirectional, tracks allow it)."""
        return self._bidirectional

    @property
    def started(self) -> bool:
        """``start`` was accepted."""
        return self._started

    @property
    def stopped(self) -> bool:
        """``stop`` was received: the session is over."""
        return self._stopped

    @property
    def can_send(self) -> bool:
        """True while outbound messages are allowed on this socket."""
        return bool(self._send_prefix)

    # ------------------------------------------------------------ inbound

    def receive(self, data: str | bytes) -> TransportEvent | StreamFault | None:
        """Decode one text frame and apply it (see :meth:`on_message`).

        A frame that does not decode becomes a fault: ignore it, except an
        oversize frame, which closes the socket with :data:`CLOSE_MESSAGE_TOO_BIG`.
        """
        try:
            message = decode(data)
        except MessageTooLargeError as exc:
            self.counters.messages += 1
            return self._fault(str(exc), CLOSE_MESSAGE_TOO_BIG)
        except TwilioProtocolError as exc:
            self.counters.messages += 1
            return self._fault(str(exc))
        return self.on_message(message)

    def on_message(self, message: TwilioMessage) -> TransportEvent | StreamFault | None:
        """Apply one decoded message; return the call-model event it means, if any."""
        # Dispatch on exact type: isinstance() on msgspec Structs costs several
        # times more, and these classes are never subclassed.
        counters = self.counters
        counters.messages += 1
        if type(message) is ConnectedMessage:
            return self._on_connected(message)
        message = cast(_StreamMessage, message)
        sequence = message.sequenceNumber
        if sequence is not None:
            if sequence != self._next_sequence and self._next_sequence >= 0:
                counters.sequence_gaps += 1
            self._next_sequence = sequence + 1
        if not self._live or type(message) is StartMessage:
            return self._outside_live(message)
        if message.streamSid != self.stream_sid:
            return self._fault(
                f"{_event_of(message)} for streamSid {message.streamSid!r}, "
                f"expected {self.stream_sid!r}"
            )
        if type(message) is MediaMessage:
            media = message.media
            if media.track != INBOUND_TRACK:
                counters.media_ignored += 1
                return None
            counters.media_in += 1
            return AudioIn(media.payload, CODEC, RATE_HZ, media.timestamp)
        if type(message) is MarkMessage:
            return self._on_mark(message.mark.name)
        if type(message) is DtmfMessage:
            return self._on_dtmf(message.dtmf)
        # What is left is ``stop``.
        self._stopped = True
        self._live = False
        self._send_prefix = ""
        return Hangup("stop")

    def _outside_live(self, message: TwilioMessage) -> CallStarted | StreamFault:
        """``start`` at any time, or any other message before ``start`` or after ``stop``."""
        if type(message) is StartMessage:
            return self._on_start(message)
        event = _event_of(message)
        if self._stopped:
            return self._fault(f"{event} after stop")
        if type(message) is StopMessage:
            return self._fault("stop before start", CLOSE_POLICY_VIOLATION)
        return self._fault(f"{event} before start")

    def _on_connected(self, message: ConnectedMessage) -> StreamFault | None:
        if self._started or self.protocol is not None:
            return self._fault("duplicate or late connected")
        self.protocol = message.protocol or ""
        self.version = message.version or ""
        return None

    def _on_start(self, message: StartMessage) -> CallStarted | StreamFault:
        if self._started:
            return self._fault("second start on one stream", CLOSE_POLICY_VIOLATION)
        if self._stopped:
            return self._fault("start after stop", CLOSE_POLICY_VIOLATION)
        start = message.start
        if not start.streamSid or start.streamSid != message.streamSid:
            return self._fault(
                f"start.streamSid {start.streamSid!r} does not match streamSid "
                f"{message.streamSid!r}",
                CLOSE_POLICY_VIOLATION,
            )
        if not start.callSid:
            return self._fault("start.callSid is empty", CLOSE_POLICY_VIOLATION)
        media_format = start.mediaFormat
        if (
            media_format.encoding != _MULAW_ENCODING
            or media_format.sampleRate != RATE_HZ
            or media_format.channels != 1
        ):
            return self._fault(
                f"unsupported media format {media_format.encoding!r} at "
                f"{media_format.sampleRate} Hz x {media_format.channels} channels",
                CLOSE_POLICY_VIOLATION,
            )
        self._started = True
        self._live = True
        self.stream_sid = start.streamSid
        self.call_sid = start.callSid
        self.account_sid = start.accountSid
        self.tracks = tuple(start.tracks)
        self.parameters = dict(start.customParameters)
        if "outbound" in self.tracks:
            self._bidirectional = False
        if self._bidirectional:
            self._send_prefix = _payload_prefix(start.streamSid)
        return CallStarted(
            call_id=start.callSid,
            stream_id=start.streamSid,
            codec=CODEC,
            rate_hz=RATE_HZ,
            parameters=dict(start.customParameters),
        )

    def _on_mark(self, name: str) -> MarkPlayed | None:
        played = self.marks.resolve(name)
        if played is None:
            self.counters.marks_unknown += 1
            return None
        if played:
            self.counters.marks_played += 1
        else:
            self.counters.marks_cleared += 1
        return MarkPlayed(name, played)

    def _on_dtmf(self, dtmf: DtmfInfo) -> Dtmf | None:
        digit = dtmf.digit.upper()
        if dtmf.track != DTMF_TRACK or digit not in DTMF_DIGITS:
            self.counters.dtmf_ignored += 1
            return None
        return Dtmf(digit)

    def _fault(self, reason: str, close_code: int | None = None) -> StreamFault:
        self.counters.bad_messages += 1
        return StreamFault(reason, close_code)

    # ----------------------------------------------------------- outbound

    def media_message(self, ulaw: bytes) -> str | None:
        """Outbound ``media`` text for one chunk of raw μ-law (8000 Hz, non-empty).

        The per-frame hot path: one base64 encode and one string join.
        """
        prefix = self._send_prefix
        if not prefix:
            return None
        if not ulaw:
            raise ValueError("outbound media payload is empty")
        self.counters.media_out += 1
        return prefix + _json_base64(ulaw).decode("ascii") + _MEDIA_SUFFIX

    def next_mark_name(self) -> str:
        """A mark name not used before on this stream (``vg1``, ``vg2``, ...)."""
        while True:
            self._mark_serial += 1
            name = f"vg{self._mark_serial}"
            if name not in self.marks:
                return name

    def mark_message(self, name: str | None = None) -> str | None:
        """Outbound ``mark`` text; the name (``next_mark_name()`` if None) joins the ledger.

        Raises ValueError for an empty name or one still awaiting its echo.
        """
        if not self._send_prefix or self.stream_sid is None:
            return None
        if name is None:
            name = self.next_mark_name()
        text = encode_mark(self.stream_sid, name)
        self.marks.add(name)
        self.counters.marks_sent += 1
        return text

    def clear_message(self) -> str | None:
        """Outbound ``clear`` text; every mark outstanding now will echo as cleared.

        Send it on barge-in even when the local queue is empty: Twilio may
        still hold audio.
        """
        if not self._send_prefix or self.stream_sid is None:
            return None
        self.marks.clear()
        self.counters.clears_sent += 1
        return encode_clear(self.stream_sid)


def _event_of(message: TwilioMessage) -> str:
    return str(message.__struct_config__.tag)


# ------------------------------------------------------- webhook, security

# Characters XML 1.0 allows in a document.
_XML_INVALID: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ATTR_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


def _xml_attr(value: str, what: str) -> str:
    bad = _XML_INVALID.search(value)
    if bad is not None:
        raise ValueError(f"{what} contains {bad.group()!r}, which XML cannot carry")
    return value.translate(_ATTR_ESCAPES)


def twiml_connect_stream(ws_url: str, parameters: Mapping[str, str]) -> str:
    """TwiML answering a call with a bidirectional stream to ``ws_url``.

    ``ws_url`` must be an absolute ``wss://`` URL without a query string (Twilio
    drops queries; per-call values go in ``parameters``, delivered as
    ``start.customParameters``).  Each parameter's name plus value must be under
    :data:`MAX_PARAMETER_CHARS` characters and the name non-empty.
    """
    if not ws_url.startswith("wss://") or len(ws_url) <= len("wss://"):
        raise ValueError(f"stream URL must be an absolute wss:// URL, got {ws_url!r}")
    if "?" in ws_url:
        raise ValueError(f"stream URL must not have a query string (Twilio drops it): {ws_url!r}")
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>',
        f'<Stream url="{_xml_attr(ws_url, "stream URL")}">',
    ]
    for name, value in parameters.items():
        if not name:
            raise ValueError("stream parameter name is empty")
        if len(name) + len(value) >= MAX_PARAMETER_CHARS:
            raise ValueError(
                f"stream parameter {name[:40]!r}: name plus value is {len(name) + len(value)} "
                f"characters, Twilio allows fewer than {MAX_PARAMETER_CHARS}"
            )
        parts.append(
            f'<Parameter name="{_xml_attr(name, "parameter name")}" '
            f'value="{_xml_attr(value, "parameter value")}"/>'
        )
    parts.append("</Stream></Connect></Response>")
    return "".join(parts)


def compute_signature(auth_token: str, url: str, params: Mapping[str, str] | None) -> str:
    """Twilio's ``X-Twilio-Signature`` for a request.

    Base64 of HMAC-SHA1, keyed by the account auth token, over the full URL
    (scheme, host, path and query exactly as Twilio requested it) followed by
    every POST parameter's name and value, parameters sorted by name.  For the
    WebSocket upgrade (a GET) ``params`` is None and ``url`` the exact ``wss://`` URL.
    """
    if not auth_token:
        raise ValueError("auth token is empty")
    signed = [url]
    if params:
        for name in sorted(params):
            signed.append(name)
            signed.append(params[name])
    digest = hmac.new(
        auth_token.encode("utf-8"), "".join(signed).encode("utf-8"), hashlib.sha1
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def validate_signature(
    auth_token: str, url: str, params: Mapping[str, str] | None, signature: str
) -> bool:
    """True if ``signature`` (the header value) is this request's signature.

    The comparison takes the same time wherever the strings differ.
    """
    expected = compute_signature(auth_token, url, params).encode("ascii")
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogatepass"))
