"""An outbound INVITE until it is answered or fails (RFC 3261 §13.2, §17.1.1, §22.2).

:class:`OutboundInvite` sends our INVITE (with the session's SDP offer) and
follows it to a dialog or a failure; what happens in the dialog after that is
the user agent's (:mod:`server.sip.ua`).  The rules it carries out:

* Timer A/B through :class:`~server.sip.transaction.ClientInvite`; a timeout is a
  408 failure.  1xx: ``proceeding``; every provisional response (SDP included:
  the early answer of a 183) goes to :meth:`InviteListener.provisional`, which
  decides about early media.  A ring that lasts ``ring_timeout_s`` is cancelled.
* 2xx: the dialog (:meth:`Dialog.as_uac`) and its ACK, a new transaction with its
  own branch, sent through the route set with the INVITE's credentials; every
  retransmission of that 2xx gets the same ACK again for 64*T1.  A 2xx from a
  second fork (another To tag), or one that arrives after we cancelled, is ACKed
  and then ended with BYE.
* 401/407: the non-2xx ACK (the transaction's), then the INVITE again with
  ``Authorization``/``Proxy-Authorization`` (Digest: strongest algorithm offered),
  CSeq + 1, a new branch, the same Call-ID and From tag.  A second challenge for
  the same nonce means the password is wrong: failure.  ``stale=true`` retries.
* 422 (RFC 4028): the INVITE again with the ``Min-SE`` it asked for, once.
* Other 3xx-6xx: failure, with the status and reason phrase.
* :meth:`OutboundInvite.cancel`: CANCEL (same branch, Request-URI, Route, From,
  To and CSeq number as the INVITE) once a provisional response has arrived, or as
  soon as one does (RFC 3261 §9.1); the INVITE then ends with 487.

:class:`DigestClient` answers challenges for a call or a registration: it keeps
the last challenge per header and counts ``nc`` when a nonce is used again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from server.sip.dialog import Dialog, new_branch
from server.sip.digest import Challenge, DigestError, answer_challenge, best_challenge
from server.sip.message import (
    Address,
    Request,
    Response,
    SipParseError,
    make_request,
)
from server.sip.sessiontimer import Policy, SessionTimerError, min_se_of_422, offer_headers
from server.sip.transaction import TIMEOUT_S, ClientInvite, ClientNonInvite, Handle, Scheduler
from server.sip.transport import Peer, TransportName

log = logging.getLogger(__name__)

MAX_AUTH_ROUNDS: Final = 3
"""Challenges answered for one request before giving up (stale nonces included)."""
RING_TIMEOUT_S: Final = 120.0
"""Default longest ring before we CANCEL (s)."""

ResponseHandler = Callable[[Response], None]
SendTo = Callable[[bytes, Peer], None]


class Responses(Protocol):
    """Where responses to our requests are routed, by their top Via branch."""

    def expect(self, branch: str, handler: ResponseHandler) -> None: ...

    def forget(self, branch: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Login:
    """Digest credentials for a trunk (username and password)."""

    username: str
    password: str


def peer_for(target: str, transport: TransportName = "udp") -> Peer:
    """Where to send a request whose next hop is ``target`` (a URI or a Route value).

    The host must be an IP address or a name the system resolver knows; the port
    defaults to 5060 (5061 for sips).  SipParseError for an unusable target.
    """
    uri = Address.parse(target).uri
    if uri.scheme == "tel" or not uri.host:
        raise SipParseError(f"cannot send to {target[:60]!r}")
    port = uri.port or (5061 if uri.scheme == "sips" else 5060)
    return Peer(transport, (uri.address, port))


class DigestClient:
    """Answers Digest challenges for one client (RFC 3261 §22.2, RFC 8760).

    :meth:`on_challenge` takes a 401/407 and says whether to retry;
    :meth:`headers` gives the credentials for the next request (``nc`` counts up
    while the nonce stays the same).
    """

    def __init__(self, login: Login) -> None:
        self.login = login
        self._challenges: dict[str, Challenge] = {}
        """Answer header (``Authorization``/``Proxy-Authorization``) -> its challenge."""
        self._nc: dict[str, int] = {}
        """Nonce -> how many requests used it."""
        self.error: str | None = None

    def on_challenge(self, response: Response) -> bool:
        """Take the challenge of a 401/407: True to retry with credentials, False
        (reason in :attr:`error`) when the server refused the ones we sent."""
        proxy = response.status == 407
        header = "Proxy-Authorization" if proxy else "Authorization"
        values = response.headers.get_all("Proxy-Authenticate" if proxy else "WWW-Authenticate")
        try:
            challenge = best_challenge(values)
        except DigestError as exc:
            self.error = f"{response.status}: {exc}"
            return False
        previous = self._challenges.get(header)
        self._challenges[header] = challenge
        if previous is None or challenge.stale:
            return True
        if previous.nonce == challenge.nonce or self._nc.get(previous.nonce, 0) <= 1:
            # Our answer to a fresh challenge was refused: the password is wrong.
            self.error = f"{response.status}: credentials refused"
            self._challenges.pop(header)
            return False
        return True  # we reused an old nonce; the server wants its new one

    def headers(self, method: str, uri: str, body: bytes = b"") -> tuple[tuple[str, str], ...]:
        """Credentials for a request, one per challenge held (empty before any)."""
        out: list[tuple[str, str]] = []
        for header, challenge in self._challenges.items():
            nc = self._nc.get(challenge.nonce, 0) + 1
            self._nc[challenge.nonce] = nc
            try:
                value = answer_challenge(
                    challenge,
                    method=method,
                    uri=uri,
                    username=self.login.username,
                    password=self.login.password,
                    nc=nc,
                    body=body,
                )
            except DigestError as exc:
                self.error = str(exc)
                continue
            out.append((header, value))
        return tuple(out)

    def forget(self) -> None:
        """Drop the held challenges (the next request goes without credentials)."""
        self._challenges.clear()


class InviteListener(Protocol):
    """What :class:`OutboundInvite` reports to its owner."""

    def provisional(self, response: Response) -> None:
        """A 1xx of the current attempt (each one, retransmissions included)."""
        ...

    def answered(self, dialog: Dialog, response: Response) -> None:
        """The first 2xx: ``dialog`` is set up and its ACK sent."""
        ...

    def failed(self, status: int, reason: str) -> None:
        """No call: a final failure, a timeout (408), or our CANCEL (487)."""
        ...


InviteState = Literal["calling", "proceeding", "answered", "failed"]


@dataclass(slots=True)
class InviteTemplate:
    """What every attempt of one outbound INVITE shares."""

    request_uri: str
    from_address: Address
    """Ours, with our tag."""
    to_address: Address
    call_id: str
    contact: str
    via_sent_by: str
    """``host:port`` of our Via."""
    body: bytes
    content_type: str = "application/sdp"
    headers: tuple[tuple[str, str], ...] = ()
    routes: tuple[str, ...] = ()
    """A pre-loaded route set (an outbound proxy), in order."""
    transport: TransportName = "udp"


class OutboundInvite:
    """The client side of one outbound INVITE: see the module docstring."""

    def __init__(
        self,
        template: InviteTemplate,
        *,
        destination: Peer,
        send: SendTo,
        scheduler: Scheduler,
        responses: Responses,
        listener: InviteListener,
        digest: DigestClient | None = None,
        timer_policy: Policy | None = None,
        ring_timeout_s: float | None = RING_TIMEOUT_S,
    ) -> None:
        self.template = template
        self.destination = destination
        self._send = send
        self._scheduler = scheduler
        self._responses = responses
        self._listener = listener
        self._digest = digest
        self._policy = timer_policy
        self._ring_timeout_s = ring_timeout_s
        self.state: InviteState = "calling"
        self.cseq = 0
        self.request: Request | None = None
        """The INVITE of the current attempt."""
        self.dialog: Dialog | None = None
        self._tx: ClientInvite | None = None
        self._last: Response | None = None
        self._auth_rounds = 0
        self._retried_422 = False
        self._cancel_wanted = False
        self._cancel_sent = False
        self._cancel_tx: ClientNonInvite | None = None
        self._acks: dict[str, bytes] = {}
        """To tag of each 2xx we ACKed -> the ACK's bytes (resent for retransmissions)."""
        self._peers: dict[str, Peer] = {}
        """To tag of each 2xx we ACKed -> where its dialog's requests go."""
        self._timers: list[Handle] = []
        self._branches: list[str] = []

    # -- public -----------------------------------------------------------------------

    def start(self) -> None:
        """Send the first INVITE."""
        self._attempt()
        if self._ring_timeout_s is not None:
            self._timers.append(
                self._scheduler.call_later(self._ring_timeout_s, self._ring_timeout)
            )

    def cancel(self) -> None:
        """Give up on the call: CANCEL now or after the first provisional; no-op once final."""
        if self.state in ("answered", "failed") or self._cancel_wanted:
            return
        self._cancel_wanted = True
        if self.state == "proceeding":
            self._send_cancel()

    def close(self) -> None:
        """Stop listening for responses and drop timers (after the 2xx grace or a failure)."""
        for handle in self._timers:
            handle.cancel()
        self._timers.clear()
        for branch in self._branches:
            self._responses.forget(branch)
        self._branches.clear()
        if self._tx is not None:
            self._tx.terminate()

    # -- attempts -----------------------------------------------------------------------

    def _via(self, branch: str) -> str:
        t = self.template
        return f"SIP/2.0/{t.transport.upper()} {t.via_sent_by};branch={branch};rport"

    def _attempt(self) -> None:
        t = self.template
        self.cseq += 1
        branch = new_branch()
        headers = list(t.headers)
        if self._policy is not None:
            headers += offer_headers(self._policy)
        if self._digest is not None:
            headers += self._digest.headers("INVITE", t.request_uri, t.body)
        request = make_request(
            "INVITE",
            t.request_uri,
            call_id=t.call_id,
            from_addr=t.from_address,
            to_addr=t.to_address,
            cseq=self.cseq,
            via=self._via(branch),
            contact=f"<{t.contact}>",
            route=t.routes,
            headers=headers,
            body=t.body,
            content_type=t.content_type if t.body else None,
        )
        self.request = request
        self._last = None
        self._responses.expect(branch, self._on_response)
        self._branches.append(branch)
        self._tx = ClientInvite(
            request.serialize(),
            lambda data: self._send(data, self.destination),
            self._scheduler,
            self.destination.reliable,
            on_response=self._on_status,
            make_ack=self._failure_ack,
        )

    def _failure_ack(self) -> bytes:
        """The hop-by-hop ACK of a non-2xx final (RFC 3261 §17.1.1.3)."""
        request, response = self.request, self._last
        assert request is not None and response is not None
        to = response.headers.get("To") or str(self.template.to_address)
        ack = make_request(
            "ACK",
            request.uri,
            call_id=self.template.call_id,
            from_addr=self.template.from_address,
            to_addr=to,
            cseq=self.cseq,
            via=request.headers.get("Via") or "",
            route=self.template.routes,
        )
        return ack.serialize()

    # -- responses ----------------------------------------------------------------------

    def _on_response(self, response: Response) -> None:
        try:
            method = response.cseq().method
            number = response.cseq().number
        except SipParseError:
            return
        if method == "CANCEL":
            if self._cancel_tx is not None:
                self._cancel_tx.on_response(response.status)
            return
        if method != "INVITE" or number != self.cseq:
            return  # a late answer to an attempt we already replaced
        if 200 <= response.status < 300:
            self._on_2xx(response)
            return
        if self._tx is not None:
            self._last = response
            self._tx.on_response(response.status)

    def _on_status(self, status: int) -> None:
        """The transaction's report of a distinct provisional, non-2xx final or timeout."""
        response = self._last
        if status < 200:
            if response is None or self.state not in ("calling", "proceeding"):
                return
            self.state = "proceeding"
            if self._cancel_wanted and not self._cancel_sent:
                self._send_cancel()
            self._listener.provisional(response)
            return
        if 200 <= status < 300 or self.state not in ("calling", "proceeding"):
            return
        if response is None:  # Timer B
            self._fail(408, "no response (timeout)")
            return
        if self._cancel_wanted:
            self._fail(487, "cancelled")
            return
        if status in (401, 407) and self._digest is not None:
            self._auth_rounds += 1
            if self._auth_rounds <= MAX_AUTH_ROUNDS and self._digest.on_challenge(response):
                self._attempt()
                return
            self._fail(status, f"authentication failed ({self._digest.error or response.reason})")
            return
        if status == 422 and self._policy is not None and not self._retried_422:
            try:
                min_se = min_se_of_422(response)
            except SessionTimerError as exc:
                self._fail(status, str(exc))
                return
            self._retried_422 = True
            policy = self._policy
            self._policy = Policy(max(min_se, policy.session_expires_s), min_se)
            self._attempt()
            return
        self._fail(status, f"{status} {response.reason}")

    def _on_2xx(self, response: Response) -> None:
        tag = response.to_tag if _parses(response) else None
        if tag is None:
            log.info("call %s: 2xx without a To tag: ignored", self.template.call_id)
            return
        ack = self._acks.get(tag)
        if ack is not None:  # a retransmission: the same ACK again
            self._send(ack, self._ack_peer(tag))
            return
        if self._tx is not None and not self._tx.terminated:
            self._last = response
            self._tx.on_response(response.status)
        request = self.request
        assert request is not None
        try:
            dialog = Dialog.as_uac(request, response)
        except SipParseError as exc:
            log.info("call %s: unusable 2xx (%s)", self.template.call_id, exc)
            if self.state in ("calling", "proceeding"):
                self._fail(502, f"unusable 2xx: {exc}")
            return
        first = self.state in ("calling", "proceeding") and not self._cancel_wanted
        ack_request = dialog.request(
            "ACK", via=self._via(new_branch()), headers=self._credential_headers()
        )
        ack = ack_request.serialize()
        self._acks[tag] = ack
        self._peers[tag] = self._next_hop(dialog)
        self._send(ack, self._peers[tag])
        if first:
            self.state = "answered"
            self.dialog = dialog
            for handle in self._timers:
                handle.cancel()
            self._timers = [self._scheduler.call_later(TIMEOUT_S, self.close)]
            self._listener.answered(dialog, response)
            return
        # A second fork, or an answer to a call we gave up: end that dialog at once.
        self._bye(dialog, tag)
        if self.state in ("calling", "proceeding"):
            self._fail(487, "cancelled")

    # -- helpers --------------------------------------------------------------------------

    def _credential_headers(self) -> tuple[tuple[str, str], ...]:
        request = self.request
        if request is None:
            return ()
        return tuple(
            (name, value)
            for name, value in request.headers
            if name in ("Authorization", "Proxy-Authorization")
        )

    def _next_hop(self, dialog: Dialog) -> Peer:
        try:
            return peer_for(dialog.next_hop(), self.destination.transport)
        except SipParseError:
            return self.destination

    def _ack_peer(self, tag: str) -> Peer:
        return self._peers.get(tag, self.destination)

    def _bye(self, dialog: Dialog, tag: str) -> None:
        branch = new_branch()
        bye = dialog.request("BYE", via=self._via(branch))
        peer = self._ack_peer(tag)
        tx = ClientNonInvite(
            bye.serialize(),
            lambda data: self._send(data, peer),
            self._scheduler,
            peer.reliable,
            on_final=lambda status: None,
            on_terminated=lambda: self._responses.forget(branch),
        )
        self._responses.expect(branch, lambda r: tx.on_response(r.status))

    def _send_cancel(self) -> None:
        request = self.request
        if request is None or self._cancel_sent:
            return
        self._cancel_sent = True
        t = self.template
        cancel = make_request(
            "CANCEL",
            request.uri,
            call_id=t.call_id,
            from_addr=t.from_address,
            to_addr=t.to_address,
            cseq=self.cseq,
            via=request.headers.get("Via") or "",
            route=t.routes,
        )
        self._cancel_tx = ClientNonInvite(
            cancel.serialize(),
            lambda data: self._send(data, self.destination),
            self._scheduler,
            self.destination.reliable,
            on_final=lambda status: None,
        )
        # The INVITE should end with 487 now; if it never does, stop waiting (§9.1).
        self._timers.append(self._scheduler.call_later(TIMEOUT_S, self._cancel_timeout))

    def _cancel_timeout(self) -> None:
        if self.state in ("calling", "proceeding"):
            self._fail(487, "cancelled (no final response)")

    def _ring_timeout(self) -> None:
        if self.state in ("calling", "proceeding"):
            log.info(
                "call %s: no answer in %.0f s: cancelling",
                self.template.call_id,
                self._ring_timeout_s or 0,
            )
            self.cancel()

    def _fail(self, status: int, reason: str) -> None:
        if self.state in ("answered", "failed"):
            return
        self.state = "failed"
        for handle in self._timers:
            handle.cancel()
        # Keep listening a while: the non-2xx ACK is resent, a late 2xx is ACKed and ended.
        self._timers = [self._scheduler.call_later(TIMEOUT_S, self.close)]
        self._listener.failed(status, reason)


def _parses(response: Response) -> bool:
    try:
        response.to_address()
    except SipParseError:
        return False
    return True


def glare_delay_s(own_call_id: bool) -> float:
    """How long to wait before retrying a re-INVITE refused with 491 (RFC 3261 §14.1), s."""
    return random.uniform(2.1, 4.0) if own_call_id else random.uniform(0.0, 2.0)
