"""SDP offer/answer for SIP (server/sip/offeranswer.py): real peers' offers and answers.

The baresip 1.0.0 and sipp 3.6.1 descriptions below were captured on 127.0.0.1
(Debian bookworm packages ``baresip-core`` and ``sip-tester``): baresip dialling a
capture UAS with ``audio_codecs=`` pcmu, ``G722/16000/1``, ``opus/48000/2`` or
unset, then ``hold``/``resume``; sipp's built-in ``uac`` and ``uac_pcap``
scenarios; and baresip answering our own :func:`make_offer` output.

Contract under test: :func:`answer_offer` returns an :class:`Answer` or raises
:class:`OfferAnswerError` with a reason and a warning code; nothing else escapes.
"""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.sdp import Direction, SdpError, SessionDescription, format_sdp, parse_sdp
from server.sip.offeranswer import (
    G722,
    OPUS,
    Answer,
    Negotiation,
    OfferAnswerError,
    accept_answer,
    answer_offer,
    is_same_session,
    make_offer,
)
from tests.mutations import mutated_lines


def _crlf(*lines: str) -> str:
    return "\r\n".join(lines) + "\r\n"


def _baresip(origin: str, port: int, formats: str, rtpmaps: list[str], direction: str) -> str:
    return _crlf(
        "v=0",
        f"o=- {origin} IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "a=tool:baresip 1.0.0",
        f"m=audio {port} RTP/AVP {formats}",
        *rtpmaps,
        f"a={direction}",
        "a=label:1",
        "a=rtcp-rsize",
        "a=ssrc:3486179587 cname:sip:tester@127.0.0.1:15070",
        "a=minptime:20",
        "a=ptime:20",
    )


_TE8: Final = ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
_OPUS96: Final = ["a=rtpmap:96 opus/48000/2", "a=fmtp:96 stereo=1;sprop-stereo=1"]

BARESIP_PCMU: Final = _baresip(
    "225444220 1574673159", 41052, "0 101", ["a=rtpmap:0 PCMU/8000", *_TE8], "sendrecv"
)
BARESIP_PCMU_HOLD: Final = BARESIP_PCMU.replace("1574673159", "1574673160").replace(
    "a=sendrecv", "a=sendonly"
)
BARESIP_PCMU_RESUME: Final = BARESIP_PCMU.replace("1574673159", "1574673161")
BARESIP_G722: Final = _baresip(
    "3084840201 406915860", 41060, "9 101", ["a=rtpmap:9 G722/8000", *_TE8], "sendrecv"
)
BARESIP_OPUS: Final = _baresip(
    "1481435725 818429713", 41076, "96 101", [*_OPUS96, *_TE8], "sendrecv"
)
BARESIP_ALL: Final = _baresip(
    "1028175364 1927848708",
    41052,
    "0 8 9 96 101",
    ["a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:9 G722/8000", *_OPUS96, *_TE8],
    "sendrecv",
)

SIPP_UAC: Final = _crlf(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
)
SIPP_UAC_PCAP: Final = _crlf(
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 16000 RTP/AVP 8 101",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-11,16",
)
SIPP_NAT: Final = SIPP_UAC_PCAP.replace("c=IN IP4 127.0.0.1", "c=IN IP4 192.0.2.1").replace(
    "m=audio 16000", "m=audio 6002"
)
SIPP_G729: Final = _crlf(
    "v=0",
    "o=user1 1 1 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 18",
    "a=rtpmap:18 G729/8000",
)

# A carrier offer in the style of Telnyx's: five codecs, telephone-event at 8 and 48 kHz.
TELNYX_STYLE: Final = _crlf(
    "v=0",
    "o=- 1719402345 1719402345 IN IP4 198.51.100.20",
    "s=-",
    "c=IN IP4 198.51.100.20",
    "t=0 0",
    "m=audio 22466 RTP/AVP 0 8 9 18 111 101 103",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:18 G729/8000",
    "a=fmtp:18 annexb=no",
    "a=rtpmap:111 opus/48000/2",
    "a=fmtp:111 useinbandfec=1;minptime=10",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=rtpmap:103 telephone-event/48000",
    "a=fmtp:103 0-16",
    "a=ptime:20",
    "a=maxptime:40",
    "a=sendrecv",
    "a=rtcp:22467 IN IP4 198.51.100.20",
)

