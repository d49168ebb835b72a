"""Digest authentication (server/sip/digest.py): RFC vectors, choices, quoting, fuzzing.

Contract under test: the parsers raise only :class:`DigestError`; answers match the
worked examples of RFC 2617 §3.5 and RFC 7616 §3.9.1; a server offering SHA-256
and MD5 gets a SHA-256 answer; :func:`verify` accepts exactly what
:func:`answer_challenge` produces for the right password.
"""

from __future__ import annotations

import contextlib
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.sip.digest import (
    SUPPORTED_ALGORITHMS,
    Challenge,
    Credentials,
    DigestError,
    answer_challenge,
    best_challenge,
    parse_authorization,
    parse_challenge,
    verify,
)

RFC2617_CHALLENGE: Final = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int",'
    ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC7616_NONCE: Final = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE: Final = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE: Final = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _rfc7616_challenge(algorithm: str) -> str:
    return (
        f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm},'
        f' nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"'
    )


# A carrier-style pair of SIP challenges (one per header line, RFC 8760 §2.4).
SIP_CHALLENGES: Final = [
    'Digest realm="sip.example.net", nonce="5f1a9c2e0b7d4a63", algorithm=MD5, qop="auth"',
    'Digest realm="sip.example.net", nonce="5f1a9c2e0b7d4a63", algorithm=SHA-256, qop="auth"',
]


def _fields(header: str) -> dict[str, str]:
    creds = parse_authorization(header)
    return {
        "username": creds.username,
        "response": creds.response,
        "algorithm": creds.algorithm,
        "qop": str(creds.qop),
        "nc": str(creds.nc),
        "cnonce": str(creds.cnonce),
        "opaque": str(creds.opaque),
    }


