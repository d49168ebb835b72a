"""SDP offer/answer for SIP calls (RFC 3264): the audio we take and how we answer.

A SIP call carries one audio stream: one codec plus RFC 4733 telephone-event.

* :func:`answer_offer` answers a peer's offer (an INVITE or re-INVITE body, or
  the offer in the ACK of a delayed-offer call): the answer keeps every
  ``m=`` line in order, accepts the first usable audio stream with **one**
  codec and at most one telephone-event, keeping the offer's payload type
  numbers and rtpmaps, and rejects every other stream with port 0 and one
  format.  The codec is chosen in the offerer's order among ours (or in ours).
* :func:`make_offer` writes our offer (the 200 of a delayed-offer INVITE, our
  outbound INVITE); :func:`accept_answer` reads the peer's answer to it.
* :class:`Negotiation` keeps one call's state across re-offers: our ``o=``
  sess-id and version (bumped only when our SDP changes), and the last SDP
  each way, so a session refresh gets the same answer back.

Only ``RTP/AVP`` and ``RTP/AVPF`` are usable (no SRTP, no WebRTC profiles).
When nothing usable is left, :class:`OfferAnswerError` says why and carries the
RFC 3261 §20.43 warning code for the ``Warning`` header of the 488 (or, after a
bad answer to our offer, the reason to hang up).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Final

from server.sdp import Direction, MediaDescription, Origin, RtpMap, SessionDescription


@dataclass(frozen=True, slots=True)
class Codec:
    """One RTP payload format we can send and receive."""

    name: str
    """The encoding name we write in ``a=rtpmap`` (matched case-insensitively)."""
    clock_rate_hz: int
    """RTP clock: timestamp units per second."""
    audio_rate_hz: int
    """Sample rate of the PCM the codec encodes and decodes (Hz)."""
    channels: int
    """Channels in ``a=rtpmap`` (Opus: always 2, RFC 7587)."""
    payload_type: int
    """The static payload type (< 96), or the dynamic one our offers use."""
    fmtp: str = ""
    """The ``a=fmtp`` parameters we write for it; ``""``: no fmtp line."""

    def rtpmap(self, payload_type: int | None = None) -> RtpMap:
        pt = self.payload_type if payload_type is None else payload_type
        return RtpMap(pt, self.name, self.clock_rate_hz, self.channels)

    def matches(self, rtpmap: RtpMap) -> bool:
        """Whether ``rtpmap`` (as offered) is this format; Opus is taken with 1 or 2 channels."""
        if not rtpmap.is_codec(self.name) or rtpmap.clock_rate_hz != self.clock_rate_hz:
            return False
        return rtpmap.channels == self.channels or (self.name == "opus" and rtpmap.channels == 1)


PCMU: Final = Codec("PCMU", 8000, 8000, 1, 0)
PCMA: Final = Codec("PCMA", 8000, 8000, 1, 8)
G722: Final = Codec("G722", 8000, 16000, 1, 9)
"""16 kHz audio on an 8 kHz RTP clock (RFC 3551 §4.5.2): 160 timestamp units per 20 ms."""
OPUS: Final = Codec("opus", 48000, 48000, 2, 96, "useinbandfec=1")
TELEPHONE_EVENT_8000: Final = Codec("telephone-event", 8000, 8000, 1, 101, "0-16")
TELEPHONE_EVENT_48000: Final = Codec("telephone-event", 48000, 48000, 1, 102, "0-16")
CN: Final = Codec("CN", 8000, 8000, 1, 13)
"""Comfort noise (RFC 3389): recognised in offers, never chosen or answered."""

AUDIO_CODECS: Final[dict[str, Codec]] = {"opus": OPUS, "g722": G722, "pcmu": PCMU, "pcma": PCMA}
"""The codecs a call can use, by lower-case name."""
TELEPHONE_EVENTS: Final = (TELEPHONE_EVENT_8000, TELEPHONE_EVENT_48000)
DEFAULT_PREFERENCES: Final = ("opus", "G722", "PCMU", "PCMA")
DEFAULT_PTIME_MS: Final = 20
MIN_PTIME_MS: Final = 10
MAX_PTIME_MS: Final = 60
USABLE_PROFILES: Final = frozenset({"RTP/AVP", "RTP/AVPF"})

_STATIC_FORMATS: Final = {
    rtpmap.payload_type: rtpmap
    for rtpmap in (
        RtpMap(0, "PCMU", 8000),
        RtpMap(3, "GSM", 8000),
        RtpMap(4, "G723", 8000),
        RtpMap(5, "DVI4", 8000),
        RtpMap(6, "DVI4", 16000),
        RtpMap(7, "LPC", 8000),
        RtpMap(8, "PCMA", 8000),
        RtpMap(9, "G722", 8000),
        RtpMap(10, "L16", 44100, 2),
        RtpMap(11, "L16", 44100),
        RtpMap(12, "QCELP", 8000),
        RtpMap(13, "CN", 8000),
        RtpMap(14, "MPA", 90000),
        RtpMap(15, "G728", 8000),
        RtpMap(16, "DVI4", 11025),
        RtpMap(17, "DVI4", 22050),
        RtpMap(18, "G729", 8000),
    )
}
"""RFC 3551 table 4: the static audio payload types, usable without ``a=rtpmap``."""

WARNING_TEXTS: Final = {
    300: "Incompatible network protocol",
    301: "Incompatible network address formats",
    302: "Incompatible transport protocol",
    303: "Incompatible bandwidth units",
    304: "Media type not available",
    305: "Incompatible media format",
    306: "Attribute not understood",
    307: "Session description parameter not understood",
    399: "Miscellaneous warning",
}
"""RFC 3261 §20.43 warning codes about a session description."""


class OfferAnswerError(ValueError):
    """Nothing usable is left in an offer (488) or an answer (hang up).

    ``str()`` is the reason for the log line; :attr:`warning_code` and
    :meth:`warning` are for the ``Warning`` header.
    """

    def __init__(self, reason: str, warning_code: int = 399) -> None:
        super().__init__(reason)
        self.warning_code = warning_code if warning_code in WARNING_TEXTS else 399

    @property
    def warning_text(self) -> str:
        return WARNING_TEXTS[self.warning_code]

    def warning(self, agent: str) -> str:
        """The ``Warning`` header value: ``305 <agent> "Incompatible media format"``."""
        return f'{self.warning_code} {agent} "{self.warning_text}"'


@dataclass(frozen=True, slots=True)
class ChosenCodec:
    """The audio codec of a call, with the peer's payload type number for it."""

    name: str
    """Our name for it: ``PCMU``, ``PCMA``, ``G722`` or ``opus``."""
    payload_type: int
    """As offered (both directions use the offerer's numbers)."""
    clock_rate_hz: int
    audio_rate_hz: int
    channels: int
    fmtp: str
    """The peer's ``a=fmtp`` parameters for it (what it wants to receive); ``""`` if none."""


