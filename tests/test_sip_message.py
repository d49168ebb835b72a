"""SIP messages (server/sip/message.py): real messages, builders, checks, framing, fuzzing.

Contract under test: :func:`parse_message`, :class:`StreamFramer`, the typed views
and :func:`check_request` raise only :class:`SipParseError` (with a reason fit for a
reason phrase); serialize → parse gives the same structure back.  The example
messages follow what baresip 1.0.0 and sipp 3.6 send; tags, branches and Call-IDs
are made up for the test.
"""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from server.sip.message import (
    MAX_HEADERS,
    Address,
    CSeq,
    Headers,
    Request,
    Response,
    SipParseError,
    SipUri,
    StreamFramer,
    Via,
    check_request,
    is_keepalive,
    make_request,
    make_response,
    parse_message,
    reason_phrase,
    stamp_received,
)
from tests.mutations import mutated_lines


def _msg(*lines: str, body: str = "") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


BARESIP_SDP: Final = (
    "v=0\r\n"
    "o=- 1052834715 1846291370 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 41002 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-15\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)
BARESIP_INVITE: Final = _msg(
    "INVITE sip:echo@127.0.0.1:5062 SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK3e1c9f27a4b86d05;rport",
    "Contact: <sip:tester-0x55f1c3a0@127.0.0.1:5070>",
    "Max-Forwards: 70",
    "To: <sip:echo@127.0.0.1:5062>",
    "From: <sip:tester@127.0.0.1:5070>;tag=8d2f6a91c4e07b35",
    "Call-ID: 6b0e2d9f4a7c1e83",
    "CSeq: 31337 INVITE",
    "User-Agent: baresip v1.0.0 (x86_64/linux)",
    "Allow: INVITE,ACK,BYE,CANCEL,OPTIONS,NOTIFY,SUBSCRIBE,INFO,MESSAGE,UPDATE,REFER",
    "Supported: replaces,norefersub",
    "Content-Type: application/sdp",
    f"Content-Length: {len(BARESIP_SDP)}",
    body=BARESIP_SDP,
)
SIPP_SDP: Final = (
    "v=0\r\n"
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    "s=-\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "t=0 0\r\n"
    "m=audio 6000 RTP/AVP 0 101\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:101 telephone-event/8000\r\n"
    "a=fmtp:101 0-16\r\n"
    "a=ptime:20\r\n"
    "a=sendrecv\r\n"
)
# sipp pads [len] to five characters.
SIPP_INVITE: Final = _msg(
    "INVITE sip:echo@127.0.0.1:5062 SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5080;branch=z9hG4bK-48213-1-0;rport",
    "From: sipp <sip:sipp@127.0.0.1:5080>;tag=48213SIPpTag001",
    "To: echo <sip:echo@127.0.0.1:5062>",
    "Call-ID: 1-48213@127.0.0.1",
    "CSeq: 1 INVITE",
    "Contact: <sip:sipp@127.0.0.1:5080;transport=UDP>",
    "Max-Forwards: 70",
    "Subject: Performance Test",
    "Content-Type: application/sdp",
    f"Content-Length:   {len(SIPP_SDP)}",
    body=SIPP_SDP,
)
SIPP_OPTIONS: Final = _msg(
    "OPTIONS sip:echo@127.0.0.1:5062 SIP/2.0",
    "Via: SIP/2.0/TCP 127.0.0.1:5080;branch=z9hG4bK-48213-5-0",
    "From: sipp <sip:sipp@127.0.0.1:5080>;tag=48213SIPpTag005",
    "To: <sip:echo@127.0.0.1:5062>",
    "Call-ID: 5-48213@127.0.0.1",
    "CSeq: 1 OPTIONS",
    "Contact: <sip:sipp@127.0.0.1:5080;transport=TCP>",
    "Max-Forwards: 70",
    "Accept: application/sdp",
    "Content-Length: 0",
)
# A carrier's BYE that came through a record-routing proxy.
PROXIED_BYE: Final = _msg(
    "BYE sip:echo@192.0.2.10:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK7a1d.3b6e0c2f;received=198.51.100.7",
    "Via: SIP/2.0/UDP 10.0.0.23:5060;rport=5060;received=203.0.113.45;branch=z9hG4bKPj9c4f1e0a",
    "Max-Forwards: 69",
    "Route: <sip:198.51.100.7;lr;ftag=as4f2c1e9b>",
    "Record-Route: <sip:198.51.100.7;lr;ftag=as4f2c1e9b>, <sip:203.0.113.9;lr>",
    'From: "+15551230000" <sip:+15551230000@carrier.example.net>;tag=as4f2c1e9b',
    "To: <sip:+15557654321@192.0.2.10>;tag=vg-3c9d2e",
    "Call-ID: 2b7f4d1c6e0a49f8@10.0.0.23",
    "CSeq: 103 BYE",
    "User-Agent: Asterisk PBX 18",
    'Reason: Q.850;cause=16;text="Normal Clearing"',
    "Content-Length: 0",
)
PROXIED_200: Final = _msg(
    "SIP/2.0 200 OK",
    "Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK7a1d.0,"
    " SIP/2.0/UDP 10.0.0.23:5060;rport=5060;received=203.0.113.45;branch=z9hG4bKPjaa01",
    "Via: SIP/2.0/TCP [2001:db8::5]:5070;branch=z9hG4bKv6",
    "Record-Route: <sip:198.51.100.7;lr>",
    "From: <sip:+15551230000@carrier.example.net>;tag=as4f2c1e9b",
    "To: <sip:+15557654321@192.0.2.10>;tag=vg-3c9d2e",
    "Call-ID: 2b7f4d1c6e0a49f8@10.0.0.23",
    "CSeq: 102 INVITE",
    "Contact: <sip:echo@192.0.2.10:5060>",
    "Content-Type: application/sdp",
    f"Content-Length: {len(BARESIP_SDP)}",
    body=BARESIP_SDP,
)
COMPACT_INVITE: Final = _msg(
    "INVITE sip:+15551234567@[2001:db8::10]:5060;transport=udp SIP/2.0",
    "v: SIP/2.0/UDP [2001:db8::20]:5060;branch=z9hG4bKc0mp4ct;rport",
    'f: "Alice \\"Al\\" Smith" <sip:alice@[2001:db8::20]>;tag=77aa',
    "t: sip:+15551234567@[2001:db8::10]",
    "i: compact-1@2001:db8::20",
    "CSeq: 9 INVITE",
    "m: <sip:alice@[2001:db8::20]:5060>;expires=60",
    "Max-Forwards: 70",
    "k: timer, replaces",
    "s: hello",
    "c: application/sdp",
    "l: 0",
)
FOLDED_OPTIONS: Final = _msg(
    "OPTIONS sip:echo@example.com SIP/2.0",
    "Via: SIP/2.0/TCP client.example.com:5060",
    "  ;branch=z9hG4bKfold1",
    "Max-Forwards: 70",
    "To: <sip:echo@example.com>",
    "From: <sip:bob@example.com>",
    "\t;tag=f0ld",
    "Subject: a long",
    "   subject line",
    "Call-ID: fold-1",
    "CSeq: 2 OPTIONS",
    "Content-Length: 0",
)
REAL_MESSAGES: Final = [
    BARESIP_INVITE,
    SIPP_INVITE,
    SIPP_OPTIONS,
    PROXIED_BYE,
    PROXIED_200,
    COMPACT_INVITE,
    FOLDED_OPTIONS,
]


def _request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message


# --------------------------------------------------------------------------- real messages


def test_baresip_invite() -> None:
    req = _request(BARESIP_INVITE)
    check_request(req)
    assert (req.method, req.uri) == ("INVITE", "sip:echo@127.0.0.1:5062")
    uri = req.request_uri()
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", "echo", "127.0.0.1", 5062)
    via = req.top_via()
    assert (via.transport, via.host, via.port) == ("UDP", "127.0.0.1", 5070)
    assert via.branch == "z9hG4bK3e1c9f27a4b86d05"
    assert via.wants_rport and via.rport is None
    assert req.call_id == "6b0e2d9f4a7c1e83"
    assert req.from_tag == "8d2f6a91c4e07b35"
    assert req.to_tag is None
    assert req.cseq() == CSeq(31337, "INVITE")
    assert req.max_forwards == 70
    assert req.content_type == "application/sdp"
    assert req.content_length == len(BARESIP_SDP)
    assert req.body == BARESIP_SDP.encode()
    assert req.headers.tokens("Allow")[:3] == ["INVITE", "ACK", "BYE"]
    assert req.headers.tokens("supported") == ["replaces", "norefersub"]
    (contact,) = req.contacts()
    assert contact.uri.user == "tester-0x55f1c3a0" and contact.display_name is None
    assert req.serialize() == BARESIP_INVITE


def test_sipp_invite_with_padded_content_length() -> None:
    req = _request(SIPP_INVITE)
    check_request(req)
    assert req.body == SIPP_SDP.encode()
    assert req.from_address().display_name == "sipp"
    assert req.to_address().display_name == "echo"
    assert req.contacts()[0].uri.transport == "udp"
    assert req.headers.get("SUBJECT") == "Performance Test"
    assert req.serialize() == SIPP_INVITE.replace(b"Length:   ", b"Length: ")


def test_options_and_proxied_bye() -> None:
    options = _request(SIPP_OPTIONS)
    check_request(options)
    assert options.top_via().transport == "TCP" and options.body == b""

    bye = _request(PROXIED_BYE)
    check_request(bye)
    assert [v.host for v in bye.vias()] == ["198.51.100.7", "10.0.0.23"]
    assert bye.vias()[1].rport == 5060 and bye.vias()[1].received == "203.0.113.45"
    assert bye.headers.get_all("Record-Route") == [
        "<sip:198.51.100.7;lr;ftag=as4f2c1e9b>",
        "<sip:203.0.113.9;lr>",
    ]
    route = bye.routes()[0].uri
    assert route.user is None and route.params == {"lr": None, "ftag": "as4f2c1e9b"}
    assert bye.from_address().display_name == "+15551230000"
    assert bye.from_address().uri.user == "+15551230000"
    assert bye.to_tag == "vg-3c9d2e"


def test_response_with_multiple_vias_serializes_one_line_each() -> None:
    res = parse_message(PROXIED_200)
    assert isinstance(res, Response)
    assert (res.status, res.reason) == (200, "OK")
    vias = res.vias()
    assert [(v.transport, v.host, v.port) for v in vias] == [
        ("UDP", "198.51.100.7", 5060),
        ("UDP", "10.0.0.23", 5060),
        ("TCP", "[2001:db8::5]", 5070),
    ]
    assert vias[2].address == "2001:db8::5"
    assert res.branch == "z9hG4bK7a1d.0"
    out = res.serialize()
    assert out.startswith(
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK7a1d.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.23:5060;rport=5060;received=203.0.113.45;branch=z9hG4bKPjaa01\r\n"
        b"Via: SIP/2.0/TCP [2001:db8::5]:5070;branch=z9hG4bKv6\r\n"
    )
    assert parse_message(out) == res


def test_compact_forms_and_ipv6() -> None:
    req = _request(COMPACT_INVITE)
    check_request(req)
    assert [name for name, _ in req.headers] == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Supported",
        "Subject",
        "Content-Type",
        "Content-Length",
    ]
    assert req.call_id == "compact-1@2001:db8::20"
    uri = req.request_uri()
    assert (uri.user, uri.host, uri.address, uri.port) == (
        "+15551234567",
        "[2001:db8::10]",
        "2001:db8::10",
        5060,
    )
    assert uri.transport == "udp"
    sender = req.from_address()
    assert sender.display_name == 'Alice "Al" Smith' and sender.tag == "77aa"
    assert req.to_address().uri.host == "[2001:db8::10]"
    assert req.contacts()[0].expires == 60
    assert req.headers.tokens("Supported") == ["timer", "replaces"]
    assert req.headers.get("k") == "timer, replaces"
    out = req.serialize()
    assert b"\r\nCall-ID: compact-1@2001:db8::20\r\n" in out
    assert b'\r\nFrom: "Alice \\"Al\\" Smith" <sip:alice@[2001:db8::20]>;tag=77aa\r\n' in out


