"""SIP session timers (RFC 4028): the headers, the negotiation and the two timers.

Wire format, all in this file:

* ``Session-Expires: <delta-seconds>[;refresher=uac|uas]`` (compact ``x``): the
  session interval.  ``refresher`` names a role *in the transaction that carries
  it*: in a request we receive, ``uac`` is the peer and ``uas`` is us; in a
  response to our request, ``uac`` is us.
* ``Min-SE: <delta-seconds>``: the smallest interval a hop accepts (never below
  90 s); a request asking for less gets ``422 Session Interval Too Small`` with
  our ``Min-SE``.
* ``Supported: timer`` says a UA can refresh; ``Require: timer`` in a 2xx tells the
  caller it must.

Negotiation as UAS (§9): :func:`negotiate_uas` turns a request into the terms for
our 2xx (or a 422).  As UAC (§7): :func:`offer_headers` for our INVITE,
:func:`terms_from_response` to read the 2xx.  :class:`SessionTimer` then runs the
one timer the terms call for: the refresher refreshes at half the interval, the
other side sends BYE when no refresh came by ``interval - min(32, interval/3)``.

Malformed header values raise :class:`SessionTimerError`; nothing else escapes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from server.sip.message import Request, Response
from server.sip.transaction import Handle, Scheduler

MIN_SE_FLOOR_S: Final = 90
"""RFC 4028 §4: no interval below 90 s, whatever Min-SE says."""
MAX_INTERVAL_S: Final = 86_400 * 7
"""Longest interval we accept before calling the value absurd (s)."""
OPTION: Final = "timer"

Refresher = Literal["uac", "uas"]


class SessionTimerError(ValueError):
    """A Session-Expires or Min-SE value is unusable; ``str()`` is the reason."""


@dataclass(frozen=True, slots=True)
class SessionExpires:
    """One ``Session-Expires`` value: interval (s) and the refresher role, if named."""

    interval_s: int
    refresher: Refresher | None = None

    def __str__(self) -> str:
        suffix = f";refresher={self.refresher}" if self.refresher else ""
        return f"{self.interval_s}{suffix}"


def _seconds(text: str, what: str) -> int:
    text = text.strip(" \t")
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise SessionTimerError(f"bad {what} value {text[:20]!r}")
    value = int(text)
    if value > MAX_INTERVAL_S:
        raise SessionTimerError(f"{what} of {value} s is too long")
    return value


def parse_session_expires(value: str) -> SessionExpires:
    """Parse a ``Session-Expires`` value (SessionTimerError if malformed)."""
    head, *params = value.split(";")
    interval = _seconds(head, "Session-Expires")
    if interval == 0:
        raise SessionTimerError("Session-Expires of 0 s")
    refresher: Refresher | None = None
    for param in params:
        name, _, pvalue = param.partition("=")
        if name.strip(" \t").lower() != "refresher":
            continue  # extension parameters are ignored
        role = pvalue.strip(" \t").lower()
        if role == "uac":
            refresher = "uac"
        elif role == "uas":
            refresher = "uas"
        else:
            raise SessionTimerError(f"bad refresher {role[:20]!r}")
    return SessionExpires(interval, refresher)


def parse_min_se(value: str) -> int:
    """Parse a ``Min-SE`` value (s; parameters ignored) (SessionTimerError if malformed)."""
    return _seconds(value.split(";", maxsplit=1)[0], "Min-SE")


@dataclass(frozen=True, slots=True)
class Terms:
    """What a dialog's session timer runs on: the interval and who refreshes."""

    interval_s: int
    we_refresh: bool
    header: SessionExpires
    """The ``Session-Expires`` our response (UAS) carries, or the 2xx carried (UAC)."""
    require: bool
    """Whether our 2xx says ``Require: timer`` (the caller supports timers)."""

    def headers(self) -> tuple[tuple[str, str], ...]:
        """Headers for our 2xx: ``Session-Expires`` (and ``Require: timer``)."""
        out: tuple[tuple[str, str], ...] = (("Session-Expires", str(self.header)),)
        return (*out, ("Require", OPTION)) if self.require else out


@dataclass(frozen=True, slots=True)
class TooSmall:
    """The request's interval is below our minimum: answer 422 with ``Min-SE``."""

    min_se_s: int

    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("Min-SE", str(self.min_se_s)),)


@dataclass(frozen=True, slots=True)
class Policy:
    """Our side's numbers: the interval we offer and the least we accept (s)."""

    session_expires_s: int = 1800
    min_se_s: int = MIN_SE_FLOOR_S

    def __post_init__(self) -> None:
        if not MIN_SE_FLOOR_S <= self.min_se_s <= self.session_expires_s:
            raise ValueError(
                f"min_se_s must be in {MIN_SE_FLOOR_S}..session_expires_s, got {self.min_se_s}"
            )


def _header(message: Request | Response, name: str) -> str | None:
    return message.headers.get(name)


