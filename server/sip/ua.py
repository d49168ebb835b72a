"""The SIP user agent core (RFC 3261 §8, §12-§15; RFC 4028): calls in and out, BYE.

:class:`UserAgent` takes every parsed message from the transport, matches it
to a server transaction (retransmissions are answered from there), a dialog
(ours as UAS or as UAC), or, for a response, the client transaction that sent
the request (by Via branch), and carries out the UAS rules:

* INVITE: 100 Trying at once, 180 Ringing, then after ``answer_delay_ms`` 200 OK
  with the SDP from the application's :class:`InviteSession` (an offer when the
  INVITE had none: the answer then comes in the ACK); the 2xx is resent until
  its ACK, and a call whose ACK never comes is hung up.  Refusals: 486/503 from
  the application, 488 with a Warning when the media cannot be agreed, 420 for
  a ``Require`` we do not support, 483 when Max-Forwards is spent.
* CANCEL before the 200: 200 to the CANCEL and 487 to the INVITE; after it: 200
  only; no such INVITE: 481.
* re-INVITE (hold, resume, codec change): 200 with the new answer, 488 leaving
  the session as it was, 491 while another re-INVITE is in progress.
* UPDATE (RFC 3311), always answered at once.  In a confirmed dialog (our 200
  sent): without a body it is a session refresh (RFC 4028, as a re-INVITE: 422
  below our Min-SE, else 200 with ``Session-Expires`` and the timer restarted);
  with an SDP offer, 200 with our answer, 488 keeping the session, 491 while an
  offer of ours awaits its answer (the 200 of a delayed offer before its ACK, our
  offerless re-INVITE).  In an early dialog (the call still rings): 200 without
  a body; with an offer, 500 and ``Retry-After: 0..10`` (RFC 3311 §5.2): the
  INVITE's own offer is answered only in our 2xx, since we send no reliable
  provisional responses (no 100rel), so that exchange is still open.  The same
  holds in the early dialog of a call we place.  No dialog: 481.
* BYE: 200 and the call ends; in no dialog: 481.  OPTIONS: 200 with what we
  allow, or 503 when the application refuses new calls.
* Our hangup: BYE through the route set (Timer E/F); any final answer, or none,
  ends the dialog.
* Session timers (RFC 4028): an INVITE or re-INVITE asking for less than our
  ``Min-SE`` gets 422; otherwise our 200 carries ``Session-Expires`` (and
  ``Require: timer`` when the caller supports it).  When we refresh, an UPDATE
  (if the peer allows it) or an offerless re-INVITE goes out at half the
  interval; when the peer refreshes and does not, we send BYE before expiry.

Calls out: :meth:`UserAgent.invite` sends an INVITE (see :mod:`server.sip.uac`
for the transaction, digest and CANCEL rules) and returns an
:class:`OutboundCall`; its 2xx makes a dialog handled like the ones we answer
(BYE either way, re-INVITEs, UPDATEs, session timers).  Early media (RFC 3264,
RFC 6337 §3.1): the SDP of a 101-199 response is the answer for now and goes
to :meth:`OutboundSession.early` (media may flow, the conversation waits); the
2xx answer then goes to :meth:`OutboundSession.accept`, or, when the 2xx has no
SDP, the last early answer stands.  A failure after early media ends the
session like any failure.  Registrations
(:mod:`server.sip.registration`) get their responses through :meth:`UserAgent.expect`.

Malformed requests get 400 with the parser's reason; responses to requests we
never sent are dropped.  Everything a transaction sends goes through the
transport as bytes; nothing here blocks.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from server.sip.dialog import Dialog, DialogId, new_branch, new_call_id, new_tag
from server.sip.message import (
    Address,
    Message,
    Request,
    Response,
    SipParseError,
    SipUri,
    check_request,
    make_request,
    make_response,
)
from server.sip.sessiontimer import (
    Policy,
    SessionTimer,
    SessionTimerError,
    Terms,
    TooSmall,
    bye_margin_s,
    negotiate_uas,
    refresh_headers,
    terms_from_response,
)
from server.sip.transaction import (
    TIMEOUT_S,
    ClientInvite,
    ClientNonInvite,
    Handle,
    Scheduler,
    ServerInvite,
    ServerNonInvite,
    TwoXxRetransmitter,
)
from server.sip.transport import Peer
from server.sip.uac import (
    RING_TIMEOUT_S,
    DigestClient,
    InviteTemplate,
    Login,
    OutboundInvite,
    ResponseHandler,
    glare_delay_s,
    peer_for,
)

log = logging.getLogger(__name__)

ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"
SUPPORTED_OPTIONS: Final[frozenset[str]] = frozenset({"timer"})
"""Extensions we support (``Supported``/``Require`` tokens): session timers (RFC 4028)."""
SUPPORTED: Final = ", ".join(sorted(SUPPORTED_OPTIONS))
SDP: Final = "application/sdp"
DEFAULT_TIMER_POLICY: Final = Policy()
UPDATE_RETRY_AFTER_S: Final = (0, 10)
"""RFC 3311 §5.2: the ``Retry-After`` of a 500 to an UPDATE offer is random in this range (s)."""


class Refused(Exception):
    """The application will not take this call: answered with ``status``."""

    def __init__(self, status: int, reason: str | None = None, retry_after_s: int | None = None):
        super().__init__(reason or str(status))
        self.status = status
        self.reason = reason
        self.retry_after_s = retry_after_s


class MediaRefused(Exception):
    """No acceptable media in an offer: answered 488 with ``Warning: <code> ...``."""

    def __init__(self, reason: str, warning_code: int = 305) -> None:
        super().__init__(reason)
        self.warning_code = warning_code


class DialogSession(Protocol):
    """The application's side of one established call, whichever side placed it."""

    def confirmed(self, ack_body: bytes) -> None:
        """The ACK of our 200 (to the INVITE or a re-INVITE) arrived; ``ack_body`` is the
        SDP answer when that 200 carried our offer (delayed offer), else empty."""
        ...

    def update(self, offer: bytes | None) -> bytes:
        """A re-INVITE's or UPDATE's offer: the new answer (``None``: a re-INVITE without
        SDP, answered with our offer).  :class:`MediaRefused` keeps the old session."""
        ...

    def ended(self, reason: str) -> None:
        """The call is over (BYE either way, CANCEL, no ACK, shutdown); idempotent."""
        ...