# baresip 1.0.0 (answermode=auto) answering make_offer(...) with default and G.711 codecs.
BARESIP_ANSWER_TO_OURS: Final = _crlf(
    "v=0",
    "o=- 1955613452 841414431 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "a=tool:baresip 1.0.0",
    "m=audio 41004 RTP/AVP 96 9 0 8 101",
    *_OPUS96,
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    *_TE8,
    "a=sendrecv",
    "a=label:1",
    "a=ssrc:3191493071 cname:sip:tester@127.0.0.1:15070",
    "a=minptime:20",
    "a=ptime:20",
)
BARESIP_ANSWER_G711: Final = _crlf(
    "v=0",
    "o=- 2130910391 815080231 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "a=tool:baresip 1.0.0",
    "m=audio 41002 RTP/AVP 8 0 101",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:0 PCMU/8000",
    *_TE8,
    "a=sendrecv",
    "a=label:1",
    "a=ssrc:2432311264 cname:sip:tester@127.0.0.1:15070",
    "a=minptime:20",
    "a=ptime:20",
)

REAL_OFFERS: Final = [
    BARESIP_PCMU,
    BARESIP_PCMU_HOLD,
    BARESIP_G722,
    BARESIP_OPUS,
    BARESIP_ALL,
    SIPP_UAC,
    SIPP_UAC_PCAP,
    SIPP_NAT,
    TELNYX_STYLE,
]


def _answer(offer: str, **kwargs: object) -> Answer:
    return answer_offer(
        parse_sdp(offer),
        local_ip="127.0.0.1",
        rtp_port=40000,
        session_id=4242,
        session_version=4242,
        **kwargs,  # type: ignore[arg-type]
    )


def _refusal(offer: str, **kwargs: object) -> OfferAnswerError:
    with pytest.raises(OfferAnswerError) as info:
        _answer(offer, **kwargs)
    return info.value


# -- answers to real offers ----------------------------------------------------------------


def test_baresip_pcmu_offer_gets_a_byte_exact_answer() -> None:
    answer = _answer(BARESIP_PCMU)
    assert answer.serialize() == (
        b"v=0\r\n"
        b"o=- 4242 4242 IN IP4 127.0.0.1\r\n"
        b"s=voxgate\r\n"
        b"c=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 0 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    media = answer.media
    assert (media.codec.name, media.codec.payload_type, media.codec.clock_rate_hz) == (
        "PCMU",
        0,
        8000,
    )
    assert (media.codec.audio_rate_hz, media.codec.channels, media.codec.fmtp) == (8000, 1, "")
    assert media.telephone_event is not None
    assert (media.telephone_event.payload_type, media.telephone_event.clock_rate_hz) == (101, 8000)
    assert (media.remote_address, media.remote_port) == ("127.0.0.1", 41052)
    assert (media.remote_rtcp_address, media.remote_rtcp_port, media.rtcp_mux) == (
        "127.0.0.1",
        41053,
        False,
    )
    assert (media.direction, media.remote_direction, media.on_hold) == (
        "sendrecv",
        "sendrecv",
        False,
    )
    assert (media.ptime_ms, media.samples_per_packet, media.media_index) == (20, 160, 0)
    assert media.sending and media.receiving


def test_baresip_g722_keeps_its_8000_clock() -> None:
    answer = _answer(BARESIP_G722)
    codec = answer.media.codec
    assert (codec.name, codec.payload_type, codec.clock_rate_hz, codec.audio_rate_hz) == (
        "G722",
        9,
        8000,
        16000,
    )
    assert answer.media.samples_per_packet == 160  # 20 ms on the 8 kHz clock, not 320
    assert b"a=rtpmap:9 G722/8000\r\n" in answer.serialize()
    assert (G722.clock_rate_hz, G722.audio_rate_hz) == (8000, 16000)


def test_baresip_opus_takes_the_mismatched_telephone_event() -> None:
    answer = _answer(BARESIP_OPUS)
    media = answer.media
    assert (media.codec.name, media.codec.payload_type, media.codec.channels) == ("opus", 96, 2)
    assert media.codec.fmtp == "stereo=1;sprop-stereo=1"
    assert media.samples_per_packet == 960
    # baresip offers telephone-event only at 8 kHz next to Opus: accepted as is.
    assert media.telephone_event is not None
    assert (media.telephone_event.payload_type, media.telephone_event.clock_rate_hz) == (101, 8000)
    assert answer.description.media[0].formats == ["96", "101"]
    assert b"a=rtpmap:96 opus/48000/2\r\na=fmtp:96 useinbandfec=1\r\n" in answer.serialize()


def test_offerer_order_or_ours() -> None:
    assert _answer(BARESIP_ALL).media.codec.name == "PCMU"  # baresip lists PCMU first
    ours = _answer(BARESIP_ALL, offerer_order=False).media
    assert (ours.codec.name, ours.codec.payload_type) == ("opus", 96)
    only_g711 = _answer(BARESIP_ALL, preferences=("PCMA", "pcmu"), offerer_order=False).media
    assert only_g711.codec.name == "PCMA"
    assert _answer(BARESIP_ALL, preferences=("g722",)).media.codec.name == "G722"


def test_sipp_offers() -> None:
    plain = _answer(SIPP_UAC)
    assert plain.media.codec.name == "PCMU"
    assert plain.media.telephone_event is None
    assert plain.description.media[0].formats == ["0"]
    assert b"telephone-event" not in plain.serialize()
    pcap = _answer(SIPP_UAC_PCAP).media
    assert (pcap.codec.name, pcap.codec.payload_type) == ("PCMA", 8)
    assert pcap.telephone_event is not None and pcap.telephone_event.payload_type == 101
    assert (pcap.remote_address, pcap.remote_port) == ("127.0.0.1", 16000)


def test_sipp_nat_offer_reports_the_advertised_address() -> None:
    media = _answer(SIPP_NAT).media
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        "192.0.2.1",
        6002,
        6003,
    )


