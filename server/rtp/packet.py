"""RTP packets (RFC 3550 §5.1): parse a received header, write an outgoing one.

Wire format, network byte order::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                             SSRC                              |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
    |                CSRC list: CC entries of 32 bits               |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    | if X: profile (16 bits) | length in 32-bit words (16 bits)    |
    |       extension data: length * 4 bytes                        |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                 payload ...                                   |
    |                 ... if P: padding, whose last byte counts it  |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

The timestamp counts samples of the payload format's RTP clock (8000 Hz for
PCMU, PCMA and G.722, 48000 Hz for Opus).  Payload types 72-76 are reserved
(RFC 3551 §6) because a packet with the marker set and such a type has the second
byte of an RTCP packet; :func:`is_rtcp` applies RFC 5761's demultiplexing rule for
peers that send RTCP on the RTP port (``a=rtcp-mux``).

The receive path parses without copying the payload (:class:`RtpHeader` keeps
offsets into the datagram); the send path writes into a buffer the sender owns
(:func:`build_rtp_into`, :func:`write_rtp_header_into`).  No asyncio here.
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "RTP_HEADER_SIZE",
    "RTP_VERSION",
    "RtpError",
    "RtpHeader",
    "build_rtp",
    "build_rtp_into",
    "is_rtcp",
    "parse_rtp",
    "write_rtp_header_into",
]

RTP_VERSION: Final = 2
RTP_HEADER_SIZE: Final = 12
"""Bytes of the fixed header (no CSRCs, no extension)."""

_FIXED = struct.Struct("!BBHII")
_EXT = struct.Struct("!HH")
_RESERVED_PT_LOW: Final = 72
_RESERVED_PT_HIGH: Final = 76


class RtpError(ValueError):
    """A datagram that is not a valid RTP packet; the message says why (for logs)."""


class RtpHeader:
    """Where the parts of one received RTP packet lie in its datagram.

    ``payload_offset``/``payload_length`` delimit the payload (CSRCs, extension
    and padding excluded) in bytes of ``data``; :attr:`payload` is a zero-copy
    view of it.  ``extension_profile`` is -1 without a header extension, else the
    16-bit profile, with its data at ``extension_offset`` (``extension_length``
    bytes).  ``timestamp`` is in RTP clock units; ``sequence`` is 16-bit.
    """

    __slots__ = (
        "csrc_count",
        "data",
        "extension_length",
        "extension_offset",
        "extension_profile",
        "marker",
        "padding_length",
        "payload_length",
        "payload_offset",
        "payload_type",
        "sequence",
        "ssrc",
        "timestamp",
    )

    data: bytes | bytearray | memoryview
    marker: bool
    payload_type: int
    sequence: int
    timestamp: int
    ssrc: int
    csrc_count: int
    extension_profile: int
    extension_offset: int
    extension_length: int
    padding_length: int
    payload_offset: int
    payload_length: int

    def __init__(self) -> None:
        self.data = b""
        self.marker = False
        self.payload_type = 0
        self.sequence = 0
        self.timestamp = 0
        self.ssrc = 0
        self.csrc_count = 0
        self.extension_profile = -1
        self.extension_offset = 0
        self.extension_length = 0
        self.padding_length = 0
        self.payload_offset = RTP_HEADER_SIZE
        self.payload_length = 0

    @property
    def payload(self) -> memoryview:
        """The payload bytes, a view into ``data`` (valid while ``data`` is)."""
        start = self.payload_offset
        return memoryview(self.data)[start : start + self.payload_length]

    def csrcs(self) -> list[int]:
        """The contributing sources (allocates; not for the per-packet path)."""
        return [
            int.from_bytes(self.data[12 + 4 * i : 16 + 4 * i], "big")
            for i in range(self.csrc_count)
        ]

    def __repr__(self) -> str:
        return (
            f"RtpHeader(pt={self.payload_type}, seq={self.sequence}, ts={self.timestamp}, "
            f"ssrc={self.ssrc:#010x}, marker={self.marker}, "
            f"payload={self.payload_offset}+{self.payload_length})"
        )


def _as_bytes_view(data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview:
    """``data`` itself, or a memoryview of it cast to unsigned bytes."""
    if isinstance(data, bytes | bytearray):
        return data
    if not isinstance(data, memoryview):
        raise RtpError(f"RTP data must be bytes-like, got {type(data).__name__}")
    try:
        if data.format == "B" and data.ndim == 1:
            return data
        return data.cast("B")
    except (TypeError, ValueError) as exc:  # non-contiguous, or released
        raise RtpError(f"RTP data is not a usable byte buffer: {exc}") from None


def parse_rtp(data: bytes | bytearray | memoryview, out: RtpHeader | None = None) -> RtpHeader:
    """Parse an RTP packet's header; raises only :class:`RtpError`.

    Fills ``out`` when given (the receive loop reuses one per call and allocates
    nothing else), else a new :class:`RtpHeader`.  ``out`` is left partly
    overwritten when the packet is refused.  Checks: at least 12 bytes, version
    2, CSRC list and extension within the datagram, padding count between 1 and
    the bytes left after the header, payload type not in the reserved 72-76.
    """
    if type(data) is not bytes:
        data = _as_bytes_view(data)
    size = len(data)
    if size < RTP_HEADER_SIZE:
        raise RtpError(f"RTP packet too short: {size} bytes, the header needs 12")
    b0, b1, seq, ts, ssrc = _FIXED.unpack_from(data)
    if b0 >> 6 != RTP_VERSION:
        raise RtpError(f"RTP version {b0 >> 6}, expected 2")
    pt = b1 & 0x7F
    if _RESERVED_PT_LOW <= pt <= _RESERVED_PT_HIGH:
        raise RtpError(f"RTP payload type {pt} is reserved (it collides with RTCP)")
    cc = b0 & 0x0F
    offset = RTP_HEADER_SIZE + 4 * cc
    if offset > size:
        raise RtpError(f"RTP CSRC list ({cc} entries) runs past the {size}-byte packet")
    hdr = RtpHeader() if out is None else out
    if b0 & 0x10:
        if offset + 4 > size:
            raise RtpError("RTP header extension truncated before its length field")
        profile, words = _EXT.unpack_from(data, offset)
        ext_start = offset + 4
        offset = ext_start + 4 * words
        if offset > size:
            raise RtpError(f"RTP header extension ({words} words) runs past the packet")
        hdr.extension_profile = profile
        hdr.extension_offset = ext_start
        hdr.extension_length = 4 * words
    else:
        hdr.extension_profile = -1
        hdr.extension_offset = 0
        hdr.extension_length = 0
    padding = 0
    if b0 & 0x20:
        padding = data[size - 1]
        if padding == 0 or padding > size - offset:
            raise RtpError(
                f"RTP padding count {padding} invalid for {size - offset} bytes after the header"
            )
    hdr.data = data
    hdr.marker = b1 > 0x7F
    hdr.payload_type = pt
    hdr.sequence = seq
    hdr.timestamp = ts
    hdr.ssrc = ssrc
    hdr.csrc_count = cc
    hdr.padding_length = padding
    hdr.payload_offset = offset
    hdr.payload_length = size - offset - padding
    return hdr


def is_rtcp(data: bytes | bytearray | memoryview) -> bool:
    """RFC 5761 §4 demultiplexing: True when the second byte is 192-223 (RTCP).

    Only meaningful on an rtcp-mux port; anything shorter than 2 bytes is not RTCP.
    """
    if len(data) < 2:
        return False
    second = data[1]
    return isinstance(second, int) and 192 <= second <= 223


def write_rtp_header_into(
    buf: bytearray | memoryview,
    *,
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    marker: bool = False,
) -> int:
    """Write a 12-byte header (V=2, no padding, extension or CSRC) at ``buf[0:12]``.

    ``seq`` is taken modulo 2**16 and ``ts`` modulo 2**32 (callers may just keep
    counting); ``pt`` must be 0-127 and ``ssrc`` a 32-bit value, else
    :class:`RtpError`.  Returns 12, the payload's offset.  Encoders can then write
    the payload straight into ``buf[12:]``.
    """
    if not 0 <= pt <= 0x7F:
        raise RtpError(f"payload type must be 0-127, got {pt}")
    if not 0 <= ssrc <= 0xFFFFFFFF:
        raise RtpError(f"SSRC must be a 32-bit unsigned value, got {ssrc}")
    _FIXED.pack_into(buf, 0, 0x80, pt | 0x80 if marker else pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    return RTP_HEADER_SIZE


def build_rtp_into(
    buf: bytearray | memoryview,
    *,
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    marker: bool = False,
    payload: bytes | bytearray | memoryview,
) -> int:
    """Write a whole packet (header + ``payload``) at the start of ``buf``; return its size.

    ``payload`` holds bytes (a memoryview of another format counts ``nbytes``).
    ``buf`` must have room for ``12 + len(payload)`` bytes, else :class:`RtpError`;
    it is never resized.  Header rules as in :func:`write_rtp_header_into`.
    """
    n = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    end = RTP_HEADER_SIZE + n
    if end > len(buf):
        raise RtpError(f"RTP packet of {end} bytes does not fit a {len(buf)}-byte buffer")
    write_rtp_header_into(buf, pt=pt, seq=seq, ts=ts, ssrc=ssrc, marker=marker)
    if isinstance(payload, memoryview) and payload.format != "B":
        payload = payload.cast("B")
    buf[RTP_HEADER_SIZE:end] = payload
    return end


def build_rtp(
    *,
    pt: int,
    seq: int,
    ts: int,
    ssrc: int,
    marker: bool = False,
    payload: bytes | bytearray | memoryview = b"",
) -> bytes:
    """A new packet as bytes (allocates; for tests, tools and rare packets)."""
    n = payload.nbytes if isinstance(payload, memoryview) else len(payload)
    buf = bytearray(RTP_HEADER_SIZE + n)
    build_rtp_into(buf, pt=pt, seq=seq, ts=ts, ssrc=ssrc, marker=marker, payload=payload)
    return bytes(buf)
