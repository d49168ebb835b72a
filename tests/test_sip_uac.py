"""Calls we place, on a manual clock: what the callee (or its proxy) sees for each answer."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.pytest_plugin import AiohttpClient
from hypothesis import given, settings
from hypothesis import strategies as st

from server.calls_route import DIALER_KEY, CallRequest, Dialer, DialError, add_calls_route
from server.config import SipTrunk
from server.sip.digest import parse_authorization, verify
from server.sip.message import (
    Request,
    Response,
    make_request,
    make_response,
    parse_message,
    stamp_received,
)
from server.sip.transport import Peer
from server.sip.ua import CallControl, MediaRefused, Refused, UserAgent
from tests.test_sip_transaction import ManualClock

PROXY = Peer("udp", ("127.0.0.1", 5090))
CALLEE = Peer("udp", ("127.0.0.1", 5080))
SDP_HEAD = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
OFFER = SDP_HEAD + b"m=audio 40000 RTP/AVP 0 101\r\n"
ANSWER = SDP_HEAD + b"m=audio 6000 RTP/AVP 0\r\n"
REOFFER = SDP_HEAD + b"m=audio 6002 RTP/AVP 0\r\n"
PASSWORD = "s3cret"


class FakeOutbound:
    """An OutboundSession that records what the user agent asks of it."""

    def __init__(self, refuse_answer: bool = False) -> None:
        self.refuse_answer = refuse_answer
        self.log: list[tuple[str, object]] = []
        self.control: CallControl | None = None
        self.invite: Request | None = None

    def offer(self) -> bytes:
        self.log.append(("offer", None))
        return OFFER

    def early(self, answer: bytes) -> None:
        self.log.append(("early", answer))
        if b"G729" in answer:
            raise MediaRefused("no common codec")

    def accept(self, answer: bytes) -> None:
        self.log.append(("accept", answer))
        if self.refuse_answer:
            raise MediaRefused("no common codec")

    def confirmed(self, ack_body: bytes) -> None:
        self.log.append(("confirmed", ack_body))

    def update(self, offer: bytes | None) -> bytes:
        self.log.append(("update", offer))
        return OFFER

    def ended(self, reason: str) -> None:
        self.log.append(("ended", reason))


class Uac:
    """A user agent whose wire is a list, and helpers to answer what it sent."""

    def __init__(self) -> None:
        self.clock = ManualClock()
        self.out: list[tuple[float, Peer, Request | Response]] = []
        self.sessions: list[FakeOutbound] = []
        self.refuse_answer = False

        def send(data: bytes, peer: Peer) -> None:
            self.out.append((self.clock.now, peer, parse_message(data)))

        def inbound(request: Request, control: CallControl) -> Any:
            raise Refused(603)

        self.ua = UserAgent(
            send,
            self.clock,
            contact="sip:voxgate@127.0.0.1:5062",
            via_host="127.0.0.1:5062",
            sessions=inbound,
        )

    def outbound(self, invite: Request, control: CallControl) -> FakeOutbound:
        session = FakeOutbound(self.refuse_answer)
        session.control, session.invite = control, invite
        self.sessions.append(session)
        return session

    def call(self, *, login: bool = False, destination: Peer | None = PROXY) -> Any:
        from server.sip.uac import Login

        return self.ua.invite(
            "sip:+15551234567@carrier.example",
            from_uri="sip:voxgate@carrier.example",
            sessions=self.outbound,
            login=Login("alice", PASSWORD) if login else None,
            destination=destination,
        )

    def sent(self, method: str) -> list[Request]:
        return [m for _, _, m in self.out if isinstance(m, Request) and m.method == method]

    def sent_to(self, method: str) -> list[Peer]:
        return [p for _, p, m in self.out if isinstance(m, Request) and m.method == method]

    def answer(
        self,
        request: Request,
        status: int,
        *,
        to_tag: str | None = "callee1",
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
    ) -> Response:
        response = make_response(
            request,
            status,
            to_tag=to_tag if status > 100 else None,
            headers=headers,
            body=body,
            content_type="application/sdp" if body else None,
        )
        self.deliver(response)
        return response

    def deliver(self, message: Request | Response, peer: Peer = PROXY) -> None:
        parsed = parse_message(message.serialize())
        if isinstance(parsed, Request):
            stamp_received(parsed, peer.address)
        self.ua.on_message(parsed, peer)


def ok_headers(*extra: tuple[str, str]) -> tuple[tuple[str, str], ...]:
    return (
        ("Contact", "<sip:callee@127.0.0.1:5080>"),
        ("Record-Route", "<sip:p1.example;lr>"),
        ("Record-Route", "<sip:p2.example;lr>"),
        *extra,
    )


def test_invite_carries_the_offer_and_our_options() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    assert u.sent_to("INVITE") == [PROXY]
    assert invite.uri == "sip:+15551234567@carrier.example"
    assert invite.body == OFFER and invite.content_type == "application/sdp"
    assert invite.cseq().number == 1 and invite.call_id == handle.call_id
    assert invite.from_tag is not None and invite.to_tag is None
    assert invite.headers.get("Contact") == "<sip:voxgate@127.0.0.1:5062>"
    assert invite.headers.get("Session-Expires") == "1800"
    assert invite.headers.get("Min-SE") == "90"
    assert "timer" in invite.headers.tokens("Supported")
    via = invite.top_via()
    assert (via.host, via.port, via.wants_rport) == ("127.0.0.1", 5062, True)
    assert (via.branch or "").startswith("z9hG4bK")
    assert u.sessions[0].invite is not None
    assert u.sessions[0].invite.call_id == handle.call_id
    assert handle.state == "calling"


def test_2xx_makes_the_dialog_and_every_copy_of_it_is_acked() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 100)
    u.answer(invite, 180)
    assert handle.state == "proceeding"
    ok = u.answer(invite, 200, headers=ok_headers(("Allow", "INVITE, ACK, BYE")), body=ANSWER)
    (ack,) = u.sent("ACK")
    # End to end through the route set (reversed Record-Route) to the callee's Contact.
    assert ack.uri == "sip:callee@127.0.0.1:5080"
    assert ack.headers.get_all("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert ack.branch != invite.branch and ack.cseq().number == 1
    assert ack.to_tag == "callee1" and ack.body == b""
    assert u.sent_to("ACK") == [Peer("udp", ("p2.example", 5060))]
    assert handle.state == "answered" and handle.status == 200 and u.ua.calls == 1
    assert u.sessions[0].log == [("offer", None), ("accept", ANSWER)]
    u.deliver(ok)  # a retransmission of the 200: the same ACK again
    acks = u.sent("ACK")
    assert len(acks) == 2 and acks[0].serialize() == acks[1].serialize()
    u.clock.advance(60)
    assert len(u.sent("INVITE")) == 1  # no Timer A after the answer


def test_invite_is_resent_on_timer_a_and_times_out_as_408() -> None:
    u = Uac()
    handle = u.call()
    u.clock.advance(40)
    times = [t for t, _, m in u.out if isinstance(m, Request) and m.method == "INVITE"]
    assert times == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert handle.state == "failed" and handle.status == 408
    assert u.sessions[0].log[-1] == ("ended", "failed_408")
    assert u.ua.stats.outbound_failed == 1


@pytest.mark.parametrize("status", [302, 404, 486, 503, 603])
def test_failure_is_acked_hop_by_hop_and_ends_the_call(status: int) -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 180)
    failure = u.answer(invite, status)
    (ack,) = u.sent("ACK")
    assert ack.branch == invite.branch and ack.uri == invite.uri
    assert ack.cseq().number == 1 and ack.to_tag == "callee1"
    assert u.sent_to("ACK") == [PROXY]
    assert handle.state == "failed" and handle.status == status
    assert handle.reason == f"{status} {failure.reason}"
    assert u.sessions[0].log[-1] == ("ended", f"failed_{status}")
    u.deliver(failure)  # the failure again: the ACK again
    assert len(u.sent("ACK")) == 2


def challenge_header(status: int) -> str:
    return "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"


def credentials_ok(request: Request, header: str, nonce: str = "n1") -> bool:
    value = request.headers.get(header)
    assert value is not None
    return verify(
        value,
        method=request.method,
        uri=request.uri,
        password_for=lambda user, realm: PASSWORD if user == "alice" else None,
        nonce_ok=lambda n: n == nonce,
    )


@pytest.mark.parametrize(
    ("status", "algorithm"), [(401, "MD5"), (407, "SHA-256"), (401, "SHA-256")]
)
def test_challenge_gets_one_retry_with_digest(status: int, algorithm: str) -> None:
    u = Uac()
    handle = u.call(login=True)
    (first,) = u.sent("INVITE")
    offers = [f'Digest realm="carrier", nonce="n1", algorithm={algorithm}, qop="auth"']
    if algorithm == "SHA-256":
        offers.append('Digest realm="carrier", nonce="n1", algorithm=MD5, qop="auth"')
    u.answer(first, status, headers=tuple((challenge_header(status), v) for v in offers))
    (ack,) = u.sent("ACK")
    assert ack.branch == first.branch  # the challenge is ACKed in its transaction
    first_again, second = u.sent("INVITE")
    assert first_again is first
    assert second.cseq().number == 2 and second.branch != first.branch
    assert second.call_id == first.call_id and second.from_tag == first.from_tag
    assert second.body == OFFER
    header = "Proxy-Authorization" if status == 407 else "Authorization"
    assert credentials_ok(second, header)
    creds = parse_authorization(second.headers.get(header) or "")
    assert creds.algorithm == algorithm and creds.nc == 1 and creds.uri == second.uri
    u.answer(second, 200, headers=ok_headers(), body=ANSWER)
    assert handle.state == "answered"
    final_ack = u.sent("ACK")[-1]
    assert final_ack.cseq().number == 2 and final_ack.headers.get(header) is not None


def test_refused_credentials_fail_the_call() -> None:
    u = Uac()
    handle = u.call(login=True)
    (first,) = u.sent("INVITE")
    challenge = (("WWW-Authenticate", 'Digest realm="carrier", nonce="n1", qop="auth"'),)
    u.answer(first, 401, headers=challenge)
    second = u.sent("INVITE")[-1]
    u.answer(second, 401, headers=challenge)
    assert len(u.sent("INVITE")) == 2
    assert handle.state == "failed" and handle.status == 401
    assert handle.reason is not None and "credentials refused" in handle.reason


def test_stale_nonce_is_retried_silently() -> None:
    u = Uac()
    handle = u.call(login=True)
    (first,) = u.sent("INVITE")
    u.answer(first, 401, headers=(("WWW-Authenticate", 'Digest realm="r", nonce="n1"'),))
    second = u.sent("INVITE")[-1]
    stale = 'Digest realm="r", nonce="n2", stale=true'
    u.answer(second, 401, headers=(("WWW-Authenticate", stale),))
    third = u.sent("INVITE")[-1]
    assert third.cseq().number == 3 and credentials_ok(third, "Authorization", "n2")
    assert handle.state == "calling"


def test_challenge_without_login_fails() -> None:
    u = Uac()
    handle = u.call()
    (first,) = u.sent("INVITE")
    u.answer(first, 407, headers=(("Proxy-Authenticate", 'Digest realm="r", nonce="n"'),))
    assert handle.state == "failed" and handle.status == 407
    assert len(u.sent("INVITE")) == 1


def test_422_is_retried_with_the_min_se_asked_for() -> None:
    u = Uac()
    handle = u.call()
    (first,) = u.sent("INVITE")
    u.answer(first, 422, headers=(("Min-SE", "3600"),))
    second = u.sent("INVITE")[-1]
    assert second.cseq().number == 2
    assert second.headers.get("Session-Expires") == "3600"
    assert second.headers.get("Min-SE") == "3600"
    u.answer(second, 422, headers=(("Min-SE", "7200"),))
    assert handle.state == "failed" and handle.status == 422


def test_cancel_waits_for_a_provisional() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    handle.hangup("user")
    assert u.sent("CANCEL") == []  # RFC 3261 §9.1: not before a provisional
    u.answer(invite, 180)
    (cancel,) = u.sent("CANCEL")
    assert cancel.uri == invite.uri and cancel.branch == invite.branch
    assert cancel.cseq().number == 1 and cancel.cseq().method == "CANCEL"
    assert cancel.to_tag is None and cancel.from_tag == invite.from_tag
    assert cancel.call_id == invite.call_id
    u.answer(cancel, 200)
    u.answer(invite, 487)
    (ack,) = u.sent("ACK")
    assert ack.branch == invite.branch
    assert handle.state == "failed" and handle.status == 487
    assert u.sessions[0].log[-1] == ("ended", "user")
    u.clock.advance(5)
    assert len(u.sent("CANCEL")) == 1  # answered: no Timer E


def test_cancel_after_a_provisional_goes_at_once_and_is_resent_until_answered() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 183)
    handle.hangup()
    u.clock.advance(1.6)
    assert len(u.sent("CANCEL")) == 3  # Timer E at 0, 0.5, 1.5 s
    u.clock.advance(40)  # no 487 ever: given up after 64*T1
    assert handle.state == "failed" and handle.status == 487


def test_ring_timeout_cancels() -> None:
    u = Uac()
    handle = u.ua.invite(
        "sip:bob@127.0.0.1:5080",
        from_uri="sip:voxgate@127.0.0.1",
        sessions=u.outbound,
        ring_timeout_s=30,
    )
    (invite,) = u.sent("INVITE")
    assert u.sent_to("INVITE") == [CALLEE]  # no destination: the URI's host and port
    u.answer(invite, 180)
    u.clock.advance(29)
    assert u.sent("CANCEL") == []
    u.clock.advance(1)
    assert len(u.sent("CANCEL")) == 1
    assert handle.state == "proceeding"


def test_answer_after_our_cancel_is_acked_and_ended_with_bye() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 180)
    handle.hangup()
    u.answer(invite, 200, headers=ok_headers(), body=ANSWER)
    assert len(u.sent("ACK")) == 1 and len(u.sent("BYE")) == 1
    assert handle.state == "failed" and handle.status == 487
    assert u.ua.calls == 0


def test_second_fork_is_acked_and_ended() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 200, headers=ok_headers(), body=ANSWER)
    u.answer(invite, 200, to_tag="fork2", headers=ok_headers(), body=ANSWER)
    acks, byes = u.sent("ACK"), u.sent("BYE")
    assert [a.to_tag for a in acks] == ["callee1", "fork2"]
    assert [b.to_tag for b in byes] == ["fork2"]
    assert handle.state == "answered" and u.ua.calls == 1


def test_2xx_without_answer_or_with_a_bad_one_is_hung_up() -> None:
    u = Uac()
    handle = u.call()
    (invite,) = u.sent("INVITE")
    u.answer(invite, 200, headers=ok_headers())
    assert len(u.sent("ACK")) == 1
    (bye,) = u.sent("BYE")
    assert 'text="no_answer_sdp"' in (bye.headers.get("Reason") or "")
    assert handle.state == "ended" and u.ua.calls == 0
    u2 = Uac()
    u2.refuse_answer = True
    handle2 = u2.call()
    u2.answer(u2.sent("INVITE")[0], 200, headers=ok_headers(), body=ANSWER)
    assert len(u2.sent("BYE")) == 1 and handle2.state == "ended"
    assert u2.sessions[0].log[-1] == ("ended", "media_refused")


def answered(u: Uac, *headers: tuple[str, str]) -> tuple[Any, Request, Response]:
    handle = u.call()
    invite = u.sent("INVITE")[-1]
    ok = u.answer(invite, 200, headers=ok_headers(*headers), body=ANSWER)
    return handle, invite, ok


def in_dialog(invite: Request, method: str, cseq: int, **kw: Any) -> Request:
    """A request from the callee in the dialog our INVITE made."""
    body = kw.pop("body", b"")
    return make_request(
        method,
        "sip:voxgate@127.0.0.1:5062",
        call_id=invite.call_id or "",
        from_addr="<sip:+15551234567@carrier.example>;tag=callee1",
        to_addr=invite.headers.get("From") or "",
        cseq=cseq,
        via=f"SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcallee{cseq};rport",
        contact="<sip:callee@127.0.0.1:5080>",
        body=body,
        content_type="application/sdp" if body else None,
        **kw,
    )


def test_callee_hangs_up() -> None:
    u = Uac()
    handle, invite, _ = answered(u)
    u.deliver(in_dialog(invite, "BYE", 5))
    responses = [m for _, _, m in u.out if isinstance(m, Response)]
    assert [r.status for r in responses] == [200]
    assert handle.state == "ended" and u.ua.calls == 0
    assert u.sessions[0].log[-1] == ("ended", "remote_bye")


def test_we_hang_up_with_bye_through_the_route_set() -> None:
    u = Uac()
    handle, invite, _ = answered(u)
    handle.hangup("done")
    (bye,) = u.sent("BYE")
    assert bye.uri == "sip:callee@127.0.0.1:5080"
    assert bye.headers.get_all("Route") == ["<sip:p2.example;lr>", "<sip:p1.example;lr>"]
    assert bye.cseq().number == 2 and bye.to_tag == "callee1"
    assert bye.from_tag == invite.from_tag
    assert u.sent_to("BYE") == [Peer("udp", ("p2.example", 5060))]
    u.answer(bye, 200)
    u.clock.advance(10)
    assert len(u.sent("BYE")) == 1
    assert u.sessions[0].log[-1] == ("ended", "done")


def test_reinvite_from_the_callee_is_answered_by_the_session() -> None:
    u = Uac()
    _, invite, _ = answered(u)
    u.deliver(in_dialog(invite, "INVITE", 6, body=REOFFER))
    ok = [m for _, _, m in u.out if isinstance(m, Response)][-1]
    assert ok.status == 200 and ok.body == OFFER
    assert ("update", REOFFER) in u.sessions[0].log


def test_shutdown_cancels_ringing_calls_and_byes_answered_ones() -> None:
    u = Uac()
    ringing = u.call()
    u.answer(u.sent("INVITE")[0], 180)
    up, _, _ = answered(u)
    u.ua.shutdown()
    assert len(u.sent("CANCEL")) == 1 and len(u.sent("BYE")) == 1
    assert up.state == "ended"
    assert ringing.state == "proceeding"


def test_refused_by_the_factory_or_the_offer_sends_nothing() -> None:
    u = Uac()

    def refuse(invite: Request, control: CallControl) -> FakeOutbound:
        raise Refused(503, "full")

    with pytest.raises(Refused):
        u.ua.invite("sip:a@127.0.0.1", from_uri="sip:b@127.0.0.1", sessions=refuse)
    assert u.out == []


@settings(max_examples=200, deadline=None)
@given(status=st.integers(100, 699), data=st.binary(max_size=200))
def test_any_response_to_our_invite_leaves_a_sane_state(status: int, data: bytes) -> None:
    u = Uac()
    handle = u.call(login=True)
    (invite,) = u.sent("INVITE")
    text = data.decode("latin-1").replace("\r", " ").replace("\n", " ")
    headers = (
        ("WWW-Authenticate", text),
        ("Proxy-Authenticate", text),
        ("Min-SE", text[:12]),
        ("Session-Expires", text[:12]),
        ("Contact", "<sip:callee@127.0.0.1:5080>"),
    )
    try:
        response = make_response(invite, status, to_tag="t1", headers=headers)
    except ValueError:
        return  # not even a header we could write: not a message that can arrive
    u.deliver(response)
    u.clock.advance(100)
    assert handle.state in ("calling", "proceeding", "answered", "failed", "ended")


# -- POST /calls --------------------------------------------------------------------------

TRUNK = SipTrunk(name="carrier", registrar="127.0.0.1:5090", username="alice", password=PASSWORD)


async def test_dialer_builds_uris_from_the_trunk() -> None:
    u = Uac()
    dialer = Dialer(u.ua, [TRUNK], u.outbound, local_host="127.0.0.1")
    handle = await dialer.dial(CallRequest(to="+15551234567", trunk="carrier"))
    (invite,) = u.sent("INVITE")
    assert invite.uri == "sip:+15551234567@127.0.0.1:5090"
    assert invite.from_address().uri.user == "alice"
    assert u.sent_to("INVITE") == [PROXY] and handle.call_id == invite.call_id
    direct = await dialer.dial(CallRequest(to="sip:bob@127.0.0.1:5080", from_="ivr"))
    assert u.sent_to("INVITE")[-1] == CALLEE
    assert str(u.sent("INVITE")[-1].from_address().uri) == "sip:ivr@127.0.0.1"
    assert direct.call_id != handle.call_id


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (CallRequest(to="+1555", trunk="nope"), 404),
        (CallRequest(to="+1555"), 400),
        (CallRequest(to="sip:bad user@host"), 400),
        (CallRequest(to=" ", trunk="carrier"), 400),
    ],
)
async def test_dialer_refusals(request_: CallRequest, status: int) -> None:
    u = Uac()
    dialer = Dialer(u.ua, [TRUNK], u.outbound)
    with pytest.raises(DialError) as info:
        await dialer.dial(request_)
    assert info.value.status == status and info.value.reason
    assert u.out == []


async def test_post_calls(aiohttp_client: AiohttpClient) -> None:
    u = Uac()
    refusing: list[str] = []
    app = web.Application()
    add_calls_route(app)
    client = await aiohttp_client(app)
    off = await client.post("/calls", json={"to": "sip:bob@127.0.0.1:5080"})
    assert off.status == 503
    app[DIALER_KEY] = Dialer(
        u.ua, [TRUNK], u.outbound, refusal=lambda: refusing[0] if refusing else None
    )
    created = await client.post("/calls", json={"to": "+1555", "from": "bot", "trunk": "carrier"})
    assert created.status == 201
    body = await created.json()
    assert body == {"call_id": u.sent("INVITE")[0].call_id}
    for payload, status in [
        (b"{", 400),
        (b'{"from": "x"}', 400),
        (b'{"to": "+1", "extra": 1}', 400),
        (b'{"to": 5}', 400),
        (b'{"to": "+1", "trunk": "other"}', 404),
        (b"x" * 5000, 400),
    ]:
        response = await client.post("/calls", data=payload)
        assert response.status == status, payload
        assert (await response.json())["error"]
    refusing.append("draining")
    busy = await client.post("/calls", json={"to": "+1", "trunk": "carrier"})
    assert busy.status == 503 and "draining" in (await busy.json())["error"]