def test_folded_lines_are_unfolded() -> None:
    req = _request(FOLDED_OPTIONS)
    check_request(req)
    assert req.headers.get("Via") == "SIP/2.0/TCP client.example.com:5060 ;branch=z9hG4bKfold1"
    assert req.branch == "z9hG4bKfold1"
    assert req.from_tag == "f0ld"
    assert req.headers.get("Subject") == "a long subject line"


def test_lf_line_ends_and_leading_crlf_are_tolerated() -> None:
    lf = b"\r\n\r\n" + SIPP_OPTIONS.replace(b"\r\n", b"\n")
    assert parse_message(lf) == parse_message(SIPP_OPTIONS)


# --------------------------------------------------------------------------- bodies


BARE_OPTIONS: Final = (
    "OPTIONS sip:a@b SIP/2.0",
    "Via: SIP/2.0/UDP h;branch=z9hG4bK1",
    "From: <sip:c@d>;tag=1",
    "To: <sip:a@b>",
    "Call-ID: x",
    "CSeq: 1 OPTIONS",
    "Max-Forwards: 70",
)


def test_udp_body_rules() -> None:
    assert parse_message(_msg(*BARE_OPTIONS, body="hello")).body == b"hello"
    assert parse_message(_msg(*BARE_OPTIONS, "Content-Length: 3", body="hello")).body == b"hel"
    with pytest.raises(SipParseError, match="Content-Length 9 exceeds the 5 body bytes"):
        parse_message(_msg(*BARE_OPTIONS, "Content-Length: 9", body="hello"))
    with pytest.raises(SipParseError, match="more than one Content-Length"):
        parse_message(_msg(*BARE_OPTIONS, "Content-Length: 5", "l: 5", body="hello"))
    with pytest.raises(SipParseError, match="bad Content-Length"):
        parse_message(_msg(*BARE_OPTIONS, "Content-Length: -1"))


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty message"),
        (b"\r\n\r\n", "empty message"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n", "no empty line after the headers"),
        (b"OPTIONS sip:a@b SIP/3.0\r\n\r\n", "unsupported SIP version 'SIP/3.0'"),
        (b"OPTIONS  sip:a@b SIP/2.0\r\n\r\n", "malformed request line"),
        (b"OPTIONS sip:a@b\r\n\r\n", "malformed request line"),
        (b"OPT<IONS sip:a@b SIP/2.0\r\n\r\n", "bad method"),
        (b"SIP/2.0 2000 OK\r\n\r\n", "bad status code '2000'"),
        (b"SIP/2.0 099 Odd\r\n\r\n", "bad status code '099'"),
        (b"SIP/1.0 200 OK\r\n\r\n", "unsupported SIP version"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nVia x\r\n\r\n", "header line without a colon"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nV a: x\r\n\r\n", "bad header name 'V a'"),
        (b"OPTIONS sip:a@b SIP/2.0\r\n : x\r\n\r\n", "continuation line before the first"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nTo: \xff\r\n\r\n", "not UTF-8"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nTo: a\x00b\r\n\r\n", "control character"),
        (b"OPTIONS sip:a@b SIP/2.0\r\nTo: a\rb\r\n\r\n", "bare CR in a header line"),
    ],
)
def test_parse_refusals(data: bytes, reason: str) -> None:
    with pytest.raises(SipParseError, match=reason.replace("(", r"\(")):
        parse_message(data)


