"""The SIP user agent core, server side (RFC 3261 §8.2, §12-§15): calls in, BYE out.

:class:`UserAgent` takes every parsed message from the transport, matches it
to a server transaction (retransmissions are answered from there) or a dialog,
and carries out the UAS rules:

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
* BYE: 200 and the call ends; in no dialog: 481.  OPTIONS: 200 with what we
  allow, or 503 when the application refuses new calls.
* Our hangup: BYE through the route set (Timer E/F); any final answer, or none,
  ends the dialog.

Malformed requests get 400 with the parser's reason; responses to requests we
never sent are dropped.  Everything a transaction sends goes through the
transport as bytes; nothing here blocks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from server.sip.dialog import Dialog, DialogId, new_branch, new_tag
from server.sip.message import (
    Message,
    Request,
    Response,
    SipParseError,
    check_request,
    make_response,
)
from server.sip.transaction import (
    ClientNonInvite,
    Handle,
    Scheduler,
    ServerInvite,
    ServerNonInvite,
    TwoXxRetransmitter,
)
from server.sip.transport import Peer

log = logging.getLogger(__name__)

ALLOW: Final = "INVITE, ACK, BYE, CANCEL, OPTIONS"
SUPPORTED_OPTIONS: Final[frozenset[str]] = frozenset()
"""Extensions we support (``Supported``/``Require`` tokens); none yet."""
SUPPORTED: Final = ", ".join(sorted(SUPPORTED_OPTIONS))
SDP: Final = "application/sdp"


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


class InviteSession(Protocol):
    """The application's side of one call (media and conversation)."""

    def answer(self, offer: bytes | None) -> bytes:
        """SDP for the 200: the answer to ``offer``, or our offer when it is ``None``.

        Raises :class:`MediaRefused` (488).
        """
        ...

    def confirmed(self, ack_body: bytes) -> None:
        """The ACK of our 200 (to the INVITE or a re-INVITE) arrived; ``ack_body`` is the
        SDP answer when that 200 carried our offer (delayed offer), else empty."""
        ...

    def update(self, offer: bytes | None) -> bytes:
        """A re-INVITE's offer: the new answer.  :class:`MediaRefused` keeps the old session."""
        ...

    def ended(self, reason: str) -> None:
        """The call is over (BYE either way, CANCEL, no ACK, shutdown); idempotent."""
        ...


class CallControl(Protocol):
    """What an :class:`InviteSession` can ask of its call's signalling."""

    def hangup(self, reason: str) -> None: ...


SessionFactory = Callable[[Request, CallControl], InviteSession]
"""Makes the session for a new INVITE; raises :class:`Refused` to turn it down."""


@dataclass(slots=True)
class UaStats:
    invites: int = 0
    answered: int = 0
    refused: int = 0
    cancelled: int = 0
    bad_requests: int = 0
    unmatched: int = 0


