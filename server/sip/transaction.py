"""SIP transactions (RFC 3261 §17): retransmissions and timeouts, nothing else.

Each transaction owns the bytes it last sent and the timers that resend them
or give up; it knows nothing of dialogs, SDP or calls.  Messages come in as
already-parsed facts (a status code, "a retransmission arrived") and go out
as bytes through the ``send`` callback given at creation.  Over a reliable
transport (TCP) nothing is retransmitted and the wait timers are zero.

A transport error (a TCP connect refused or reset) reaches a client transaction
as a final 503, made by :class:`~server.sip.transport.SipTransport` and routed
like a received response (RFC 3261 §8.1.3.1, §17.1.4): the transaction ends at
once instead of on Timer B/F.  The ACK a :class:`ClientInvite` sends for it is
dropped by the transport.

Timers are scheduled on a :class:`Scheduler` (the asyncio loop in the server,
a manual clock in tests).  Times are seconds; T1 = 0.5, T2 = 4, T4 = 5.

* :class:`ServerInvite`: 1xx/2xx/3xx-6xx out; a non-2xx final is resent on
  Timer G (T1 doubling to T2) until the ACK, given up on Timer H (64*T1);
  then Timer I absorbs ACK retransmissions.  A 2xx ends the transaction at
  once: its retransmission is the UAS core's job (:class:`TwoXxRetransmitter`).
* :class:`ServerNonInvite`: the final response is resent for every request
  retransmission until Timer J (64*T1 over UDP).
* :class:`ClientNonInvite`: the request is resent on Timer E (T1 doubling to
  T2, and T2 once a provisional arrived) until a final response, or Timer F
  (64*T1) times it out.
* :class:`ClientInvite`: the INVITE is resent on Timer A (doubling) until any
  response, Timer B (64*T1) times it out; a non-2xx final is ACKed (hop by hop,
  resent for each retransmitted final during Timer D).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final, Protocol

T1: Final = 0.5
T2: Final = 4.0
T4: Final = 5.0
TIMEOUT_S: Final = 64 * T1
"""Timers B, F, H and J."""


class Handle(Protocol):
    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """What transactions need of a clock: ``asyncio.AbstractEventLoop`` fits."""

    def call_later(self, delay: float, callback: Callable[[], object]) -> Handle: ...


Send = Callable[[bytes], None]


class State(enum.Enum):
    TRYING = "trying"
    CALLING = "calling"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class _Transaction:
    """Shared plumbing: the state, the timers and the termination callback."""

    def __init__(
        self,
        send: Send,
        scheduler: Scheduler,
        reliable: bool,
        on_terminated: Callable[[], None] | None,
    ) -> None:
        self._send = send
        self._scheduler = scheduler
        self.reliable = reliable
        self._on_terminated = on_terminated
        self._timers: dict[str, Handle] = {}
        self.state = State.TRYING

    def _start(self, name: str, delay: float, callback: Callable[[], None]) -> None:
        self._stop(name)
        self._timers[name] = self._scheduler.call_later(delay, callback)

    def _stop(self, name: str) -> None:
        handle = self._timers.pop(name, None)
        if handle is not None:
            handle.cancel()

    def terminate(self) -> None:
        """End the transaction now (idempotent): timers stop, the owner is told."""
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        if self._on_terminated is not None:
            self._on_terminated()

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED


class ServerInvite(_Transaction):
    """The server side of an INVITE: see the module docstring."""

    def __init__(
        self,
        send: Send,
        scheduler: Scheduler,
        reliable: bool,
        on_terminated: Callable[[], None] | None = None,
        on_timeout: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(send, scheduler, reliable, on_terminated)
        self.state = State.PROCEEDING
        self._last: bytes | None = None
        self._interval = T1
        self._on_timeout = on_timeout
        self.final_status: int | None = None

    def respond(self, status: int, data: bytes) -> None:
        """Send a response of ``status``; a final one moves the transaction on."""
        if self.state is not State.PROCEEDING:
            return
        self._last = data
        self._send(data)
        if status < 200:
            return
        self.final_status = status
        if 200 <= status < 300:
            self.terminate()  # the core resends the 2xx until its ACK
            return
        self.state = State.COMPLETED
        if not self.reliable:
            self._start("G", T1, self._timer_g)
        self._start("H", TIMEOUT_S, self._timer_h)

    def on_retransmission(self) -> None:
        """The INVITE arrived again: resend the last response (if any)."""
        if self.state in (State.PROCEEDING, State.COMPLETED) and self._last is not None:
            self._send(self._last)

    def on_ack(self) -> None:
        """The ACK of a non-2xx final response."""
        if self.state is not State.COMPLETED:
            return
        self.state = State.CONFIRMED
        self._stop("G")
        self._stop("H")
        self._start("I", 0.0 if self.reliable else T4, self.terminate)

    def _timer_g(self) -> None:
        if self.state is State.COMPLETED and self._last is not None:
            self._send(self._last)
            self._interval = min(2 * self._interval, T2)
            self._start("G", self._interval, self._timer_g)

    def _timer_h(self) -> None:
        if self.state is State.COMPLETED:
            if self._on_timeout is not None:
                self._on_timeout()
            self.terminate()


class ServerNonInvite(_Transaction):
    """The server side of BYE, OPTIONS, CANCEL, REGISTER, ...: see the module docstring."""

    def __init__(
        self,
        send: Send,
        scheduler: Scheduler,
        reliable: bool,
        on_terminated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(send, scheduler, reliable, on_terminated)
        self._last: bytes | None = None

    def respond(self, status: int, data: bytes) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        self._last = data
        self._send(data)
        if status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        self._start("J", 0.0 if self.reliable else TIMEOUT_S, self.terminate)

    def on_retransmission(self) -> None:
        if self.state in (State.PROCEEDING, State.COMPLETED) and self._last is not None:
            self._send(self._last)


class ClientNonInvite(_Transaction):
    """The client side of a non-INVITE request: see the module docstring.

    ``on_final(status)`` is called once with the final status, or with 408
    when Timer F fires (RFC 3261 §8.1.3.1 treats a timeout as 408; a transport
    error arrives as a 503 response).
    """

    def __init__(
        self,
        request: bytes,
        send: Send,
        scheduler: Scheduler,
        reliable: bool,
        *,
        on_final: Callable[[int], None],
        on_terminated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(send, scheduler, reliable, on_terminated)
        self._request = request
        self._on_final = on_final
        self._interval = T1
        self._send(request)
        if not reliable:
            self._start("E", T1, self._timer_e)
        self._start("F", TIMEOUT_S, self._timer_f)

    def on_response(self, status: int) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        if status < 200:
            self.state = State.PROCEEDING
            return
        self.state = State.COMPLETED
        self._stop("E")
        self._stop("F")
        self._on_final(status)
        self._start("K", 0.0 if self.reliable else T4, self.terminate)

    def _timer_e(self) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return
        self._send(self._request)
        self._interval = T2 if self.state is State.PROCEEDING else min(2 * self._interval, T2)
        self._start("E", self._interval, self._timer_e)

    def _timer_f(self) -> None:
        if self.state in (State.TRYING, State.PROCEEDING):
            self._on_final(408)
            self.terminate()


class ClientInvite(_Transaction):
    """The client side of an INVITE: see the module docstring.

    ``on_response(status)`` is called for every distinct response: provisional
    ones, each 2xx (the core ACKs them, end to end), and the final non-2xx,
    which this transaction ACKs itself with ``make_ack()``.  A timeout is
    reported as 408.
    """

    def __init__(
        self,
        request: bytes,
        send: Send,
        scheduler: Scheduler,
        reliable: bool,
        *,
        on_response: Callable[[int], None],
        make_ack: Callable[[], bytes],
        on_terminated: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(send, scheduler, reliable, on_terminated)
        self.state = State.CALLING
        self._request = request
        self._on_response = on_response
        self._make_ack = make_ack
        self._ack: bytes | None = None
        self._interval = T1
        self._send(request)
        if not reliable:
            self._start("A", T1, self._timer_a)
        self._start("B", TIMEOUT_S, self._timer_b)

    def on_response(self, status: int) -> None:
        state = self.state
        if state is State.COMPLETED:
            if status >= 300 and self._ack is not None:
                self._send(self._ack)  # the final response came again: so does the ACK
            return
        if state not in (State.CALLING, State.PROCEEDING):
            return
        self._stop("A")
        if status < 200:
            self.state = State.PROCEEDING
            self._stop("B")
            self._on_response(status)
            return
        if status < 300:
            self._on_response(status)
            self.terminate()  # 2xx: the core ACKs, and ACKs its retransmissions
            return
        self.state = State.COMPLETED
        self._stop("B")
        self._ack = self._make_ack()
        self._send(self._ack)
        self._on_response(status)
        self._start("D", 0.0 if self.reliable else 32.0, self.terminate)

    def _timer_a(self) -> None:
        if self.state is State.CALLING:
            self._send(self._request)
            self._interval *= 2
            self._start("A", self._interval, self._timer_a)

    def _timer_b(self) -> None:
        if self.state is State.CALLING:
            self._on_response(408)
            self.terminate()


class TwoXxRetransmitter:
    """Resends a UAS's 2xx to an INVITE until its ACK (RFC 3261 §13.3.1.4).

    Over UDP the 2xx goes again at T1, doubling to T2; after 64*T1 without an
    ACK, ``on_timeout`` is called (the UAS then ends the dialog with a BYE).
    Over TCP nothing is resent but the ACK is still waited for.
    """

    def __init__(
        self,
        data: bytes,
        send: Send,
        scheduler: Scheduler,
        reliable: bool,
        on_timeout: Callable[[], None],
    ) -> None:
        self._data = data
        self._send = send
        self._scheduler = scheduler
        self._on_timeout = on_timeout
        self._interval = T1
        self.acked = False
        self._resend: Handle | None = None
        if not reliable:
            self._resend = scheduler.call_later(T1, self._again)
        self._give_up: Handle | None = scheduler.call_later(TIMEOUT_S, self._timeout)

    def on_invite_retransmission(self) -> None:
        """The INVITE came again before the ACK: send the 2xx again."""
        if not self.acked:
            self._send(self._data)

    def on_ack(self) -> None:
        self.acked = True
        self.cancel()

    def cancel(self) -> None:
        for handle in (self._resend, self._give_up):
            if handle is not None:
                handle.cancel()
        self._resend = self._give_up = None

    def _again(self) -> None:
        if self.acked:
            return
        self._send(self._data)
        self._interval = min(2 * self._interval, T2)
        self._resend = self._scheduler.call_later(self._interval, self._again)

    def _timeout(self) -> None:
        self._give_up = None
        if not self.acked:
            self.cancel()
            self._on_timeout()
