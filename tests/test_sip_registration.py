"""The REGISTER client on a manual clock: what a registrar sees, and how its answers land."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.config import SipTrunk
from server.sip.digest import parse_authorization, verify
from server.sip.message import Request, Response, make_response, parse_message
from server.sip.registration import (
    Registration,
    split_hostport,
    start_registrations,
    trunk_addresses,
)
from server.sip.transport import Peer
from server.sip.uac import Login, ResponseHandler
from tests.test_sip_transaction import ManualClock

REGISTRAR = Peer("udp", ("127.0.0.1", 5090))
CONTACT = "sip:voxgate@127.0.0.1:5062"
PASSWORD = "s3cret"


class Router:
    """Stands in for the user agent's routing of responses by branch."""

    def __init__(self) -> None:
        self.handlers: dict[str, ResponseHandler] = {}

    def expect(self, branch: str, handler: ResponseHandler) -> None:
        self.handlers[branch] = handler

    def forget(self, branch: str) -> None:
        self.handlers.pop(branch, None)


ALICE = Login("alice", PASSWORD)


class Registrar:
    def __init__(self, login: Login | None = ALICE, expires_s: int = 3600) -> None:
        self.clock = ManualClock()
        self.router = Router()
        self.out: list[tuple[float, Request]] = []

        def send(data: bytes, peer: Peer) -> None:
            assert peer == REGISTRAR
            message = parse_message(data)
            assert isinstance(message, Request)
            self.out.append((self.clock.now, message))

        self.reg = Registration(
            name="carrier",
            aor="sip:alice@carrier.example",
            registrar_uri="sip:carrier.example",
            contact=CONTACT,
            via_sent_by="127.0.0.1:5062",
            destination=REGISTRAR,
            send=send,
            scheduler=self.clock,
            responses=self.router,
            login=login,
            expires_s=expires_s,
        )

    @property
    def last(self) -> Request:
        return self.out[-1][1]

    def times(self) -> list[float]:
        return [t for t, _ in self.out]

    def answer(self, status: int, *headers: tuple[str, str]) -> None:
        request = self.last
        response = make_response(request, status, to_tag="reg1", headers=headers)
        parsed = parse_message(response.serialize())
        assert isinstance(parsed, Response)
        handler = self.router.handlers.get(request.branch or "")
        assert handler is not None, "nobody listens for this branch"
        handler(parsed)


def challenge(nonce: str = "n1", algorithm: str = "MD5", stale: bool = False) -> tuple[str, str]:
    value = f'Digest realm="carrier", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
    return ("WWW-Authenticate", value + (", stale=true" if stale else ""))


def good(request: Request, nonce: str = "n1") -> bool:
    value = request.headers.get("Authorization")
    assert value is not None
    return verify(
        value,
        method="REGISTER",
        uri="sip:carrier.example",
        password_for=lambda user, realm: PASSWORD if user == "alice" else None,
        nonce_ok=lambda n: n == nonce,
    )


def test_register_wire_format() -> None:
    r = Registrar()
    r.reg.start()
    request = r.last
    assert request.method == "REGISTER" and request.uri == "sip:carrier.example"
    assert request.headers.get("To") == "<sip:alice@carrier.example>"
    assert request.from_address().uri.user == "alice" and request.from_tag
    assert request.headers.get("Contact") == f"<{CONTACT}>"
    assert request.headers.get("Expires") == "3600"
    assert request.cseq().number == 1 and request.cseq().method == "REGISTER"
    assert request.headers.get("Authorization") is None
    via = request.top_via()
    assert (via.host, via.port, via.wants_rport) == ("127.0.0.1", 5062, True)
    assert r.reg.state == "registering"


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_challenge_then_registered_then_refreshed_at_60_percent(algorithm: str) -> None:
    r = Registrar()
    r.reg.start()
    first = r.last
    r.answer(401, challenge(algorithm=algorithm))
    second = r.last
    assert second.cseq().number == 2 and second.call_id == first.call_id
    assert second.from_tag == first.from_tag and second.branch != first.branch
    assert good(second)
    assert parse_authorization(second.headers.get("Authorization") or "").algorithm == algorithm
    r.answer(200, ("Contact", f"<{CONTACT}>;expires=600"))
    assert r.reg.state == "registered" and r.reg.granted_s == 600
    assert r.reg.status().last_error is None
    r.clock.advance(359)
    assert len(r.out) == 2
    r.clock.advance(1)  # 60 % of 600 s
    refresh = r.last
    assert len(r.out) == 3 and refresh.cseq().number == 3 and refresh.call_id == first.call_id
    creds = parse_authorization(refresh.headers.get("Authorization") or "")
    assert creds.nonce == "n1" and creds.nc == 2  # the nonce reused: nc counts up
    assert good(refresh)
    r.answer(200, ("Expires", "900"))  # no expires on a Contact: the Expires header
    assert r.reg.granted_s == 900
    r.clock.advance(540)
    assert len(r.out) == 4


def test_contact_expires_of_other_bindings_is_ignored() -> None:
    r = Registrar(login=None)
    r.reg.start()
    r.answer(
        200,
        ("Contact", "<sip:other@10.0.0.1>;expires=30"),
        ("Contact", f"<{CONTACT}>;expires=120"),
    )
    assert r.reg.granted_s == 120


def test_new_nonce_after_a_reused_one_is_answered() -> None:
    r = Registrar()
    r.reg.start()
    r.answer(401, challenge("n1"))
    r.answer(200, ("Expires", "100"))
    r.clock.advance(60)
    r.answer(401, challenge("n2"))  # the registrar dropped n1 without saying stale
    assert good(r.last, "n2")
    r.answer(200, ("Expires", "100"))
    assert r.reg.state == "registered"


