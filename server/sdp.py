"""SDP (RFC 8866, formerly RFC 4566): parse a session description into typed parts, and write one.

The wire format, as far as we read and write it::

    v=0
    o=<username> <sess-id> <sess-version> IN IP4|IP6 <address>
    s=<session name>
    c=IN IP4|IP6 <address>[/<ttl>]          (session level, or per media section)
    b=<bwtype>:<bandwidth>                  (any number, session or media level)
    t=<start> <stop>                        (the first one is kept; "0 0" if none)
    a=<name>[:<value>]                      (session attributes)
    m=<media> <port>[/<count>] <proto> <fmt> ...
    c=...  b=...  a=...                     (that media section's lines)

``i=``, ``u=``, ``e=``, ``p=``, ``r=``, ``z=`` and ``k=`` lines are accepted and
dropped.  Only the structure is checked here: the ``<type>=<value>`` lines, their
order (``v=`` first, media sections after the session part), ``o=``, ``m=`` and
``c=`` fields, and ``a=rtpmap`` / ``a=fmtp`` of the formats a media section lists.
What a front door accepts (codecs, ICE, DTLS) is its own decision, made on the
parsed :class:`SessionDescription` (for SIP: :mod:`server.sip.offeranswer`).
Every problem raises :class:`SdpError` with a reason fit for a 400/488 response;
nothing else escapes :func:`parse_sdp`.

:func:`format_sdp` writes lines in the canonical order (v o s c b t a, then per
media section m c b a) with CRLF ends; ``parse_sdp(format_sdp(d)) == d`` for every
``d`` that :func:`parse_sdp` returned.  The ``attributes`` lists are what is
written: ``rtpmaps`` and ``fmtps`` are indexes of them, kept in step by
:meth:`MediaDescription.add_attribute`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal, get_args

MAX_SDP_BYTES: Final = 65_536
_MAX_NUMBER_DIGITS: Final = 10
_MAX_VERSION_DIGITS: Final = 20
"""``o=`` sess-version is often a 64-bit number (up to 20 digits)."""
_LINE_TYPES: Final = frozenset("vosiuepcbtrzkam")

Direction = Literal["sendrecv", "sendonly", "recvonly", "inactive"]
"""A stream's direction attribute (RFC 3264 §5.1); none written means ``sendrecv``."""
DIRECTIONS: Final[tuple[Direction, ...]] = get_args(Direction)


def _is_number(text: str) -> bool:
    """ASCII digits only, of a sane length (``str.isdigit`` takes "²" and "٣" too)."""
    return 0 < len(text) <= _MAX_NUMBER_DIGITS and text.isascii() and text.isdigit()


class SdpError(ValueError):
    """The text is not a usable session description; ``str()`` is the reason."""


@dataclass(frozen=True, slots=True)
class RtpMap:
    """``a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]``."""

    payload_type: int
    encoding: str
    """As written (case kept); compare with :meth:`is_codec`."""
    clock_rate_hz: int
    channels: int = 1

    def is_codec(self, name: str) -> bool:
        return self.encoding.lower() == name.lower()

    def value(self) -> str:
        """The ``a=rtpmap`` value: ``<pt> <encoding>/<rate>[/<channels>]`` (channels if not 1)."""
        text = f"{self.payload_type} {self.encoding}/{self.clock_rate_hz}"
        return text if self.channels == 1 else f"{text}/{self.channels}"


@dataclass(frozen=True, slots=True)
class Origin:
    """The ``o=`` fields: who made the description and which version of it this is."""

    username: str
    session_id: str
    """Digits by the RFC; kept as text and compared as text."""
    session_version: int
    """Goes up by one each time the description changes (RFC 3264 §8)."""
    network_type: str = "IN"
    address_type: str = "IP4"
    address: str = "127.0.0.1"

    def value(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.network_type} {self.address_type} {self.address}"
        )


