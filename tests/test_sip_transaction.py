"""SIP transaction timers (RFC 3261 §17) on a manual clock: what is sent when."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from server.sip.transaction import (
    T2,
    TIMEOUT_S,
    ClientInvite,
    ClientNonInvite,
    ServerInvite,
    ServerNonInvite,
    State,
    TwoXxRetransmitter,
)


class ManualHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A scheduler whose time moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, ManualHandle, Callable[[], object]]] = []
        self._order = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], object]) -> ManualHandle:
        handle = ManualHandle()
        heapq.heappush(self._queue, (self.now + delay, next(self._order), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while self._queue and self._queue[0][0] <= end:
            due, _, handle, callback = heapq.heappop(self._queue)
            self.now = due
            if not handle.cancelled:
                callback()
        self.now = end


class Wire:
    """Records what was sent and when."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, bytes]] = []

    def __call__(self, data: bytes) -> None:
        self.sent.append((self.clock.now, data))

    def times(self, data: bytes) -> list[float]:
        return [t for t, d in self.sent if d == data]


def test_non_invite_client_resends_on_timer_e_and_times_out_on_f() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    finals: list[int] = []
    tx = ClientNonInvite(b"BYE", wire, clock, reliable=False, on_final=finals.append)
    clock.advance(40)
    # T1, doubling, capped at T2, until Timer F at 64*T1.
    assert wire.times(b"BYE") == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert finals == [408] and tx.terminated


def test_non_invite_client_after_a_provisional_resends_every_t2() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    finals: list[int] = []
    tx = ClientNonInvite(b"OPTIONS", wire, clock, reliable=False, on_final=finals.append)
    clock.advance(0.6)
    tx.on_response(100)
    clock.advance(9.0)
    assert wire.times(b"OPTIONS") == [0, 0.5, 1.5, 5.5, 9.5]
    tx.on_response(200)
    tx.on_response(200)  # a retransmitted final is absorbed
    assert finals == [200] and tx.state is State.COMPLETED
    clock.advance(5)  # Timer K
    assert tx.terminated


def test_reliable_transport_sends_once() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    finals: list[int] = []
    ClientNonInvite(b"BYE", wire, clock, reliable=True, on_final=finals.append)
    clock.advance(TIMEOUT_S + 1)
    assert wire.times(b"BYE") == [0] and finals == [408]


def test_invite_server_resends_non_2xx_until_ack_then_absorbs() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    ended: list[bool] = []
    tx = ServerInvite(wire, clock, reliable=False, on_terminated=lambda: ended.append(True))
    tx.respond(100, b"100")
    tx.on_retransmission()
    assert wire.times(b"100") == [0, 0]
    clock.advance(1)
    tx.respond(486, b"486")
    clock.advance(4)
    assert wire.times(b"486") == [1, 1.5, 2.5, 4.5]  # Timer G
    tx.on_ack()
    assert tx.state is State.CONFIRMED
    clock.advance(10)
    assert wire.times(b"486") == [1, 1.5, 2.5, 4.5] and ended == [True]


def test_invite_server_gives_up_on_timer_h() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    timeouts: list[bool] = []
    tx = ServerInvite(wire, clock, reliable=False, on_timeout=lambda: timeouts.append(True))
    tx.respond(487, b"487")
    clock.advance(TIMEOUT_S + 1)
    times = wire.times(b"487")
    assert times[:4] == [0, 0.5, 1.5, 3.5]
    assert all(b - a <= T2 for a, b in itertools.pairwise(times))
    assert timeouts == [True] and tx.terminated


def test_invite_server_2xx_ends_the_transaction_and_the_core_resends_it() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    tx = ServerInvite(wire, clock, reliable=False)
    tx.respond(200, b"200")
    assert tx.terminated
    timeouts: list[bool] = []
    retransmitter = TwoXxRetransmitter(b"200", wire, clock, False, lambda: timeouts.append(True))
    clock.advance(3.6)
    retransmitter.on_invite_retransmission()
    retransmitter.on_ack()
    clock.advance(60)
    assert wire.times(b"200") == [0, 0.5, 1.5, 3.5, 3.6]
    assert timeouts == []


def test_2xx_without_ack_times_out() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    timeouts: list[bool] = []
    TwoXxRetransmitter(b"200", wire, clock, False, lambda: timeouts.append(True))
    clock.advance(TIMEOUT_S + 1)
    assert timeouts == [True]
    assert max(wire.times(b"200")) < TIMEOUT_S


def test_non_invite_server_answers_retransmissions_until_timer_j() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    tx = ServerNonInvite(wire, clock, reliable=False)
    tx.on_retransmission()  # nothing to resend yet
    tx.respond(200, b"200")
    clock.advance(10)
    tx.on_retransmission()
    assert wire.times(b"200") == [0, 10]
    clock.advance(TIMEOUT_S)
    assert tx.terminated
    tx.on_retransmission()
    assert len(wire.sent) == 2


def test_invite_client_acks_a_failure_and_each_retransmission_of_it() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    seen: list[int] = []
    tx = ClientInvite(
        b"INVITE", wire, clock, False, on_response=seen.append, make_ack=lambda: b"ACK"
    )
    clock.advance(2)
    assert wire.times(b"INVITE") == [0, 0.5, 1.5]  # Timer A
    tx.on_response(180)
    clock.advance(10)
    assert wire.times(b"INVITE") == [0, 0.5, 1.5]  # no more once something answered
    tx.on_response(486)
    tx.on_response(486)
    assert seen == [180, 486] and wire.times(b"ACK") == [12, 12]
    clock.advance(40)
    assert tx.terminated


def test_invite_client_reports_each_2xx_and_a_timeout() -> None:
    clock = ManualClock()
    wire = Wire(clock)
    seen: list[int] = []
    tx = ClientInvite(
        b"INVITE", wire, clock, False, on_response=seen.append, make_ack=lambda: b"ACK"
    )
    tx.on_response(200)
    assert seen == [200] and tx.terminated and b"ACK" not in [d for _, d in wire.sent]
    silent: list[int] = []
    ClientInvite(b"INVITE", wire, clock, True, on_response=silent.append, make_ack=lambda: b"ACK")
    clock.advance(TIMEOUT_S + 1)
    assert silent == [408]