def test_stale_nonce_is_retried_silently() -> None:
    r = Registrar()
    r.reg.start()
    r.answer(401, challenge("n1"))
    r.answer(401, challenge("n2", stale=True))
    assert good(r.last, "n2") and r.last.cseq().number == 3
    r.answer(200)
    assert r.reg.state == "registered" and r.reg.granted_s == 3600


def test_wrong_password_fails_and_backs_off() -> None:
    r = Registrar()
    r.reg.start()
    r.answer(401, challenge("n1"))
    r.answer(401, challenge("n3"))
    assert r.reg.state == "failed" and "credentials refused" in (r.reg.last_error or "")
    assert len(r.out) == 2
    r.clock.advance(30)
    assert len(r.out) == 3 and r.last.headers.get("Authorization") is None
    r.answer(403)
    assert r.reg.last_error == "403 Forbidden" and r.reg.failures == 2
    r.clock.advance(59)
    assert len(r.out) == 3
    r.clock.advance(1)  # 30 s, then 60 s
    assert len(r.out) == 4


def test_retry_after_is_honoured() -> None:
    r = Registrar(login=None)
    r.reg.start()
    r.answer(503, ("Retry-After", "300"))
    r.clock.advance(299)
    assert len(r.out) == 1
    r.clock.advance(1)
    assert len(r.out) == 2


def test_423_retries_with_min_expires() -> None:
    r = Registrar(login=None, expires_s=60)
    r.reg.start()
    r.answer(423, ("Min-Expires", "1800"))
    assert r.last.headers.get("Expires") == "1800" and r.last.cseq().number == 2
    r.answer(200)
    assert r.reg.granted_s == 1800 and r.reg.expires_s == 1800
    r.clock.advance(1080)
    assert r.last.headers.get("Expires") == "1800"


def test_423_without_min_expires_fails() -> None:
    r = Registrar(login=None)
    r.reg.start()
    r.answer(423)
    assert r.reg.state == "failed" and "Min-Expires" in (r.reg.last_error or "")


def test_timeout_fails_and_retries() -> None:
    r = Registrar(login=None)
    r.reg.start()
    r.clock.advance(32)
    assert r.times() == [0, 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert r.reg.state == "failed" and "timeout" in (r.reg.last_error or "")
    r.clock.advance(30)
    assert r.last.cseq().number == 2


def test_stop_unregisters_with_expires_zero() -> None:
    r = Registrar()
    r.reg.start()
    r.answer(401, challenge())
    r.answer(200)
    r.reg.stop()
    bye = r.last
    assert bye.headers.get("Expires") == "0" and bye.cseq().number == 3
    assert good(bye) and r.reg.state == "unregistering"
    r.answer(200)
    assert r.reg.state == "unregistered"
    r.clock.advance(10_000)
    assert len(r.out) == 3  # no refresh after stop


def test_stop_before_anything_sends_nothing() -> None:
    r = Registrar()
    r.reg.stop()
    assert r.out == [] and r.reg.state == "unregistered"


def test_stop_while_the_unregister_is_challenged() -> None:
    r = Registrar()
    r.reg.start()
    r.answer(200)
    r.reg.stop()
    r.answer(401, challenge())
    assert r.last.headers.get("Expires") == "0" and good(r.last)
    r.answer(200)
    assert r.reg.state == "unregistered"


@settings(max_examples=200, deadline=None)
@given(status=st.integers(100, 699), text=st.text(max_size=80))
def test_any_answer_leaves_a_known_state(status: int, text: str) -> None:
    r = Registrar()
    r.reg.start()
    value = text.replace("\r", " ").replace("\n", " ")
    headers = (
        ("WWW-Authenticate", value),
        ("Min-Expires", value[:12]),
        ("Expires", value[:12]),
        ("Retry-After", value[:12]),
        ("Contact", f"<{CONTACT}>;expires={value[:5] or '1'}"),
    )
    try:
        r.answer(status, *headers)
    except ValueError:
        return  # a header value no message could carry
    r.clock.advance(5000)
    assert r.reg.state in ("registering", "registered", "failed")


def test_trunk_addressing() -> None:
    trunk = SipTrunk(name="t", registrar="10.0.0.5:5070", username="u", password="p")
    assert trunk_addresses(trunk) == ("10.0.0.5:5070", "sip:10.0.0.5:5070", ("10.0.0.5", 5070))
    named = SipTrunk(name="t", registrar="[::1]", username="u", password="p", domain="sip.example")
    assert trunk_addresses(named) == ("sip.example", "sip:sip.example", ("::1", 5060))
    for bad in ("", ":5060", "host:0", "host:x"):
        with pytest.raises(ValueError):
            split_hostport(bad)


async def test_start_registrations_skips_unregistered_and_unresolvable_trunks() -> None:
    router = Router()
    sent: list[tuple[bytes, Peer]] = []
    trunks = [
        SipTrunk(name="a", registrar="127.0.0.1:5090", username="u", password="p"),
        SipTrunk(name="b", registrar="127.0.0.1", username="u", password="p", register=False),
        SipTrunk(name="c", registrar="no-such-host.invalid", username="u", password="p"),
    ]
    regs = await start_registrations(
        trunks,
        router,
        lambda data, peer: sent.append((data, peer)),
        contact=CONTACT,
        via_sent_by="127.0.0.1:5062",
    )
    assert [r.name for r in regs] == ["a"]
    assert [peer for _, peer in sent] == [REGISTRAR]
    for reg in regs:
        reg.stop()