@dataclass(eq=False, slots=True)
class _Call:
    """One call we answer: its INVITE, dialog, transactions and session."""

    ua: UserAgent
    invite: Request
    peer: Peer
    transaction: ServerInvite
    dialog: Dialog
    session: InviteSession | None = None
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
        self._client_tx: dict[str, ClientNonInvite] = {}  # our BYEs, by branch

    def contact_for(self, peer: Peer) -> str:
        """Our Contact URI for a dialog with ``peer``: its transport, so requests in the
        dialog come back the same way (RFC 3263: a bare sip: URI means UDP)."""
        return self.contact + (";transport=tcp" if peer.transport == "tcp" else "")

    @property
    def calls(self) -> int:
        return len(self._dialogs)

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
        }.get(request.method)
        if handler is None:
            status = 405 if request.method in ("INFO", "UPDATE", "PRACK", "REFER") else 501
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
        self.stats.invites += 1
        tx = self._server_transaction(request, peer)
        assert isinstance(tx, ServerInvite)
        tx.respond(100, make_response(request, 100).serialize())
        try:
            dialog = Dialog.as_uas(request, new_tag())
        except SipParseError as exc:
            self._final(tx, request, 400, reason=str(exc))
            return
        call = _Call(self, request, peer, tx, dialog)
        key = self._tx_key(request)
        call.invite_key = key[:2]
        self._invites[key[:2]] = call
        try:
            call.session = self._sessions(request, call)
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
        offer = request.body if request.content_type == SDP and request.body else None
        call.delayed_offer = offer is None
        try:
            sdp = call.session.answer(offer)
        except MediaRefused as exc:
            self.stats.refused += 1
            warning = (("Warning", f'{exc.warning_code} {self.via_host} "{exc}"'),)
            self._final(tx, request, 488, to_tag=dialog.local_tag, headers=warning)
            self._forget_invite(call)
            call.session.ended("media_refused")
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
        self, call: _Call, status: int, body: bytes = b"", request: Request | None = None
    ) -> Response:
        """A 18x/2xx in the call's dialog: To tag, Contact and Record-Route (§12.1.1)."""
        request = request or call.invite
        headers = [("Contact", f"<{self.contact_for(call.peer)}>")]
        headers += [("Record-Route", rr) for rr in request.headers.get_all("Record-Route")]
        if status == 200:
            headers += [("Allow", ALLOW), ("Supported", SUPPORTED)]
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
        call.transaction.respond(200, data)
        assert call.invite_key is not None
        self._await_ack(call, data, call.invite_key)

    def _await_ack(self, call: _Call, data: bytes, invite_key: tuple[str, str]) -> None:
        """Resend the 200 ``data`` until its ACK; an INVITE retransmission gets it again."""

        def resend(payload: bytes) -> None:
            self._send(payload, call.peer)

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
        if call.state != "ringing":
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
        if call.state == "ringing":  # BYE before the 200 (RFC 3261 §15.1.2)
            self._final(call.transaction, call.invite, 487, to_tag=call.dialog.local_tag)
        self._end(call, "remote_bye")

    def _on_reinvite(self, request: Request, peer: Peer) -> None:
        call = self._dialog_of(request)
        if call is None or call.session is None or call.state == "ended":
            self._respond_new(request, peer, 481)
            return
        tx = self._server_transaction(request, peer)
        assert isinstance(tx, ServerInvite)
        if call.two_xx is not None and not call.two_xx.acked:
            # Our 200 to the last INVITE still awaits its ACK (RFC 3261 §14.2).
            self._final(tx, request, 491, to_tag=call.dialog.local_tag)
            return
        if not call.dialog.accept_remote_cseq(request):
            self._final(tx, request, 500, reason="CSeq out of order", to_tag=call.dialog.local_tag)
            return
        offer = request.body if request.content_type == SDP and request.body else None
        try:
            sdp = call.session.update(offer)
        except MediaRefused as exc:
            warning = (("Warning", f'{exc.warning_code} {self.via_host} "{exc}"'),)
            self._final(tx, request, 488, to_tag=call.dialog.local_tag, headers=warning)
            return
        call.dialog.update_target(request)
        call.delayed_offer = offer is None
        data = self._dialog_response(call, 200, sdp, request).serialize()
        tx.respond(200, data)
        self._await_ack(call, data, self._tx_key(request)[:2])

    def _dialog_of(self, request: Request) -> _Call | None:
        call_id, remote, local = request.call_id, request.from_tag, request.to_tag
        if call_id is None or remote is None or local is None:
            return None
        return self._dialogs.get(DialogId(call_id, local, remote))

    # -- our side ending calls -------------------------------------------------------

    def _hangup(self, call: _Call, reason: str) -> None:
        if call.state == "ended":
            return
        if call.state == "ringing":
            self._final(call.transaction, call.invite, 480, to_tag=call.dialog.local_tag)
            self._end(call, reason)
            return
        via = f"SIP/2.0/{call.peer.transport.upper()} {self.via_host};branch={new_branch()};rport"
        bye = call.dialog.request(
            "BYE", via=via, headers=(("Reason", f'SIP;cause=200;text="{reason}"'),)
        )

        def send(data: bytes) -> None:
            self._send(data, call.peer)

        branch = bye.branch or ""
        call.bye = ClientNonInvite(
            bye.serialize(),
            send,
            self._scheduler,
            call.peer.reliable,
            on_final=lambda status: log.debug("BYE of %s: %d", call.dialog.call_id, status),
            on_terminated=lambda: self._forget_client(branch),
        )
        self._client_tx[branch] = call.bye
        self._end(call, reason)

    def _forget_client(self, branch: str) -> None:
        self._client_tx.pop(branch, None)

    def _end(self, call: _Call, reason: str) -> None:
        if call.state == "ended":
            return
        call.state = "ended"
        call.end_reason = reason
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
        branch = response.branch or ""
        tx = self._client_tx.get(branch)
        if tx is None:
            self.stats.unmatched += 1
            return
        tx.on_response(response.status)

    def shutdown(self) -> None:
        """Hang up every call (BYE) and stop answering (the transport closes after)."""
        for call in list(self._dialogs.values()):
            self._hangup(call, "shutdown")