def test_telnyx_style_offer() -> None:
    answer = _answer(TELNYX_STYLE)
    media = answer.media
    assert (media.codec.name, media.codec.payload_type) == ("PCMU", 0)
    assert media.telephone_event is not None
    assert (media.telephone_event.payload_type, media.telephone_event.clock_rate_hz) == (101, 8000)
    assert (media.remote_rtcp_address, media.remote_rtcp_port) == ("198.51.100.20", 22467)
    assert answer.description.media[0].formats == ["0", "101"]

    opus = _answer(TELNYX_STYLE, offerer_order=False)
    assert (opus.media.codec.name, opus.media.codec.payload_type) == ("opus", 111)
    assert opus.media.codec.fmtp == "useinbandfec=1;minptime=10"
    assert opus.media.telephone_event is not None
    assert (opus.media.telephone_event.payload_type, opus.media.telephone_event.clock_rate_hz) == (
        103,
        48000,
    )
    assert opus.description.media[0].formats == ["111", "103"]
    assert b"a=rtpmap:103 telephone-event/48000\r\na=fmtp:103 0-16\r\n" in opus.serialize()


def test_payload_type_numbers_are_kept() -> None:
    as_96 = _answer(BARESIP_OPUS).media.codec.payload_type
    as_111 = _answer(TELNYX_STYLE, preferences=("opus",)).media.codec.payload_type
    assert (as_96, as_111) == (96, 111)
    renumbered = BARESIP_PCMU.replace("101", "126")
    media = _answer(renumbered).media
    assert media.telephone_event is not None and media.telephone_event.payload_type == 126


def test_static_payload_types_without_rtpmap() -> None:
    offer = SIPP_UAC.replace(
        "m=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000", "m=audio 6000 RTP/AVP 18 8 0"
    )
    answer = _answer(offer)
    assert (answer.media.codec.name, answer.media.codec.payload_type) == ("PCMA", 8)
    assert answer.description.media[0].rtpmaps[8].encoding == "PCMA"
    assert b"m=audio 40000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n" in answer.serialize()


def test_comfort_noise_is_recognised_but_never_answered() -> None:
    offer = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 13 0").replace(
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:13 CN/8000\r\na=rtpmap:0 PCMU/8000"
    )
    answer = _answer(offer)
    assert answer.description.media[0].formats == ["0"]
    only_cn = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 13").replace("a=rtpmap:0 PCMU/8000", "")
    assert _refusal(only_cn).warning_code == 305


def test_rtcp_mux_only_when_we_take_it() -> None:
    offer = BARESIP_PCMU.replace("a=rtcp-rsize", "a=rtcp-mux")
    refused = _answer(offer)
    assert (refused.media.rtcp_mux, refused.media.remote_rtcp_port) == (False, 41053)
    assert b"rtcp-mux" not in refused.serialize()
    taken = _answer(offer, rtcp_mux=True)
    assert (taken.media.rtcp_mux, taken.media.remote_rtcp_port) == (True, 41052)
    assert b"a=rtcp-mux\r\n" in taken.serialize()


@pytest.mark.parametrize(
    ("lines", "ptime_ms"),
    [
        ("a=ptime:20", 20),
        ("a=ptime:30", 30),
        ("a=ptime:60", 60),
        ("a=ptime:10", 10),
        ("a=ptime:25", 20),
        ("a=ptime:5", 20),
        ("a=ptime:120", 20),
        ("a=ptime:40\r\na=maxptime:20", 20),
        ("a=maxptime:10", 10),
        ("a=maxptime:40", 20),
        ("a=ptime:abc", 20),
    ],
)
def test_ptime(lines: str, ptime_ms: int) -> None:
    answer = _answer(SIPP_UAC + lines + "\r\n")
    assert answer.media.ptime_ms == ptime_ms
    assert answer.media.samples_per_packet == 8 * ptime_ms
    assert f"a=ptime:{ptime_ms}\r\n".encode() in answer.serialize()


