"""The UAS core on a manual clock: what a caller sees for each request it sends."""

from __future__ import annotations

from typing import Any, cast

import pytest

from server.sip.message import Request, Response, make_request, parse_message, stamp_received
from server.sip.transport import Peer
from server.sip.ua import CallControl, MediaRefused, Refused, UserAgent
from tests.test_sip_transaction import ManualClock

CALLER = Peer("udp", ("127.0.0.1", 5080))
SDP_HEAD = b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
OFFER = SDP_HEAD + b"m=audio 6000 RTP/AVP 0\r\n"
ANSWER = SDP_HEAD + b"m=audio 40000 RTP/AVP 0\r\n"


class FakeSession:
    def __init__(self, refuse_media: bool = False) -> None:
        self.refuse_media = refuse_media
        self.log: list[tuple[str, object]] = []
        self.control: CallControl | None = None

    def answer(self, offer: bytes | None) -> bytes:
        self.log.append(("answer", offer))
        if self.refuse_media:
            raise MediaRefused("no common codec", 305)
        return ANSWER

    def confirmed(self, ack_body: bytes) -> None:
        self.log.append(("confirmed", ack_body))

    def update(self, offer: bytes | None) -> bytes:
        self.log.append(("update", offer))
        if offer is not None and b"G729" in offer:
            raise MediaRefused("G729 only", 305)
        return ANSWER

    def ended(self, reason: str) -> None:
        self.log.append(("ended", reason))


class Harness:
    def __init__(
        self, answer_delay_ms: int = 0, refuse: Refused | None = None, caller: Peer = CALLER
    ) -> None:
        self.caller = caller
        self.peers: list[Peer] = []
        self.clock = ManualClock()
        self.out: list[tuple[float, Response | Request]] = []
        self.sessions: list[FakeSession] = []
        self.refuse = refuse
        self.refusing: str | None = None
        self.refuse_media = False

        def make(request: Request, control: CallControl) -> FakeSession:
            if self.refuse is not None:
                raise self.refuse
            session = FakeSession(self.refuse_media)
            session.control = control
            self.sessions.append(session)
            return session

        def send(data: bytes, peer: Peer) -> None:
            if caller.transport == "udp":
                assert peer == CALLER
            self.peers.append(peer)
            self.out.append((self.clock.now, parse_message(data)))

        self.ua = UserAgent(
            send,
            self.clock,
            contact="sip:voxgate@127.0.0.1:5062",
            via_host="127.0.0.1:5062",
            sessions=make,
            refusal=lambda: self.refusing,
            answer_delay_ms=answer_delay_ms,
        )

    def send(self, request: Request) -> None:
        """As the transport delivers it: parsed again, top Via stamped."""
        parsed = parse_message(request.serialize())
        assert isinstance(parsed, Request)
        stamp_received(parsed, self.caller.address)
        self.ua.on_message(parsed, self.caller)

    def statuses(self) -> list[int]:
        return [m.status for _, m in self.out if isinstance(m, Response)]

    def last(self, status: int) -> Response:
        found = [m for _, m in self.out if isinstance(m, Response) and m.status == status]
        assert found, f"no {status} in {self.statuses()}"
        return found[-1]