def negotiate_uas(request: Request, policy: Policy) -> Terms | TooSmall | None:
    """The session-timer terms for our 2xx to an INVITE or re-INVITE (RFC 4028 §9).

    ``None``: no timer (the caller neither supports nor asks for one).
    :class:`TooSmall`: answer 422.  Raises SessionTimerError for a malformed
    Session-Expires or Min-SE (answer 400).
    """
    supported = OPTION in request.headers.tokens("Supported") or OPTION in (
        request.headers.tokens("Require")
    )
    raw = _header(request, "Session-Expires")
    raw_min = _header(request, "Min-SE")
    their_min = parse_min_se(raw_min) if raw_min is not None else MIN_SE_FLOOR_S
    if raw is None:
        if not supported:
            return None
        interval = max(policy.session_expires_s, their_min)
        # The caller can refresh and did not ask: it does (§9, our choice).
        return Terms(interval, False, SessionExpires(interval, "uac"), True)
    asked = parse_session_expires(raw)
    if asked.interval_s < policy.min_se_s:
        return TooSmall(max(policy.min_se_s, their_min))
    interval = max(min(asked.interval_s, policy.session_expires_s), their_min, policy.min_se_s)
    if not supported:
        # A proxy asked for timers on a caller that cannot refresh: we do, quietly.
        return Terms(interval, True, SessionExpires(interval, "uas"), False)
    refresher: Refresher = asked.refresher or "uac"
    return Terms(interval, refresher == "uas", SessionExpires(interval, refresher), True)


def offer_headers(policy: Policy) -> tuple[tuple[str, str], ...]:
    """Headers for our INVITE (RFC 4028 §7.1): we support timers and propose an interval;
    the callee picks the refresher."""
    return (
        ("Session-Expires", str(policy.session_expires_s)),
        ("Min-SE", str(policy.min_se_s)),
    )


def terms_from_response(response: Response) -> Terms | None:
    """The terms a 2xx to our (re-)INVITE or UPDATE set (RFC 4028 §7.2).

    ``None`` when it has no Session-Expires (the callee wants no timer).  With
    no refresher named, the UAC (we) refreshes.  SessionTimerError if malformed.
    """
    raw = _header(response, "Session-Expires")
    if raw is None:
        return None
    value = parse_session_expires(raw)
    refresher: Refresher = value.refresher or "uac"
    return Terms(
        value.interval_s, refresher == "uac", SessionExpires(value.interval_s, refresher), False
    )


def min_se_of_422(response: Response) -> int:
    """The interval to retry with after a 422: its Min-SE (SessionTimerError if absent)."""
    raw = _header(response, "Min-SE")
    if raw is None:
        raise SessionTimerError("422 without Min-SE")
    return max(parse_min_se(raw), MIN_SE_FLOOR_S)


def refresh_headers(interval_s: int) -> tuple[tuple[str, str], ...]:
    """Headers of a refresh request we send as refresher (``refresher=uac``: still us)."""
    return (
        ("Session-Expires", str(SessionExpires(interval_s, "uac"))),
        ("Min-SE", str(MIN_SE_FLOOR_S)),
        ("Supported", OPTION),
    )


def bye_margin_s(interval_s: float) -> float:
    """How long before expiry the non-refresher gives up: ``min(32, interval/3)`` (s)."""
    return min(32.0, interval_s / 3)


class SessionTimer:
    """The running timer of one dialog: ``refresh()`` at half the interval when we are
    the refresher, else ``expire()`` at ``interval - min(32, interval/3)`` without a refresh.

    :meth:`restart` on every successful refresh (either way); :meth:`cancel` when
    the dialog ends.  Times are seconds on ``scheduler``.
    """

    def __init__(
        self, scheduler: Scheduler, refresh: Callable[[], None], expire: Callable[[], None]
    ) -> None:
        self._scheduler = scheduler
        self._refresh = refresh
        self._expire = expire
        self._handle: Handle | None = None
        self.terms: Terms | None = None

    def restart(self, terms: Terms | None) -> None:
        """Run on ``terms`` from now (``None``: no timer)."""
        self.cancel()
        self.terms = terms
        if terms is None:
            return
        if terms.we_refresh:
            self._handle = self._scheduler.call_later(terms.interval_s / 2, self._fire_refresh)
        else:
            delay = terms.interval_s - bye_margin_s(terms.interval_s)
            self._handle = self._scheduler.call_later(delay, self._fire_expire)

    def expire_after(self, delay_s: float) -> None:
        """Give up in ``delay_s`` unless restarted (a refresh of ours failed)."""
        self.cancel()
        self._handle = self._scheduler.call_later(max(0.0, delay_s), self._fire_expire)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire_refresh(self) -> None:
        self._handle = None
        self._refresh()

    def _fire_expire(self) -> None:
        self._handle = None
        self._expire()