def test_size_and_header_count_limits() -> None:
    with pytest.raises(SipParseError, match=r"message too large \(70000 bytes > 65535\)"):
        parse_message(b"x" * 70000)
    with pytest.raises(SipParseError, match="too large"):
        parse_message(BARESIP_INVITE, max_bytes=100)
    many = [f"X-H{i}: {i}" for i in range(MAX_HEADERS + 1)]
    with pytest.raises(SipParseError, match="more than 256 header entries"):
        parse_message(_msg("OPTIONS sip:a@b SIP/2.0", *many))


def _without(lines: tuple[str, ...], prefix: str) -> tuple[str, ...]:
    return tuple(line for line in lines if not line.startswith(prefix))


@pytest.mark.parametrize(
    ("lines", "reason"),
    [
        (_without(BARE_OPTIONS, "Via"), "missing Via header"),
        (
            ("OPTIONS sip:a@b SIP/2.0", "Via: SIP/2.0/UDP h", *BARE_OPTIONS[2:]),
            "top Via has no branch",
        ),
        (("OPTIONS sip:a@b SIP/2.0", "Via: HTTP/1.1/TCP h;branch=z", *BARE_OPTIONS[2:]), "Via"),
        (_without(BARE_OPTIONS, "From"), "missing From header"),
        (_without(BARE_OPTIONS, "To"), "missing To header"),
        (_without(BARE_OPTIONS, "Call-ID"), "missing Call-ID header"),
        (_without(BARE_OPTIONS, "CSeq"), "missing CSeq header"),
        (_without(BARE_OPTIONS, "Max-Forwards"), "missing Max-Forwards header"),
        ((*BARE_OPTIONS, "i: y"), "more than one Call-ID header"),
        ((*_without(BARE_OPTIONS, "From"), "From: <sip:c@d>"), "From header has no tag"),
        ((*_without(BARE_OPTIONS, "From"), "From: <sip:c@d;tag=1"), "unclosed <"),
        ((*_without(BARE_OPTIONS, "CSeq"), "CSeq: 1 INVITE"), "CSeq method 'INVITE'"),
        ((*_without(BARE_OPTIONS, "CSeq"), "CSeq: one OPTIONS"), "malformed CSeq"),
        ((*_without(BARE_OPTIONS, "CSeq"), "CSeq: 4294967296 OPTIONS"), "malformed CSeq|range"),
        ((*_without(BARE_OPTIONS, "Max-"), "Max-Forwards: seventy"), "bad Max-Forwards"),
        ((*_without(BARE_OPTIONS, "Max-"), "Max-Forwards: 256"), "bad Max-Forwards"),
        ((*_without(BARE_OPTIONS, "Call-ID"), "Call-ID: a b"), "malformed Call-ID"),
        (("OPTIONS sip:a@[::1 SIP/2.0", *BARE_OPTIONS[1:]), "unclosed IPv6 bracket"),
        (("OPTIONS sip:a@b:99999 SIP/2.0", *BARE_OPTIONS[1:]), "bad port '99999'"),
        (("OPTIONS a@b SIP/2.0", *BARE_OPTIONS[1:]), "malformed Request-URI"),
        (
            ("INVITE sip:a@b SIP/2.0", *_without(BARE_OPTIONS[1:], "CSeq"), "CSeq: 1 INVITE"),
            "an INVITE needs exactly one Contact",
        ),
        ((*BARE_OPTIONS, "Contact: *"), r"Contact \* is only allowed in REGISTER"),
        ((*BARE_OPTIONS, "Route: <sip:p;lr"), "unclosed <"),
        ((*BARE_OPTIONS, "Record-Route: <http://p>"), "unsupported URI scheme 'http'"),
    ],
)
def test_check_request_refusals(lines: tuple[str, ...], reason: str) -> None:
    req = _request(_msg(*lines))
    with pytest.raises(SipParseError, match=reason):
        check_request(req)