@dataclass(frozen=True, slots=True)
class TelephoneEvent:
    """RFC 4733 events of a call: payload type and its clock (Hz, timestamp units per second)."""

    payload_type: int
    clock_rate_hz: int


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What one offer/answer exchange settled for the call's audio stream."""

    media_index: int
    """Which ``m=`` line (0-based) carries the audio."""
    codec: ChosenCodec
    telephone_event: TelephoneEvent | None
    """``None``: the peer offered no telephone-event we take (no RFC 4733 DTMF)."""
    remote_address: str
    """Where to send RTP per SDP (``c=`` media over session); latching may override it."""
    remote_port: int
    remote_rtcp_address: str
    remote_rtcp_port: int
    """``a=rtcp`` (RFC 3605), else RTP port + 1; the RTP port under :attr:`rtcp_mux`."""
    rtcp_mux: bool
    direction: Direction
    """Ours, as in our SDP: ``sendrecv``, ``sendonly`` (we hold), ``recvonly`` (held) ..."""
    remote_direction: Direction
    ptime_ms: int
    """Packet duration to send (ms), 10..60 in steps of 10."""
    on_hold: bool
    """The peer holds the call: it offered ``sendonly``/``inactive`` or ``c=0.0.0.0``."""

    @property
    def sending(self) -> bool:
        """Whether we send RTP (media timeout and pacing apply only then)."""
        return self.direction in ("sendrecv", "sendonly")

    @property
    def receiving(self) -> bool:
        """Whether RTP is expected from the peer (the media timeout applies only then)."""
        return self.direction in ("sendrecv", "recvonly")

    @property
    def samples_per_packet(self) -> int:
        """RTP timestamp step per packet (RTP clock units): 160 for G.711/G.722, 960 for Opus."""
        return self.codec.clock_rate_hz * self.ptime_ms // 1000