class InviteSession(DialogSession, Protocol):
    """The application's side of a call we answer (media and conversation)."""

    def answer(self, offer: bytes | None) -> bytes:
        """SDP for the 200: the answer to ``offer``, or our offer when it is ``None``.

        Raises :class:`MediaRefused` (488).
        """
        ...


class OutboundSession(DialogSession, Protocol):
    """The application's side of a call we place."""

    def offer(self) -> bytes:
        """SDP offer for our INVITE (:class:`MediaRefused` when no media can be set up)."""
        ...

    def early(self, answer: bytes) -> None:
        """The callee's SDP answer in a 18x (early media): media may flow (ringback,
        prompts), the conversation waits for :meth:`accept`.  Called again when a later
        18x carries SDP.  :class:`MediaRefused`: that early answer is ignored."""
        ...

    def accept(self, answer: bytes) -> None:
        """The callee's SDP answer from its 2xx (it replaces an early one); the call starts.

        :class:`MediaRefused` ends the call (BYE)."""
        ...


class CallControl(Protocol):
    """What an :class:`InviteSession` can ask of its call's signalling."""

    def hangup(self, reason: str) -> None: ...


SessionFactory = Callable[[Request, CallControl], InviteSession]
"""Makes the session for a new INVITE; raises :class:`Refused` to turn it down."""
OutboundSessionFactory = Callable[[Request, CallControl], OutboundSession]
"""Makes the session for a call we place, from our INVITE (no body yet) and its control."""


@dataclass(slots=True)
class UaStats:
    invites: int = 0
    answered: int = 0
    refused: int = 0
    cancelled: int = 0
    bad_requests: int = 0
    unmatched: int = 0
    outbound: int = 0
    outbound_answered: int = 0
    outbound_failed: int = 0
    refreshes: int = 0
    session_expired: int = 0
    updates: int = 0
    """UPDATE requests answered in a dialog, early or confirmed (any status)."""
    early_media: int = 0
    """Early answers (SDP in a 18x to our INVITE) taken."""


@dataclass(eq=False, slots=True)
class _Call:
    """One call in a dialog: its INVITE (theirs or ours), dialog, transactions and session."""

    ua: UserAgent
    invite: Request
    peer: Peer
    transaction: ServerInvite | None
    """The server transaction of the INVITE we answer; ``None`` for calls we placed."""
    dialog: Dialog
    session: DialogSession | None = None
    state: str = "ringing"  # ringing -> answered -> confirmed -> ended
    answer_timer: Handle | None = None
    two_xx: TwoXxRetransmitter | None = None
    """Resends our 200 to an INVITE (the first, or the latest re-INVITE) until its ACK."""
    invite_key: tuple[str, str] | None = None
    """(branch, sent-by) of the INVITE whose 200 awaits its ACK."""
    delayed_offer: bool = False
    bye: ClientNonInvite | None = None
    end_reason: str | None = None
    answer_sdp: bytes = b""
    """The SDP our 200 will carry (kept while the call rings)."""
    outbound: bool = False
    """We placed the call (our requests go to the dialog's next hop)."""
    terms: Terms | None = None
    """Session-timer terms our next 200 carries (from the INVITE it answers)."""
    timer: SessionTimer | None = None
    peer_allow: frozenset[str] = field(default_factory=frozenset)
    """Methods the peer said it allows (UPDATE lets us refresh without SDP)."""
    refresh: ClientInvite | ClientNonInvite | None = None
    """Our session refresh in progress."""

    def hangup(self, reason: str) -> None:
        """:class:`CallControl`: end the call from our side."""
        self.ua._hangup(self, reason)


