"""RTP packets (RFC 3550 §5.1) and RFC 3550 A.1/A.3/A.8 sequence statistics."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.rtp.packet import (
    RtpError,
    RtpHeader,
    build_rtp,
    build_rtp_into,
    is_rtcp,
    parse_rtp,
    write_rtp_header_into,
)
from server.rtp.seqtrack import MAX_DROPOUT, MAX_MISORDER, LossReport, SeqStatus, SeqTracker
from tests.allocation import traced_growth

# V=2 P=0 X=0 CC=0 | M=1 PT=0 | seq 0x1234 | ts 0xDEADBEEF | ssrc 0x01020304
SIMPLE_HEADER = bytes.fromhex("80801234deadbeef01020304")

# V=2 P=1 X=1 CC=2 | M=0 PT=8 | seq 1 | ts 160 | ssrc 0xCAFEBABE
# CSRCs 0x11111111 0x22222222, extension profile 0xBEDE with 1 word,
# payload "abcd", 3 bytes of padding whose last byte is 3.
FULL_PACKET = (
    bytes([0b10_1_1_0010, 8])
    + struct.pack("!HII", 1, 160, 0xCAFEBABE)
    + struct.pack("!II", 0x11111111, 0x22222222)
    + struct.pack("!HH", 0xBEDE, 1)
    + b"\x10\xaa\x00\x00"
    + b"abcd"
    + b"\x00\x00\x03"
)


# -- parsing ---------------------------------------------------------------------


def test_parse_simple_header() -> None:
    data = SIMPLE_HEADER + bytes(range(160))
    h = parse_rtp(data)
    assert h.marker is True
    assert h.payload_type == 0
    assert h.sequence == 0x1234
    assert h.timestamp == 0xDEADBEEF
    assert h.ssrc == 0x01020304
    assert h.csrc_count == 0
    assert h.extension_profile == -1
    assert h.padding_length == 0
    assert (h.payload_offset, h.payload_length) == (12, 160)
    assert bytes(h.payload) == bytes(range(160))


def test_parse_skips_csrcs_extension_and_padding() -> None:
    h = parse_rtp(FULL_PACKET)
    assert h.marker is False
    assert h.payload_type == 8
    assert (h.sequence, h.timestamp, h.ssrc) == (1, 160, 0xCAFEBABE)
    assert h.csrc_count == 2
    assert h.csrcs() == [0x11111111, 0x22222222]
    assert h.extension_profile == 0xBEDE
    assert FULL_PACKET[h.extension_offset : h.extension_offset + h.extension_length] == (
        b"\x10\xaa\x00\x00"
    )
    assert h.padding_length == 3
    assert (h.payload_offset, h.payload_length) == (12 + 8 + 4 + 4, 4)
    assert bytes(h.payload) == b"abcd"


def test_payload_is_a_view_not_a_copy() -> None:
    data = bytearray(SIMPLE_HEADER + b"xyz")
    h = parse_rtp(data)
    data[12] = ord("X")
    assert bytes(h.payload) == b"Xyz"


def test_parse_reuses_the_header_it_is_given() -> None:
    out = RtpHeader()
    first = parse_rtp(FULL_PACKET, out)
    second = parse_rtp(SIMPLE_HEADER + b"\xff", out)
    assert first is out and second is out
    assert out.extension_profile == -1 and out.padding_length == 0 and out.csrc_count == 0
    assert bytes(out.payload) == b"\xff"


def test_parse_accepts_memoryviews_of_any_format() -> None:
    data = SIMPLE_HEADER + bytes(range(8))
    assert parse_rtp(memoryview(data)).payload_length == 8
    as_int16 = memoryview(bytearray(data)).cast("h")
    h = parse_rtp(as_int16)
    assert (h.sequence, h.payload_length) == (0x1234, 8)
    assert bytes(h.payload) == bytes(range(8))


def test_empty_payload_is_valid() -> None:
    h = parse_rtp(SIMPLE_HEADER)
    assert (h.payload_offset, h.payload_length) == (12, 0)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "too short"),
        (SIMPLE_HEADER[:11], "too short"),
        (bytes([0x40]) + SIMPLE_HEADER[1:], "version 1"),
        (bytes([0x00]) + SIMPLE_HEADER[1:], "version 0"),
        (bytes([0x81]) + SIMPLE_HEADER[1:], "CSRC list"),
        (bytes([0x90]) + SIMPLE_HEADER[1:] + b"\xbe\xde", "extension truncated"),
        (bytes([0x90]) + SIMPLE_HEADER[1:] + b"\xbe\xde\x00\x02abcd", r"extension \(2 words\)"),
        (bytes([0xA0]) + SIMPLE_HEADER[1:] + b"ab\x00", "padding count 0"),
        (bytes([0xA0]) + SIMPLE_HEADER[1:] + b"ab\x04", "padding count 4"),
        (SIMPLE_HEADER[:1] + bytes([200]) + SIMPLE_HEADER[2:], "payload type 72"),
        (SIMPLE_HEADER[:1] + bytes([76]) + SIMPLE_HEADER[2:], "payload type 76"),
    ],
)
def test_parse_refuses_malformed_packets(data: bytes, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        parse_rtp(data)


def test_parse_refuses_non_buffers() -> None:
    with pytest.raises(RtpError):
        parse_rtp("not bytes")  # type: ignore[arg-type]


def test_padding_may_fill_everything_after_the_header() -> None:
    h = parse_rtp(bytes([0xA0]) + SIMPLE_HEADER[1:] + b"\x00\x00\x03")
    assert (h.payload_length, h.padding_length) == (0, 3)


@pytest.mark.parametrize(
    ("second_byte", "rtcp"),
    [
        (0, False),
        (0x80 | 96, False),
        (191, False),
        (192, True),
        (200, True),
        (223, True),
        (224, False),
    ],
)
def test_is_rtcp_demultiplexes_on_the_second_byte(second_byte: int, rtcp: bool) -> None:
    assert is_rtcp(bytes([0x80, second_byte, 0, 1])) is rtcp


def test_is_rtcp_on_short_data() -> None:
    assert is_rtcp(b"") is False
    assert is_rtcp(b"\x80") is False
    assert is_rtcp(memoryview(b"\x81\xc9\x00\x01")) is True


# -- building --------------------------------------------------------------------


def test_build_is_byte_exact() -> None:
    payload = bytes(range(160))
    data = build_rtp(pt=0, seq=0x1234, ts=0xDEADBEEF, ssrc=0x01020304, marker=True, payload=payload)
    assert data == SIMPLE_HEADER + payload
    plain = build_rtp(pt=9, seq=7, ts=320, ssrc=0xFFFFFFFF, payload=b"\x01\x02")
    assert plain == bytes.fromhex("8009000700000140ffffffff0102")


def test_build_into_writes_a_prefix_and_returns_its_size() -> None:
    buf = bytearray(b"\xee" * 200)
    n = build_rtp_into(buf, pt=8, seq=1, ts=2, ssrc=3, payload=b"abc")
    assert n == 15
    assert len(buf) == 200
    assert buf[:15] == bytes.fromhex("800800010000000200000003") + b"abc"
    assert buf[15:] == b"\xee" * 185


def test_build_wraps_sequence_and_timestamp() -> None:
    h = parse_rtp(build_rtp(pt=0, seq=65536 + 5, ts=2**32 + 9, ssrc=1))
    assert (h.sequence, h.timestamp) == (5, 9)
    h = parse_rtp(build_rtp(pt=0, seq=65535, ts=2**32 - 1, ssrc=1))
    assert (h.sequence, h.timestamp) == (65535, 2**32 - 1)


@pytest.mark.parametrize(
    ("pt", "ssrc", "reason"),
    [
        (128, 1, "payload type"),
        (-1, 1, "payload type"),
        (0, 2**32, "SSRC"),
        (0, -1, "SSRC"),
    ],
)
def test_build_refuses_bad_fields(pt: int, ssrc: int, reason: str) -> None:
    with pytest.raises(RtpError, match=reason):
        build_rtp(pt=pt, seq=0, ts=0, ssrc=ssrc, payload=b"")


def test_build_into_refuses_a_small_buffer_without_resizing_it() -> None:
    buf = bytearray(20)
    with pytest.raises(RtpError, match="does not fit"):
        build_rtp_into(buf, pt=0, seq=0, ts=0, ssrc=0, payload=bytes(9))
    assert buf == bytearray(20)


def test_build_into_a_memoryview_with_a_numpy_payload_view() -> None:
    codes = np.arange(10, dtype=np.uint8)
    buf = memoryview(bytearray(64))
    n = build_rtp_into(buf, pt=0, seq=1, ts=1, ssrc=1, payload=codes.data)
    assert n == 22
    assert bytes(buf[12:22]) == bytes(range(10))
    pcm16 = np.array([1, 2], dtype="<i2").data
    assert build_rtp_into(buf, pt=0, seq=1, ts=1, ssrc=1, payload=pcm16) == 16
    assert bytes(buf[12:16]) == b"\x01\x00\x02\x00"


def test_header_then_payload_encoded_in_place() -> None:
    buf = bytearray(172)
    offset = write_rtp_header_into(buf, pt=0, seq=3, ts=480, ssrc=0xABCDEF01, marker=True)
    assert offset == 12
    buf[offset:] = b"\x7f" * 160
    h = parse_rtp(buf)
    assert (h.marker, h.sequence, h.timestamp, h.ssrc, h.payload_length) == (
        True,
        3,
        480,
        0xABCDEF01,
        160,
    )


def test_build_into_and_parse_with_out_allocate_nothing_lasting() -> None:
    buf = bytearray(1500)
    payload = bytes(160)
    # 100 calls: whatever stays is interpreter bookkeeping, not a per-packet object
    retained, peak = traced_growth(
        lambda: build_rtp_into(buf, pt=0, seq=70000, ts=2**33, ssrc=5, payload=payload)
    )
    assert retained < 200
    assert peak < 1024
    out = RtpHeader()
    data = bytes(buf[:172])
    retained, peak = traced_growth(parse_rtp, data, out)
    assert retained < 200
    assert peak < 1024


@given(
    st.fixed_dictionaries(
        {
            "pt": st.integers(0, 127).filter(lambda pt: not 72 <= pt <= 76),
            "seq": st.integers(0, 65535),
            "ts": st.integers(0, 2**32 - 1),
            "ssrc": st.integers(0, 2**32 - 1),
            "marker": st.booleans(),
        }
    ),
    st.binary(max_size=300),
)
def test_build_parse_round_trip(fields: dict[str, int], payload: bytes) -> None:
    h = parse_rtp(build_rtp(payload=payload, **fields))
    assert {
        "pt": h.payload_type,
        "seq": h.sequence,
        "ts": h.timestamp,
        "ssrc": h.ssrc,
        "marker": h.marker,
    } == fields
    assert bytes(h.payload) == payload


# -- fuzzing: only RtpError escapes ---------------------------------------------------


def _check_parse(data: bytes) -> None:
    try:
        h = parse_rtp(data)
    except RtpError as exc:
        assert str(exc)
        return
    assert h.payload_offset >= 12
    assert h.payload_length >= 0
    assert h.payload_offset + h.payload_length + h.padding_length == len(data)
    assert len(bytes(h.payload)) == h.payload_length


@settings(max_examples=500)
@given(st.binary(max_size=100))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_parse(data)


@settings(max_examples=500)
@given(st.binary(max_size=60))
def test_fuzz_random_bytes_with_version_2(tail: bytes) -> None:
    _check_parse(b"\x80" + tail)
    _check_parse(b"\xbf" + tail)  # every flag and 15 CSRCs


@settings(max_examples=500)
@given(
    base=st.sampled_from([FULL_PACKET, SIMPLE_HEADER + bytes(160)]),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 200),
    extra=st.binary(max_size=8),
)
def test_fuzz_mutated_real_packets(
    base: bytes, edits: list[tuple[int, int]], cut: int, extra: bytes
) -> None:
    data = bytearray(base)
    for pos, value in edits:
        if data:
            data[pos % len(data)] = value
    _check_parse(bytes(data[: len(data) - cut % (len(data) + 1)]) + extra)


# -- sequence tracking (RFC 3550 A.1) -----------------------------------------------------


def feed(tracker: SeqTracker, seqs: list[int]) -> list[SeqStatus]:
    return [tracker.update(s) for s in seqs]


def test_probation_needs_two_packets_in_sequence() -> None:
    t = SeqTracker()
    assert t.update(100) is SeqStatus.PROBATION
    assert not t.valid and t.expected == 0 and t.extended_max == -1
    assert t.update(101) is SeqStatus.IN_ORDER
    assert t.valid
    assert (t.received, t.expected, t.lost, t.extended_seq) == (1, 1, 0, 101)


def test_probation_restarts_on_a_gap() -> None:
    t = SeqTracker()
    assert feed(t, [10, 12, 14]) == [SeqStatus.PROBATION] * 3
    assert t.update(15) is SeqStatus.IN_ORDER
    assert t.update(16) is SeqStatus.IN_ORDER
    assert (t.received, t.expected) == (2, 2)


def test_probation_across_the_16_bit_wrap() -> None:
    t = SeqTracker()
    assert feed(t, [65535, 0]) == [SeqStatus.PROBATION, SeqStatus.IN_ORDER]
    assert t.extended_seq == 0


def test_sequence_wrap_extends_the_sequence_number() -> None:
    t = SeqTracker()
    statuses = feed(t, [65533, 65534, 65535, 0, 1, 2])
    assert statuses == [SeqStatus.PROBATION] + [SeqStatus.IN_ORDER] * 5
    assert t.extended_seq == 65536 + 2
    assert t.extended_max == 65538
    assert (t.expected, t.received, t.lost) == (5, 5, 0)
    assert t.take_report().highest_seq == 65538


def test_gap_counts_as_loss_and_late_arrival_repairs_it() -> None:
    t = SeqTracker()
    feed(t, [0, 1, 2])
    assert t.update(5) is SeqStatus.IN_ORDER
    assert t.lost == 2
    assert t.update(3) is SeqStatus.LATE
    assert t.extended_seq == 3
    assert t.lost == 1


def test_reordering_across_the_wrap() -> None:
    t = SeqTracker()
    feed(t, [65530, 65531, 65532, 65533])
    assert t.update(1) is SeqStatus.IN_ORDER
    assert t.extended_seq == 65537
    assert t.update(65535) is SeqStatus.LATE
    assert t.extended_seq == 65535
    assert t.update(0) is SeqStatus.LATE
    assert t.extended_seq == 65536
    assert t.update(65534) is SeqStatus.LATE
    assert t.lost == 0


def test_duplicates_count_as_received_and_make_loss_negative() -> None:
    t = SeqTracker()
    feed(t, [7, 8, 9, 10])
    assert t.update(10) is SeqStatus.DUPLICATE  # the highest again
    assert t.update(9) is SeqStatus.DUPLICATE  # an older one again
    assert t.duplicates == 2
    assert (t.expected, t.received, t.lost) == (3, 5, -2)
    assert t.take_report().cumulative_lost == -2


def test_a_late_packet_is_counted_once() -> None:
    t = SeqTracker()
    feed(t, [0, 1, 3])
    assert feed(t, [2, 2]) == [SeqStatus.LATE, SeqStatus.DUPLICATE]


def test_jump_is_dropped_unless_confirmed() -> None:
    t = SeqTracker()
    feed(t, [100, 101, 102])
    assert t.update(102 + MAX_DROPOUT) is SeqStatus.JUMP
    assert t.update(103) is SeqStatus.IN_ORDER  # the stream goes on: the jump was noise
    assert t.update(9000) is SeqStatus.JUMP
    assert t.update(9001) is SeqStatus.RESTART
    assert (t.jumps, t.restarts) == (2, 1)
    assert (t.received, t.expected, t.lost, t.extended_seq) == (1, 1, 0, 9001)
    assert t.update(9002) is SeqStatus.IN_ORDER


def test_small_forward_gap_is_not_a_jump() -> None:
    t = SeqTracker()
    feed(t, [0, 1])
    assert t.update(1 + MAX_DROPOUT - 1) is SeqStatus.IN_ORDER
    assert t.lost == MAX_DROPOUT - 2


def test_far_behind_is_a_jump_not_a_late_packet() -> None:
    t = SeqTracker()
    feed(t, [s for s in range(500, 700) if s != 699 - (MAX_MISORDER - 1)])
    assert t.update(699 - (MAX_MISORDER - 1)) is SeqStatus.LATE
    assert t.update(699 - MAX_MISORDER) is SeqStatus.JUMP


def test_loss_report_fraction_per_interval() -> None:
    t = SeqTracker()
    t.update(999)
    # 100 packets expected (1000..1099), 10 of them missing
    for s in range(1000, 1100):
        if s % 10 != 5:
            t.update(s)
    first = t.take_report()
    assert first == LossReport(
        fraction_lost=(10 << 8) // 100, cumulative_lost=10, highest_seq=1099, jitter=0
    )
    for s in range(1100, 1150):  # a clean interval
        t.update(s)
    second = t.take_report()
    assert (second.fraction_lost, second.cumulative_lost, second.highest_seq) == (0, 10, 1149)
    for s in range(1150, 1160, 2):  # half lost
        t.update(s)
    assert t.take_report().fraction_lost == (4 << 8) // 9  # 1150..1158: 9 expected, 4 lost


def test_report_before_validation_is_empty() -> None:
    t = SeqTracker()
    assert t.take_report() == LossReport(0, 0, 0, 0)
    t.update(5)
    assert t.take_report() == LossReport(0, 0, 0, 0)


def test_duplicates_do_not_make_fraction_negative() -> None:
    t = SeqTracker()
    feed(t, [1, 2, 3, 3, 3])
    assert t.take_report().fraction_lost == 0


# -- interarrival jitter (RFC 3550 A.8) -----------------------------------------------------


def test_jitter_is_zero_for_constant_transit_even_across_the_timestamp_wrap() -> None:
    t = SeqTracker()
    ts = 2**32 - 160 * 5
    for k in range(20):
        t.update_jitter((ts + 160 * k) & 0xFFFFFFFF, 1_000_000 + 160 * k)
    assert t.jitter == 0


def test_jitter_follows_a8_exactly() -> None:
    t = SeqTracker()
    t.update_jitter(0, 1000)
    t.update_jitter(160, 1000 + 160 + 16)  # D = 16: J = 16/16
    assert t.jitter == 1
    # alternating +-16 units of transit: J converges to 16 (the integer form from below)
    for k in range(2, 400):
        t.update_jitter(160 * k, 1000 + 160 * k + (16 if k % 2 else 0))
    assert t.jitter == 16


def test_jitter_on_a_trace_with_ms_arrivals() -> None:
    """Arrival in ms times 8 = 8 kHz units: 20 ms spacing with 0/+5 ms alternation."""
    t = SeqTracker()
    for k in range(300):
        arrival_ms = 20 * k + (5 if k % 2 else 0)
        t.update_jitter(160 * k, arrival_ms * 8)
    assert t.jitter == 40  # |D| = 5 ms = 40 units every packet


def test_restart_forgets_the_previous_transit() -> None:
    t = SeqTracker()
    feed(t, [1, 2])
    t.update_jitter(0, 0)
    t.update_jitter(160, 160)
    feed(t, [40000, 40001])  # confirmed restart
    t.update_jitter(900_000_000, 320)  # a new timestamp base: no jitter spike
    assert t.jitter == 0


@settings(max_examples=300)
@given(st.lists(st.integers(0, 65535), max_size=300))
def test_fuzz_sequence_numbers(seqs: list[int]) -> None:
    t = SeqTracker()
    for s in seqs:
        status = t.update(s)
        assert isinstance(status, SeqStatus)
        t.update_jitter(s * 160, s * 170)
    report = t.take_report()
    assert 0 <= report.fraction_lost <= 255
    assert -0x800000 <= report.cumulative_lost <= 0x7FFFFF
    assert t.expected >= 0 and t.received >= 0 and t.jitter >= 0