@dataclass(frozen=True, slots=True)
class Answer:
    """Our answer to an offer, and what it settled."""

    description: SessionDescription
    media: Negotiated

    def serialize(self) -> bytes:
        return self.description.serialize()


# -- answering -----------------------------------------------------------------------------


def answer_offer(
    offer: SessionDescription,
    *,
    local_ip: str,
    rtp_port: int,
    session_id: int,
    session_version: int,
    preferences: Sequence[str] = DEFAULT_PREFERENCES,
    offerer_order: bool = True,
    local_direction: Direction = "sendrecv",
    rtcp_mux: bool = False,
    keep_codec: str | None = None,
) -> Answer:
    """Answer ``offer`` with one audio stream on ``local_ip``:``rtp_port``.

    ``preferences`` names the codecs we take (``AUDIO_CODECS`` keys, any case);
    the codec is the offerer's first among them, or our first when
    ``offerer_order`` is false.  ``keep_codec`` (a re-offer) keeps the call's
    current codec if the offer still has it.  Our direction mirrors the offer's,
    limited to ``local_direction``.  ``rtcp_mux``: accept ``a=rtcp-mux`` when offered.
    Raises :class:`OfferAnswerError` when no stream is usable, ``ValueError``
    for bad arguments.
    """
    family = _check_local(local_ip, rtp_port, session_id, session_version)
    codecs = _codecs(preferences)
    sections: list[MediaDescription] = []
    negotiated: Negotiated | None = None
    failure: OfferAnswerError | None = None
    for index, media in enumerate(offer.media):
        if negotiated is None and media.kind == "audio" and media.port != 0:
            try:
                negotiated, section = _answer_audio(
                    offer,
                    index,
                    codecs,
                    family,
                    rtp_port=rtp_port,
                    offerer_order=offerer_order,
                    local_direction=local_direction,
                    rtcp_mux=rtcp_mux,
                    keep_codec=keep_codec,
                )
            except OfferAnswerError as exc:
                failure = failure or exc
            else:
                sections.append(section)
                continue
        sections.append(_rejected(media))
    if negotiated is None:
        raise failure or OfferAnswerError("the offer has no audio stream", 304)
    description = _description(local_ip, family, session_id, session_version, sections)
    return Answer(description, negotiated)


def _answer_audio(
    offer: SessionDescription,
    index: int,
    codecs: tuple[Codec, ...],
    family: int,
    *,
    rtp_port: int,
    offerer_order: bool,
    local_direction: Direction,
    rtcp_mux: bool,
    keep_codec: str | None,
) -> tuple[Negotiated, MediaDescription]:
    media = offer.media[index]
    _check_profile(media)
    address, null_address = _remote_address(offer, media, family)
    pt, rtpmap, codec = _choose_codec(media, codecs, offerer_order, keep_codec)
    event = _choose_event(media, media.payload_types(), codec)
    remote_direction = offer.direction_for(media)
    heard = _without_receiving(remote_direction) if null_address else remote_direction
    direction = _limit(_MIRROR[heard], local_direction)
    ptime_ms = _ptime(media)
    mux = rtcp_mux and media.rtcp_mux

    section = MediaDescription("audio", rtp_port, media.proto, [str(pt)])
    section.add_rtpmap(rtpmap)
    if codec.fmtp:
        section.add_attribute("fmtp", f"{pt} {codec.fmtp}")
    if event is not None:
        section.formats.append(str(event[0]))
        section.add_rtpmap(event[1])
        section.add_attribute("fmtp", f"{event[0]} {TELEPHONE_EVENT_8000.fmtp}")
    section.add_attribute("ptime", str(ptime_ms))
    if mux:
        section.add_attribute("rtcp-mux")
    section.add_attribute(direction)

    negotiated = _negotiated(
        index,
        pt=pt,
        rtpmap=rtpmap,
        codec=codec,
        event=event,
        remote=media,
        address=address,
        null_address=null_address,
        mux=mux,
        direction=direction,
        remote_direction=remote_direction,
        ptime_ms=ptime_ms,
    )
    return negotiated, section


def _rejected(media: MediaDescription) -> MediaDescription:
    """A refused stream: same media type and profile, port 0, one format (RFC 3264 §6)."""
    return MediaDescription(media.kind, 0, media.proto, media.formats[:1] or ["0"])