def test_check_request_accepts_other_schemes_and_rejects_length_mismatch() -> None:
    req = _request(_msg("OPTIONS urn:service:sos SIP/2.0", *BARE_OPTIONS[1:]))
    check_request(req)  # a 416 is the caller's decision
    req.headers.set("Content-Length", "4")
    with pytest.raises(SipParseError, match="Content-Length 4 does not match the 0 body bytes"):
        check_request(req)


# --------------------------------------------------------------------------- typed views


def test_sip_uri_parts_and_round_trip() -> None:
    text = (
        "sips:alice:secret@[2001:db8::1]:5061;transport=tls;lr;maddr=239.255.255.1?subject=hi&x=1"
    )
    uri = SipUri.parse(text)
    assert (uri.scheme, uri.user, uri.password, uri.host, uri.port) == (
        "sips",
        "alice",
        "secret",
        "[2001:db8::1]",
        5061,
    )
    assert uri.params == {"transport": "tls", "lr": None, "maddr": "239.255.255.1"}
    assert uri.headers == {"subject": "hi", "x": "1"}
    assert str(uri) == text
    assert str(SipUri("10.0.0.1", "+15551234567", 5060)) == "sip:+15551234567@10.0.0.1:5060"
    assert str(SipUri.parse("SIP:Echo@Example.COM;Transport=TCP")) == (
        "sip:Echo@Example.COM;transport=TCP"
    )
    tel = SipUri.parse("tel:+1-555-123-4567;phone-context=example.com")
    assert (tel.scheme, tel.user, tel.host) == ("tel", "+1-555-123-4567", "")
    assert str(tel) == "tel:+1-555-123-4567;phone-context=example.com"
    user_params = SipUri.parse("sip:alice;day=tuesday@host.example")
    assert user_params.user == "alice;day=tuesday" and user_params.host == "host.example"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("echo@host", "without a scheme"),
        ("http://host", "unsupported URI scheme"),
        ("sip:", "bad host ''"),
        ("sip:@host", "bad user part"),
        ("sip:a b@host", "bad user part"),
        ("sip:host:", "bad port"),
        ("sip:[1:2:3]", "bad IPv6 address"),
        ("sip:[::1]x", "junk after the IPv6"),
        ("sip:host;;=x", "parameter without a name"),
        ("sip:host;lr;LR", "duplicate URI parameter 'lr'"),
        ("sip:host?novalue", "bad URI header"),
        ("tel:", "bad tel URI"),
    ],
)
def test_sip_uri_refusals(text: str, reason: str) -> None:
    with pytest.raises(SipParseError, match=reason):
        SipUri.parse(text)


