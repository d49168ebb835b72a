"""RTCP compound packets (RFC 3550 §6): byte-exact building, parsing, round trips, fuzzing."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.rtp.rtcp import (
    NTP_UNIX_OFFSET_S,
    ReportBlock,
    RtcpApp,
    RtcpBye,
    RtcpError,
    RtcpPacket,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    SdesChunk,
    build_compound,
    dlsr_from_seconds,
    ntp_from_unix,
    ntp_middle32,
    parse_rtcp,
    rtt_seconds,
)

BLOCK = ReportBlock(
    ssrc=0xAABBCCDD,
    fraction_lost=0x19,
    cumulative_lost=10,
    highest_seq=0x00010005,
    jitter=0x20,
    lsr=0x12345678,
    dlsr=0x00010000,
)
BLOCK_BYTES = bytes.fromhex("aabbccdd1900000a00010005000000201234567800010000")

# SR: V=2 RC=1 PT=200 length 12 words; SSRC, NTP, RTP ts, packets, octets, one block
SR = RtcpSenderReport(
    ssrc=0x11223344,
    ntp_timestamp=0xE1B2C3D4_80000000,
    rtp_timestamp=8000,
    packet_count=100,
    octet_count=16000,
    reports=(BLOCK,),
)
SR_BYTES = bytes.fromhex("81c8000c11223344e1b2c3d48000000000001f400000006400003e80") + BLOCK_BYTES
RR = RtcpReceiverReport(ssrc=0x11223344, reports=(BLOCK,))
RR_BYTES = bytes.fromhex("81c9000711223344") + BLOCK_BYTES
# SDES: one chunk, CNAME "user@host" (9 bytes) + end item = 16 bytes
SDES = RtcpSdes.cname(0x11223344, "user@host")
SDES_BYTES = bytes.fromhex("81ca0004112233440109") + b"user@host" + b"\x00"
BYE = RtcpBye((0x11223344,), "bye")
BYE_BYTES = bytes.fromhex("81cb00021122334403") + b"bye"
APP = RtcpApp(subtype=1, ssrc=0x11223344, name=b"STAT", data=b"\x00\x01\x02\x03abcd")
APP_BYTES = bytes.fromhex("81cc000411223344") + b"STAT" + b"\x00\x01\x02\x03abcd"


@pytest.mark.parametrize(
    ("packet", "wire"),
    [
        (SR, SR_BYTES),
        (RR, RR_BYTES),
        (SDES, SDES_BYTES),
        (BYE, BYE_BYTES),
        (APP, APP_BYTES),
        (RtcpBye((1, 2)), bytes.fromhex("82cb00020000000100000002")),
        (RtcpReceiverReport(7), bytes.fromhex("80c9000100000007")),
        (RtcpSdes(), bytes.fromhex("80ca0000")),
    ],
)
def test_packets_are_byte_exact_both_ways(packet: RtcpPacket, wire: bytes) -> None:
    assert packet.encode() == wire
    assert parse_rtcp(wire) == [packet]


def test_sdes_pads_with_a_whole_word_when_items_end_on_a_boundary() -> None:
    # ssrc + item "ab" (4 bytes) = 8: the end item needs a fresh word of zeros
    chunk = SdesChunk(5, ((1, "ab"),))
    assert chunk.encode() == bytes.fromhex("000000050102") + b"ab" + bytes(4)
    sdes = RtcpSdes((chunk, SdesChunk(6, ((1, "c"), (6, "voxgate")))))
    assert parse_rtcp(sdes.encode()) == [sdes]
    assert sdes.chunks[1].cname == "c"
    assert SdesChunk(9).cname is None


def test_baresip_like_bye_compound() -> None:
    """What a softphone sends at hangup: SR (reporting on us) + SDES CNAME + BYE."""
    wire = (
        bytes.fromhex("81c8000c2f0c1a7ee9a1b2c3004189370003e8000000009600005dc0")
        + bytes.fromhex("5eed1234000000000000af2100000005b2c3004100003333")
        # SDES: ssrc, CNAME item (type 1, 18 bytes), end item + 3 bytes padding: 7 words
        + bytes.fromhex("81ca00072f0c1a7e0112")
        + b"alice@192.168.1.20"
        + bytes(4)
        + bytes.fromhex("81cb00012f0c1a7e")
    )
    packets = parse_rtcp(wire)
    assert [type(p) for p in packets] == [RtcpSenderReport, RtcpSdes, RtcpBye]
    sr, sd, bye = packets
    assert isinstance(sr, RtcpSenderReport)
    assert (sr.ssrc, sr.packet_count, sr.octet_count, sr.rtp_timestamp) == (
        0x2F0C1A7E,
        150,
        24000,
        0x3E800,
    )
    assert sr.ntp_timestamp == 0xE9A1B2C3_00418937
    (block,) = sr.reports
    assert (block.ssrc, block.fraction_lost, block.cumulative_lost) == (0x5EED1234, 0, 0)
    assert (block.highest_seq, block.jitter, block.lsr, block.dlsr) == (
        0xAF21,
        5,
        0xB2C30041,
        0x3333,
    )
    assert isinstance(sd, RtcpSdes) and sd.chunks[0].cname == "alice@192.168.1.20"
    assert bye == RtcpBye((0x2F0C1A7E,), None)
    assert build_compound(packets) == wire


def test_app_and_unknown_types_are_tolerated() -> None:
    nack = bytes.fromhex("81cd0003000000010000000200640000")  # RTPFB generic NACK
    xr = bytes.fromhex("80cf00020000000100000000")
    packets = parse_rtcp(RR_BYTES + APP_BYTES + nack + xr)
    assert packets == [
        RR,
        APP,
        RtcpUnknown(205, 1, bytes.fromhex("000000010000000200640000")),
        RtcpUnknown(207, 0, bytes.fromhex("0000000100000000")),
    ]
    assert build_compound(packets) == RR_BYTES + APP_BYTES + nack + xr


def test_app_alone_and_bye_alone_parse() -> None:
    assert parse_rtcp(APP_BYTES) == [APP]
    assert parse_rtcp(BYE_BYTES) == [BYE]


def test_padding_is_removed() -> None:
    padded = bytes.fromhex("a0c900020000000700000004")  # RR, P=1, 4 bytes padding
    assert parse_rtcp(padded) == [RtcpReceiverReport(7)]
    # reason "hi" (3 bytes with its length byte) + 1 zero to the word, then 4 bytes of padding
    padded_bye = bytes.fromhex("a1cb00030000000102") + b"hi\x00" + bytes.fromhex("00000004")
    assert parse_rtcp(padded_bye) == [RtcpBye((1,), "hi")]


def test_profile_extension_after_report_blocks_is_ignored() -> None:
    wire = bytes.fromhex("80c9000200000007deadbeef")
    assert parse_rtcp(wire) == [RtcpReceiverReport(7)]


def test_negative_cumulative_loss_round_trips_and_large_loss_clamps() -> None:
    block = ReportBlock(1, 0, -5, 0, 0)
    (rr,) = parse_rtcp(RtcpReceiverReport(2, (block,)).encode())
    assert isinstance(rr, RtcpReceiverReport)
    assert rr.reports[0].cumulative_lost == -5
    big = RtcpReceiverReport(2, (ReportBlock(1, 0, 10**9, 0, 0),))
    (parsed,) = parse_rtcp(big.encode())
    assert isinstance(parsed, RtcpReceiverReport)
    assert parsed.reports[0].cumulative_lost == 0x7FFFFF


def test_invalid_text_is_replaced_not_raised() -> None:
    wire = bytes.fromhex("81ca0003000000010102fffe00000000")
    (sdes,) = parse_rtcp(wire)
    assert isinstance(sdes, RtcpSdes)
    assert sdes.chunks[0].cname == "\ufffd\ufffd"


def test_sender_report_counters_wrap_and_lsr() -> None:
    sr = RtcpSenderReport(1, 0x0123456789ABCDEF, 0, 2**32 + 3, 2**32 + 4)
    (parsed,) = parse_rtcp(sr.encode())
    assert isinstance(parsed, RtcpSenderReport)
    assert (parsed.packet_count, parsed.octet_count) == (3, 4)
    assert sr.lsr == 0x456789AB


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: RtcpReceiverReport(2**32).encode(), "SSRC"),
        (lambda: RtcpReceiverReport(1, (BLOCK,) * 32).encode(), "5-bit count"),
        (lambda: ReportBlock(1, 256, 0, 0, 0).encode(), "fraction lost"),
        (lambda: ReportBlock(1, 0, 0, 2**32, 0).encode(), "highest sequence"),
        (lambda: SdesChunk(1, ((1, "x" * 256),)).encode(), "longer than 255"),
        (lambda: SdesChunk(1, ((0, "x"),)).encode(), "item type"),
        (lambda: RtcpBye((1,), "é" * 128).encode(), "longer than 255"),
        (lambda: RtcpApp(1, 1, b"ABC").encode(), "4 bytes"),
        (lambda: RtcpApp(1, 1, b"ABCD", b"x").encode(), "multiple of 4"),
        (lambda: RtcpApp(32, 1, b"ABCD").encode(), "5-bit count"),
        (lambda: RtcpSenderReport(1, -1, 0, 0, 0).encode(), "NTP"),
    ],
)
def test_building_refuses_out_of_range_fields(build: object, reason: str) -> None:
    assert callable(build)
    with pytest.raises(RtcpError, match=reason):
        build()


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (b"", "too short"),
        (b"\x81\xc9", "too short"),
        (bytes.fromhex("41c9000100000001"), "version 1"),
        (bytes.fromhex("81c9000700000001"), "claims 32 bytes"),
        (RR_BYTES + b"\x80\xc9", "2 trailing bytes"),
        (bytes.fromhex("80c8000100000001"), "shorter than the sender info"),
        (bytes.fromhex("82c90007") + RR_BYTES[4:], "2 report blocks is truncated"),
        (bytes.fromhex("80c90000"), "no SSRC"),
        (bytes.fromhex("81ca0002000000010109ab00"), "runs past"),
        (bytes.fromhex("81ca00020000000101026162"), "no end item"),
        (bytes.fromhex("81ca00020000000101016162"), "truncated before its length"),
        (bytes.fromhex("81ca000100000001"), "no end item"),
        (bytes.fromhex("82ca00020000000100000000"), "2 chunks announced"),
        (bytes.fromhex("81ca000200000001010261"), "claims 12 bytes"),
        (bytes.fromhex("82cb000100000001"), "2 sources announced"),
        (bytes.fromhex("81cb00020000000109616263"), "reason of 9 bytes"),
        (bytes.fromhex("81cc000100000001"), "APP body shorter"),
        (bytes.fromhex("a0c9000100000000"), "padding count 0"),
        (bytes.fromhex("a0c9000100000009"), "padding count 9"),
    ],
)
def test_parsing_refuses_malformed_compounds(wire: bytes, reason: str) -> None:
    with pytest.raises(RtcpError, match=reason):
        parse_rtcp(wire)


def test_parse_takes_memoryviews_and_refuses_non_buffers() -> None:
    assert parse_rtcp(memoryview(bytearray(RR_BYTES))) == [RR]
    assert parse_rtcp(memoryview(bytearray(RR_BYTES)).cast("I")) == [RR]
    with pytest.raises(RtcpError):
        parse_rtcp("RR")  # type: ignore[arg-type]


# -- NTP and round-trip time ---------------------------------------------------------


def test_ntp_conversion() -> None:
    assert ntp_from_unix(0) == NTP_UNIX_OFFSET_S << 32
    assert ntp_from_unix(1.5) == ((NTP_UNIX_OFFSET_S + 1) << 32) | 0x80000000
    assert ntp_middle32(ntp_from_unix(1.5)) == (((NTP_UNIX_OFFSET_S + 1) & 0xFFFF) << 16) | 0x8000
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB
    with pytest.raises(RtcpError):
        ntp_from_unix(float("nan"))
    with pytest.raises(RtcpError):
        ntp_from_unix(-NTP_UNIX_OFFSET_S - 1.0)


def test_round_trip_time_from_a_report_block() -> None:
    sent_at = ntp_from_unix(1_700_000_000.25)  # our SR
    lsr = ntp_middle32(sent_at)
    dlsr = dlsr_from_seconds(0.75)  # the peer held it 750 ms
    now = ntp_middle32(ntp_from_unix(1_700_000_000.25 + 0.75 + 0.040))
    rtt = rtt_seconds(now, lsr, dlsr)
    assert rtt is not None
    assert abs(rtt - 0.040) < 2 / 65536
    assert dlsr == 49152
    assert rtt_seconds(now, 0, dlsr) is None  # no SR received by the peer yet
    assert rtt_seconds(lsr, lsr, dlsr) is None  # negative: inconsistent clocks
    assert rtt_seconds(5, 0xFFFFFFFF, 2) == 4 / 65536  # across the 16.16 wrap
    assert dlsr_from_seconds(-1) == 0 and dlsr_from_seconds(1e9) == 0xFFFFFFFF


# -- round trip property and fuzzing ------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
blocks = st.builds(
    ReportBlock,
    ssrc=u32,
    fraction_lost=st.integers(0, 255),
    cumulative_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_seq=u32,
    jitter=u32,
    lsr=u32,
    dlsr=u32,
)
block_lists = st.lists(blocks, max_size=31).map(tuple)
texts = st.text(max_size=60)
packets = st.one_of(
    st.builds(
        RtcpSenderReport,
        ssrc=u32,
        ntp_timestamp=st.integers(0, 2**64 - 1),
        rtp_timestamp=u32,
        packet_count=u32,
        octet_count=u32,
        reports=block_lists,
    ),
    st.builds(RtcpReceiverReport, ssrc=u32, reports=block_lists),
    st.builds(
        RtcpSdes,
        chunks=st.lists(
            st.builds(
                SdesChunk,
                ssrc=u32,
                items=st.lists(st.tuples(st.integers(1, 255), texts), max_size=4).map(tuple),
            ),
            max_size=4,
        ).map(tuple),
    ),
    st.builds(
        RtcpBye,
        ssrcs=st.lists(u32, max_size=31).map(tuple),
        reason=st.none() | texts,
    ),
    st.builds(
        RtcpApp,
        subtype=st.integers(0, 31),
        ssrc=u32,
        name=st.binary(min_size=4, max_size=4),
        data=st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4)),
    ),
)


@settings(max_examples=300)
@given(st.lists(packets, min_size=1, max_size=4))
def test_build_then_parse_is_equal(compound: list[RtcpPacket]) -> None:
    wire = build_compound(compound)
    assert len(wire) % 4 == 0
    assert parse_rtcp(wire) == compound


def _check_parse(data: bytes) -> None:
    try:
        parsed = parse_rtcp(data)
    except RtcpError as exc:
        assert str(exc)
        return
    assert parsed
    for packet in parsed:  # whatever parses can be written again
        with contextlib.suppress(RtcpError):
            packet.encode()


@settings(max_examples=500)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_parse(data)


@settings(max_examples=500)
@given(
    count=st.integers(0, 31),
    packet_type=st.integers(200, 207),
    words=st.integers(0, 12),
    padding=st.booleans(),
    body=st.binary(max_size=52),
)
def test_fuzz_plausible_headers(
    count: int, packet_type: int, words: int, padding: bool, body: bytes
) -> None:
    header = struct.pack("!BBH", 0x80 | (0x20 if padding else 0) | count, packet_type, words)
    _check_parse(header + body)


REAL = SR_BYTES + SDES_BYTES + BYE_BYTES + APP_BYTES


@settings(max_examples=500)
@given(
    edits=st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, len(REAL)),
)
def test_fuzz_mutated_real_compound(edits: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(REAL)
    for pos, value in edits:
        data[pos] = value
    _check_parse(bytes(data[: len(data) - cut]))