# -- hold and direction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "ours", "on_hold"),
    [
        ("sendrecv", "sendrecv", False),
        ("sendonly", "recvonly", True),
        ("recvonly", "sendonly", False),
        ("inactive", "inactive", True),
    ],
)
def test_direction_is_mirrored(offered: str, ours: str, on_hold: bool) -> None:
    answer = _answer(BARESIP_PCMU.replace("a=sendrecv", f"a={offered}"))
    assert (answer.media.remote_direction, answer.media.direction) == (offered, ours)
    assert answer.media.on_hold is on_hold
    assert answer.description.media[0].attributes[-1] == (ours, "")
    assert answer.media.sending is (ours in ("sendrecv", "sendonly"))
    assert answer.media.receiving is (ours in ("sendrecv", "recvonly"))


def test_session_level_direction_applies() -> None:
    offer = SIPP_UAC.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n")
    assert _answer(offer).media.direction == "recvonly"


@pytest.mark.parametrize(
    ("offered", "ours"),
    [("sendrecv", "recvonly"), ("recvonly", "inactive"), ("inactive", "inactive")],
)
def test_null_address_is_the_old_hold(offered: str, ours: str) -> None:
    offer = BARESIP_PCMU.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")
    answer = _answer(offer.replace("a=sendrecv", f"a={offered}"))
    assert answer.media.on_hold
    assert answer.media.direction == ours
    assert not answer.media.sending


@pytest.mark.parametrize(
    ("offered", "wanted", "ours"),
    [
        ("sendrecv", "sendonly", "sendonly"),
        ("sendrecv", "inactive", "inactive"),
        ("sendonly", "sendonly", "inactive"),
        ("recvonly", "recvonly", "inactive"),
        ("sendonly", "recvonly", "recvonly"),
    ],
)
def test_local_direction_limits_ours(offered: str, wanted: Direction, ours: str) -> None:
    offer = BARESIP_PCMU.replace("a=sendrecv", f"a={offered}")
    assert _answer(offer, local_direction=wanted).media.direction == ours


def test_baresip_hold_and_resume_reoffers() -> None:
    held = _answer(BARESIP_PCMU_HOLD)
    assert (held.media.direction, held.media.on_hold, held.media.sending) == (
        "recvonly",
        True,
        False,
    )
    resumed = _answer(BARESIP_PCMU_RESUME)
    assert (resumed.media.direction, resumed.media.on_hold) == ("sendrecv", False)


# -- streams and refusals ------------------------------------------------------------------


def test_video_is_refused_with_port_zero_and_order_kept() -> None:
    offer = SIPP_UAC.replace(
        "m=audio",
        "m=video 6010 RTP/AVP 96 97\r\na=rtpmap:96 H264/90000\r\na=rtpmap:97 VP8/90000\r\nm=audio",
    ) + _crlf("m=video 6020 RTP/AVP 31", "m=audio 6030 RTP/AVP 8", "m=audio 0 RTP/AVP 0")
    answer = _answer(offer)
    assert answer.media.media_index == 1
    assert answer.media.remote_port == 6000
    assert [(m.kind, m.port, m.proto, m.formats) for m in answer.description.media] == [
        ("video", 0, "RTP/AVP", ["96"]),
        ("audio", 40000, "RTP/AVP", ["0"]),
        ("video", 0, "RTP/AVP", ["31"]),
        ("audio", 0, "RTP/AVP", ["8"]),
        ("audio", 0, "RTP/AVP", ["0"]),
    ]
    assert b"m=video 0 RTP/AVP 96\r\nm=audio 40000 RTP/AVP 0\r\n" in answer.serialize()
    assert answer.description.media[0].attributes == []


def test_first_usable_audio_stream_wins() -> None:
    offer = SIPP_G729.replace(
        "a=rtpmap:18 G729/8000", "a=rtpmap:18 G729/8000\r\nm=audio 6002 RTP/AVP 8"
    )
    answer = _answer(offer)
    assert answer.media.media_index == 1
    assert [m.port for m in answer.description.media] == [0, 40000]


def test_srtp_only_offer_is_refused() -> None:
    error = _refusal(
        SIPP_UAC.replace("RTP/AVP", "RTP/SAVP") + "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"
    )
    assert error.warning_code == 302
    assert "RTP/SAVP is not supported" in str(error)
    assert error.warning_text == "Incompatible transport protocol"
    webrtc = (
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
        "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:111 opus/48000/2\r\n"
    )
    assert _refusal(webrtc).warning_code == 302
    assert _refusal(SIPP_UAC.replace("RTP/AVP", "RTP/SAVPF")).warning_code == 302


