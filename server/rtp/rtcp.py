"""RTCP compound packets (RFC 3550 §6): build SR, RR, SDES, BYE and APP; parse any compound.

Every RTCP packet starts with the same 4-byte header, network byte order::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|  count  |  packet type  |  length (32-bit words - 1)    |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

and a compound packet is several of them back to back in one datagram.  Bodies:

* SR (200): SSRC, NTP timestamp (64 bits: seconds since 1900 . fraction),
  RTP timestamp, sender's packet count, sender's octet count, then ``count``
  report blocks.
* RR (201): SSRC, then ``count`` report blocks.  A report block (24 bytes) is:
  SSRC of the source, fraction lost (8 bits, 1/256 units), cumulative lost
  (signed 24 bits), extended highest sequence number, interarrival jitter (RTP
  clock units), LSR (middle 32 bits of the last SR's NTP time, 0 if none) and
  DLSR (delay since that SR, 1/65536 s).  Extra bytes after the blocks are
  profile extensions and are ignored.
* SDES (202): ``count`` chunks, each an SSRC followed by items (type byte,
  length byte, UTF-8 text), ended by a zero type byte and zero-padded to 32 bits.
  Item types: 1 CNAME, 2 NAME, 3 EMAIL, 4 PHONE, 5 LOC, 6 TOOL, 7 NOTE, 8 PRIV.
* BYE (203): ``count`` SSRCs, then optionally a reason (length byte + UTF-8),
  zero-padded to 32 bits.
* APP (204): ``count`` is the subtype; SSRC, a 4-character ASCII name, data.

When the P bit is set, the packet's last byte counts the padding bytes at its
end.  Other packet types (RTPFB 205, PSFB 206, XR 207, ...) are returned as
:class:`RtcpUnknown` and otherwise ignored.  :func:`parse_rtcp` raises only
:class:`RtcpError`; it does not insist that a compound starts with SR/RR, since
some peers send APP or BYE on their own.

Time helpers: the NTP time of a wall-clock instant, its middle 32 bits (the
LSR field) and the round-trip time RTT = now - LSR - DLSR (RFC 3550 §6.4.1),
all with time passed in.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, TypeAlias

__all__ = [
    "NTP_UNIX_OFFSET_S",
    "RTCP_APP",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "ReportBlock",
    "RtcpApp",
    "RtcpBye",
    "RtcpError",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtcpUnknown",
    "SdesChunk",
    "build_compound",
    "dlsr_from_seconds",
    "ntp_from_unix",
    "ntp_middle32",
    "parse_rtcp",
    "rtt_seconds",
]

RTCP_SR: Final = 200
RTCP_RR: Final = 201
RTCP_SDES: Final = 202
RTCP_BYE: Final = 203
RTCP_APP: Final = 204

SDES_END: Final = 0
SDES_CNAME: Final = 1

NTP_UNIX_OFFSET_S: Final = 2_208_988_800
"""Seconds from the NTP epoch (1900-01-01) to the Unix epoch (1970-01-01)."""

_HEADER = struct.Struct("!BBH")
_SENDER_INFO = struct.Struct("!IQIII")  # ssrc, ntp, rtp ts, packets, octets
_BLOCK = struct.Struct("!IB3sIIII")
_U32 = struct.Struct("!I")
_MAX_COUNT: Final = 31


class RtcpError(ValueError):
    """An RTCP packet that is malformed or cannot be built; the message says why."""


# -- typed packets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReportBlock:
    """Reception statistics about one source (24 bytes on the wire)."""

    ssrc: int
    fraction_lost: int
    """1/256 units, 0-255."""
    cumulative_lost: int
    """Signed 24-bit packet count."""
    highest_seq: int
    """Extended highest sequence number received."""
    jitter: int
    """RTP clock units."""
    lsr: int = 0
    """Middle 32 bits of the NTP time of the last SR received from the source (0: none)."""
    dlsr: int = 0
    """Delay since that SR, 1/65536 s."""

    def encode(self) -> bytes:
        _check_u32(self.ssrc, "report block SSRC")
        if not 0 <= self.fraction_lost <= 255:
            raise RtcpError(f"fraction lost must be 0-255, got {self.fraction_lost}")
        lost = min(0x7FFFFF, max(-0x800000, self.cumulative_lost)) & 0xFFFFFF
        for value, name in (
            (self.highest_seq, "highest sequence"),
            (self.jitter, "jitter"),
            (self.lsr, "LSR"),
            (self.dlsr, "DLSR"),
        ):
            _check_u32(value, name)
        return _BLOCK.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big"),
            self.highest_seq,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


@dataclass(frozen=True, slots=True)
class RtcpSenderReport:
    """SR: what the sender sent, plus reports about the sources it receives."""

    ssrc: int
    ntp_timestamp: int
    """64-bit NTP time of this report (see :func:`ntp_from_unix`)."""
    rtp_timestamp: int
    """The same instant on the RTP clock of the sender's stream."""
    packet_count: int
    octet_count: int
    """Payload bytes sent (headers and padding excluded)."""
    reports: tuple[ReportBlock, ...] = ()

    def encode(self) -> bytes:
        _check_u32(self.ssrc, "SSRC")
        if not 0 <= self.ntp_timestamp <= 0xFFFFFFFFFFFFFFFF:
            raise RtcpError(f"NTP timestamp must be 64-bit unsigned, got {self.ntp_timestamp}")
        _check_u32(self.rtp_timestamp, "RTP timestamp")
        # counters wrap modulo 2**32 on the wire (RFC 3550 §6.4.1)
        body = _SENDER_INFO.pack(
            self.ssrc,
            self.ntp_timestamp,
            self.rtp_timestamp,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        body += b"".join(block.encode() for block in self.reports)
        return _packet(RTCP_SR, _count(len(self.reports), "report blocks"), body)

    @property
    def lsr(self) -> int:
        """The LSR value a receiver of this report echoes back."""
        return ntp_middle32(self.ntp_timestamp)


@dataclass(frozen=True, slots=True)
class RtcpReceiverReport:
    """RR: reports from a participant that has not sent RTP recently."""

    ssrc: int
    reports: tuple[ReportBlock, ...] = ()

    def encode(self) -> bytes:
        _check_u32(self.ssrc, "SSRC")
        body = _U32.pack(self.ssrc) + b"".join(block.encode() for block in self.reports)
        return _packet(RTCP_RR, _count(len(self.reports), "report blocks"), body)


@dataclass(frozen=True, slots=True)
class SdesChunk:
    """One source's description items: ``(item type, text)`` pairs in wire order."""

    ssrc: int
    items: tuple[tuple[int, str], ...] = ()

    @property
    def cname(self) -> str | None:
        """The CNAME item, if present."""
        for kind, text in self.items:
            if kind == SDES_CNAME:
                return text
        return None

    def encode(self) -> bytes:
        _check_u32(self.ssrc, "SDES SSRC")
        out = bytearray(_U32.pack(self.ssrc))
        for kind, text in self.items:
            if not 1 <= kind <= 255:
                raise RtcpError(f"SDES item type must be 1-255, got {kind}")
            raw = text.encode("utf-8")
            if len(raw) > 255:
                raise RtcpError(f"SDES item of {len(raw)} bytes is longer than 255")
            out += bytes((kind, len(raw))) + raw
        out += b"\x00" * (4 - len(out) % 4)  # the end item, then zeros to 32 bits
        return bytes(out)


@dataclass(frozen=True, slots=True)
class RtcpSdes:
    """SDES: source descriptions, one chunk per source."""

    chunks: tuple[SdesChunk, ...] = ()

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> RtcpSdes:
        """The usual SDES: one chunk with just the CNAME."""
        return cls((SdesChunk(ssrc, ((SDES_CNAME, cname),)),))

    def encode(self) -> bytes:
        body = b"".join(chunk.encode() for chunk in self.chunks)
        return _packet(RTCP_SDES, _count(len(self.chunks), "SDES chunks"), body)


@dataclass(frozen=True, slots=True)
class RtcpBye:
    """BYE: the sources are leaving, optionally with a reason."""

    ssrcs: tuple[int, ...] = ()
    reason: str | None = None

    def encode(self) -> bytes:
        for ssrc in self.ssrcs:
            _check_u32(ssrc, "BYE SSRC")
        body = b"".join(_U32.pack(ssrc) for ssrc in self.ssrcs)
        if self.reason is not None:
            raw = self.reason.encode("utf-8")
            if len(raw) > 255:
                raise RtcpError(f"BYE reason of {len(raw)} bytes is longer than 255")
            body += bytes((len(raw),)) + raw
            body += b"\x00" * (-len(body) % 4)
        return _packet(RTCP_BYE, _count(len(self.ssrcs), "BYE sources"), body)


@dataclass(frozen=True, slots=True)
class RtcpApp:
    """APP: application-defined data (``name`` is 4 ASCII bytes, ``data`` 32-bit aligned)."""

    subtype: int
    ssrc: int
    name: bytes
    data: bytes = b""

    def encode(self) -> bytes:
        _check_u32(self.ssrc, "APP SSRC")
        if len(self.name) != 4:
            raise RtcpError(f"APP name must be 4 bytes, got {len(self.name)}")
        if len(self.data) % 4:
            raise RtcpError(f"APP data must be a multiple of 4 bytes, got {len(self.data)}")
        body = _U32.pack(self.ssrc) + bytes(self.name) + bytes(self.data)
        return _packet(RTCP_APP, _count(self.subtype, "APP subtype"), body)


@dataclass(frozen=True, slots=True)
class RtcpUnknown:
    """A packet of a type we do not interpret; kept whole for logging."""

    packet_type: int
    count: int
    body: bytes = field(repr=False)

    def encode(self) -> bytes:
        if not 0 <= self.packet_type <= 255:
            raise RtcpError(f"packet type must be 0-255, got {self.packet_type}")
        if len(self.body) % 4:
            raise RtcpError(f"RTCP body must be a multiple of 4 bytes, got {len(self.body)}")
        return _packet(self.packet_type, _count(self.count, "count"), bytes(self.body))


RtcpPacket: TypeAlias = (
    RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpApp | RtcpUnknown
)


# -- building --------------------------------------------------------------------


def _check_u32(value: int, name: str) -> None:
    if not 0 <= value <= 0xFFFFFFFF:
        raise RtcpError(f"{name} must be a 32-bit unsigned value, got {value}")


def _count(count: int, name: str) -> int:
    if not 0 <= count <= _MAX_COUNT:
        raise RtcpError(f"{name}: {count} does not fit the 5-bit count (0-31)")
    return count


def _packet(packet_type: int, count: int, body: bytes) -> bytes:
    """Header + ``body`` (a multiple of 4 bytes)."""
    words = len(body) // 4
    if words > 0xFFFF:
        raise RtcpError(f"RTCP packet of {len(body) + 4} bytes is too long")
    return _HEADER.pack(0x80 | count, packet_type, words) + body


def build_compound(packets: Iterable[RtcpPacket]) -> bytes:
    """The packets back to back, as one datagram (RFC 3550 §6.1: start with SR or RR).

    The usual report is ``[RtcpSenderReport(...) or RtcpReceiverReport(...),
    RtcpSdes.cname(ssrc, cname)]``, with an :class:`RtcpBye` appended at hangup.
    Raises :class:`RtcpError` for a field out of range.
    """
    return b"".join(packet.encode() for packet in packets)


# -- parsing ---------------------------------------------------------------------


def _text(raw: bytes | bytearray | memoryview) -> str:
    return bytes(raw).decode("utf-8", errors="replace")


def _report_blocks(body: memoryview, offset: int, count: int, kind: str) -> tuple[ReportBlock, ...]:
    end = offset + 24 * count
    if end > len(body):
        raise RtcpError(f"RTCP {kind} with {count} report blocks is truncated")
    blocks = []
    for pos in range(offset, end, 24):
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _BLOCK.unpack_from(body, pos)
        cumulative = int.from_bytes(lost, "big")
        if cumulative & 0x800000:
            cumulative -= 0x1000000
        blocks.append(ReportBlock(ssrc, fraction, cumulative, highest, jitter, lsr, dlsr))
    return tuple(blocks)


def _parse_sr(body: memoryview, count: int) -> RtcpSenderReport:
    if len(body) < _SENDER_INFO.size:
        raise RtcpError(f"RTCP SR body of {len(body)} bytes is shorter than the sender info")
    ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(body)
    blocks = _report_blocks(body, _SENDER_INFO.size, count, "SR")
    return RtcpSenderReport(ssrc, ntp, rtp_ts, packets, octets, blocks)


def _parse_rr(body: memoryview, count: int) -> RtcpReceiverReport:
    if len(body) < 4:
        raise RtcpError("RTCP RR body has no SSRC")
    (ssrc,) = _U32.unpack_from(body)
    return RtcpReceiverReport(ssrc, _report_blocks(body, 4, count, "RR"))


def _parse_sdes(body: memoryview, count: int) -> RtcpSdes:
    chunks = []
    pos = 0
    size = len(body)
    for _ in range(count):
        if pos + 4 > size:
            raise RtcpError(f"RTCP SDES truncated: {count} chunks announced")
        (ssrc,) = _U32.unpack_from(body, pos)
        pos += 4
        items = []
        while True:
            if pos >= size:
                raise RtcpError("RTCP SDES chunk has no end item")
            kind = body[pos]
            if kind == SDES_END:
                pos += 1
                break
            if pos + 2 > size:
                raise RtcpError("RTCP SDES item truncated before its length")
            length = body[pos + 1]
            start = pos + 2
            pos = start + length
            if pos > size:
                raise RtcpError(f"RTCP SDES item of {length} bytes runs past the packet")
            items.append((kind, _text(body[start:pos])))
        pos = (pos + 3) & ~3  # next chunk starts on a 32-bit boundary
        chunks.append(SdesChunk(ssrc, tuple(items)))
    return RtcpSdes(tuple(chunks))


def _parse_bye(body: memoryview, count: int) -> RtcpBye:
    end = 4 * count
    if end > len(body):
        raise RtcpError(f"RTCP BYE truncated: {count} sources announced")
    ssrcs = tuple(_U32.unpack_from(body, pos)[0] for pos in range(0, end, 4))
    reason = None
    if end < len(body):
        length = body[end]
        if end + 1 + length > len(body):
            raise RtcpError(f"RTCP BYE reason of {length} bytes runs past the packet")
        reason = _text(body[end + 1 : end + 1 + length])
    return RtcpBye(ssrcs, reason)


def _parse_app(body: memoryview, subtype: int) -> RtcpApp:
    if len(body) < 8:
        raise RtcpError("RTCP APP body shorter than its SSRC and name")
    (ssrc,) = _U32.unpack_from(body)
    return RtcpApp(subtype, ssrc, bytes(body[4:8]), bytes(body[8:]))


def parse_rtcp(data: bytes | bytearray | memoryview) -> list[RtcpPacket]:
    """Every packet of a compound RTCP datagram, in order; raises only :class:`RtcpError`.

    The datagram must be a whole number of valid packets (version 2, lengths
    within the datagram, padding count valid).  Unknown types become
    :class:`RtcpUnknown`.
    """
    try:
        view = memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
    except (TypeError, ValueError) as exc:
        raise RtcpError(f"RTCP data is not a usable byte buffer: {exc}") from None
    size = len(view)
    if size < 4:
        raise RtcpError(f"RTCP datagram too short: {size} bytes")
    packets: list[RtcpPacket] = []
    pos = 0
    while pos < size:
        if size - pos < 4:
            raise RtcpError(f"{size - pos} trailing bytes after the last RTCP packet")
        b0, packet_type, words = _HEADER.unpack_from(view, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}, expected 2")
        end = pos + 4 + 4 * words
        if end > size:
            raise RtcpError(
                f"RTCP packet type {packet_type} claims {4 + 4 * words} bytes, "
                f"only {size - pos} left"
            )
        body_end = end
        if b0 & 0x20:
            padding = view[end - 1]
            if padding == 0 or padding > 4 * words:
                raise RtcpError(f"RTCP padding count {padding} invalid")
            body_end -= padding
        body = view[pos + 4 : body_end]
        count = b0 & 0x1F
        if packet_type == RTCP_SR:
            packets.append(_parse_sr(body, count))
        elif packet_type == RTCP_RR:
            packets.append(_parse_rr(body, count))
        elif packet_type == RTCP_SDES:
            packets.append(_parse_sdes(body, count))
        elif packet_type == RTCP_BYE:
            packets.append(_parse_bye(body, count))
        elif packet_type == RTCP_APP:
            packets.append(_parse_app(body, count))
        else:
            packets.append(RtcpUnknown(packet_type, count, bytes(body)))
        pos = end
    return packets


# -- NTP time and round-trip time ---------------------------------------------------


def ntp_from_unix(unix_s: float) -> int:
    """64-bit NTP timestamp (32.32 fixed point, seconds since 1900) of a Unix time in s."""
    if not 0 <= unix_s + NTP_UNIX_OFFSET_S < 1 << 32:
        raise RtcpError(f"Unix time {unix_s} s is outside the NTP era")
    return round((unix_s + NTP_UNIX_OFFSET_S) * (1 << 32)) & 0xFFFFFFFFFFFFFFFF


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of a 64-bit NTP timestamp (16.16 fixed point seconds): LSR units."""
    return (ntp >> 16) & 0xFFFFFFFF


def dlsr_from_seconds(delay_s: float) -> int:
    """A DLSR field (1/65536 s units) for ``delay_s`` seconds, clamped to 32 bits."""
    return min(0xFFFFFFFF, max(0, round(delay_s * 65536)))


def rtt_seconds(now_middle32: int, lsr: int, dlsr: int) -> float | None:
    """RTT = now - LSR - DLSR in seconds, from a received report block.

    ``now_middle32`` is :func:`ntp_middle32` of the arrival time.  None when the
    block has no LSR (the peer got no SR from us yet) or the result is negative
    (clocks inconsistent).  Arithmetic is modulo 2**32, so era wraps are fine.
    """
    if lsr == 0:
        return None
    rtt = (now_middle32 - lsr - dlsr) & 0xFFFFFFFF
    if rtt > 0x7FFFFFFF:
        return None
    return rtt / 65536