def request(
    method: str,
    *,
    branch: str = "z9hG4bKa1",
    cseq: int = 1,
    to_tag: str | None = None,
    body: bytes = b"",
    call_id: str = "c1@test",
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    to = "<sip:echo@127.0.0.1:5062>" + (f";tag={to_tag}" if to_tag else "")
    return make_request(
        method,
        "sip:echo@127.0.0.1:5062",
        call_id=call_id,
        from_addr="<sip:sipp@127.0.0.1:5080>;tag=caller1",
        to_addr=to,
        cseq=cseq,
        via=f"SIP/2.0/UDP 127.0.0.1:5080;branch={branch};rport",
        contact="<sip:sipp@127.0.0.1:5080>",
        headers=headers,
        body=body,
        content_type="application/sdp" if body else None,
    )


def answered_call(h: Harness) -> str:
    h.send(request("INVITE", body=OFFER))
    tag = h.last(200).to_tag
    assert tag is not None
    h.send(request("ACK", branch="z9hG4bKack", to_tag=tag))
    return tag


def test_invite_rings_answers_and_resends_the_200_until_ack() -> None:
    h = Harness()
    h.send(request("INVITE", body=OFFER))
    assert h.statuses() == [100, 180, 200]
    ok = h.last(200)
    assert ok.body == ANSWER and ok.content_type == "application/sdp"
    assert ok.headers.get("Contact") == "<sip:voxgate@127.0.0.1:5062>"
    assert ok.to_tag == h.last(180).to_tag and ok.top_via().rport == 5080
    h.clock.advance(1.6)
    assert h.statuses().count(200) == 3  # at 0, 0.5 and 1.5 s
    h.send(request("ACK", branch="z9hG4bKack", to_tag=ok.to_tag))
    h.clock.advance(10)
    assert h.statuses().count(200) == 3
    assert h.sessions[0].log == [("answer", OFFER), ("confirmed", b"")]


def test_retransmitted_invite_gets_the_last_response_again() -> None:
    h = Harness(answer_delay_ms=2000)
    h.send(request("INVITE", body=OFFER))
    h.send(request("INVITE", body=OFFER))
    assert h.statuses() == [100, 180, 180]
    assert len(h.sessions) == 1


def test_cancel_while_ringing_gets_487_and_its_ack_is_absorbed() -> None:
    h = Harness(answer_delay_ms=3000)
    h.send(request("INVITE", body=OFFER))
    h.clock.advance(1)
    h.send(request("CANCEL"))
    assert h.statuses() == [100, 180, 200, 487]
    assert h.last(200).cseq().method == "CANCEL"
    h.send(request("ACK", to_tag=h.last(487).to_tag))
    h.clock.advance(10)
    assert h.statuses() == [100, 180, 200, 487]  # the ACK stopped Timer G
    assert h.sessions[0].log[-1] == ("ended", "cancelled")
    assert h.ua.calls == 0


def test_cancel_of_an_unknown_invite_is_481() -> None:
    h = Harness()
    h.send(request("CANCEL", branch="z9hG4bKnone"))
    assert h.statuses() == [481]


def test_bye_from_the_caller_ends_the_call() -> None:
    h = Harness()
    tag = answered_call(h)
    h.send(request("BYE", branch="z9hG4bKbye", cseq=2, to_tag=tag))
    assert h.statuses()[-1] == 200
    assert h.sessions[0].log[-1] == ("ended", "remote_bye")
    h.send(request("BYE", branch="z9hG4bKbye2", cseq=3, to_tag=tag))
    assert h.statuses()[-1] == 481


def test_stray_bye_is_481() -> None:
    h = Harness()
    h.send(request("BYE", to_tag="doesnotexist"))
    assert h.statuses() == [481]


def test_options_is_200_with_allow_or_503_when_refusing() -> None:
    h = Harness()
    h.send(request("OPTIONS"))
    ok = h.last(200)
    assert "BYE" in ok.headers.tokens("Allow")
    h.refusing = "draining"
    h.send(request("OPTIONS", branch="z9hG4bKo2"))
    assert h.statuses() == [200, 503]


def test_media_refused_is_488_with_a_warning() -> None:
    h = Harness()
    h.refuse_media = True
    h.send(request("INVITE", body=OFFER))
    assert h.statuses() == [100, 488]
    assert (h.last(488).headers.get("Warning") or "").startswith("305 127.0.0.1:5062")
    assert h.sessions[0].log[-1] == ("ended", "media_refused")


def test_the_application_can_refuse_busy() -> None:
    h = Harness(refuse=Refused(486))
    h.send(request("INVITE", body=OFFER))
    assert h.statuses() == [100, 486]


def test_reinvite_is_answered_and_a_bad_one_keeps_the_session() -> None:
    h = Harness()
    tag = answered_call(h)
    h.send(request("INVITE", branch="z9hG4bKre1", cseq=2, to_tag=tag, body=OFFER))
    assert h.statuses()[-1] == 200
    g729 = OFFER.replace(b"RTP/AVP 0", b"RTP/AVP 18") + b"a=rtpmap:18 G729/8000\r\n"
    # Before the ACK of the last 200, another re-INVITE must wait (RFC 3261 §14.2).
    h.send(request("INVITE", branch="z9hG4bKre2", cseq=3, to_tag=tag, body=g729))
    assert h.statuses()[-1] == 491
    h.send(request("ACK", branch="z9hG4bKack2", cseq=2, to_tag=tag))
    h.send(request("INVITE", branch="z9hG4bKre3", cseq=4, to_tag=tag, body=g729))
    assert h.statuses()[-1] == 488
    assert h.ua.calls == 1


def test_a_retransmitted_invite_after_the_200_gets_the_200_not_a_new_call() -> None:
    h = Harness()
    h.send(request("INVITE", body=OFFER))
    h.send(request("INVITE", body=OFFER))
    assert h.statuses() == [100, 180, 200, 200]
    assert len(h.sessions) == 1
    h.send(request("ACK", branch="z9hG4bKack", to_tag=h.last(200).to_tag))
    h.send(request("INVITE", body=OFFER))  # long after: absorbed, no second call
    assert len(h.sessions) == 1


def test_the_200_to_a_reinvite_is_resent_until_its_ack() -> None:
    h = Harness()
    tag = answered_call(h)
    h.send(request("INVITE", branch="z9hG4bKre1", cseq=2, to_tag=tag, body=OFFER))
    h.clock.advance(1.6)
    assert h.statuses()[-3:] == [200, 200, 200]
    h.send(request("INVITE", branch="z9hG4bKre1", cseq=2, to_tag=tag, body=OFFER))
    assert h.statuses()[-1] == 200 and h.sessions[0].log.count(("update", OFFER)) == 1
    h.send(request("ACK", branch="z9hG4bKack2", cseq=2, to_tag=tag))
    before = len(h.statuses())
    h.clock.advance(10)
    assert len(h.statuses()) == before


def test_our_hangup_sends_bye_until_answered() -> None:
    h = Harness()
    answered_call(h)
    control = h.sessions[0].control
    assert control is not None
    control.hangup("idle")
    byes = [m for _, m in h.out if isinstance(m, Request) and m.method == "BYE"]
    assert len(byes) == 1
    bye = byes[0]
    assert bye.uri == "sip:sipp@127.0.0.1:5080" and bye.cseq().number == 1
    assert bye.to_tag == "caller1"
    h.clock.advance(0.6)
    assert sum(1 for _, m in h.out if isinstance(m, Request) and m.method == "BYE") == 2
    ok = Response(200, "OK", bye.headers.copy())
    h.ua.on_message(parse_message(ok.serialize()), CALLER)
    h.clock.advance(10)
    assert sum(1 for _, m in h.out if isinstance(m, Request) and m.method == "BYE") == 2
    assert h.sessions[0].log[-1] == ("ended", "idle")


class FakeConnection:
    """Stands in for a TCP connection: only whether it is closed matters here."""

    closed = False


def test_in_dialog_requests_to_a_tcp_caller_use_its_connection_or_else_its_contact() -> None:
    connection = FakeConnection()
    caller = Peer("tcp", ("127.0.0.1", 40123), cast(Any, connection))  # an ephemeral port
    h = Harness(caller=caller)
    answered_call(h)
    control = h.sessions[0].control
    assert control is not None
    assert h.peers[-1].connection is connection  # answers go back on the connection
    connection.closed = True  # the caller's connection went away
    control.hangup("idle")
    bye_peer = h.peers[-1]
    assert isinstance(h.out[-1][1], Request) and h.out[-1][1].method == "BYE"
    # Not the dead connection's ephemeral port: the Contact, over TCP (a new connection).
    assert bye_peer.transport == "tcp" and bye_peer.address == ("127.0.0.1", 5080)
    assert bye_peer.connection is None


def test_a_200_never_acked_ends_with_bye() -> None:
    h = Harness()
    h.send(request("INVITE", body=OFFER))
    h.clock.advance(33)
    assert any(isinstance(m, Request) and m.method == "BYE" for _, m in h.out)
    assert h.sessions[0].log[-1] == ("ended", "no_ack")


@pytest.mark.parametrize(
    ("method", "status"), [("INFO", 405), ("SUBSCRIBE", 501), ("MESSAGE", 501)]
)
def test_methods_we_do_not_take(method: str, status: int) -> None:
    h = Harness()
    h.send(request(method))
    assert h.statuses() == [status]
    assert "INVITE" in h.last(status).headers.tokens("Allow")


def test_required_extensions_we_lack_are_420() -> None:
    h = Harness()
    h.send(request("INVITE", body=OFFER, headers=(("Require", "100rel"),)))
    assert h.statuses() == [420]
    assert h.last(420).headers.get("Unsupported") == "100rel"


def test_a_malformed_request_is_400_with_the_reason() -> None:
    h = Harness()
    bad = request("OPTIONS")
    bad.headers.remove("CSeq")
    h.ua.on_message(bad, CALLER)
    assert h.statuses() == [400]
    assert "CSeq" in h.last(400).reason


def test_delayed_offer_gets_our_offer_and_the_answer_in_the_ack() -> None:
    h = Harness()
    h.send(request("INVITE"))
    ok = h.last(200)
    assert ok.body == ANSWER
    h.send(request("ACK", branch="z9hG4bKack", to_tag=ok.to_tag, body=OFFER))
    assert h.sessions[0].log == [("answer", None), ("confirmed", OFFER)]