def test_avpf_is_usable() -> None:
    answer = _answer(SIPP_UAC.replace("RTP/AVP", "RTP/AVPF"))
    assert answer.description.media[0].proto == "RTP/AVPF"


def test_g729_only_offer_is_refused_with_305() -> None:
    error = _refusal(SIPP_G729)
    assert error.warning_code == 305
    assert str(error) == (
        "no audio codec in common: the offer has G729/8000; we take opus, G722, PCMU, PCMA"
    )
    assert error.warning("voxgate") == '305 voxgate "Incompatible media format"'
    assert isinstance(error, ValueError)


def test_refusal_reasons_describe_the_offer() -> None:
    offer = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 97 3 abc 1 2 4 5 6 7 10").replace(
        "a=rtpmap:0 PCMU/8000", "a=rtpmap:97 iLBC/8000"
    )
    assert str(_refusal(offer)) == (
        "no audio codec in common: the offer has iLBC/8000, GSM/8000, 'abc', PT 1, PT 2,"
        " G723/8000, DVI4/8000, DVI4/16000 and 2 more; we take opus, G722, PCMU, PCMA"
    )
    # G.722 written at its sample rate (a known peer mistake) is not G.722's 8 kHz clock.
    wrong = SIPP_UAC.replace("RTP/AVP 0", "RTP/AVP 9").replace("0 PCMU/8000", "9 G722/16000")
    assert _refusal(wrong).warning_code == 305


@pytest.mark.parametrize(
    ("offer", "code", "reason"),
    [
        (SIPP_UAC.replace("m=audio 6000", "m=audio 0"), 304, "no audio stream"),
        (SIPP_UAC.replace("m=audio", "m=video"), 304, "no audio stream"),
        ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n", 304, "no audio stream"),
        (SIPP_UAC.replace("IN IP4 127.0.0.1", "IN IP6 2001:db8::1"), 301, "IPv6, we are on IPv4"),
        (SIPP_UAC.replace("c=IN IP4 127.0.0.1\r\n", ""), 399, "no connection address"),
    ],
)
def test_unusable_offers(offer: str, code: int, reason: str) -> None:
    error = _refusal(offer)
    assert error.warning_code == code
    assert reason in str(error)


def test_ipv6_both_sides_and_host_names() -> None:
    offer = SIPP_UAC.replace("IN IP4 127.0.0.1", "IN IP6 ::1")
    answer = answer_offer(
        parse_sdp(offer), local_ip="::1", rtp_port=40000, session_id=1, session_version=1
    )
    assert answer.serialize().startswith(
        b"v=0\r\no=- 1 1 IN IP6 ::1\r\ns=voxgate\r\nc=IN IP6 ::1\r\n"
    )
    assert answer.media.remote_address == "::1"
    named = _answer(SIPP_UAC.replace("c=IN IP4 127.0.0.1", "c=IN IP4 media.example.net"))
    assert named.media.remote_address == "media.example.net"


def test_the_first_failing_stream_gives_the_reason() -> None:
    offer = SIPP_G729 + _crlf("m=audio 7000 RTP/SAVP 0")
    assert _refusal(offer).warning_code == 305


def test_unknown_warning_codes_become_399() -> None:
    assert OfferAnswerError("x", 123).warning_code == 399


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"local_ip": "voxgate.example"}, "local_ip must be an IP address"),
        ({"rtp_port": 0}, "rtp_port must be in 1..65535"),
        ({"rtp_port": 65536}, "rtp_port"),
        ({"session_id": -1}, ">= 0"),
        ({"preferences": ("G729",)}, "unknown codec 'G729'"),
        ({"preferences": ()}, "no codecs given"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, object], match: str) -> None:
    arguments: dict[str, object] = {
        "local_ip": "127.0.0.1",
        "rtp_port": 40000,
        "session_id": 1,
        "session_version": 1,
    }
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        answer_offer(parse_sdp(SIPP_UAC), **arguments)  # type: ignore[arg-type]
    assert not isinstance(info.value, OfferAnswerError)


# -- our offers and the answers to them ----------------------------------------------------