def test_rfc2617_worked_example() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.realm == "testrealm@host.com" and challenge.algorithm == "MD5"
    assert challenge.qop == ("auth", "auth-int") and not challenge.stale
    header = answer_challenge(
        challenge,
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle Of Life",
        cnonce="0a4f113b",
    )
    assert header == (
        'Digest username="Mufasa", realm="testrealm@host.com",'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html",'
        ' response="6629fae49393a05397450978507c4ef1", algorithm=MD5, qop=auth, nc=00000001,'
        ' cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )


@pytest.mark.parametrize(
    ("algorithm", "response"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_worked_examples(algorithm: str, response: str) -> None:
    header = answer_challenge(
        _rfc7616_challenge(algorithm),
        method="GET",
        uri="/dir/index.html",
        username="Mufasa",
        password="Circle of Life",
        cnonce=RFC7616_CNONCE,
    )
    fields = _fields(header)
    assert fields["response"] == response
    assert fields["algorithm"] == algorithm and fields["qop"] == "auth" and fields["nc"] == "1"
    assert fields["opaque"] == RFC7616_OPAQUE and fields["cnonce"] == RFC7616_CNONCE
    assert verify(
        header,
        method="GET",
        password_for=lambda user, realm: "Circle of Life" if user == "Mufasa" else None,
        nonce_ok=lambda nonce: nonce == RFC7616_NONCE,
        uri="/dir/index.html",
    )


def test_sha256_is_preferred_over_md5_in_either_order() -> None:
    assert best_challenge(SIP_CHALLENGES).algorithm == "SHA-256"
    assert best_challenge(reversed(SIP_CHALLENGES)).algorithm == "SHA-256"
    assert best_challenge(["Basic realm=x", SIP_CHALLENGES[0]]).algorithm == "MD5"
    with pytest.raises(DigestError, match="no usable Digest challenge"):
        best_challenge(['Digest realm="r", nonce="n", algorithm=SHA-1', "Basic realm=x"])


def test_register_answer_for_a_sip_trunk() -> None:
    header = answer_challenge(
        best_challenge(SIP_CHALLENGES),
        method="REGISTER",
        uri="sip:sip.example.net",
        username="1001",
        password="s3cret",
        cnonce="abc",
        nc=2,
    )
    assert header.startswith('Digest username="1001", realm="sip.example.net",')
    assert ", algorithm=SHA-256, qop=auth, nc=00000002, " in header
    assert "opaque" not in header

    def password_for(user: str, realm: str) -> str | None:
        return "s3cret" if (user, realm) == ("1001", "sip.example.net") else None

    def any_nonce(nonce: str) -> bool:
        return True

    assert verify(header, method="REGISTER", password_for=password_for, nonce_ok=any_nonce)
    assert not verify(header, method="INVITE", password_for=password_for, nonce_ok=any_nonce)
    assert not verify(header, method="REGISTER", password_for=lambda u, r: "x", nonce_ok=any_nonce)
    assert not verify(header, method="REGISTER", password_for=lambda u, r: None, nonce_ok=any_nonce)
    assert not verify(
        header, method="REGISTER", password_for=password_for, nonce_ok=lambda n: False
    )
    assert not verify(
        header,
        method="REGISTER",
        password_for=password_for,
        nonce_ok=any_nonce,
        uri="sip:other.example.net",
    )


def _accepted(header: str, method: str, body: bytes = b"") -> bool:
    """``verify`` with user "u", password "p" and any nonce."""
    return verify(
        header,
        method=method,
        body=body,
        password_for=lambda user, realm: "p" if user == "u" else None,
        nonce_ok=lambda nonce: True,
    )


def test_qop_choices_and_rfc2069_form() -> None:
    int_only = 'Digest realm="r", nonce="n", qop="auth-int"'
    header = answer_challenge(
        int_only, method="INVITE", uri="sip:x@y", username="u", password="p", body=b"v=0\r\n"
    )
    assert _fields(header)["qop"] == "auth-int"
    assert _accepted(header, "INVITE", b"v=0\r\n")
    assert not _accepted(header, "INVITE", b"v=1\r\n")

    plain = answer_challenge(
        'Digest realm="r", nonce="n"', method="BYE", uri="sip:x@y", username="u", password="p"
    )
    assert "qop" not in plain and "cnonce" not in plain and "nc=" not in plain
    assert _accepted(plain, "BYE")

    sess = answer_challenge(
        'Digest realm="r", nonce="n", algorithm=md5-sess, qop=auth',
        method="INVITE",
        uri="sip:x@y",
        username="u",
        password="p",
        cnonce="c1",
    )
    assert _fields(sess)["algorithm"] == "MD5-sess"
    assert _accepted(sess, "INVITE")

    with pytest.raises(DigestError, match="no supported qop"):
        answer_challenge(
            'Digest realm="r", nonce="n", qop="auth-conf"',
            method="BYE",
            uri="sip:x@y",
            username="u",
            password="p",
        )
    with pytest.raises(DigestError, match="unsupported digest algorithm 'SHA-1'"):
        answer_challenge(
            'Digest realm="r", nonce="n", algorithm=SHA-1',
            method="BYE",
            uri="sip:x@y",
            username="u",
            password="p",
        )
    with pytest.raises(DigestError, match="nonce count 0 out of range"):
        answer_challenge(
            SIP_CHALLENGES[0], method="BYE", uri="sip:x@y", username="u", password="p", nc=0
        )


def test_quoting_and_challenge_details() -> None:
    challenge = parse_challenge(
        'digest  realm="a \\"quoted\\" realm" ,, nonce=bare/nonce+==,'
        ' stale=TRUE, algorithm=sha-256, domain="sip:a sip:b", x-extra=1'
    )
    assert challenge == Challenge(
        realm='a "quoted" realm',
        nonce="bare/nonce+==",
        algorithm="SHA-256",
        stale=True,
        domain="sip:a sip:b",
    )
    header = answer_challenge(
        challenge, method="INVITE", uri="sip:x@y", username='we"ird\\', password="p"
    )
    assert 'username="we\\"ird\\\\"' in header and 'realm="a \\"quoted\\" realm"' in header
    creds = parse_authorization(header)
    assert creds.username == 'we"ird\\' and creds.realm == 'a "quoted" realm'
    assert creds.qop is None and creds.nc is None
    assert "MD5" in SUPPORTED_ALGORITHMS and "SHA-256" in SUPPORTED_ALGORITHMS


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "not a Digest one"),
        ('Basic realm="x"', "not a Digest one: 'Basic'"),
        ('Digest nonce="n"', "challenge has no realm"),
        ('Digest realm="r"', "challenge has no nonce"),
        ('Digest realm="r", nonce="n', "unterminated quoted string"),
        ('Digest realm="r", realm="s", nonce="n"', "duplicate parameter 'realm'"),
        ('Digest realm="r" nonce="n"', "junk after parameter 'realm'"),
        ('Digest realm, nonce="n"', "parameter 'realm' in challenge has no value"),
        ('Digest realm=, nonce="n"', "has no value"),
        ('Digest =x, realm="r"', "bad parameter name"),
        ('Digest realm="r\r\n", nonce="n"', "control character"),
        ("Digest realm=" + "x" * 9000, "longer than 8192 characters"),
    ],
)
def test_challenge_refusals(value: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        parse_challenge(value)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ('Digest username="u", realm="r", nonce="n", uri="x"', "credentials have no response"),
        ('Digest username="u", realm="r", nonce="n", uri="x", response="zz"', "not hex"),
        (
            'Digest username="u", realm="r", nonce="n", uri="x", response="ab", qop=auth',
            "need nc and cnonce",
        ),
        (
            'Digest username="u", realm="r", nonce="n", uri="x", response="ab", qop=auth,'
            ' cnonce="c", nc=123456789',
            "bad nonce count",
        ),
    ],
)
def test_credentials_refusals(value: str, reason: str) -> None:
    with pytest.raises(DigestError, match=reason):
        parse_authorization(value)
    with pytest.raises(DigestError, match=reason):
        verify(value, method="BYE", password_for=lambda u, r: "p", nonce_ok=lambda n: True)