def test_address_forms() -> None:
    bare = Address.parse("sip:bob@example.com;tag=a1;user=phone")
    assert bare.uri.params == {} and bare.params == {"tag": "a1", "user": "phone"}
    assert str(bare) == "<sip:bob@example.com>;tag=a1;user=phone"
    token_name = Address.parse("Bob  Smith <sip:bob@example.com;user=phone>;tag=a1")
    assert token_name.display_name == "Bob  Smith"
    assert token_name.uri.params == {"user": "phone"} and token_name.tag == "a1"
    quoted = Address.parse('"a\\\\b, \\"c\\"" <sip:x@y>')
    assert quoted.display_name == 'a\\b, "c"'
    assert Address.parse(str(quoted)) == quoted
    instance = Address.parse('<sip:x@y>;+sip.instance="<urn:uuid:1;2>";expires=30')
    assert instance.params["+sip.instance"] == '"<urn:uuid:1;2>"' and instance.expires == 30
    with pytest.raises(SipParseError, match="junk after <URI>"):
        Address.parse("<sip:x@y> tag=1")
    with pytest.raises(SipParseError, match="must be followed by <URI>"):
        Address.parse('"Bob" sip:bob@x')
    with pytest.raises(SipParseError, match="unterminated quoted string"):
        Address.parse('"Bob <sip:bob@x>')
    with pytest.raises(SipParseError, match="bad expires"):
        _ = Address.parse("<sip:x@y>;expires=soon").expires


def test_via_forms() -> None:
    via = Via.parse("SIP / 2.0 / udp  host.example.com : 5060 ; branch=z9hG4bKx ; rport")
    assert (via.transport, via.host, via.port) == ("UDP", "host.example.com", 5060)
    assert via.params == {"branch": "z9hG4bKx", "rport": None}
    assert str(via) == "SIP/2.0/UDP host.example.com:5060;branch=z9hG4bKx;rport"
    assert Via.parse("SIP/2.0/TCP [::1];branch=b;rport=40000").rport == 40000
    with pytest.raises(SipParseError, match="malformed Via"):
        Via.parse("SIP/2.0/UDP")
    with pytest.raises(SipParseError, match="bad port 'x' in Via rport"):
        Via.parse("SIP/2.0/UDP h;rport=x")
    with pytest.raises(SipParseError, match="unsupported protocol in Via"):
        Via.parse("SIP/3.0/UDP h")