def test_make_offer_is_byte_exact() -> None:
    offer = make_offer(local_ip="127.0.0.1", rtp_port=40000, session_id=5, session_version=5)
    assert offer.serialize() == (
        b"v=0\r\n"
        b"o=- 5 5 IN IP4 127.0.0.1\r\n"
        b"s=voxgate\r\n"
        b"c=IN IP4 127.0.0.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 40000 RTP/AVP 96 9 0 8 102 101\r\n"
        b"a=rtpmap:96 opus/48000/2\r\n"
        b"a=fmtp:96 useinbandfec=1\r\n"
        b"a=rtpmap:9 G722/8000\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:102 telephone-event/48000\r\n"
        b"a=fmtp:102 0-16\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    assert parse_sdp(offer.serialize()) == offer


def test_make_offer_options() -> None:
    g711 = make_offer(
        local_ip="127.0.0.1",
        rtp_port=40002,
        session_id=5,
        session_version=6,
        codecs=("PCMA", "pcmu", "PCMA"),
        ptime_ms=30,
        direction="sendonly",
    )
    media = g711.media[0]
    assert media.formats == ["8", "0", "101"]
    assert (media.ptime_ms, media.direction) == (30, "sendonly")
    assert g711.origin_fields().session_version == 6
    bare = make_offer(
        local_ip="127.0.0.1",
        rtp_port=40002,
        session_id=5,
        session_version=5,
        codecs=("opus",),
        telephone_event=False,
    )
    assert bare.media[0].formats == ["96"]
    for ptime_ms in (0, 15, 70):
        with pytest.raises(ValueError, match="ptime"):
            make_offer(
                local_ip="127.0.0.1",
                rtp_port=1,
                session_id=1,
                session_version=1,
                ptime_ms=ptime_ms,
            )


def test_our_offer_answered_by_baresip() -> None:
    offer = make_offer(local_ip="127.0.0.1", rtp_port=40000, session_id=5, session_version=5)
    media = accept_answer(offer, parse_sdp(BARESIP_ANSWER_TO_OURS))
    # baresip keeps every codec; the first one it lists is the call's codec.
    assert (media.codec.name, media.codec.payload_type, media.codec.channels) == ("opus", 96, 2)
    assert media.codec.fmtp == "stereo=1;sprop-stereo=1"
    # It drops telephone-event/48000 and keeps 101 at 8 kHz: taken as the fallback.
    assert media.telephone_event is not None
    assert (media.telephone_event.payload_type, media.telephone_event.clock_rate_hz) == (101, 8000)
    assert (media.remote_address, media.remote_port, media.remote_rtcp_port) == (
        "127.0.0.1",
        41004,
        41005,
    )
    assert (media.direction, media.ptime_ms, media.on_hold) == ("sendrecv", 20, False)

    g711 = make_offer(
        local_ip="127.0.0.1",
        rtp_port=40002,
        session_id=5,
        session_version=5,
        codecs=("PCMA", "PCMU"),
    )
    media = accept_answer(g711, parse_sdp(BARESIP_ANSWER_G711))
    assert (media.codec.name, media.codec.payload_type, media.remote_port) == ("PCMA", 8, 41002)


def test_delayed_offer_round_trip() -> None:
    """INVITE without SDP: our offer goes in the 200, the answer comes in the ACK."""
    ours = Negotiation(local_ip="127.0.0.1", rtp_port=40000, session_id=77)
    offer = ours.offer()
    assert offer.origin_fields().session_version == 77
    # The peer answers it with our own machinery (as a UAS would).
    peer = answer_offer(
        parse_sdp(offer.serialize()),
        local_ip="127.0.0.1",
        rtp_port=41000,
        session_id=9,
        session_version=9,
        preferences=("PCMU", "G722"),
    )
    assert (peer.media.codec.name, peer.media.codec.payload_type) == ("G722", 9)
    assert peer.media.telephone_event is not None
    assert peer.media.telephone_event.payload_type == 101  # at G.722's 8 kHz clock
    media = ours.accept(parse_sdp(peer.serialize()))
    assert (media.codec.name, media.codec.payload_type, media.remote_port) == ("G722", 9, 41000)
    assert media.telephone_event is not None and media.telephone_event.clock_rate_hz == 8000
    assert ours.current == media and ours.local == offer
    # The same answer again (183 then 200) settles the same.
    assert ours.accept(parse_sdp(peer.serialize())) == media
    ours.answer(parse_sdp(BARESIP_PCMU))
    with pytest.raises(OfferAnswerError, match="no offer of ours is pending"):
        ours.accept(parse_sdp(peer.serialize()))
    assert Negotiation(local_ip="127.0.0.1", rtp_port=1, session_id=1).current is None


@pytest.mark.parametrize(
    ("edit", "code", "reason"),
    [
        (lambda a: a.replace("m=audio 41004", "m=audio 0"), 304, "refused the audio stream"),
        (lambda a: a + "m=video 0 RTP/AVP 96\r\n", 399, "2 media streams for the offer's 1"),
        (lambda a: a.replace("RTP/AVP", "RTP/SAVP"), 302, "turned audio RTP/AVP into"),
        (lambda a: a.replace("96 9 0 8 101", "18 97"), 305, "keeps no audio format"),
        (
            lambda a: a.replace("a=rtpmap:96 opus", "a=rtpmap:96 speex").replace(" 9 0 8", ""),
            305,
            "keeps no audio format",
        ),
        (lambda a: a.replace("c=IN IP4 127.0.0.1", "c=IN IP6 ::1"), 301, "IPv6"),
    ],
)
def test_bad_answers(edit: object, code: int, reason: str) -> None:
    offer = make_offer(local_ip="127.0.0.1", rtp_port=40000, session_id=5, session_version=5)
    answer = parse_sdp(edit(BARESIP_ANSWER_TO_OURS))  # type: ignore[operator]
    with pytest.raises(OfferAnswerError, match=reason) as info:
        accept_answer(offer, answer)
    assert info.value.warning_code == code


def test_answer_direction_and_ptime() -> None:
    offer = make_offer(local_ip="127.0.0.1", rtp_port=40000, session_id=5, session_version=5)
    held = BARESIP_ANSWER_TO_OURS.replace("a=sendrecv", "a=recvonly").replace(
        "ptime:20", "ptime:40"
    )
    media = accept_answer(offer, parse_sdp(held))
    assert (media.direction, media.remote_direction, media.ptime_ms) == ("sendonly", "recvonly", 40)
    assert not media.on_hold
    bare = "\r\n".join(line for line in held.split("\r\n") if "ptime" not in line)
    assert accept_answer(offer, parse_sdp(bare)).ptime_ms == 20
    ours_sendonly = make_offer(
        local_ip="127.0.0.1", rtp_port=40000, session_id=5, session_version=6, direction="sendonly"
    )
    media = accept_answer(ours_sendonly, parse_sdp(BARESIP_ANSWER_TO_OURS))
    assert media.direction == "sendonly"


def test_our_offer_without_audio() -> None:
    offer = parse_sdp("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nm=video 0 RTP/AVP 96\r\n")
    with pytest.raises(OfferAnswerError, match="our offer has no audio") as info:
        accept_answer(offer, offer)
    assert info.value.warning_code == 304


# -- re-offers -----------------------------------------------------------------------------


def test_is_same_session() -> None:
    first = parse_sdp(BARESIP_PCMU)
    assert is_same_session(first, parse_sdp(BARESIP_PCMU))
    assert not is_same_session(first, parse_sdp(BARESIP_PCMU_HOLD))  # version went up
    other_id = parse_sdp(BARESIP_PCMU.replace("225444220", "225444221"))
    assert not is_same_session(first, other_id)
    assert not is_same_session(first, SessionDescription("broken", "-"))


def test_negotiation_across_hold_resume_and_refresh() -> None:
    call = Negotiation(local_ip="127.0.0.1", rtp_port=40000, session_id=1000)
    first = call.answer(parse_sdp(BARESIP_PCMU))
    assert first.description.origin == "- 1000 1000 IN IP4 127.0.0.1"
    # A refresh (same o= version, same media) gets the very same answer.
    again = call.answer(parse_sdp(BARESIP_PCMU))
    assert again.serialize() == first.serialize() and again.media == first.media
    held = call.answer(parse_sdp(BARESIP_PCMU_HOLD))
    assert held.description.origin == "- 1000 1001 IN IP4 127.0.0.1"
    assert (held.media.direction, held.media.on_hold) == ("recvonly", True)
    resumed = call.answer(parse_sdp(BARESIP_PCMU_RESUME))
    assert resumed.description.origin == "- 1000 1002 IN IP4 127.0.0.1"
    assert resumed.media.direction == "sendrecv"
    # A new o= version with nothing changed on our side keeps our version.
    refreshed = call.answer(parse_sdp(BARESIP_PCMU_RESUME.replace("1574673161", "1574673162")))
    assert refreshed.description.origin == "- 1000 1002 IN IP4 127.0.0.1"
    assert refreshed.serialize() == resumed.serialize()
    # A peer that changes the media without bumping its version is still heard.
    sneaky = call.answer(
        parse_sdp(
            BARESIP_PCMU_RESUME.replace("1574673161", "1574673162").replace(
                "a=sendrecv", "a=inactive"
            )
        )
    )
    assert sneaky.media.direction == "inactive"
    assert sneaky.description.origin == "- 1000 1003 IN IP4 127.0.0.1"


def test_negotiation_keeps_the_codec_on_reoffer_and_survives_488() -> None:
    call = Negotiation(local_ip="127.0.0.1", rtp_port=40000, session_id=1)
    assert (
        call.answer(parse_sdp(BARESIP_ALL.replace("0 8 9 96", "8 0 9 96"))).media.codec.name
        == "PCMA"
    )
    reordered = BARESIP_ALL.replace("1927848708", "1927848709")  # PCMU first now
    assert call.answer(parse_sdp(reordered)).media.codec.name == "PCMA"
    before = (call.local, call.remote, call.current, call.session_version)
    with pytest.raises(OfferAnswerError):
        call.answer(parse_sdp(SIPP_G729))
    assert (call.local, call.remote, call.current, call.session_version) == before
    # Our own re-offer (e.g. to hold) lists the current codec first and bumps the version.
    reoffer = call.offer(direction="sendonly")
    assert reoffer.media[0].formats[0] == "8"
    assert reoffer.origin_fields().session_version == call.session_version == 2
    assert reoffer.media[0].direction == "sendonly"


def test_negotiation_local_hold() -> None:
    call = Negotiation(local_ip="127.0.0.1", rtp_port=40000, session_id=1)
    call.answer(parse_sdp(BARESIP_PCMU))
    held = call.answer(parse_sdp(BARESIP_PCMU), local_direction="sendonly")
    assert held.media.direction == "sendonly"
    assert held.description.origin_fields().session_version == 2


# -- fuzzing -------------------------------------------------------------------------------


def _answers_or_refuses(text: str) -> None:
    try:
        offer = parse_sdp(text)
    except SdpError:
        return
    for offerer_order in (True, False):
        try:
            answer = _answer(text, offerer_order=offerer_order)
        except OfferAnswerError as exc:
            assert str(exc) and exc.warning_code in (301, 302, 304, 305, 399)
            continue
        assert isinstance(answer, Answer)
        assert len(answer.description.media) == len(offer.media)
        assert [m.kind for m in answer.description.media] == [m.kind for m in offer.media]
        assert parse_sdp(answer.serialize()) == answer.description
        chosen = answer.description.media[answer.media.media_index]
        assert chosen.port == 40000
        assert set(chosen.payload_types()) <= set(
            offer.media[answer.media.media_index].payload_types()
        )
        # Accepting our own answer must give the same codec back.
        again = accept_answer(offer, answer.description)
        assert again.codec.payload_type == answer.media.codec.payload_type


@st.composite
def _mutated(draw: st.DrawFn, offer: str) -> str:
    # New lines: made-up SDP lines, or lines spliced in from the other real offers.
    lines = draw(
        mutated_lines(
            offer.split("\r\n"),
            piece=st.sampled_from("0189 /:=-aAx\u00b2"),
            new_line=st.one_of(_SDP_LINES, st.sampled_from(_ALL_LINES)),
            max_rounds=6,
        )
    )
    return "\r\n".join(lines)


_ALL_LINES: Final = sorted({line for offer in REAL_OFFERS for line in offer.split("\r\n") if line})
_SDP_LINES: Final = st.sampled_from(
    [
        "m=audio 0 RTP/AVP 0",
        "m=video 5000 RTP/AVP 96",
        "m=audio 5000 RTP/SAVP 0",
        "m=audio 5002 RTP/AVP 111 126",
        "a=rtpmap:111 opus/48000/2",
        "a=rtpmap:111 opus/48000",
        "a=rtpmap:126 telephone-event/48000",
        "a=rtpmap:0 telephone-event/8000",
        "a=rtpmap:101 PCMU/8000",
        "a=sendonly",
        "a=inactive",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ptime:30",
        "a=maxptime:10",
        "c=IN IP4 0.0.0.0",
        "c=IN IP6 ::1",
        "c=IN IP4 host.example",
        "b=AS:64",
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(REAL_OFFERS).flatmap(_mutated))
def test_fuzz_mutated_real_offers(text: str) -> None:
    _answers_or_refuses(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(_SDP_LINES, st.text(max_size=30).map(lambda t: "a=" + t)), min_size=1, max_size=10
    )
)
def test_fuzz_built_offers(lines: list[str]) -> None:
    _answers_or_refuses(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n" + "\r\n".join(lines)
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated(BARESIP_ANSWER_TO_OURS))
def test_fuzz_mutated_answers(text: str) -> None:
    offer = make_offer(local_ip="127.0.0.1", rtp_port=40000, session_id=5, session_version=5)
    try:
        answer = parse_sdp(text)
    except SdpError:
        return
    try:
        media = accept_answer(offer, answer)
    except OfferAnswerError as exc:
        assert str(exc)
        return
    assert media.codec.payload_type in offer.media[0].payload_types()
    assert format_sdp(answer)


def test_opus_record() -> None:
    assert (OPUS.clock_rate_hz, OPUS.channels, OPUS.payload_type) == (48000, 2, 96)