# -- offering ------------------------------------------------------------------------------


def make_offer(
    *,
    local_ip: str,
    rtp_port: int,
    session_id: int,
    session_version: int,
    codecs: Sequence[str] = DEFAULT_PREFERENCES,
    telephone_event: bool = True,
    ptime_ms: int = DEFAULT_PTIME_MS,
    direction: Direction = "sendrecv",
) -> SessionDescription:
    """Our offer: one ``RTP/AVP`` audio stream with ``codecs`` in that order.

    Static payload types for G.711/G.722, 96 for Opus; with ``telephone_event``,
    telephone-event at each clock the codecs use (102 at 48 kHz, 101 at 8 kHz).
    Raises ``ValueError`` for bad arguments.
    """
    family = _check_local(local_ip, rtp_port, session_id, session_version)
    if not MIN_PTIME_MS <= ptime_ms <= MAX_PTIME_MS or ptime_ms % 10:
        raise ValueError(f"ptime must be 10..60 ms in steps of 10, got {ptime_ms}")
    chosen = list(_codecs(codecs))
    if telephone_event:
        clocks = list(dict.fromkeys(codec.clock_rate_hz for codec in chosen))
        chosen += [e for clock in clocks for e in TELEPHONE_EVENTS if e.clock_rate_hz == clock]
    section = MediaDescription("audio", rtp_port, "RTP/AVP", [])
    for codec in chosen:
        section.formats.append(str(codec.payload_type))
        section.add_rtpmap(codec.rtpmap())
        if codec.fmtp:
            section.add_attribute("fmtp", f"{codec.payload_type} {codec.fmtp}")
    section.add_attribute("ptime", str(ptime_ms))
    section.add_attribute(direction)
    return _description(local_ip, family, session_id, session_version, [section])


def accept_answer(offer: SessionDescription, answer: SessionDescription) -> Negotiated:
    """What the peer's ``answer`` to our ``offer`` settled.

    The audio stream is the first one of ours the answer did not refuse.  The
    codec is the answer's first format that our offer listed with the same
    mapping; telephone-event likewise (at the codec's clock if both were kept).
    An answer may list several codecs (baresip keeps all it shares): the first
    is the call's codec, and baresip sends with it too; RTP in the others would
    count as an unknown payload type.
    Raises :class:`OfferAnswerError` when the answer leaves no usable audio.
    """
    if len(answer.media) != len(offer.media):
        raise OfferAnswerError(
            f"the answer has {len(answer.media)} media streams for the offer's {len(offer.media)}",
            399,
        )
    offered = [i for i, m in enumerate(offer.media) if m.kind == "audio" and m.port != 0]
    if not offered:
        raise OfferAnswerError("our offer has no audio stream", 304)
    index = next((i for i in offered if answer.media[i].port != 0), None)
    if index is None:
        raise OfferAnswerError("the peer refused the audio stream (port 0)", 304)
    ours, theirs = offer.media[index], answer.media[index]
    if theirs.kind != ours.kind or theirs.proto != ours.proto:
        raise OfferAnswerError(
            f"the answer turned {ours.kind} {ours.proto} into {theirs.kind} {theirs.proto}", 302
        )
    family = _offer_family(offer, ours)
    address, null_address = _remote_address(answer, theirs, family)

    listed = set(ours.payload_types())
    kept: list[tuple[int, RtpMap]] = []
    for pt in dict.fromkeys(theirs.payload_types()):
        mine, said = _format(ours, pt), _format(theirs, pt)
        if pt in listed and mine is not None and (said is None or _same_format(mine, said)):
            kept.append((pt, mine))
    audio = [
        (pt, rtpmap, codec)
        for pt, rtpmap in kept
        for codec in AUDIO_CODECS.values()
        if codec.matches(rtpmap)
    ]
    if not audio:
        raise OfferAnswerError(
            f"the answer keeps no audio format of our offer (it has {_describe(theirs)})", 305
        )
    pt, rtpmap, codec = audio[0]
    event = _choose_event(ours, [p for p, _ in kept], codec)

    remote_direction = answer.direction_for(theirs)
    heard = _without_receiving(remote_direction) if null_address else remote_direction
    direction = _limit(_MIRROR[heard], offer.direction_for(ours))
    ptime_ms = _ptime(theirs) if theirs.ptime_ms is not None else _ptime(ours)
    mux = ours.rtcp_mux and theirs.rtcp_mux
    return _negotiated(
        index,
        pt=pt,
        rtpmap=rtpmap,
        codec=codec,
        event=event,
        remote=theirs,
        address=address,
        null_address=null_address,
        mux=mux,
        direction=direction,
        remote_direction=remote_direction,
        ptime_ms=ptime_ms,
    )


