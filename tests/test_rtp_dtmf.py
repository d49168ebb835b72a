"""RFC 4733 telephone-events: payload bytes, the receiver's key edges, the sender's packets."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.rtp.dtmf import (
    MAX_DURATION,
    DtmfEdge,
    DtmfError,
    DtmfEvent,
    DtmfPacket,
    DtmfReceiver,
    DtmfSender,
    TelephoneEvent,
    digit_of,
    event_of,
    parse_telephone_event,
)

DOWN, UP = DtmfEdge.DOWN, DtmfEdge.UP


def te(event: int, duration: int, *, end: bool = False, volume: int = 10) -> bytes:
    return TelephoneEvent(event, end, volume, duration).encode()


# -- payload ---------------------------------------------------------------------


def test_payload_is_byte_exact() -> None:
    assert te(5, 1280, end=True) == bytes.fromhex("058a0500")
    assert te(11, 160) == bytes.fromhex("0b0a00a0")
    assert te(16, 0xFFFF, volume=63) == bytes.fromhex("103fffff")
    assert parse_telephone_event(bytes.fromhex("058a0500")) == TelephoneEvent(5, True, 10, 1280)


def test_payload_ignores_the_reserved_bit_and_trailing_bytes() -> None:
    assert parse_telephone_event(bytes.fromhex("01ca00a0ffff")) == TelephoneEvent(1, True, 10, 160)
    assert parse_telephone_event(memoryview(bytes.fromhex("034a0140"))) == TelephoneEvent(
        3, False, 10, 320
    )


@pytest.mark.parametrize("payload", [b"", b"\x01\x0a\x00"])
def test_payload_too_short(payload: bytes) -> None:
    with pytest.raises(DtmfError, match="needs 4"):
        parse_telephone_event(payload)


def test_payload_encode_refuses_out_of_range_fields() -> None:
    for bad in (
        TelephoneEvent(256, False, 0, 0),
        TelephoneEvent(1, False, 64, 0),
        TelephoneEvent(1, False, 0, 0x10000),
    ):
        with pytest.raises(DtmfError):
            bad.encode()


def test_digit_names() -> None:
    assert [digit_of(e) for e in range(17)] == list("0123456789*#ABCD!")
    assert event_of("#") == 11 and event_of("d") == 15 and event_of("!") == 16
    for bad in ("", "E", "12", " "):
        with pytest.raises(DtmfError):
            event_of(bad)
    with pytest.raises(DtmfError):
        digit_of(17)


@settings(max_examples=300)
@given(st.binary(max_size=12))
def test_fuzz_payload(data: bytes) -> None:
    try:
        parsed = parse_telephone_event(data)
    except DtmfError:
        assert len(data) < 4
        return
    assert parsed.encode()[0] == data[0]


# -- receiver ----------------------------------------------------------------------


def baresip_digit(event: int, timestamp: int, t0_ms: int) -> list[tuple[int, bool, bytes, int]]:
    """9 updates 20 ms apart then 3 end packets, durations in 48 kHz units (960 per 20 ms)."""
    packets = [(timestamp, k == 0, te(event, 960 * (k + 1)), t0_ms + 20 * k) for k in range(9)]
    packets += [
        (timestamp, False, te(event, 8640, end=True), t0_ms + 180 + 20 * k) for k in range(3)
    ]
    return packets


def run(receiver: DtmfReceiver, packets: list[tuple[int, bool, bytes, int]]) -> list[DtmfEvent]:
    events: list[DtmfEvent] = []
    for ts, marker, payload, now in packets:
        events += receiver.feed(ts, marker, payload, now)
    return events


def test_baresip_style_digit_gives_one_down_and_one_up() -> None:
    r = DtmfReceiver()
    events = run(r, baresip_digit(1, 48000, 1000))
    assert events == [
        DtmfEvent(DOWN, "1", 48000, 960),
        DtmfEvent(UP, "1", 48000, 8640),
    ]
    assert (r.packets, r.digits, r.duplicates, r.timeouts) == (12, 1, 10, 0)
    assert r.poll(10_000) == ()


def test_down_arrives_with_the_first_packet_and_up_with_the_first_end() -> None:
    r = DtmfReceiver()
    packets = baresip_digit(7, 5, 0)
    assert r.feed(*packets[0]) == (DtmfEvent(DOWN, "7", 5, 960),)
    assert r.active_digit == "7"
    for p in packets[1:9]:
        assert r.feed(*p) == ()
    assert r.feed(*packets[9]) == (DtmfEvent(UP, "7", 5, 8640),)
    assert r.active_digit is None
    assert r.feed(*packets[10]) == () and r.feed(*packets[11]) == ()


def test_lost_start_packets() -> None:
    r = DtmfReceiver()
    events = run(r, baresip_digit(9, 800, 0)[3:])  # marker packet and two updates lost
    assert [(e.edge, e.digit) for e in events] == [(DOWN, "9"), (UP, "9")]


def test_only_an_end_packet_survives() -> None:
    r = DtmfReceiver()
    events = run(r, baresip_digit(0, 800, 0)[11:])
    assert events == [DtmfEvent(DOWN, "0", 800, 8640), DtmfEvent(UP, "0", 800, 8640)]


def test_lost_end_packets_end_the_event_after_the_timeout() -> None:
    r = DtmfReceiver(end_timeout_ms=150)
    assert [e.edge for e in run(r, baresip_digit(4, 800, 0)[:9])] == [DOWN]  # last at 160 ms
    assert r.poll(309) == ()
    assert r.poll(310) == (DtmfEvent(UP, "4", 800, 8640, timed_out=True),)
    assert r.timeouts == 1
    assert r.poll(1000) == ()
    # a straggling end packet of the same event changes nothing
    assert r.feed(800, False, te(4, 8640, end=True), 320) == ()


def test_timeout_is_also_checked_when_a_packet_arrives() -> None:
    r = DtmfReceiver(end_timeout_ms=150)
    run(r, baresip_digit(4, 800, 0)[:9])
    events = r.feed(20_000, True, te(6, 960), 1000)  # next key, no poll in between
    assert events == (
        DtmfEvent(UP, "4", 800, 8640, timed_out=True),
        DtmfEvent(DOWN, "6", 20_000, 960),
    )


def test_two_quick_digits() -> None:
    r = DtmfReceiver()
    packets = baresip_digit(1, 1000, 0) + baresip_digit(2, 1000 + 8 * 340, 340)
    events = run(r, packets)
    assert [(e.edge, e.digit, e.timed_out) for e in events] == [
        (DOWN, "1", False),
        (UP, "1", False),
        (DOWN, "2", False),
        (UP, "2", False),
    ]


def test_the_same_key_twice() -> None:
    r = DtmfReceiver()
    events = run(r, baresip_digit(5, 1000, 0) + baresip_digit(5, 4000, 300))
    assert [(e.edge, e.digit, e.timestamp) for e in events] == [
        (DOWN, "5", 1000),
        (UP, "5", 1000),
        (DOWN, "5", 4000),
        (UP, "5", 4000),
    ]


def test_new_event_before_the_old_one_ended() -> None:
    r = DtmfReceiver()
    first = baresip_digit(1, 1000, 0)[:5]  # its end never comes
    second = baresip_digit(2, 3000, 110)
    events = run(r, first + second)
    assert events[:3] == [
        DtmfEvent(DOWN, "1", 1000, 960),
        DtmfEvent(UP, "1", 1000, 4800, timed_out=True),
        DtmfEvent(DOWN, "2", 3000, 960),
    ]
    assert events[3].edge is UP and not events[3].timed_out


def test_stale_packets_of_an_earlier_event_are_ignored() -> None:
    r = DtmfReceiver()
    run(r, baresip_digit(1, 1000, 0) + baresip_digit(2, 5000, 300)[:2])
    # reordered: an update and an end retransmit of digit 1 arrive late
    assert r.feed(1000, False, te(1, 4800), 340) == ()
    assert r.feed(1000, False, te(1, 8640, end=True), 345) == ()
    # and a packet of an event older than the current one that was never seen
    assert r.feed(900, True, te(3, 960), 350) == ()
    assert r.active_digit == "2"


def test_timestamps_across_the_32_bit_wrap() -> None:
    r = DtmfReceiver()
    events = run(r, baresip_digit(1, 2**32 - 100, 0) + baresip_digit(2, 2620, 300))
    assert [(e.edge, e.digit) for e in events] == [(DOWN, "1"), (UP, "1"), (DOWN, "2"), (UP, "2")]


def test_bad_packets_are_counted_not_raised() -> None:
    r = DtmfReceiver()
    assert r.feed(1, True, b"\x01", 0) == ()
    assert r.feed(1, True, te(20, 160), 0) == ()  # a tone event, not a key
    assert (r.malformed, r.unsupported, r.digits) == (1, 1, 0)
    with pytest.raises(ValueError):
        DtmfReceiver(end_timeout_ms=0)


# -- sender ------------------------------------------------------------------------


def drain(sender: DtmfSender, ts: int, step: int) -> list[DtmfPacket | None]:
    out = []
    while sender.busy:
        out.append(sender.tick(ts & 0xFFFFFFFF))
        ts += step
    return out


def test_sender_packets_are_byte_exact() -> None:
    s = DtmfSender(101, 8000, gap_ms=100)
    s.send("1", duration_ms=60)
    ticks = drain(s, 16000, 160)
    assert ticks == [
        DtmfPacket(101, True, 16000, bytes.fromhex("010a00a0"), False),
        DtmfPacket(101, False, 16000, bytes.fromhex("010a0140"), False),
        DtmfPacket(101, False, 16000, bytes.fromhex("018a01e0"), True),
        DtmfPacket(101, False, 16000, bytes.fromhex("018a01e0"), True),
        DtmfPacket(101, False, 16000, bytes.fromhex("018a01e0"), True),
        None,
        None,
        None,
        None,
        None,
    ]


def test_sender_default_digit_and_gap_between_digits() -> None:
    s = DtmfSender(96, 8000)
    s.send("#9")
    ticks = drain(s, 0, 160)
    first = [p for p in ticks[:10] if p is not None]
    assert len(first) == 10  # 160 ms: 8 packets, the last sent three times
    assert [parse_telephone_event(p.payload).duration for p in first] == [
        160,
        320,
        480,
        640,
        800,
        960,
        1120,
        1280,
        1280,
        1280,
    ]
    assert [p.marker for p in first] == [True] + [False] * 9
    assert [p.end for p in first] == [False] * 7 + [True] * 3
    assert ticks[10:15] == [None] * 5  # 100 ms gap
    second = ticks[15]
    assert second is not None and second.marker and second.timestamp == 15 * 160
    assert parse_telephone_event(second.payload).event == 9
    assert len(ticks) == 30 and s.tick(0) is None


def test_sender_in_48khz_units_for_opus() -> None:
    s = DtmfSender(110, 48000, volume=7)
    s.send("5", duration_ms=100)
    packets = [p for p in drain(s, 0, 960) if p is not None]
    assert [parse_telephone_event(p.payload) for p in packets[:5]] == [
        TelephoneEvent(5, False, 7, 960 * k) for k in range(1, 5)
    ] + [TelephoneEvent(5, True, 7, 4800)]


def test_long_event_is_split_into_segments() -> None:
    s = DtmfSender(101, 48000, gap_ms=0)
    s.send("1", duration_ms=3000)  # 144000 units: 65535 + 65535 + 12930
    packets = [p for p in drain(s, 1000, 960) if p is not None]
    decoded = [(p.marker, p.timestamp, parse_telephone_event(p.payload)) for p in packets]
    assert decoded[0][0] is True and sum(m for m, _, _ in decoded) == 1
    stamps = sorted({ts for _, ts, _ in decoded})
    assert stamps == [1000, 1000 + MAX_DURATION, 1000 + 2 * MAX_DURATION]
    for start in stamps[:2]:  # a full segment ends with 0xFFFF three times, without E
        tail = [e for _, ts, e in decoded if ts == start][-3:]
        assert tail == [TelephoneEvent(1, False, 10, MAX_DURATION)] * 3
    last = [e for _, ts, e in decoded if ts == stamps[2]]
    assert last[-3:] == [TelephoneEvent(1, True, 10, 12930)] * 3
    for start in stamps:  # durations never shrink within a segment
        durations = [e.duration for _, ts, e in decoded if ts == start]
        assert durations == sorted(durations)
    # one packet per 20 ms tick: the repeats of a segment end take ticks of the event's
    # own time (the next segment's first duration shows it), then two extra end packets
    assert len(packets) == 150 + 2
    second = [e.duration for _, ts, e in decoded if ts == stamps[1]]
    assert second[0] == 3 * 960 + (69 * 960 - MAX_DURATION)
    r = DtmfReceiver()
    events = [
        e for k, p in enumerate(packets) for e in r.feed(p.timestamp, p.marker, p.payload, 20 * k)
    ]
    assert [(e.edge, e.digit, e.timed_out) for e in events] == [
        (DOWN, "1", False),
        (UP, "1", False),
    ]


def test_sender_to_receiver_every_key() -> None:
    s = DtmfSender(101, 8000)
    keys = "0123456789*#ABCD!"
    s.send(keys.lower(), duration_ms=100)
    r = DtmfReceiver()
    events: list[DtmfEvent] = []
    ts = 123456
    now = 0
    while s.busy:
        p = s.tick(ts)
        if p is not None:
            events += r.feed(p.timestamp, p.marker, p.payload, now)
        events += r.poll(now)
        ts += 160
        now += 20
    downs = "".join(e.digit for e in events if e.edge is DOWN)
    assert downs == keys
    assert [e.edge for e in events] == [DOWN, UP] * len(keys)
    assert not any(e.timed_out for e in events)


def test_cancel_finishes_the_current_digit() -> None:
    s = DtmfSender(101)
    s.send("123")
    first = s.tick(0)
    assert first is not None and first.marker
    s.cancel()
    rest = [p for p in drain(s, 160, 160) if p is not None]
    assert len(rest) == 9 and rest[-1].end
    assert {parse_telephone_event(p.payload).event for p in rest} == {1}


def test_sender_validation() -> None:
    with pytest.raises(DtmfError):
        DtmfSender(101).send("1E")
    s = DtmfSender(101)
    with pytest.raises(DtmfError):
        s.send("1", duration_ms=10)
    with pytest.raises(DtmfError):
        s.send("1", duration_ms=60_001)
    assert not s.busy  # nothing was queued by the failed calls
    for kwargs in ({"payload_type": 128}, {"payload_type": 101, "clock_rate_hz": 11025}):
        with pytest.raises(ValueError):
            DtmfSender(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        DtmfSender(101, volume=64)
    with pytest.raises(ValueError):
        DtmfSender(101, gap_ms=-1)


# -- receiver fuzzing ------------------------------------------------------------------

packet_strategy = st.tuples(
    st.integers(0, 2**32 - 1) | st.sampled_from([0, 160, 320, 2**32 - 160]),
    st.booleans(),
    st.binary(max_size=6)
    | st.builds(te, st.integers(0, 20), st.integers(0, 0xFFFF), end=st.booleans()),
    st.integers(0, 100),
)


@settings(max_examples=300)
@given(st.lists(packet_strategy, max_size=60))
def test_fuzz_receiver_edges_alternate(packets: list[tuple[int, bool, bytes, int]]) -> None:
    r = DtmfReceiver()
    now = 0
    edges: list[DtmfEvent] = []
    for ts, marker, payload, step in packets:
        now += step
        edges += r.feed(ts, marker, payload, now)
        edges += r.poll(now)
    edges += r.poll(now + 10_000)
    assert [e.edge for e in edges] == [DOWN, UP] * (len(edges) // 2)
    assert r.active_digit is None
    for down, up in zip(edges[::2], edges[1::2], strict=True):
        assert down.digit == up.digit
