"""UPDATE (RFC 3311) as UAS: what the peer sees for each UPDATE it sends.

On a manual clock through the user agent (byte-exact where the response is
ours alone), then against ``voxgate serve`` with sipp as the caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.loadgen.runner import SpawnedServer, free_port, spawn_server
from server.sip.message import Request, Response, make_request
from tests.test_sip_sipp import run_sipp
from tests.test_sip_ua import ANSWER, OFFER, Harness, request
from tests.test_sip_uac import Uac
from tests.udpports import free_udp_range

TIMER = (("Supported", "timer"), ("Session-Expires", "1800;refresher=uac"))
G729 = OFFER.replace(b"RTP/AVP 0", b"RTP/AVP 18") + b"a=rtpmap:18 G729/8000\r\n"
ALLOW = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"


def answered(h: Harness, *headers: tuple[str, str], body: bytes = OFFER) -> str:
    h.send(request("INVITE", body=body, headers=headers))
    tag = h.last(200).to_tag
    assert tag is not None
    h.send(request("ACK", branch="z9hG4bKack", to_tag=tag, body=b"" if body else OFFER))
    return tag


def update(tag: str | None, cseq: int, body: bytes = b"", **kw: Any) -> Request:
    return request("UPDATE", branch=f"z9hG4bKupd{cseq}", cseq=cseq, to_tag=tag, body=body, **kw)


def byes(h: Harness) -> list[Request]:
    return [m for _, m in h.out if isinstance(m, Request) and m.method == "BYE"]


def test_update_without_sdp_is_a_session_refresh() -> None:
    h = Harness()
    tag = answered(h, *TIMER)
    h.clock.advance(1000)
    h.send(update(tag, 2, headers=TIMER))
    ok = h.out[-1][1]
    assert (
        ok.serialize()
        == (
            "SIP/2.0 200 OK\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKupd2;rport=5080;received=127.0.0.1\r\n"
            "From: <sip:sipp@127.0.0.1:5080>;tag=caller1\r\n"
            f"To: <sip:echo@127.0.0.1:5062>;tag={tag}\r\n"
            "Call-ID: c1@test\r\n"
            "CSeq: 2 UPDATE\r\n"
            "Contact: <sip:voxgate@127.0.0.1:5062>\r\n"
            f"Allow: {ALLOW}\r\n"
            "Supported: timer\r\n"
            "Session-Expires: 1800;refresher=uac\r\n"
            "Require: timer\r\n"
            "Content-Length: 0\r\n"
            "\r\n"
        ).encode()
    )
    # Without the refresh the call would end at 1800 - 32 s; now it runs from t=1000.
    h.clock.advance(1000)
    assert byes(h) == []
    assert h.sessions[0].log == [("answer", OFFER), ("confirmed", b"")]
    h.clock.advance(768)
    (bye,) = byes(h)
    assert 'text="session_expired"' in (bye.headers.get("Reason") or "")
    assert h.ua.stats.updates == 1


def test_update_with_an_offer_is_answered_at_once_and_not_resent() -> None:
    h = Harness()
    tag = answered(h)
    h.send(update(tag, 2, OFFER))
    ok = h.out[-1][1]
    assert isinstance(ok, Response) and ok.status == 200
    assert ok.body == ANSWER and ok.content_type == "application/sdp"
    assert ok.headers.get("Session-Expires") is None  # the caller asked for no timer
    assert h.sessions[0].log[-1] == ("update", OFFER)
    sent = len(h.out)
    h.clock.advance(10)
    assert len(h.out) == sent  # a non-INVITE 2xx waits for no ACK
    h.send(update(tag, 2, OFFER))  # a retransmission: the same 200, the session not asked
    assert h.out[-1][1].serialize() == ok.serialize()
    assert h.sessions[0].log.count(("update", OFFER)) == 1


def test_an_unacceptable_offer_is_488_and_the_call_goes_on() -> None:
    h = Harness()
    tag = answered(h)
    h.send(update(tag, 2, G729))
    refusal = h.last(488)
    assert refusal.headers.get("Warning") == '305 127.0.0.1:5062 "G729 only"'
    assert refusal.body == b"" and refusal.to_tag == tag
    assert h.ua.calls == 1
    h.send(update(tag, 3, OFFER))
    assert h.statuses()[-1] == 200


def test_an_offer_while_our_offer_awaits_its_answer_is_491() -> None:
    h = Harness()
    h.send(request("INVITE"))  # delayed offer: our 200 offers, the ACK answers
    ok = h.last(200)
    tag = ok.to_tag
    h.send(update(tag, 2, OFFER))
    assert h.statuses()[-1] == 491
    h.send(update(tag, 3))  # no offer: a refresh is fine meanwhile
    assert h.statuses()[-1] == 200
    h.send(request("ACK", branch="z9hG4bKack", to_tag=tag, body=OFFER))
    h.send(update(tag, 4, OFFER))
    assert h.statuses()[-1] == 200
    assert h.sessions[0].log == [
        ("answer", None),
        ("confirmed", OFFER),
        ("update", OFFER),
    ]


def test_an_offer_while_our_reinvite_refresh_is_pending_is_491() -> None:
    h = Harness()
    # We refresh; the caller does not allow UPDATE: our refresh is a re-INVITE without SDP.
    tag = answered(h, ("Supported", "timer"), ("Session-Expires", "90;refresher=uas"))
    h.clock.advance(45)
    (reinvite,) = [m for _, m in h.out if isinstance(m, Request) and m.method == "INVITE"]
    assert reinvite.body == b"" and reinvite.cseq().number == 1
    h.send(update(tag, 2, OFFER))
    assert h.statuses()[-1] == 491
    assert h.last(491).cseq().method == "UPDATE"


def test_update_in_an_early_dialog() -> None:
    h = Harness(answer_delay_ms=3000)
    h.send(request("INVITE", body=OFFER, headers=TIMER))
    tag = h.last(180).to_tag
    h.send(update(tag, 2))
    ok = h.last(200)
    assert ok.cseq().method == "UPDATE" and ok.to_tag == tag
    assert ok.headers.get("Contact") == "<sip:voxgate@127.0.0.1:5062>"
    assert ok.headers.get("Allow") == ALLOW
    assert ok.headers.get("Session-Expires") is None and ok.body == b""
    # An offer before our 2xx answered the INVITE's: 500, retry in 0-10 s (RFC 3311 §5.2).
    h.send(update(tag, 3, OFFER))
    pending = h.last(500)
    assert pending.reason == "Offer Pending"
    assert 0 <= int(pending.headers.get("Retry-After") or "-1") <= 10
    assert h.sessions[0].log == [("answer", OFFER)]
    h.clock.advance(3)
    invite_ok = h.last(200)
    assert invite_ok.cseq().method == "INVITE" and invite_ok.body == ANSWER
    assert invite_ok.headers.get("Session-Expires") == "1800;refresher=uac"
    h.send(request("ACK", branch="z9hG4bKack", to_tag=tag))
    assert h.sessions[0].log[-1] == ("confirmed", b"")
    h.send(update(tag, 4, OFFER))
    assert h.statuses()[-1] == 200 and h.out[-1][1].body == ANSWER


def test_update_moves_the_remote_target() -> None:
    h = Harness()
    tag = answered(h)
    moved = make_request(
        "UPDATE",
        "sip:voxgate@127.0.0.1:5062",
        call_id="c1@test",
        from_addr="<sip:sipp@127.0.0.1:5080>;tag=caller1",
        to_addr=f"<sip:echo@127.0.0.1:5062>;tag={tag}",
        cseq=2,
        via="SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bKmove;rport",
        contact="<sip:moved@127.0.0.1:5080>",
    )
    h.send(moved)
    assert h.statuses()[-1] == 200
    control = h.sessions[0].control
    assert control is not None
    control.hangup("done")
    assert byes(h)[0].uri == "sip:moved@127.0.0.1:5080"


@pytest.mark.parametrize("to_tag", ["doesnotexist", None])
def test_update_in_no_dialog_is_481(to_tag: str | None) -> None:
    h = Harness()
    h.send(update(to_tag, 2, OFFER))
    assert h.statuses() == [481]


def test_update_after_bye_is_481_and_an_old_cseq_is_500() -> None:
    h = Harness()
    tag = answered(h)
    h.send(update(tag, 5))
    h.send(update(tag, 4))
    assert h.statuses()[-2:] == [200, 500]
    assert h.last(500).reason == "CSeq out of order"
    h.send(request("BYE", branch="z9hG4bKbye", cseq=6, to_tag=tag))
    h.send(update(tag, 7))
    assert h.statuses()[-2:] == [200, 481]


def test_a_refresh_below_our_min_se_is_422() -> None:
    h = Harness()
    tag = answered(h, *TIMER)
    h.send(update(tag, 2, headers=(("Supported", "timer"), ("Session-Expires", "30"))))
    assert h.statuses()[-1] == 422
    assert h.last(422).headers.get("Min-SE") == "90"
    h.send(update(tag, 3, headers=(("Session-Expires", "soon"),)))
    assert h.statuses()[-1] == 400


def test_we_allow_update_everywhere_we_say_what_we_allow() -> None:
    h = Harness()
    h.send(request("OPTIONS"))
    h.send(request("INFO", branch="z9hG4bKinfo"))
    answered(h)
    allows = [(r.status, r.cseq().method, r.headers.get("Allow")) for _, r in h.out]
    assert (200, "OPTIONS", ALLOW) in allows and (405, "INFO", ALLOW) in allows
    assert (200, "INVITE", ALLOW) in allows
    u = Uac()
    u.call()
    assert u.sent("INVITE")[0].headers.get("Allow") == ALLOW


def callee_update(invite: Request, cseq: int, body: bytes = b"") -> Request:
    """An UPDATE from the callee in the early dialog of our INVITE (To: our From)."""
    return make_request(
        "UPDATE",
        "sip:voxgate@127.0.0.1:5062",
        call_id=invite.call_id or "",
        from_addr="<sip:+15551234567@carrier.example>;tag=callee1",
        to_addr=invite.headers.get("From") or "",
        cseq=cseq,
        via=f"SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bKcu{cseq};rport",
        contact="<sip:callee@127.0.0.1:5080>",
        body=body,
        content_type="application/sdp" if body else None,
    )


def test_update_in_the_early_dialog_of_a_call_we_place() -> None:
    u = Uac()
    handle = u.call()
    invite = u.sent("INVITE")[0]
    u.answer(invite, 180)
    u.deliver(callee_update(invite, 10))
    u.deliver(callee_update(invite, 11, OFFER))
    responses = [m for _, _, m in u.out if isinstance(m, Response)]
    assert [(r.status, r.cseq().method) for r in responses] == [(200, "UPDATE"), (500, "UPDATE")]
    assert responses[0].headers.get("Allow") == ALLOW
    assert 0 <= int(responses[1].headers.get("Retry-After") or "-1") <= 10
    assert handle.state == "proceeding" and u.sessions[0].log == [("offer", None)]


@settings(max_examples=300, deadline=None)
@given(
    body=st.sampled_from([b"", OFFER, G729, b"v=0\r\n", b"\x00\xff junk"]),
    content_type=st.sampled_from(["application/sdp", "text/plain", "APPLICATION/SDP"]),
    expires=st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=16),
    min_se=st.text(st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=8),
    cseq=st.integers(0, 2**31 - 1),
    ringing=st.booleans(),
)
def test_any_update_gets_exactly_one_final_response(
    *, body: bytes, content_type: str, expires: str, min_se: str, cseq: int, ringing: bool
) -> None:
    h = Harness(answer_delay_ms=5000 if ringing else 0)
    h.send(request("INVITE", body=OFFER))
    tag = h.last(180).to_tag
    before = len(h.statuses())
    headers = (("Session-Expires", expires), ("Min-SE", min_se), ("Supported", "timer"))
    try:
        bad = update(tag, cseq, headers=headers)
    except ValueError:
        return  # a header value we could not even write
    bad.body = body
    bad.headers.set("Content-Type", content_type)
    bad.headers.set("Content-Length", str(len(body)))
    h.send(bad)
    statuses = h.statuses()[before:]
    assert len(statuses) == 1 and statuses[0] in (200, 400, 422, 481, 488, 491, 500)
    assert h.ua.calls == 1


# -- against voxgate serve, sipp as the caller -------------------------------------------


@pytest.fixture(scope="module")
def voxgate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SpawnedServer, int]]:
    tmp = tmp_path_factory.mktemp("sipupdate")
    config = tmp / "voxgate.toml"
    low, high = free_udp_range(100)
    config.write_text(f'[agent]\nname = "echo"\n[sip]\nrtp_ports = "{low}-{high}"\n')
    sip_port = free_port()
    server = spawn_server(0, 200, tmp / "server.log", config, sip_port=sip_port)
    try:
        yield server, sip_port
    finally:
        server.stop()


@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_update_refresh_hold_resume_488_and_481(
    voxgate: tuple[SpawnedServer, int], transport: str, tmp_path: Path
) -> None:
    _, sip_port = voxgate
    run_sipp("uac_update.xml", sip_port, transport, tmp_path)


def test_in_dialog_refusals_carry_the_dialog_tag() -> None:
    """The 488/500 of an in-dialog UPDATE carry the dialog's To tag, not a new one."""
    h = Harness()
    tag = answered(h)
    h.send(update(tag, 2, G729))
    h.send(update(tag, 1))
    assert [(r.status, r.to_tag) for _, r in h.out[-2:] if isinstance(r, Response)] == [
        (488, tag),
        (500, tag),
    ]