def _negotiated(
    index: int,
    *,
    pt: int,
    rtpmap: RtpMap,
    codec: Codec,
    event: tuple[int, RtpMap] | None,
    remote: MediaDescription,
    address: str,
    null_address: bool,
    mux: bool,
    direction: Direction,
    remote_direction: Direction,
    ptime_ms: int,
) -> Negotiated:
    """What was agreed, from the peer's media section ``remote`` (its fmtp, ports)."""
    return Negotiated(
        media_index=index,
        codec=ChosenCodec(
            codec.name,
            pt,
            codec.clock_rate_hz,
            codec.audio_rate_hz,
            rtpmap.channels,
            remote.fmtps.get(pt, ""),
        ),
        telephone_event=None if event is None else TelephoneEvent(event[0], event[1].clock_rate_hz),
        remote_address=address,
        remote_port=remote.port,
        remote_rtcp_address=remote.rtcp_address or address,
        remote_rtcp_port=remote.port if mux else remote.rtcp_port,
        rtcp_mux=mux,
        direction=direction,
        remote_direction=remote_direction,
        ptime_ms=ptime_ms,
        on_hold=null_address or remote_direction in ("sendonly", "inactive"),
    )


# -- re-offers -----------------------------------------------------------------------------


def is_same_session(old: SessionDescription, new: SessionDescription) -> bool:
    """Whether ``new`` repeats ``old``: same ``o=`` (user, sess-id, address) and version.

    RFC 3264 §8: an unchanged version means an unchanged description (a session
    refresh); a peer may send it again and expect the same answer.
    """
    try:
        return old.origin_fields() == new.origin_fields()
    except ValueError:
        return False


class Negotiation:
    """One call's offer/answer on our side, across re-offers.

    Our ``o=`` sess-id stays; its version starts at ``session_id`` (a common
    choice) and goes up by one whenever our SDP changes.  A re-offer that
    repeats the last one (same ``o=`` version and the same media) gets the same
    answer back.  On :class:`OfferAnswerError` the state is unchanged: the
    session goes on as it was (RFC 3261 §14.2).
    """

    def __init__(
        self,
        *,
        local_ip: str,
        rtp_port: int,
        session_id: int,
        preferences: Sequence[str] = DEFAULT_PREFERENCES,
        offerer_order: bool = True,
        rtcp_mux: bool = False,
    ) -> None:
        _check_local(local_ip, rtp_port, session_id, session_id)
        _codecs(preferences)
        self.local_ip = local_ip
        self.rtp_port = rtp_port
        self.session_id = session_id
        self.session_version = session_id
        self.preferences = tuple(preferences)
        self.offerer_order = offerer_order
        self.rtcp_mux = rtcp_mux
        self.local: SessionDescription | None = None
        """The last SDP we sent (answer or offer)."""
        self.remote: SessionDescription | None = None
        """The last SDP the peer sent."""
        self.current: Negotiated | None = None
        self._offer: SessionDescription | None = None
        self._local_direction: Direction = "sendrecv"

    def answer(
        self, offer: SessionDescription, *, local_direction: Direction = "sendrecv"
    ) -> Answer:
        """Our answer to the peer's (re-)offer; raises :class:`OfferAnswerError` (488)."""
        if (
            self.local is not None
            and self.remote is not None
            and self.current is not None
            and is_same_session(self.remote, offer)
            and offer.media == self.remote.media
            and offer.connection == self.remote.connection
            and local_direction == self._local_direction
        ):
            return Answer(self.local, self.current)
        answer = answer_offer(
            offer,
            local_ip=self.local_ip,
            rtp_port=self.rtp_port,
            session_id=self.session_id,
            session_version=self.session_version,
            preferences=self.preferences,
            offerer_order=self.offerer_order,
            local_direction=local_direction,
            rtcp_mux=self.rtcp_mux,
            keep_codec=None if self.current is None else self.current.codec.name,
        )
        description = self._versioned(answer.description)
        self.local, self.remote, self.current = description, offer, answer.media
        self._offer, self._local_direction = None, local_direction
        return Answer(description, answer.media)

    def offer(self, *, direction: Direction = "sendrecv") -> SessionDescription:
        """Our (re-)offer: for a delayed-offer INVITE's 200, an outbound INVITE or a re-INVITE."""
        codecs: Sequence[str] = self.preferences
        if self.current is not None:
            codecs = [self.current.codec.name] + [
                name for name in self.preferences if name.lower() != self.current.codec.name.lower()
            ]
        offer = make_offer(
            local_ip=self.local_ip,
            rtp_port=self.rtp_port,
            session_id=self.session_id,
            session_version=self.session_version,
            codecs=codecs,
            direction=direction,
        )
        self._offer = self._versioned(offer)
        return self._offer

    def accept(self, answer: SessionDescription) -> Negotiated:
        """The peer's answer to our last :meth:`offer`; raises :class:`OfferAnswerError`.

        It may be called again for the same offer (the answer in a 183, then in the
        200); a peer's offer (:meth:`answer`) ends that.
        """
        if self._offer is None:
            raise OfferAnswerError("an answer arrived but no offer of ours is pending", 399)
        negotiated = accept_answer(self._offer, answer)
        self.local, self.remote, self.current = self._offer, answer, negotiated
        return negotiated

    def _versioned(self, description: SessionDescription) -> SessionDescription:
        """``description`` with our current version, bumped if it differs from what we last sent."""
        if self.local is not None and (
            description.media != self.local.media or description.connection != self.local.connection
        ):
            self.session_version += 1
        origin = replace(description.origin_fields(), session_version=self.session_version)
        return replace(description, origin=origin.value())