def test_cseq() -> None:
    assert CSeq.parse("  42   ACK ") == CSeq(42, "ACK")
    assert str(CSeq(7, "BYE")) == "7 BYE"
    for bad in ("42", "x INVITE", "1 INVITE extra", "2147483648 INVITE"):
        with pytest.raises(SipParseError):
            CSeq.parse(bad)


# --------------------------------------------------------------------------- headers


def test_headers_api() -> None:
    h = Headers([("via", "SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2"), ("X-Custom", "v")])
    assert h.get_all("V") == ["SIP/2.0/UDP a;branch=1", "SIP/2.0/UDP b;branch=2"]
    assert [name for name, _ in h] == ["Via", "Via", "X-Custom"]
    assert h.get("x-custom") == "v" and "X-CUSTOM" in h and "Route" not in h
    h.add("Via", "SIP/2.0/UDP top;branch=0", top=True)
    assert h.get("Via") == "SIP/2.0/UDP top;branch=0" and len(h) == 4
    h.set("via", "SIP/2.0/TCP only;branch=9")
    assert list(h) == [("Via", "SIP/2.0/TCP only;branch=9"), ("X-Custom", "v")]
    h.add("Contact", "*")
    h.add("Contact", '"a, b" <sip:a@b>, <sip:c@d>')
    assert h.get_all("m") == ["*", '"a, b" <sip:a@b>', "<sip:c@d>"]
    assert h.remove("contact") == 3 and h.remove("contact") == 0
    assert h == Headers([("VIA", "SIP/2.0/TCP only;branch=9"), ("x-custom", "v")])
    assert h != Headers([("x-custom", "v"), ("Via", "SIP/2.0/TCP only;branch=9")])
    clone = h.copy()
    clone.add("Subject", "")
    assert clone.get("s") == "" and "Subject" not in h
    with pytest.raises(SipParseError, match="control character"):
        h.add("Subject", "a\r\nInjected: 1")
    with pytest.raises(SipParseError, match="bad header name"):
        h.add("Bad Name", "x")


# --------------------------------------------------------------------------- builders


def test_make_request_is_byte_exact() -> None:
    req = make_request(
        "INVITE",
        SipUri("127.0.0.1", "+15551234567", 5070),
        call_id="c0ffee@voxgate",
        from_addr=Address(SipUri("192.0.2.10", "voxgate"), "Vox Gate", {"tag": "f1"}),
        to_addr="<sip:+15551234567@127.0.0.1:5070>",
        cseq=1,
        via=Via("UDP", "192.0.2.10", 5060, {"branch": "z9hG4bKabc", "rport": None}),
        contact=Address(SipUri("192.0.2.10", "voxgate", 5060)),
        route=["<sip:198.51.100.7;lr>"],
        headers=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")],
        body=b"v=0\r\n",
        content_type="application/sdp",
    )
    assert req.serialize() == (
        b"INVITE sip:+15551234567@127.0.0.1:5070 SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bKabc;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"Route: <sip:198.51.100.7;lr>\r\n"
        b'From: "Vox Gate" <sip:voxgate@192.0.2.10>;tag=f1\r\n'
        b"To: <sip:+15551234567@127.0.0.1:5070>\r\n"
        b"Call-ID: c0ffee@voxgate\r\n"
        b"CSeq: 1 INVITE\r\n"
        b"Contact: <sip:voxgate@192.0.2.10:5060>\r\n"
        b"Allow: INVITE, ACK, BYE, CANCEL, OPTIONS\r\n"
        b"Content-Type: application/sdp\r\n"
        b"Content-Length: 5\r\n"
        b"\r\n"
        b"v=0\r\n"
    )
    check_request(req)


def test_make_response_is_byte_exact() -> None:
    bye = _request(PROXIED_BYE)
    ok = make_response(bye, 200)
    assert ok.serialize() == (
        b"SIP/2.0 200 OK\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK7a1d.3b6e0c2f;received=198.51.100.7\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.23:5060;rport=5060;received=203.0.113.45;"
        b"branch=z9hG4bKPj9c4f1e0a\r\n"
        b'From: "+15551230000" <sip:+15551230000@carrier.example.net>;tag=as4f2c1e9b\r\n'
        b"To: <sip:+15557654321@192.0.2.10>;tag=vg-3c9d2e\r\n"
        b"Call-ID: 2b7f4d1c6e0a49f8@10.0.0.23\r\n"
        b"CSeq: 103 BYE\r\n"
        b"Content-Length: 0\r\n"
        b"\r\n"
    )
    # An existing To tag is kept, never doubled.
    assert make_response(bye, 200, to_tag="other").to_tag == "vg-3c9d2e"


