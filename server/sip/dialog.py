"""SIP dialogs (RFC 3261 §12): the state two user agents share for one call.

A :class:`Dialog` is made from the INVITE we answer (UAS side, §12.1.1) or
from the 2xx to the INVITE we sent (UAC side, §12.1.2).  It holds the ids
(Call-ID and both tags), the CSeq counters, the remote target (the peer's
Contact) and the route set, and builds the requests we send inside it (BYE,
re-INVITE, ACK of a 2xx), routed per §12.2.1.1: Request-URI = remote target,
Route = route set (loose routing).  It also checks requests that arrive in it
(CSeq must rise: §12.2.2).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from server.sip.message import (
    Address,
    Request,
    Response,
    SipParseError,
    make_request,
)

BRANCH_COOKIE = "z9hG4bK"


def new_tag() -> str:
    return secrets.token_hex(6)


def new_branch() -> str:
    return BRANCH_COOKIE + secrets.token_hex(8)


def new_call_id(host: str) -> str:
    return f"{secrets.token_hex(10)}@{host}"


@dataclass(frozen=True, slots=True)
class DialogId:
    call_id: str
    local_tag: str
    remote_tag: str


@dataclass(slots=True)
class Dialog:
    """One dialog, from our side of it."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_address: Address
    """Our From (UAC) or To (UAS) with our tag."""
    remote_address: Address
    """The peer's From (UAS) or To (UAC) with its tag."""
    remote_target: str
    """The peer's Contact URI: the Request-URI of our requests."""
    route_set: list[str] = field(default_factory=list)
    local_cseq: int = 0
    remote_cseq: int | None = None
    invite_cseq: int = 0
    """CSeq number of the INVITE (ours or theirs) that the next ACK answers."""

    @property
    def id(self) -> DialogId:
        return DialogId(self.call_id, self.local_tag, self.remote_tag)

    @classmethod
    def as_uas(cls, invite: Request, local_tag: str) -> Dialog:
        """The dialog an INVITE creates when we answer it (RFC 3261 §12.1.1)."""
        contacts = invite.contacts()
        if not contacts:
            raise SipParseError("INVITE without Contact")
        remote = invite.from_address()
        if remote.tag is None:
            raise SipParseError("INVITE without a From tag")
        local = invite.to_address()
        local.params["tag"] = local_tag
        call_id = invite.call_id
        if call_id is None:
            raise SipParseError("INVITE without Call-ID")
        cseq = invite.cseq().number
        return cls(
            call_id=call_id,
            local_tag=local_tag,
            remote_tag=remote.tag,
            local_address=local,
            remote_address=remote,
            remote_target=str(contacts[0].uri),
            route_set=invite.headers.get_all("Record-Route"),
            remote_cseq=cseq,
            invite_cseq=cseq,
        )

    @classmethod
    def as_uac(cls, invite: Request, response: Response) -> Dialog:
        """The dialog a 2xx to our INVITE creates (RFC 3261 §12.1.2)."""
        contacts = response.contacts()
        remote = response.to_address()
        local = invite.from_address()
        if not contacts or remote.tag is None or local.tag is None or invite.call_id is None:
            raise SipParseError("2xx without Contact or To tag")
        return cls(
            call_id=invite.call_id,
            local_tag=local.tag,
            remote_tag=remote.tag,
            local_address=local,
            remote_address=remote,
            remote_target=str(contacts[0].uri),
            route_set=list(reversed(response.headers.get_all("Record-Route"))),
            local_cseq=invite.cseq().number,
            invite_cseq=invite.cseq().number,
        )

    def accept_remote_cseq(self, request: Request) -> bool:
        """Whether an in-dialog request's CSeq is new (RFC 3261 §12.2.2): False -> 500.

        ACK and CANCEL reuse the INVITE's number and are not checked.
        """
        cseq = request.cseq()
        if cseq.method in ("ACK", "CANCEL"):
            return True
        if self.remote_cseq is not None and cseq.number <= self.remote_cseq:
            return False
        self.remote_cseq = cseq.number
        if cseq.method == "INVITE":
            self.invite_cseq = cseq.number
        return True

    def update_target(self, request_or_response: Request | Response) -> None:
        """A re-INVITE (or its 2xx) may move the peer: take its new Contact."""
        contacts = request_or_response.contacts()
        if contacts:
            self.remote_target = str(contacts[0].uri)

    def request(
        self,
        method: str,
        *,
        via: str,
        contact: str | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """A new request in this dialog with the next CSeq (ACK: the INVITE's)."""
        if method == "ACK":
            cseq = self.invite_cseq
        else:
            self.local_cseq += 1
            cseq = self.local_cseq
            if method == "INVITE":
                self.invite_cseq = cseq
        return make_request(
            method,
            self.remote_target,
            call_id=self.call_id,
            from_addr=self.local_address,
            to_addr=self.remote_address,
            cseq=cseq,
            via=via,
            contact=contact,
            route=self.route_set,
            headers=headers,
            body=body,
            content_type=content_type,
        )

    def next_hop(self) -> str:
        """Where an in-dialog request goes: the first route, or the remote target."""
        return self.route_set[0] if self.route_set else self.remote_target