def test_verify_takes_parsed_credentials() -> None:
    header = answer_challenge(
        SIP_CHALLENGES[1], method="INVITE", uri="sip:a@b", username="u", password="p"
    )
    creds = parse_authorization(header)
    assert isinstance(creds, Credentials)
    assert verify(creds, method="INVITE", password_for=lambda u, r: "p", nonce_ok=lambda n: True)


# --------------------------------------------------------------------------- fuzzing


_PRINTABLE = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF, exclude_characters="\x7f"),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    _PRINTABLE, _PRINTABLE, _PRINTABLE, _PRINTABLE, st.sampled_from(sorted(SUPPORTED_ALGORITHMS))
)
def test_answer_then_verify_round_trip(
    username: str, password: str, realm: str, nonce: str, algorithm: str
) -> None:
    challenge = Challenge(realm=realm, nonce=nonce or "n", algorithm=algorithm, qop=("auth",))
    header = answer_challenge(
        challenge, method="INVITE", uri="sip:x@y", username=username, password=password
    )
    creds = parse_authorization(header)
    assert (creds.username, creds.realm, creds.nonce) == (username, realm, nonce or "n")
    assert verify(
        header,
        method="INVITE",
        password_for=lambda u, r: password,
        nonce_ok=lambda n: True,
    )
    assert not verify(
        header,
        method="INVITE",
        password_for=lambda u, r: password + "x",
        nonce_ok=lambda n: True,
    )


_SAMPLES: Final = [
    RFC2617_CHALLENGE,
    _rfc7616_challenge("SHA-256"),
    *SIP_CHALLENGES,
    answer_challenge(
        SIP_CHALLENGES[1], method="INVITE", uri="sip:a@b", username="u", password="p", cnonce="c"
    ),
]


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(_SAMPLES))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "cut"]))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 5)) :]
        elif op == "insert":
            text = text[:i] + draw(st.text(alphabet='",= \\\tazAZ09\r\n', max_size=5)) + text[i:]
        elif op == "replace" and i < len(text):
            text = text[:i] + draw(st.characters()) + text[i + 1 :]
        elif op == "cut":
            text = text[:i]
    return text


def _only_digest_errors(text: str) -> None:
    for parse in (parse_challenge, parse_authorization):
        try:
            parse(text)
        except DigestError as err:
            assert "\r" not in str(err) and "\n" not in str(err)
    with contextlib.suppress(DigestError):
        verify(text, method="INVITE", password_for=lambda u, r: "p", nonce_ok=lambda n: True)
    with contextlib.suppress(DigestError):
        best_challenge([text])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_random_text(text: str) -> None:
    _only_digest_errors(text)
    _only_digest_errors("Digest " + text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_mutated_headers(text: str) -> None:
    _only_digest_errors(text)
