"""Session timers (RFC 4028): the headers, the negotiation, and the user agent running them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.sip.message import Request, Response, make_response
from server.sip.sessiontimer import (
    Policy,
    SessionExpires,
    SessionTimerError,
    Terms,
    TooSmall,
    negotiate_uas,
    parse_min_se,
    parse_session_expires,
    terms_from_response,
)
from tests.test_sip_ua import CALLER, OFFER, Harness, request

POLICY = Policy(session_expires_s=1800, min_se_s=90)


def test_parse_session_expires() -> None:
    assert parse_session_expires("1800") == SessionExpires(1800)
    assert parse_session_expires(" 90 ; refresher = UAS;x=1") == SessionExpires(90, "uas")
    assert str(SessionExpires(600, "uac")) == "600;refresher=uac"
    assert parse_min_se("120;ext") == 120
    for bad in ("", "0", "-1", "1e3", "12;refresher=both", "９０", "99999999999"):
        with pytest.raises(SessionTimerError):
            parse_session_expires(bad)


@settings(max_examples=500)
@given(st.text(max_size=40))
def test_parsers_raise_only_their_error(text: str) -> None:
    for parse in (parse_session_expires, parse_min_se):
        try:
            parse(text)
        except SessionTimerError as exc:
            assert "\n" not in str(exc) or "\n" in text


def invite(*headers: tuple[str, str]) -> Request:
    return request("INVITE", body=OFFER, headers=headers)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((), None),
        ((("Supported", "timer"),), Terms(1800, False, SessionExpires(1800, "uac"), True)),
        (
            (("Supported", "timer"), ("Session-Expires", "600;refresher=uas")),
            Terms(600, True, SessionExpires(600, "uas"), True),
        ),
        (
            (("Supported", "timer"), ("Session-Expires", "7200")),
            Terms(1800, False, SessionExpires(1800, "uac"), True),
        ),
        (
            (("Session-Expires", "600;refresher=uac"),),  # the caller cannot refresh
            Terms(600, True, SessionExpires(600, "uas"), False),
        ),
        (
            (("Supported", "timer"), ("Session-Expires", "120"), ("Min-SE", "300")),
            Terms(300, False, SessionExpires(300, "uac"), True),
        ),
        ((("Supported", "timer"), ("Session-Expires", "60")), TooSmall(90)),
        ((("Session-Expires", "89"), ("Min-SE", "120")), TooSmall(120)),
    ],
)
def test_negotiate_uas(
    headers: tuple[tuple[str, str], ...], expected: Terms | TooSmall | None
) -> None:
    assert negotiate_uas(invite(*headers), POLICY) == expected


def test_terms_from_a_response() -> None:
    base = invite()

    def response(value: str | None) -> Response:
        headers = (("Session-Expires", value),) if value else ()
        return make_response(base, 200, to_tag="t", headers=headers)

    assert terms_from_response(response(None)) is None
    uac = terms_from_response(response("300;refresher=uac"))
    assert uac is not None and uac.we_refresh and uac.interval_s == 300
    uas = terms_from_response(response("300;refresher=uas"))
    assert uas is not None and not uas.we_refresh
    default = terms_from_response(response("300"))
    assert default is not None and default.we_refresh


def test_policy_bounds() -> None:
    with pytest.raises(ValueError):
        Policy(session_expires_s=1800, min_se_s=60)
    with pytest.raises(ValueError):
        Policy(session_expires_s=100, min_se_s=120)


# -- the user agent as UAS ---------------------------------------------------------------


def answered(h: Harness, *headers: tuple[str, str]) -> Response:
    h.send(invite(*headers))
    ok = h.last(200)
    h.send(request("ACK", branch="z9hG4bKack", to_tag=ok.to_tag))
    return ok


def requests_sent(h: Harness, method: str) -> list[tuple[float, Request]]:
    return [(t, m) for t, m in h.out if isinstance(m, Request) and m.method == method]


def test_interval_below_min_se_gets_422() -> None:
    h = Harness()
    h.send(invite(("Supported", "timer"), ("Session-Expires", "60")))
    assert h.statuses() == [422]
    assert h.last(422).headers.get("Min-SE") == "90"
    assert h.sessions == []


def test_malformed_session_expires_gets_400() -> None:
    h = Harness()
    h.send(invite(("Session-Expires", "soon")))
    assert h.statuses() == [400] and "Session-Expires" in h.last(400).reason


def test_require_timer_is_not_an_unknown_extension() -> None:
    h = Harness()
    h.send(invite(("Require", "timer"), ("Session-Expires", "1800")))
    assert h.statuses() == [100, 180, 200]


def test_200_carries_the_terms_and_a_silent_refresher_is_hung_up() -> None:
    h = Harness()
    ok = answered(h, ("Supported", "timer"), ("Session-Expires", "1800;refresher=uac"))
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac"
    assert ok.headers.get("Require") == "timer"
    assert "timer" in ok.headers.tokens("Supported")
    h.clock.advance(1767)
    assert requests_sent(h, "BYE") == []
    h.clock.advance(1)  # 1800 - min(32, 1800/3)
    ((when, bye),) = requests_sent(h, "BYE")
    assert when == 1768 and 'text="session_expired"' in (bye.headers.get("Reason") or "")
    assert h.sessions[0].log[-1] == ("ended", "session_expired")


def test_a_refresh_from_the_caller_restarts_the_timer() -> None:
    h = Harness()
    ok = answered(h, ("Supported", "timer"), ("Session-Expires", "300;refresher=uac"))
    h.clock.advance(150)
    refresh = request(
        "INVITE",
        branch="z9hG4bKre1",
        cseq=2,
        to_tag=ok.to_tag,
        body=OFFER,
        headers=(("Supported", "timer"), ("Session-Expires", "300;refresher=uac")),
    )
    h.send(refresh)
    again = h.last(200)
    assert again.headers.get("Session-Expires") == "300;refresher=uac"
    h.send(request("ACK", branch="z9hG4bKack2", cseq=2, to_tag=ok.to_tag))
    h.clock.advance(267)  # 417 s: past the first deadline (300 - 32 = 268 s)
    assert requests_sent(h, "BYE") == []
    h.clock.advance(1)  # 268 s after the refresh
    assert len(requests_sent(h, "BYE")) == 1


def test_reinvite_below_min_se_gets_422_and_keeps_the_call() -> None:
    h = Harness()
    ok = answered(h, ("Supported", "timer"))
    h.send(
        request(
            "INVITE",
            branch="z9hG4bKre1",
            cseq=2,
            to_tag=ok.to_tag,
            body=OFFER,
            headers=(("Session-Expires", "30"),),
        )
    )
    assert h.last(422).headers.get("Min-SE") == "90"
    assert h.ua.calls == 1


def test_we_refresh_with_an_offerless_reinvite_and_answer_in_the_ack() -> None:
    h = Harness()
    ok = answered(h, ("Supported", "timer"), ("Session-Expires", "600;refresher=uas"))
    assert ok.headers.get("Session-Expires") == "600;refresher=uas"
    h.clock.advance(299)
    assert requests_sent(h, "INVITE") == []
    h.clock.advance(1)
    ((_, reinvite),) = requests_sent(h, "INVITE")
    assert reinvite.body == b"" and reinvite.cseq().number == 1
    assert reinvite.to_tag == "caller1" and reinvite.uri == "sip:sipp@127.0.0.1:5080"
    assert reinvite.headers.get("Session-Expires") == "600;refresher=uac"
    # The caller's 200 carries its offer; our ACK carries the session's answer.
    response = make_response(
        reinvite,
        200,
        headers=(
            ("Contact", "<sip:sipp@127.0.0.1:5080>"),
            ("Session-Expires", "600;refresher=uac"),
        ),
        body=OFFER,
        content_type="application/sdp",
    )
    h.ua.on_message(response, CALLER)
    ((_, ack),) = requests_sent(h, "ACK")
    assert ack.body != b"" and ack.cseq().number == 1 and ack.branch != reinvite.branch
    assert ("update", OFFER) in h.sessions[0].log
    h.ua.on_message(response, CALLER)  # retransmitted 200: ACKed again
    assert len(requests_sent(h, "ACK")) == 2
    h.clock.advance(299)
    assert len(requests_sent(h, "INVITE")) == 1
    h.clock.advance(1)
    assert len(requests_sent(h, "INVITE")) == 2  # the next refresh, again at half


def test_we_refresh_with_update_when_the_caller_allows_it() -> None:
    h = Harness()
    answered(
        h,
        ("Supported", "timer"),
        ("Session-Expires", "200;refresher=uas"),
        ("Allow", "INVITE, ACK, BYE, CANCEL, UPDATE"),
    )
    h.clock.advance(100)
    assert requests_sent(h, "INVITE") == []
    ((_, update),) = requests_sent(h, "UPDATE")
    assert update.body == b"" and update.headers.get("Session-Expires") == "200;refresher=uac"
    assert update.headers.get("Contact") == "<sip:voxgate@127.0.0.1:5062>"
    ok = make_response(update, 200, headers=(("Session-Expires", "200;refresher=uac"),))
    h.ua.on_message(ok, CALLER)
    h.clock.advance(99)
    assert len(requests_sent(h, "UPDATE")) == 1
    h.clock.advance(1)
    assert len(requests_sent(h, "UPDATE")) == 2


@pytest.mark.parametrize("status", [408, 481])
def test_refresh_answered_408_or_481_ends_the_call(status: int) -> None:
    h = Harness()
    answered(h, ("Supported", "timer"), ("Session-Expires", "200;refresher=uas"))
    h.clock.advance(100)
    ((_, reinvite),) = requests_sent(h, "INVITE")
    h.ua.on_message(make_response(reinvite, status, to_tag="caller1"), CALLER)
    assert len(requests_sent(h, "ACK")) == 1  # the failure is ACKed
    assert len(requests_sent(h, "BYE")) == 1
    assert h.sessions[0].log[-1] == ("ended", "refresh_failed")


def test_refused_refresh_lets_the_session_run_out() -> None:
    h = Harness()
    answered(h, ("Supported", "timer"), ("Session-Expires", "300;refresher=uas"))
    h.clock.advance(150)
    ((_, reinvite),) = requests_sent(h, "INVITE")
    h.ua.on_message(make_response(reinvite, 500, to_tag="caller1"), CALLER)
    assert requests_sent(h, "BYE") == []
    h.clock.advance(50)  # 300/2 - min(32, 100) = 118 s after the failure... not yet
    assert requests_sent(h, "BYE") == []
    h.clock.advance(68)
    assert len(requests_sent(h, "BYE")) == 1


def test_refresh_glare_is_retried() -> None:
    h = Harness()
    answered(h, ("Supported", "timer"), ("Session-Expires", "300;refresher=uas"))
    h.clock.advance(150)
    ((_, reinvite),) = requests_sent(h, "INVITE")
    h.ua.on_message(make_response(reinvite, 491, to_tag="caller1"), CALLER)
    h.clock.advance(2.0)  # we do not own the Call-ID: within 0-2 s
    assert {m.cseq().number for _, m in requests_sent(h, "INVITE")} == {1, 2}


def test_reinvite_from_the_caller_while_ours_is_pending_gets_491() -> None:
    h = Harness()
    ok = answered(h, ("Supported", "timer"), ("Session-Expires", "300;refresher=uas"))
    h.clock.advance(150)
    h.send(request("INVITE", branch="z9hG4bKre9", cseq=2, to_tag=ok.to_tag, body=OFFER))
    assert h.statuses()[-1] == 491


def test_no_timer_without_support_or_request() -> None:
    h = Harness()
    ok = answered(h)
    assert ok.headers.get("Session-Expires") is None
    h.clock.advance(100_000)
    assert requests_sent(h, "BYE") == [] and requests_sent(h, "INVITE") == []


def test_caller_without_timer_support_gets_us_as_refresher() -> None:
    h = Harness()
    ok = answered(h, ("Session-Expires", "400"))
    assert ok.headers.get("Session-Expires") == "400;refresher=uas"
    assert ok.headers.get("Require") is None
    h.clock.advance(200)
    assert len(requests_sent(h, "INVITE")) == 1