def test_make_response_for_an_invite() -> None:
    invite = _request(SIPP_INVITE)
    invite.headers.add("Timestamp", "54")
    trying = make_response(invite, 100)
    assert trying.to_tag is None and trying.headers.get("Timestamp") == "54"
    ringing = make_response(
        invite,
        180,
        to_tag="vg1",
        headers=[("Contact", "<sip:echo@127.0.0.1:5062>")],
    )
    assert ringing.headers.get("To") == "echo <sip:echo@127.0.0.1:5062>;tag=vg1"
    assert ringing.headers.get("Timestamp") is None
    answer = make_response(
        invite, 200, to_tag="vg1", body=b"v=0\r\n", content_type="application/sdp"
    )
    out = answer.serialize()
    assert out.endswith(b"Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n")
    busy = make_response(invite, 486, "Busy Here Now", to_tag="vg1")
    assert busy.serialize().startswith(b"SIP/2.0 486 Busy Here Now\r\n")
    with pytest.raises(ValueError, match=r"not in 100\.\.699"):
        make_response(invite, 700)


def test_reason_phrases() -> None:
    assert reason_phrase(481) == "Call/Transaction Does Not Exist"
    assert reason_phrase(487) == "Request Terminated"
    assert reason_phrase(491) == "Request Pending"
    assert reason_phrase(299) == "OK" and reason_phrase(499) == "Request Failure"


# --------------------------------------------------------------------------- rport/received


def test_stamp_received_with_rport() -> None:
    req = _request(BARESIP_INVITE)
    stamp_received(req, ("127.0.0.1", 5070))
    assert req.headers.get_all("Via") == [
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK3e1c9f27a4b86d05;rport=5070;received=127.0.0.1"
    ]
    via = req.top_via()
    assert via.rport == 5070 and via.received == "127.0.0.1"


def test_stamp_received_without_rport() -> None:
    bye = _request(PROXIED_BYE)
    before = bye.headers.get_all("Via")
    stamp_received(bye, ("198.51.100.7", 5060))  # same host, no rport: nothing to add
    assert bye.headers.get_all("Via") == before
    stamp_received(bye, ("198.51.100.99", 5999))
    assert bye.top_via().received == "198.51.100.99" and bye.top_via().rport is None
    assert bye.headers.get_all("Via")[1] == before[1]
    # A sent-by host name always differs from the source address.
    options = _request(FOLDED_OPTIONS)
    stamp_received(options, ("203.0.113.5", 40000))
    assert options.top_via().received == "203.0.113.5"


def test_stamp_received_ipv6() -> None:
    req = _request(COMPACT_INVITE)
    stamp_received(req, ("2001:db8::20", 5060))
    assert req.top_via().params == {
        "branch": "z9hG4bKc0mp4ct",
        "rport": "5060",
        "received": "2001:db8::20",
    }
    req2 = _request(COMPACT_INVITE.replace(b";rport", b""))
    stamp_received(req2, ("2001:DB8:0::20", 5060))  # the same address, written differently
    assert req2.top_via().received is None


# --------------------------------------------------------------------------- streams


def test_framer_splits_and_reassembles() -> None:
    stream = SIPP_INVITE + PROXIED_200 + SIPP_OPTIONS
    expected = [parse_message(m) for m in (SIPP_INVITE, PROXIED_200, SIPP_OPTIONS)]
    assert StreamFramer().feed(stream) == expected
    framer = StreamFramer()
    got = []
    for i in range(len(stream)):
        got += framer.feed(stream[i : i + 1])
    assert got == expected and framer.buffered == 0


def _feed(framer: StreamFramer, data: bytes) -> tuple[list[Request | Response], bool]:
    """The messages completed by ``data`` and whether a pong is due."""
    return framer.feed(data), framer.pong_due


def test_framer_keepalives() -> None:
    framer = StreamFramer()
    assert _feed(framer, b"\r\n\r\n") == ([], True)
    assert _feed(framer, b"\r\n") == ([], False)  # a pong: nothing to answer
    assert _feed(framer, b"\r") == ([], False)
    assert _feed(framer, b"\n") == ([], True)  # the ping arrived in pieces
    assert _feed(framer, b"\r\n" + SIPP_OPTIONS[:10]) == ([], False)
    (message,), pong = _feed(framer, SIPP_OPTIONS[10:] + b"\r\n\r\n")
    assert isinstance(message, Request) and message.method == "OPTIONS" and pong


