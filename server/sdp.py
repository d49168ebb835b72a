"""SDP (RFC 8866, formerly RFC 4566): parse a session description into typed parts.

Only the structure is checked here: the ``<type>=<value>`` lines, their order
(``v=`` first, media sections after the session part), ``m=`` and ``c=`` fields,
and ``a=rtpmap`` / ``a=fmtp`` of the formats a media section lists.  What a
front door accepts (codecs, ICE, DTLS) is its own decision, made on the parsed
:class:`SessionDescription`.  Every problem raises :class:`SdpError` with a
reason fit for a 400/488 response; nothing else escapes :func:`parse_sdp`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

MAX_SDP_BYTES: Final = 65_536
_MAX_NUMBER_DIGITS: Final = 10
_LINE_TYPES: Final = frozenset("vosiuepcbtrzkam")


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

    def attribute(self, name: str) -> str | None:
        """The value of the first ``a=name``, or ``None``."""
        for key, value in self.attributes:
            if key == name:
                return value
        return None

    def attribute_values(self, name: str) -> list[str]:
        return [value for key, value in self.attributes if key == name]

    def payload_types(self) -> list[int]:
        """The RTP payload types listed on the ``m=`` line (RTP profiles only)."""
        return [int(f) for f in self.formats if _is_number(f)]


@dataclass(slots=True)
class SessionDescription:
    """A parsed session description: the session-level part and its media sections."""

    origin: str
    session_name: str
    connection: str | None = None
    attributes: list[tuple[str, str]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    def attribute(self, name: str) -> str | None:
        for key, value in self.attributes:
            if key == name:
                return value
        return None


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
    origin = name = None
    media: MediaDescription | None = None
    pending_session: list[tuple[str, str]] = []
    connection: str | None = None
    for number, line in enumerate(lines[1:], start=2):
        if len(line) < 2 or line[1] != "=" or line[0] not in _LINE_TYPES:
            raise SdpError(f"SDP line {number} is not <type>=<value>: {line[:40]!r}")
        kind, value = line[0], line[2:]
        if kind == "m":
            if session is None:
                session = _session(origin, name, connection, pending_session)
            media = _media_line(value, number)
            session.media.append(media)
        elif kind == "o":
            origin = value
        elif kind == "s":
            name = value
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
    return session


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
        raise SdpError(f"SDP line {number}: a={name} has a bad payload type {pt_text[:10]!r}")
    pt = int(pt_text)
    if name == "fmtp":
        media.fmtps[pt] = rest
        return
    parts = rest.strip().split("/")
    if len(parts) not in (2, 3) or not parts[0] or not all(_is_number(p) for p in parts[1:]):
        raise SdpError(f"SDP line {number}: a=rtpmap must be <pt> <encoding>/<rate>[/<channels>]")
    rate, channels = int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    if rate <= 0 or not 1 <= channels <= 8:
        raise SdpError(f"SDP line {number}: a=rtpmap rate or channels out of range")
    media.rtpmaps[pt] = RtpMap(pt, parts[0], rate, channels)