# -- helpers -------------------------------------------------------------------------------

_MIRROR: Final[dict[Direction, Direction]] = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def _without_receiving(direction: Direction) -> Direction:
    """A peer at ``c=0.0.0.0`` (RFC 2543 hold) receives nothing whatever it wrote."""
    return "sendonly" if direction in ("sendrecv", "sendonly") else "inactive"


def _limit(direction: Direction, allowed: Direction) -> Direction:
    """The directions both ``direction`` and ``allowed`` permit."""
    send = direction in ("sendrecv", "sendonly") and allowed in ("sendrecv", "sendonly")
    receive = direction in ("sendrecv", "recvonly") and allowed in ("sendrecv", "recvonly")
    if send and receive:
        return "sendrecv"
    if send:
        return "sendonly"
    return "recvonly" if receive else "inactive"


def _check_local(local_ip: str, rtp_port: int, session_id: int, session_version: int) -> int:
    """Check our own arguments; returns the IP version (4 or 6) of ``local_ip``."""
    try:
        address = ipaddress.ip_address(local_ip)
    except ValueError:
        raise ValueError(f"local_ip must be an IP address, got {local_ip!r}") from None
    if not 0 < rtp_port <= 65535:
        raise ValueError(f"rtp_port must be in 1..65535, got {rtp_port}")
    if session_id < 0 or session_version < 0:
        raise ValueError("session_id and session_version must be >= 0")
    return address.version


def _codecs(names: Sequence[str]) -> tuple[Codec, ...]:
    codecs = []
    for name in names:
        codec = AUDIO_CODECS.get(name.lower())
        if codec is None:
            raise ValueError(f"unknown codec {name!r} (one of opus, G722, PCMU, PCMA)")
        if codec not in codecs:
            codecs.append(codec)
    if not codecs:
        raise ValueError("no codecs given")
    return tuple(codecs)


def _description(
    local_ip: str, family: int, session_id: int, version: int, media: list[MediaDescription]
) -> SessionDescription:
    kind = "IP6" if family == 6 else "IP4"
    origin = Origin("-", str(session_id), version, "IN", kind, local_ip)
    return SessionDescription(origin.value(), "voxgate", local_ip, media=media)


def _check_profile(media: MediaDescription) -> None:
    if media.proto.upper() not in USABLE_PROFILES:
        raise OfferAnswerError(
            f"audio profile {media.proto[:40]} is not supported (RTP/AVP only, no SRTP)", 302
        )