@dataclass(slots=True)
class MediaDescription:
    """One ``m=`` section and the lines under it."""

    kind: str
    """``audio``, ``video``, ``application``, ..."""
    port: int
    proto: str
    formats: list[str]
    connection: str | None = None
    """The address of this section's ``c=`` line, if it has one."""
    attributes: list[tuple[str, str]] = field(default_factory=list)
    """``(name, value)`` of every ``a=`` line, in order; value ``""`` for flags."""
    rtpmaps: dict[int, RtpMap] = field(default_factory=dict)
    fmtps: dict[int, str] = field(default_factory=dict)
    bandwidths: list[str] = field(default_factory=list)
    """The value of every ``b=`` line of this section (``AS:64``), in order."""

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name``, or ``None``."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value for key, value in self.attributes if key == name]

    def add_attribute(self, name: str, value: str = "") -> None:
        """Append ``a=name[:value]``; an ``rtpmap``/``fmtp`` also goes into its index.

        Raises :class:`SdpError` for an ``rtpmap``/``fmtp`` value that does not parse.
        """
        _media_attribute(self, (name, value), 0)
        self.attributes.append((name, value))

    def add_rtpmap(self, rtpmap: RtpMap) -> None:
        self.add_attribute("rtpmap", rtpmap.value())

    def payload_types(self) -> list[int]:
        """The RTP payload types listed on the ``m=`` line (RTP profiles only)."""
        return [int(f) for f in self.formats if _is_number(f)]

    @property
    def direction(self) -> Direction | None:
        """This section's own direction attribute (the first one), or ``None``."""
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return None

    @property
    def ptime_ms(self) -> int | None:
        """``a=ptime`` in whole ms (RFC 8866 §6.4), or ``None`` when absent or not a number."""
        return _milliseconds(self.attribute("ptime"))

    @property
    def maxptime_ms(self) -> int | None:
        """``a=maxptime`` in whole ms, or ``None`` when absent or not a number."""
        return _milliseconds(self.attribute("maxptime"))

    @property
    def rtcp_mux(self) -> bool:
        """``a=rtcp-mux`` (RFC 5761): RTCP shares the RTP port."""
        return self.attribute("rtcp-mux") is not None

    @property
    def rtcp_port(self) -> int:
        """RTCP port: ``a=rtcp:`` (RFC 3605) if valid, else RTP port + 1; 0 when disabled."""
        if self.port == 0:
            return 0
        fields = (self.attribute("rtcp") or "").split()
        if fields and _is_number(fields[0]) and 0 < int(fields[0]) <= 65535:
            return int(fields[0])
        return self.port + 1 if self.port < 65535 else self.port

    @property
    def rtcp_address(self) -> str | None:
        """The address of ``a=rtcp:<port> IN IP4|IP6 <address>``, or ``None`` (use the RTP one)."""
        fields = (self.attribute("rtcp") or "").split()
        if len(fields) == 4 and fields[1] == "IN" and fields[2] in ("IP4", "IP6"):
            return fields[3]
        return None


@dataclass(slots=True)
class SessionDescription:
    """A parsed session description: the session-level part and its media sections."""

    origin: str
    """The ``o=`` value as written; :meth:`origin_fields` splits it."""
    session_name: str
    connection: str | None = None
    attributes: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    timing: str = "0 0"
    """The first ``t=`` value (``<start> <stop>``); ``"0 0"``, an unbounded session, if none."""
    bandwidths: list[str] = field(default_factory=list)
    """The value of every session-level ``b=`` line, in order."""

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def origin_fields(self) -> Origin:
        """``o=`` split into its six fields; raises :class:`SdpError` if it does not split."""
        return _origin(self.origin, 0)

    def connection_for(self, media: MediaDescription) -> str | None:
        """The address ``media`` is reached at: its own ``c=``, else the session's."""
        return media.connection if media.connection is not None else self.connection

    def direction_for(self, media: MediaDescription) -> Direction:
        """``media``'s direction: its own attribute, else the session's, else ``sendrecv``."""
        if media.direction is not None:
            return media.direction
        for key, _ in self.attributes:
            if key in DIRECTIONS:
                return key
        return "sendrecv"

    def serialize(self) -> bytes:
        """:func:`format_sdp` as UTF-8 bytes, ready for a message body."""
        return format_sdp(self).encode("utf-8")


def parse_sdp(text: str | bytes, max_bytes: int = MAX_SDP_BYTES) -> SessionDescription:
    """Parse ``text``; raises :class:`SdpError` saying what is wrong."""
    if isinstance(text, bytes):
        if len(text) > max_bytes:
            raise SdpError(f"SDP too large ({len(text)} bytes > {max_bytes})")
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SdpError("SDP is not UTF-8 text") from None
    if len(text) > max_bytes:
        raise SdpError(f"SDP too large ({len(text)} characters > {max_bytes})")
    lines = [line for line in text.replace("\r\n", "\n").split("\n") if line]
    if not lines or lines[0] != "v=0":
        raise SdpError("SDP must start with v=0")
    session: SessionDescription | None = None
    origin = name = timing = None
    media: MediaDescription | None = None
    pending_session: list[tuple[str, str]] = []
    bandwidths: list[str] = []
    connection: str | None = None
    for number, line in enumerate(lines[1:], start=2):
        if len(line) < 2 or line[1] != "=" or line[0] not in _LINE_TYPES:
            raise SdpError(f"SDP line {number} is not <type>=<value>: {line[:40]!r}")
        if "\r" in line or "\x00" in line:
            raise SdpError(f"SDP line {number} holds a bare CR or a NUL")
        kind, value = line[0], line[2:]
        if kind == "m":
            if session is None:
                session = _session(origin, name, connection, pending_session)
                session.timing = timing or session.timing
                session.bandwidths = bandwidths
            media = _media_line(value, number)
            session.media.append(media)
        elif kind == "o":
            _origin(value, number)
            origin = value
        elif kind == "s":
            name = value
        elif kind == "t":
            timing = timing or value
        elif kind == "b":
            (media.bandwidths if media is not None else bandwidths).append(value)
        elif kind == "c":
            address = _connection(value, number)
            if media is not None:
                media.connection = address
            else:
                connection = address
        elif kind == "a":
            attribute = _attribute(value)
            if media is None:
                pending_session.append(attribute)
            else:
                media.attributes.append(attribute)
                _media_attribute(media, attribute, number)
    if session is None:
        session = _session(origin, name, connection, pending_session)
        session.timing = timing or session.timing
        session.bandwidths = bandwidths
    return session