class UserAgent:
    """The UAS core of one SIP endpoint.

    ``send(data, peer)`` writes bytes (the transport); ``contact`` is our
    Contact URI; ``refusal()`` says why new calls are refused now (OPTIONS
    answers 503 then), ``None`` when they are taken.
    """

    def __init__(
        self,
        send: Callable[[bytes, Peer], None],
        scheduler: Scheduler,
        *,
        contact: str,
        via_host: str,
        sessions: SessionFactory,
        refusal: Callable[[], str | None] = lambda: None,
        answer_delay_ms: int = 0,
        timer_policy: Policy = DEFAULT_TIMER_POLICY,
    ) -> None:
        self._send = send
        self._scheduler = scheduler
        self.contact = contact
        self.via_host = via_host
        self._sessions = sessions
        self._refusal = refusal
        self.answer_delay_s = answer_delay_ms / 1000
        self.stats = UaStats()
        self._server_tx: dict[tuple[str, str, str], ServerInvite | ServerNonInvite] = {}
        self._invites: dict[tuple[str, str], _Call] = {}  # (branch, sent-by) -> call
        self._dialogs: dict[DialogId, _Call] = {}
        self._legs: dict[tuple[str, str], _Call] = {}  # (Call-ID, caller's tag) -> call
        self.timer_policy = timer_policy
        """Session-timer numbers (RFC 4028) for calls both ways."""
        self._client_tx: dict[str, ResponseHandler] = {}  # our requests, by Via branch
        self._outbound: dict[str, OutboundCall] = {}  # calls we place, until answered or failed

    def contact_for(self, peer: Peer) -> str:
        """Our Contact URI for a dialog with ``peer``: its transport, so requests in the
        dialog come back the same way (RFC 3263: a bare sip: URI means UDP)."""
        return self.contact + (";transport=tcp" if peer.transport == "tcp" else "")

    @property
    def calls(self) -> int:
        return len(self._dialogs)

    @property
    def outbound_pending(self) -> int:
        """Calls we placed that are not answered (or failed) yet."""
        return len(self._outbound)

    # -- entry point ---------------------------------------------------------------

    def on_message(self, message: Message, peer: Peer) -> None:
        if isinstance(message, Response):
            self._on_response(message)
            return
        request = message
        try:
            check_request(request)
        except SipParseError as exc:
            self.stats.bad_requests += 1
            log.info("SIP %s from %s:%d: 400 %s", request.method, *peer.address, exc)
            if request.method != "ACK":
                self._reply_stateless(request, peer, 400, str(exc))
            return
        key = self._tx_key(request)
        existing = self._server_tx.get(key)
        if request.method == "ACK":
            self._on_ack(request, existing)
            return
        if existing is not None:
            existing.on_retransmission()
            return
        if request.method == "INVITE":
            call = self._invites.get(key[:2])
            if call is not None:  # our 2xx ended the transaction: the core resends it
                if call.two_xx is not None:
                    call.two_xx.on_invite_retransmission()
                return
        if (request.max_forwards or 0) <= 0:
            self._respond_new(request, peer, 483)
            return
        required = request.headers.tokens("Require")
        unsupported = [t for t in required if t not in SUPPORTED_OPTIONS]
        if unsupported and request.method != "CANCEL":
            headers = (("Unsupported", ", ".join(unsupported)),)
            self._respond_new(request, peer, 420, headers=headers)
            return
        handler = {
            "INVITE": self._on_invite,
            "BYE": self._on_bye,
            "CANCEL": self._on_cancel,
            "OPTIONS": self._on_options,
            "UPDATE": self._on_update,
        }.get(request.method)
        if handler is None:
            status = 405 if request.method in ("INFO", "PRACK", "REFER") else 501
            self._respond_new(request, peer, status, headers=(("Allow", ALLOW),))
            return
        handler(request, peer)

    # -- transactions ----------------------------------------------------------------

    @staticmethod
    def _tx_key(request: Request) -> tuple[str, str, str]:
        via = request.top_via()
        method = "INVITE" if request.method == "ACK" else request.method
        return (request.branch or "", f"{via.host}:{via.port or 5060}", method)

    def _server_transaction(self, request: Request, peer: Peer) -> ServerInvite | ServerNonInvite:
        key = self._tx_key(request)

        def send(data: bytes) -> None:
            self._send(data, peer)

        def forget() -> None:
            self._server_tx.pop(key, None)

        tx: ServerInvite | ServerNonInvite
        if request.method == "INVITE":
            tx = ServerInvite(send, self._scheduler, peer.reliable, on_terminated=forget)
        else:
            tx = ServerNonInvite(send, self._scheduler, peer.reliable, on_terminated=forget)
        self._server_tx[key] = tx
        return tx

    def _respond_new(
        self,
        request: Request,
        peer: Peer,
        status: int,
        reason: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        """A final response in a fresh server transaction (so retransmissions get it)."""
        tx = self._server_transaction(request, peer)
        tag = None if status == 100 or request.to_tag else new_tag()
        response = make_response(request, status, reason, to_tag=tag, headers=headers)
        tx.respond(status, response.serialize())

    def _reply_stateless(self, request: Request, peer: Peer, status: int, reason: str) -> None:
        try:
            response = make_response(request, status, reason[:120], to_tag=new_tag())
        except (SipParseError, ValueError):
            return  # not even enough of a request to answer
        self._send(response.serialize(), peer)

    # -- methods ---------------------------------------------------------------------

    def _on_options(self, request: Request, peer: Peer) -> None:
        refusal = self._refusal()
        headers = (("Allow", ALLOW), ("Accept", SDP), ("Supported", SUPPORTED))
        if refusal is not None:
            self._respond_new(request, peer, 503, headers=(*headers, ("Retry-After", "5")))
        else:
            self._respond_new(request, peer, 200, headers=headers)

    def _on_invite(self, request: Request, peer: Peer) -> None:
        if request.to_tag is not None:
            self._on_reinvite(request, peer)
            return
        leg = self._legs.get((request.call_id or "", request.from_tag or ""))
        if leg is not None:
            # The same INVITE again after its transaction ended (absorbed), or a copy
            # of it that forked back to us by another path: 482 (RFC 3261 §8.2.2.2).
            if request.cseq().number != leg.invite.cseq().number or request.branch != (
                leg.invite.branch
            ):
                self._respond_new(request, peer, 482)
            return
        terms = self._timer_terms(request, peer)
        if terms is False:
            return  # refused with 400 or 422
        self.stats.invites += 1
        tx = self._server_transaction(request, peer)
        assert isinstance(tx, ServerInvite)
        tx.respond(100, make_response(request, 100).serialize())
        try:
            dialog = Dialog.as_uas(request, new_tag())
        except SipParseError as exc:
            self._final(tx, request, 400, reason=str(exc))
            return
        call = _Call(self, request, peer, tx, dialog, terms=terms)
        call.peer_allow = frozenset(m.upper() for m in request.headers.tokens("Allow"))
        key = self._tx_key(request)
        call.invite_key = key[:2]
        self._invites[key[:2]] = call
        try:
            session = self._sessions(request, call)
        except Refused as exc:
            self.stats.refused += 1
            headers = (
                (("Retry-After", str(exc.retry_after_s)),) if exc.retry_after_s is not None else ()
            )
            self._final(
                tx, request, exc.status, reason=exc.reason, to_tag=dialog.local_tag, headers=headers
            )
            self._forget_invite(call)
            return
        call.session = session
        offer = request.body if request.content_type == SDP and request.body else None
        call.delayed_offer = offer is None
        try:
            sdp = session.answer(offer)
        except MediaRefused as exc:
            self.stats.refused += 1
            warning = (("Warning", f'{exc.warning_code} {self.via_host} "{exc}"'),)
            self._final(tx, request, 488, to_tag=dialog.local_tag, headers=warning)
            self._forget_invite(call)
            session.ended("media_refused")
            return
        call.answer_sdp = sdp
        self._dialogs[dialog.id] = call
        self._legs[(dialog.call_id, dialog.remote_tag)] = call
        tx.respond(180, self._dialog_response(call, 180).serialize())
        if self.answer_delay_s > 0:
            call.answer_timer = self._scheduler.call_later(
                self.answer_delay_s, lambda: self._answer(call)
            )
        else:
            self._answer(call)

    def _dialog_response(
        self,
        call: _Call,
        status: int,
        body: bytes = b"",
        request: Request | None = None,
        *,
        timer: bool = True,
    ) -> Response:
        """A 18x/2xx in the call's dialog: To tag, Contact and Record-Route (§12.1.1);
        a 200 lists what we allow and support, and (``timer``) the session-timer terms."""
        request = request or call.invite
        headers = [("Contact", f"<{self.contact_for(call.peer)}>")]
        headers += [("Record-Route", rr) for rr in request.headers.get_all("Record-Route")]
        if status == 200:
            headers += [("Allow", ALLOW), ("Supported", SUPPORTED)]
            if timer and call.terms is not None:
                headers += call.terms.headers()
        return make_response(
            request,
            status,
            to_tag=call.dialog.local_tag,
            headers=tuple(headers),
            body=body,
            content_type=SDP if body else None,
        )

    def _answer(self, call: _Call) -> None:
        if call.state != "ringing":
            return
        data = self._dialog_response(call, 200, call.answer_sdp).serialize()
        call.state = "answered"
        self.stats.answered += 1
        assert call.transaction is not None and call.invite_key is not None
        call.transaction.respond(200, data)
        self._await_ack(call, data, call.invite_key, call.peer)
        self._run_timer(call, call.terms)

    def _await_ack(self, call: _Call, data: bytes, invite_key: tuple[str, str], peer: Peer) -> None:
        """Resend the 200 ``data`` to ``peer`` until its ACK; an INVITE retransmission
        gets it again."""

        def resend(payload: bytes) -> None:
            self._send(payload, peer)

        call.invite_key = invite_key
        self._invites[invite_key] = call
        call.two_xx = TwoXxRetransmitter(
            data, resend, self._scheduler, call.peer.reliable, lambda: self._no_ack(call)
        )

    def _forget_invite(self, call: _Call) -> None:
        if call.invite_key is not None and self._invites.get(call.invite_key) is call:
            del self._invites[call.invite_key]

    def _no_ack(self, call: _Call) -> None:
        log.info("call %s: no ACK for the 200 in 32 s: hanging up", call.dialog.call_id)
        self._hangup(call, "no_ack")

    def _final(
        self,
        tx: ServerInvite,
        request: Request,
        status: int,
        *,
        reason: str | None = None,
        to_tag: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        tag = to_tag or new_tag()
        response = make_response(request, status, reason, to_tag=tag, headers=headers)
        tx.respond(status, response.serialize())

    def _on_ack(self, request: Request, tx: ServerInvite | ServerNonInvite | None) -> None:
        if isinstance(tx, ServerInvite) and tx.final_status is not None and tx.final_status >= 300:
            tx.on_ack()  # hop-by-hop ACK of our failure response
            return
        call = self._dialog_of(request)
        if call is None:
            self.stats.unmatched += 1
            return  # an ACK for nothing: no response is possible
        if call.two_xx is not None and not call.two_xx.acked:
            if request.cseq().number != call.dialog.invite_cseq:
                return  # the ACK of an older INVITE
            call.two_xx.on_ack()
            self._forget_invite(call)
            if call.session is not None and call.state in ("answered", "confirmed"):
                call.state = "confirmed"  # the first INVITE's ACK, or a re-INVITE's
                call.session.confirmed(request.body if call.delayed_offer else b"")

    def _on_cancel(self, request: Request, peer: Peer) -> None:
        via = request.top_via()
        call = self._invites.get((request.branch or "", f"{via.host}:{via.port or 5060}"))
        if call is None:
            self._respond_new(request, peer, 481)
            return
        self._respond_new(request, peer, 200)
        if call.state != "ringing" or call.transaction is None:
            return  # too late: the UAC sends BYE
        self.stats.cancelled += 1
        self._final(call.transaction, call.invite, 487, to_tag=call.dialog.local_tag)
        self._end(call, "cancelled")

    def _on_bye(self, request: Request, peer: Peer) -> None:
        call = self._dialog_of(request)
        if call is None:
            self._respond_new(request, peer, 481)
            return
        if not call.dialog.accept_remote_cseq(request):
            self._respond_new(request, peer, 500, "CSeq out of order")
            return
        self._respond_new(request, peer, 200)
        if call.state == "ringing" and call.transaction is not None:  # BYE before the 200 (§15.1.2)
            self._final(call.transaction, call.invite, 487, to_tag=call.dialog.local_tag)
        self._end(call, "remote_bye")

    def _on_reinvite(self, request: Request, peer: Peer) -> None:
        call = self._dialog_of(request)
        if call is None or call.session is None or call.state == "ended":
            self._respond_new(request, peer, 481)
            return
        tx = self._server_transaction(request, peer)
        assert isinstance(tx, ServerInvite)
        tag = call.dialog.local_tag
        if (call.two_xx is not None and not call.two_xx.acked) or isinstance(
            call.refresh, ClientInvite
        ):
            # Our 200 to the last INVITE still awaits its ACK, or our own re-INVITE is
            # in progress (RFC 3261 §14.1, §14.2).
            self._final(tx, request, 491, to_tag=tag)
            return
        if not call.dialog.accept_remote_cseq(request):
            self._final(tx, request, 500, reason="CSeq out of order", to_tag=tag)
            return
        try:
            terms = negotiate_uas(request, self.timer_policy)
        except (SessionTimerError, SipParseError) as exc:
            self._final(tx, request, 400, reason=str(exc)[:120], to_tag=tag)
            return
        if isinstance(terms, TooSmall):
            self._final(tx, request, 422, to_tag=tag, headers=terms.headers())
            return
        offer = request.body if request.content_type == SDP and request.body else None
        try:
            sdp = call.session.update(offer)
        except MediaRefused as exc:
            warning = (("Warning", f'{exc.warning_code} {self.via_host} "{exc}"'),)
            self._final(tx, request, 488, to_tag=tag, headers=warning)
            return
        call.dialog.update_target(request)
        call.delayed_offer = offer is None
        call.terms = terms
        data = self._dialog_response(call, 200, sdp, request).serialize()
        tx.respond(200, data)
        self._await_ack(call, data, self._tx_key(request)[:2], peer)
        self._run_timer(call, terms)  # a re-INVITE is a session refresh

    def _on_update(self, request: Request, peer: Peer) -> None:
        """UPDATE (RFC 3311): see the module docstring for every answer."""
        call = self._dialog_of(request)
        if call is None or call.session is None or call.state == "ended":
            if not self._early_outbound_update(request, peer):
                self._respond_new(request, peer, 481)
            return
        self.stats.updates += 1
        tx = self._server_transaction(request, peer)
        tag = call.dialog.local_tag

        def reply(status: int, reason: str | None = None, *headers: tuple[str, str]) -> None:
            response = make_response(request, status, reason, to_tag=tag, headers=headers)
            tx.respond(status, response.serialize())

        if not call.dialog.accept_remote_cseq(request):
            reply(500, "CSeq out of order")
            return
        offer = request.body if request.content_type == SDP and request.body else None
        if call.state == "ringing":
            # An early dialog: the INVITE's offer/answer is open until our 2xx.
            if offer is not None:
                reply(500, "Offer Pending", _update_retry_after())
                return
            call.dialog.update_target(request)
            ok = self._dialog_response(call, 200, request=request, timer=False)
            tx.respond(200, ok.serialize())
            return
        if offer is not None and self._own_offer_pending(call):
            reply(491)
            return
        try:
            terms = negotiate_uas(request, self.timer_policy)
        except (SessionTimerError, SipParseError) as exc:
            reply(400, str(exc)[:120])
            return
        if isinstance(terms, TooSmall):
            reply(422, None, *terms.headers())
            return
        sdp = b""
        if offer is not None:
            try:
                sdp = call.session.update(offer)
            except MediaRefused as exc:
                reply(488, None, ("Warning", f'{exc.warning_code} {self.via_host} "{exc}"'))
                return
        call.dialog.update_target(request)
        call.terms = terms
        tx.respond(200, self._dialog_response(call, 200, sdp, request).serialize())
        self._run_timer(call, terms)  # an UPDATE is a session refresh (RFC 4028 §9)

    @staticmethod
    def _own_offer_pending(call: _Call) -> bool:
        """Whether an SDP offer of ours awaits its answer: the 200 to an INVITE without
        SDP (answered in its ACK), or our re-INVITE without SDP (answered in our ACK)."""
        awaiting_ack = call.two_xx is not None and not call.two_xx.acked
        return (awaiting_ack and call.delayed_offer) or isinstance(call.refresh, ClientInvite)

    def _early_outbound_update(self, request: Request, peer: Peer) -> bool:
        """An UPDATE in the early dialog of a call we place: 200 without SDP, else 500
        (our INVITE's offer has no reliable answer yet).  False: not such a request."""
        outbound = self._outbound.get(request.call_id or "")
        invite = outbound.invite if outbound is not None else None
        if invite is None or request.from_tag is None:
            return False
        if invite.template.from_address.tag != request.to_tag:
            return False
        self.stats.updates += 1
        if request.content_type == SDP and request.body:
            self._respond_new(request, peer, 500, "Offer Pending", (_update_retry_after(),))
            return True
        headers = (
            ("Contact", f"<{self.contact_for(peer)}>"),
            ("Allow", ALLOW),
            ("Supported", SUPPORTED),
        )
        self._respond_new(request, peer, 200, headers=headers)
        return True

    def _dialog_of(self, request: Request) -> _Call | None:
        call_id, remote, local = request.call_id, request.from_tag, request.to_tag
        if call_id is None or remote is None or local is None:
            return None
        return self._dialogs.get(DialogId(call_id, local, remote))

    # -- our side ending calls -------------------------------------------------------

    def _hangup(self, call: _Call, reason: str) -> None:
        if call.state == "ended":
            return
        if call.state == "ringing" and call.transaction is not None:
            self._final(call.transaction, call.invite, 480, to_tag=call.dialog.local_tag)
            self._end(call, reason)
            return
        peer = self._dialog_peer(call)
        branch = new_branch()
        bye = call.dialog.request(
            "BYE",
            via=self._via(peer, branch),
            headers=(("Reason", f'SIP;cause=200;text="{reason}"'),),
        )

        def send(data: bytes) -> None:
            self._send(data, peer)

        tx = ClientNonInvite(
            bye.serialize(),
            send,
            self._scheduler,
            peer.reliable,
            on_final=lambda status: log.debug("BYE of %s: %d", call.dialog.call_id, status),
            on_terminated=lambda: self.forget(branch),
        )
        call.bye = tx
        self._expect_status(branch, tx)
        self._end(call, reason)

    def _via(self, peer: Peer, branch: str) -> str:
        return f"SIP/2.0/{peer.transport.upper()} {self.via_host};branch={branch};rport"

    def _dialog_peer(self, call: _Call) -> Peer:
        """Where our requests in the call's dialog go: the caller's address (or TCP
        connection) for calls we answer, unless that connection closed (then the
        dialog's next hop, its Contact or Record-Route: a new connection to the
        caller's ephemeral source port would be refused); the dialog's next hop for
        calls we placed."""
        peer = call.peer
        if not call.outbound and not (peer.connection is not None and peer.connection.closed):
            return peer
        try:
            return peer_for(call.dialog.next_hop(), call.peer.transport)
        except SipParseError:
            return call.peer

    def _end(self, call: _Call, reason: str) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        call.end_reason = reason
        if call.timer is not None:
            call.timer.cancel()
        if call.refresh is not None:
            call.refresh.terminate()
            call.refresh = None
        if call.answer_timer is not None:
            call.answer_timer.cancel()
        if call.two_xx is not None:
            call.two_xx.cancel()
        self._forget_invite(call)
        self._dialogs.pop(call.dialog.id, None)
        self._legs.pop((call.dialog.call_id, call.dialog.remote_tag), None)
        if call.session is not None:
            call.session.ended(reason)

    # -- responses to our requests ----------------------------------------------------

    def _on_response(self, response: Response) -> None:
        try:
            branch = response.branch or ""
        except SipParseError:
            branch = ""
        handler = self._client_tx.get(branch)
        if handler is None:
            self.stats.unmatched += 1
            return
        handler(response)

    def expect(self, branch: str, handler: ResponseHandler) -> None:
        """Route responses whose top Via has ``branch`` to ``handler`` (our client side)."""
        self._client_tx[branch] = handler

    def forget(self, branch: str) -> None:
        self._client_tx.pop(branch, None)

    def _expect_status(self, branch: str, tx: ClientNonInvite) -> None:
        def handle(response: Response) -> None:
            tx.on_response(response.status)

        self.expect(branch, handle)

    def shutdown(self) -> None:
        """Hang up every call (BYE, or CANCEL while ringing) and stop answering (the
        transport closes after)."""
        for outbound in list(self._outbound.values()):
            outbound.hangup("shutdown")
        for call in list(self._dialogs.values()):
            self._hangup(call, "shutdown")

    # -- session timers (RFC 4028) -------------------------------------------------------

    def _timer_terms(self, request: Request, peer: Peer) -> Terms | Literal[False] | None:
        """The session-timer terms for our 200 to a new INVITE; ``False`` when it was
        refused here (400 for a malformed header, 422 below our Min-SE)."""
        try:
            terms = negotiate_uas(request, self.timer_policy)
        except (SessionTimerError, SipParseError) as exc:
            self._respond_new(request, peer, 400, str(exc)[:120])
            return False
        if isinstance(terms, TooSmall):
            self._respond_new(request, peer, 422, headers=terms.headers())
            return False
        return terms

    def _run_timer(self, call: _Call, terms: Terms | None) -> None:
        """(Re)start the call's session timer on ``terms`` (``None``: no timer)."""
        if call.timer is None:
            if terms is None:
                return
            call.timer = SessionTimer(
                self._scheduler, lambda: self._refresh(call), lambda: self._expired(call)
            )
        call.timer.restart(terms)

    def _expired(self, call: _Call) -> None:
        if call.state == "ended":
            return
        self.stats.session_expired += 1
        log.info("call %s: session not refreshed: hanging up", call.dialog.call_id)
        self._hangup(call, "session_expired")

    def _refresh(self, call: _Call) -> None:
        """Refresh the session as refresher: UPDATE when the peer allows it, else an
        offerless re-INVITE (the 200 then carries the peer's offer; our ACK answers)."""
        timer = call.timer
        if call.state == "ended" or timer is None or timer.terms is None:
            return
        if call.refresh is not None or (call.two_xx is not None and not call.two_xx.acked):
            timer.expire_after(bye_margin_s(timer.terms.interval_s))
            return
        self.stats.refreshes += 1
        interval = timer.terms.interval_s
        peer = self._dialog_peer(call)
        branch = new_branch()
        headers = (*refresh_headers(interval), ("Allow", ALLOW))
        contact = f"<{self.contact_for(peer)}>"
        last: list[Response] = []
        if "UPDATE" in call.peer_allow:
            update = call.dialog.request(
                "UPDATE", via=self._via(peer, branch), contact=contact, headers=headers
            )

            def on_final(status: int) -> None:
                self._refreshed(call, status, last[-1] if last else None)

            tx = ClientNonInvite(
                update.serialize(),
                lambda data: self._send(data, peer),
                self._scheduler,
                peer.reliable,
                on_final=on_final,
                on_terminated=lambda: self.forget(branch),
            )
            call.refresh = tx

            def on_update_response(response: Response) -> None:
                last.append(response)
                tx.on_response(response.status)

            self.expect(branch, on_update_response)
            return
        invite = call.dialog.request(
            "INVITE", via=self._via(peer, branch), contact=contact, headers=headers
        )
        acks: list[bytes] = []

        def failure_ack() -> bytes:
            to = last[-1].headers.get("To") if last else None
            ack = make_request(
                "ACK",
                invite.uri,
                call_id=call.dialog.call_id,
                from_addr=call.dialog.local_address,
                to_addr=to or call.dialog.remote_address,
                cseq=invite.cseq().number,
                via=invite.headers.get("Via") or "",
                route=call.dialog.route_set,
            )
            return ack.serialize()

        def on_status(status: int) -> None:
            if status >= 300:  # a failure, or Timer B (408)
                self._refreshed(call, status, last[-1] if last else None)

        def on_terminated() -> None:
            if not acks:  # after a 2xx the branch stays a while for its retransmissions
                self.forget(branch)

        reinvite = ClientInvite(
            invite.serialize(),
            lambda data: self._send(data, peer),
            self._scheduler,
            peer.reliable,
            on_response=on_status,
            make_ack=failure_ack,
            on_terminated=on_terminated,
        )
        call.refresh = reinvite

        def on_invite_response(response: Response) -> None:
            if not 200 <= response.status < 300:
                last.append(response)
                reinvite.on_response(response.status)
                return
            if acks:  # a retransmitted 2xx: ACK it again
                self._send(acks[0], peer)
                return
            answer, refused = self._answer_in_ack(call, response)
            ack = call.dialog.request(
                "ACK",
                via=self._via(peer, new_branch()),
                body=answer,
                content_type=SDP if answer else None,
            )
            acks.append(ack.serialize())
            self._send(acks[0], peer)
            reinvite.on_response(response.status)
            self._scheduler.call_later(TIMEOUT_S, lambda: self.forget(branch))
            if refused:
                self._hangup(call, "media_refused")
                return
            self._refreshed(call, response.status, response)

        self.expect(branch, on_invite_response)

    def _answer_in_ack(self, call: _Call, response: Response) -> tuple[bytes, bool]:
        """The SDP answer our ACK carries to the offer in a 2xx to our offerless
        re-INVITE, and whether the session refused that offer."""
        if call.session is None or response.content_type != SDP or not response.body:
            return b"", False
        try:
            return call.session.update(response.body), False
        except MediaRefused as exc:
            log.info("call %s: refresh offer refused (%s)", call.dialog.call_id, exc)
            return b"", True

    def _refreshed(self, call: _Call, status: int, response: Response | None) -> None:
        """Our refresh ended with ``status`` (408: no response)."""
        call.refresh = None
        timer = call.timer
        if call.state == "ended" or timer is None or timer.terms is None:
            return
        if 200 <= status < 300 and response is not None:
            try:
                terms = terms_from_response(response)
            except SessionTimerError:
                terms = None
            timer.restart(terms)
            return
        if status in (408, 481) or response is None:
            log.info("call %s: session refresh got %d: hanging up", call.dialog.call_id, status)
            self._hangup(call, "refresh_failed")
            return
        if status == 491:
            timer.cancel()
            self._scheduler.call_later(glare_delay_s(call.outbound), lambda: self._refresh(call))
            return
        # Refused for another reason: the session lasts until it expires.
        timer.expire_after(timer.terms.interval_s / 2 - bye_margin_s(timer.terms.interval_s))

    # -- calls we place ------------------------------------------------------------------

    def invite(
        self,
        to_uri: str,
        *,
        from_uri: str,
        sessions: OutboundSessionFactory,
        login: Login | None = None,
        destination: Peer | None = None,
        display_name: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        ring_timeout_s: float | None = RING_TIMEOUT_S,
    ) -> OutboundCall:
        """Place a call to ``to_uri`` from ``from_uri`` (both SIP URIs).

        The INVITE goes to ``destination`` (a trunk's proxy), else to the URI's
        host:port over UDP.  ``sessions(invite, control)`` makes the session from
        the INVITE about to be sent (no body yet); its :meth:`~OutboundSession.offer`
        is the SDP.  ``login`` answers 401/407.  Raises SipParseError for a bad URI,
        and whatever the factory (:class:`Refused`) or the offer
        (:class:`MediaRefused`, after which the session is ended) raise.
        """
        target = SipUri.parse(to_uri)
        caller = SipUri.parse(from_uri)
        if destination is None:
            if target.scheme != "sip" or not target.host:
                raise SipParseError(f"no destination for {to_uri[:60]!r}")
            destination = Peer("udp", (target.address, target.port or 5060))
        local = Address(caller, display_name, {"tag": new_tag()})
        remote = Address(target)
        call_id = new_call_id(self.via_host.rpartition(":")[0] or "voxgate")
        contact = self.contact_for(destination)
        allowed = (("Allow", ALLOW), ("Supported", SUPPORTED), *headers)
        draft = make_request(
            "INVITE",
            str(target),
            call_id=call_id,
            from_addr=local,
            to_addr=remote,
            cseq=1,
            via=self._via(destination, new_branch()),
            contact=f"<{contact}>",
            headers=allowed,
        )
        handle = OutboundCall(self, call_id)
        session = sessions(draft, handle)
        try:
            sdp = session.offer()
        except MediaRefused:
            session.ended("media_refused")
            raise
        handle.session = session
        template = InviteTemplate(
            request_uri=str(target),
            from_address=local,
            to_address=remote,
            call_id=call_id,
            contact=contact,
            via_sent_by=self.via_host,
            body=sdp,
            headers=allowed,
            transport=destination.transport,
        )
        handle.invite = OutboundInvite(
            template,
            destination=destination,
            send=self._send,
            scheduler=self._scheduler,
            responses=self,
            listener=handle,
            digest=DigestClient(login) if login is not None else None,
            timer_policy=self.timer_policy,
            ring_timeout_s=ring_timeout_s,
        )
        self._outbound[call_id] = handle
        self.stats.outbound += 1
        handle.invite.start()
        return handle

    def _outbound_answered(self, handle: OutboundCall, dialog: Dialog, response: Response) -> None:
        invite = handle.invite
        assert invite is not None and invite.request is not None
        self._outbound.pop(handle.call_id, None)
        self.stats.outbound_answered += 1
        call = _Call(
            self,
            invite.request,
            invite.destination,
            None,
            dialog,
            session=handle.session,
            state="confirmed",
            outbound=True,
        )
        call.peer_allow = frozenset(m.upper() for m in response.headers.tokens("Allow"))
        handle.call = call
        self._dialogs[dialog.id] = call
        session = handle.session
        if session is None:
            return
        answer = response.body if response.content_type == SDP else b""
        if not answer and handle.early_answer:
            # RFC 3261 wants the answer in the 2xx again; some gateways leave it out.
            log.info("call %s: 2xx without SDP: the early answer stands", dialog.call_id)
            answer = handle.early_answer
        if not answer:
            log.info("call %s: 2xx without an SDP answer: hanging up", dialog.call_id)
            self._hangup(call, "no_answer_sdp")
            return
        try:
            session.accept(answer)
        except MediaRefused as exc:
            log.info("call %s: unusable SDP answer (%s): hanging up", dialog.call_id, exc)
            self._hangup(call, "media_refused")
            return
        try:
            terms = terms_from_response(response)
        except SessionTimerError:
            terms = None
        self._run_timer(call, terms)

    def _outbound_failed(self, handle: OutboundCall) -> None:
        self._outbound.pop(handle.call_id, None)
        self.stats.outbound_failed += 1


def _update_retry_after() -> tuple[str, str]:
    low, high = UPDATE_RETRY_AFTER_S
    return ("Retry-After", str(random.randint(low, high)))


OutboundState = Literal["calling", "proceeding", "answered", "failed", "ended"]


class OutboundCall:
    """A call we place (what :meth:`UserAgent.invite` returns); its session's
    :class:`CallControl`.

    ``state``: calling -> proceeding (a provisional came) -> answered -> ended, or
    failed (``status`` and ``reason`` say why: the final response, 408 for no
    answer, 487 when we cancelled).
    """

    def __init__(self, ua: UserAgent, call_id: str) -> None:
        self._ua = ua
        self.call_id = call_id
        self.session: OutboundSession | None = None
        self.invite: OutboundInvite | None = None
        self.call: _Call | None = None
        self.status: int | None = None
        """The final status of the INVITE (a 2xx, or the failure)."""
        self.reason: str | None = None
        self.early_answer = b""
        """The SDP answer of the last 18x taken as early media (empty: none)."""
        self._failed = False
        self._hangup_reason: str | None = None

    @property
    def state(self) -> OutboundState:
        if self.call is not None:
            return "ended" if self.call.state == "ended" else "answered"
        if self._failed:
            return "failed"
        if self.invite is not None and self.invite.state == "proceeding":
            return "proceeding"
        return "calling"

    def hangup(self, reason: str = "local") -> None:
        """End the call: BYE once answered, else CANCEL (after a provisional, §9.1)."""
        if self.call is not None:
            self._ua._hangup(self.call, reason)
            return
        if self._failed or self.invite is None:
            return
        self._hangup_reason = reason
        self.invite.cancel()

    # -- InviteListener ------------------------------------------------------------------

    def provisional(self, response: Response) -> None:
        """A 1xx; one from the callee with SDP is its answer for now: early media."""
        log.debug("call %s: %d %s", self.call_id, response.status, response.reason)
        session = self.session
        if response.status == 100 or session is None or self._hangup_reason is not None:
            return  # 100 is hop by hop; a call we are cancelling wants no media
        if response.content_type != SDP or not response.body:
            return
        if response.body == self.early_answer:
            return  # the same 18x again (or another with the same answer)
        try:
            session.early(response.body)
        except MediaRefused as exc:
            log.info("call %s: early answer in %d ignored (%s)", self.call_id, response.status, exc)
            return
        self.early_answer = response.body
        self._ua.stats.early_media += 1

    def answered(self, dialog: Dialog, response: Response) -> None:
        self.status = response.status
        self._ua._outbound_answered(self, dialog, response)
        if self._hangup_reason is not None and self.call is not None:
            self._ua._hangup(self.call, self._hangup_reason)

    def failed(self, status: int, reason: str) -> None:
        if self._failed:
            return
        self._failed = True
        self.status, self.reason = status, reason
        log.info("call %s failed: %s", self.call_id, reason)
        self._ua._outbound_failed(self)
        if self.session is not None:
            self.session.ended(self._hangup_reason or f"failed_{status}")