def test_framer_refusals() -> None:
    no_length = SIPP_OPTIONS.replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(SipParseError, match="Content-Length is mandatory"):
        StreamFramer().feed(no_length)
    with pytest.raises(SipParseError, match="header section longer than 100 bytes"):
        StreamFramer(max_bytes=100).feed(b"OPTIONS " + b"x" * 200)
    big = SIPP_OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 70000")
    with pytest.raises(SipParseError, match=r"message too large \(\d+ bytes > 65535\)"):
        StreamFramer().feed(big)
    with pytest.raises(SipParseError, match="bare CR between messages"):
        StreamFramer().feed(b"\rX")


def test_keepalive_datagrams() -> None:
    assert is_keepalive(b"\r\n\r\n") and is_keepalive(b"\r\n") and is_keepalive(b"\x00\x00\x00\x00")
    assert not is_keepalive(SIPP_OPTIONS) and not is_keepalive(b"\r\nX")


# --------------------------------------------------------------------------- fuzzing


def _reason_ok(err: SipParseError) -> None:
    text = str(err)
    assert text and "\r" not in text and "\n" not in text


def _without_length(message: Request | Response) -> Request | Response:
    """``message`` with Content-Length dropped (serialize rewrites it from the body)."""
    headers = message.headers.copy()
    headers.remove("Content-Length")
    if isinstance(message, Request):
        return Request(message.method, message.uri, headers, message.body)
    return Response(message.status, message.reason, headers, message.body)


def _exercise(message: Request | Response) -> None:
    """Every typed view and helper: only SipParseError may escape."""
    for view in (
        message.vias,
        message.top_via,
        lambda: message.branch,
        message.from_address,
        message.to_address,
        lambda: message.from_tag,
        lambda: message.to_tag,
        message.cseq,
        lambda: message.max_forwards,
        lambda: message.content_length,
        message.contacts,
        message.routes,
        message.record_routes,
        lambda: [a.expires for a in message.contacts()],
        lambda: [(v.rport, str(v)) for v in message.vias()],
    ):
        try:
            view()
        except SipParseError as err:
            _reason_ok(err)
    if isinstance(message, Request):
        for action in (
            lambda: check_request(message),
            message.request_uri,
            lambda: make_response(message, 180, to_tag="t").serialize(),
            lambda: stamp_received(message, ("192.0.2.1", 5060)),
        ):
            try:
                action()
            except SipParseError as err:
                _reason_ok(err)


def _check_parse(data: bytes) -> None:
    try:
        message = parse_message(data)
    except SipParseError as err:
        _reason_ok(err)
        return
    again = parse_message(message.serialize(), max_bytes=1 << 20)
    assert _without_length(again) == _without_length(message)
    _exercise(message)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
@example(b"SIP/2.0 200 OK\r\n\r\n")
@example(b"\r\n\r\nA b SIP/2.0\n\n")
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_parse(data)


_TEXT = st.text(
    alphabet=st.sampled_from(list('INVTESIP/2.0 \r\n\t:;,<>"\\@=[]?&%abcz19-*')), max_size=300
)


@settings(max_examples=300, deadline=None)
@given(_TEXT)
def test_fuzz_random_sip_like_text(text: str) -> None:
    _check_parse(b"OPTIONS sip:a@b SIP/2.0\r\n" + text.encode())
    _check_parse(text.encode())


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = draw(st.sampled_from(REAL_MESSAGES))
    lines = draw(
        mutated_lines(
            data.split(b"\r\n"),
            piece=st.binary(min_size=1, max_size=1),
            new_line=st.binary(max_size=30),
            max_rounds=5,
        )
    )
    if lines and draw(st.booleans()):  # cut one line short
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
    out = b"\r\n".join(lines)
    return out[: draw(st.integers(0, len(out)))] if draw(st.booleans()) else out


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzz_mutated_real_messages(data: bytes) -> None:
    _check_parse(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_mutated(), min_size=1, max_size=3), st.data())
def test_fuzz_stream_framer(messages: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    framer = StreamFramer()
    start = 0
    try:
        for cut in [*cuts, len(stream)]:
            for message in framer.feed(stream[start:cut]):
                _exercise(message)
            start = cut
    except SipParseError as err:
        _reason_ok(err)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(REAL_MESSAGES), min_size=1, max_size=4), st.data())
def test_framer_matches_datagram_parse_at_any_cut(
    messages: list[bytes], data: st.DataObject
) -> None:
    stream = b"\r\n\r\n".join(messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    framer = StreamFramer()
    got: list[Request | Response] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        got += framer.feed(stream[start:cut])
        start = cut
    assert got == [parse_message(m) for m in messages]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60), st.text(max_size=120))
def test_fuzz_headers_and_views(name: str, value: str) -> None:
    h = Headers()
    try:
        h.add(name, value)
    except SipParseError as err:
        _reason_ok(err)
    for parse in (SipUri.parse, Address.parse, Via.parse, CSeq.parse):
        try:
            parse(value)
        except SipParseError as err:
            _reason_ok(err)