def format_sdp(description: SessionDescription) -> str:
    """``description`` as SDP text: canonical line order, CRLF line ends.

    Raises :class:`SdpError` if a field holds CR, LF or NUL (it would inject lines).
    """
    lines = ["v=0", f"o={description.origin}", f"s={description.session_name}"]
    if description.connection is not None:
        lines.append(_connection_line(description.connection))
    lines.extend(f"b={value}" for value in description.bandwidths)
    lines.append(f"t={description.timing}")
    lines.extend(_attribute_line(attribute) for attribute in description.attributes)
    for media in description.media:
        lines.append(f"m={media.kind} {media.port} {media.proto} {' '.join(media.formats)}")
        if media.connection is not None:
            lines.append(_connection_line(media.connection))
        lines.extend(f"b={value}" for value in media.bandwidths)
        lines.extend(_attribute_line(attribute) for attribute in media.attributes)
    for line in lines:
        if "\r" in line or "\n" in line or "\x00" in line:
            raise SdpError(f"cannot write an SDP line holding CR, LF or NUL: {line[:40]!r}")
    return "\r\n".join(lines) + "\r\n"


def _connection_line(address: str) -> str:
    return f"c=IN {'IP6' if ':' in address else 'IP4'} {address}"


def _attribute_line(attribute: tuple[str, str]) -> str:
    name, value = attribute
    return f"a={name}:{value}" if value else f"a={name}"


def _origin(value: str, number: int) -> Origin:
    parts = value.split()
    where = _where(number)
    if len(parts) != 6:
        raise SdpError(
            f"{where}o= needs <user> <sess-id> <sess-version> <nettype> <addrtype> <addr>"
        )
    version = parts[2]
    if not (len(version) <= _MAX_VERSION_DIGITS and version.isascii() and version.isdigit()):
        raise SdpError(f"{where}o= has a bad session version {version[:22]!r}")
    return Origin(parts[0], parts[1], int(version), parts[3], parts[4], parts[5])


def _where(number: int) -> str:
    """The start of a reason: the line number when there is one (0: not from a text)."""
    return f"SDP line {number}: " if number else "SDP: "


def _milliseconds(value: str | None) -> int | None:
    """A whole number of ms from an attribute value such as ``20`` or ``20.0``."""
    if value is None:
        return None
    text = value.strip()
    if not 0 < len(text) <= _MAX_NUMBER_DIGITS or not text.isascii():
        return None
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        return None
    return int(whole)


def _session(
    origin: str | None, name: str | None, connection: str | None, attributes: list[tuple[str, str]]
) -> SessionDescription:
    if origin is None:
        raise SdpError("SDP has no o= line")
    if name is None:
        raise SdpError("SDP has no s= line")
    return SessionDescription(origin, name, connection, attributes)


def _media_line(value: str, number: int) -> MediaDescription:
    parts = value.split()
    if len(parts) < 4:
        raise SdpError(f"SDP line {number}: m= needs <media> <port> <proto> <fmt>...")
    port_text = parts[1].partition("/")[0]
    if not _is_number(port_text) or int(port_text) > 65535:
        raise SdpError(f"SDP line {number}: bad port {parts[1]!r}")
    return MediaDescription(kind=parts[0], port=int(port_text), proto=parts[2], formats=parts[3:])


def _connection(value: str, number: int) -> str:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        raise SdpError(f"SDP line {number}: c= must be IN IP4|IP6 <address>")
    return parts[2].partition("/")[0]


def _attribute(value: str) -> tuple[str, str]:
    name, _, rest = value.partition(":")
    return name, rest


def _media_attribute(media: MediaDescription, attribute: tuple[str, str], number: int) -> None:
    name, value = attribute
    if name not in ("rtpmap", "fmtp"):
        return
    pt_text, _, rest = value.partition(" ")
    if not _is_number(pt_text) or int(pt_text) > 127:
        raise SdpError(f"{_where(number)}a={name} has a bad payload type {pt_text[:10]!r}")
    pt = int(pt_text)
    if name == "fmtp":
        media.fmtps[pt] = rest
        return
    parts = rest.strip().split("/")
    if len(parts) not in (2, 3) or not parts[0] or not all(_is_number(p) for p in parts[1:]):
        raise SdpError(f"{_where(number)}a=rtpmap must be <pt> <encoding>/<rate>[/<channels>]")
    rate, channels = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    if rate <= 0 or not 1 <= channels <= 8:
        raise SdpError(f"{_where(number)}a=rtpmap rate or channels out of range")
    media.rtpmaps[pt] = RtpMap(pt, parts[0], rate, channels)