def _offer_family(offer: SessionDescription, media: MediaDescription) -> int:
    """The IP version of our offer's address (``c=``, else ``o=``); 4 if it cannot be told."""
    candidates = [offer.connection_for(media) or ""]
    with contextlib.suppress(ValueError):
        candidates.append(offer.origin_fields().address)
    for text in candidates:
        try:
            return ipaddress.ip_address(text).version
        except ValueError:
            continue
    return 4


def _remote_address(
    sdp: SessionDescription, media: MediaDescription, family: int
) -> tuple[str, bool]:
    """``(address, is the null address)`` of ``media``; raises if it is missing or foreign."""
    address = sdp.connection_for(media)
    if not address:
        raise OfferAnswerError("the audio stream has no connection address (c=)", 399)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address, False  # a host name: resolving it is the RTP layer's business
    if ip.is_unspecified:
        return address, True
    if ip.version != family:
        raise OfferAnswerError(
            f"the audio stream is on IPv{ip.version}, we are on IPv{family}", 301
        )
    return address, False


def _format(media: MediaDescription, pt: int) -> RtpMap | None:
    """What payload type ``pt`` is in ``media``: its rtpmap, else the static assignment."""
    return media.rtpmaps.get(pt) or _STATIC_FORMATS.get(pt)


def _same_format(a: RtpMap, b: RtpMap) -> bool:
    return a.is_codec(b.encoding) and a.clock_rate_hz == b.clock_rate_hz


def _choose_codec(
    media: MediaDescription,
    codecs: tuple[Codec, ...],
    offerer_order: bool,
    keep_codec: str | None,
) -> tuple[int, RtpMap, Codec]:
    candidates: list[tuple[int, RtpMap, Codec]] = []
    for pt in dict.fromkeys(media.payload_types()):
        rtpmap = _format(media, pt)
        codec = next((c for c in codecs if rtpmap is not None and c.matches(rtpmap)), None)
        if rtpmap is not None and codec is not None:
            candidates.append((pt, rtpmap, codec))
    if not candidates:
        names = ", ".join(c.name for c in codecs)
        raise OfferAnswerError(
            f"no audio codec in common: the offer has {_describe(media)}; we take {names}", 305
        )
    if keep_codec is not None:
        for candidate in candidates:
            if candidate[2].name.lower() == keep_codec.lower():
                return candidate
    if offerer_order:
        return candidates[0]
    return min(candidates, key=lambda candidate: codecs.index(candidate[2]))


def _choose_event(
    media: MediaDescription, payload_types: Sequence[int], codec: Codec
) -> tuple[int, RtpMap] | None:
    """The telephone-event at the codec's clock, else any one we take (a mismatched clock)."""
    events = []
    for pt in dict.fromkeys(payload_types):
        rtpmap = media.rtpmaps.get(pt)
        if rtpmap is not None and any(e.matches(rtpmap) for e in TELEPHONE_EVENTS):
            events.append((pt, rtpmap))
    for event in events:
        if event[1].clock_rate_hz == codec.clock_rate_hz:
            return event
    return events[0] if events else None


def _ptime(media: MediaDescription) -> int:
    """The packet time asked for (10..60 ms, a multiple of 10), else 20 ms."""
    ptime = media.ptime_ms
    if ptime is not None and MIN_PTIME_MS <= ptime <= MAX_PTIME_MS and ptime % 10 == 0:
        maxptime = media.maxptime_ms
        return ptime if maxptime is None or maxptime >= ptime else DEFAULT_PTIME_MS
    maxptime = media.maxptime_ms
    if maxptime is not None and MIN_PTIME_MS <= maxptime < DEFAULT_PTIME_MS:
        return MIN_PTIME_MS
    return DEFAULT_PTIME_MS


def _describe(media: MediaDescription) -> str:
    """The offered formats for a reason, e.g. ``G729/8000, PT 97`` (at most 8)."""
    names = []
    for text in media.formats[:8]:
        number = len(text) <= 3 and text.isascii() and text.isdigit()
        rtpmap = _format(media, int(text)) if number else None
        if rtpmap is not None:
            names.append(f"{rtpmap.encoding[:20]}/{rtpmap.clock_rate_hz}")
        else:
            names.append(f"PT {text}" if number else repr(text[:20]))
    more = len(media.formats) - 8
    return ", ".join(names) + (f" and {more} more" if more > 0 else "") if names else "nothing"
