"""The WebRTC front door end to end: signalling routes, real aiortc peers, teardown, leaks.

The app is ``build_app(config)`` with the loopback agent (every caller frame
comes straight back) and ``webrtc.ice_addresses = ["127.0.0.1"]``; peers are
:class:`tests.fakes.webrtc_peer.WebRtcPeer` (no STUN, loopback candidates
only), so nothing leaves 127.0.0.1.  The HTTP client never keeps a connection
alive, so the server holds no connection task between requests and "nothing
left running" can be checked as "no asyncio task beyond those before the
request".
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, Final

import aiohttp
import numpy as np
import pytest
from aiohttp.pytest_plugin import AiohttpClient
from aiohttp.test_utils import TestClient

from server.app import CallRegistry, build_app
from server.config import Config, load_config
from server.sdp import parse_sdp
from server.transports.webrtc import WebRtcSession
from server.webrtc_route import WebRtcSessions
from tests.fakes.webrtc_peer import WebRtcPeer, candidate_addresses, dominant_frequency_hz, tone
from tests.test_sdp import CHROMIUM_OFFER

TONE_HZ: Final = 440.0
STATES: Final = {"listening", "user_speaking", "thinking", "bot_speaking", "paused", "interrupted"}
SDP_TYPE: Final = {"Content-Type": "application/sdp"}
FRAG_TYPE: Final = {"Content-Type": "application/trickle-ice-sdpfrag"}
SETTLE_S: Final = 10.0
"""Upper bound for waits on teardown (they normally take a few ms)."""

Client = TestClient[Any, Any]


def make_config(extra: dict[str, Any] | None = None) -> Config:
    overrides: dict[str, Any] = {
        "agent.name": "loopback",
        "webrtc.ice_addresses": ["127.0.0.1"],
        "webrtc.connect_timeout_s": 1.0,
        "sip.port": 0,
    }
    return load_config(environ={}, overrides=overrides | (extra or {}))


async def start(aiohttp_client: AiohttpClient, extra: dict[str, Any] | None = None) -> Client:
    """The app on 127.0.0.1 and a client that closes its connection after each request."""
    app = build_app(make_config(extra))
    client: Client = await aiohttp_client(app, connector=aiohttp.TCPConnector(force_close=True))
    return client


def sessions_of(client: Client) -> WebRtcSessions:
    sessions: WebRtcSessions = client.app["webrtc"]
    return sessions


def registry_of(client: Client) -> CallRegistry:
    registry: CallRegistry = client.app["registry"]
    return registry


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = SETTLE_S) -> None:
    """Poll ``predicate`` every 20 ms until it holds; fail naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"still not true after {timeout_s} s: {what}")
        await asyncio.sleep(0.02)


async def live_calls(client: Client) -> list[str]:
    response = await client.get("/calls")
    assert response.status == 200
    calls: list[str] = (await response.json())["calls"]
    return calls


async def assert_nothing_running(client: Client, before: set[asyncio.Task[Any]]) -> None:
    await eventually(lambda: other_tasks() <= before, "tasks back to those before the request")
    assert sessions_of(client).live == {}
    assert registry_of(client).calls == {}
    assert await live_calls(client) == []


async def refused(
    client: Client, method: str, path: str, status: int, reason: str, **kwargs: Any
) -> str:
    """Send one request; check its status, that its text names ``reason``, nothing is left."""
    before = other_tasks()
    response = await client.request(method, path, **kwargs)
    text = await response.text()
    assert response.status == status, text
    assert reason in text
    await assert_nothing_running(client, before)
    return text


def offer_with(sdp: str, drop: Callable[[str], bool], replace: dict[str, str]) -> str:
    lines = [line for line in sdp.split("\r\n") if not drop(line)]
    return "\r\n".join(replace.get(line, line) for line in lines)


def _codec_line(pts: set[str]) -> Callable[[str], bool]:
    def drop(line: str) -> bool:
        for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
            if line.startswith(prefix):
                return line[len(prefix) :].split(" ", 1)[0] not in pts
        return False

    return drop


AUDIO_MLINE: Final = "m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126"
PCM_ONLY: Final = offer_with(
    CHROMIUM_OFFER, _codec_line({"0", "8"}), {AUDIO_MLINE: "m=audio 9 UDP/TLS/RTP/SAVPF 0 8"}
)
OPUS_16K: Final = CHROMIUM_OFFER.replace("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/16000")
NO_FINGERPRINT: Final = offer_with(CHROMIUM_OFFER, lambda s: s.startswith("a=fingerprint"), {})
NO_UFRAG: Final = offer_with(CHROMIUM_OFFER, lambda s: s.startswith("a=ice-ufrag"), {})
NO_PWD: Final = offer_with(CHROMIUM_OFFER, lambda s: s.startswith("a=ice-pwd"), {})
AUDIO_PORT_0: Final = CHROMIUM_OFFER.replace(AUDIO_MLINE, AUDIO_MLINE.replace(" 9 ", " 0 ", 1))
NO_RTCP_MUX: Final = CHROMIUM_OFFER.replace("a=rtcp-mux\r\n", "")
HUGE: Final = CHROMIUM_OFFER + "a=x-pad:" + "y" * 40_000 + "\r\n"


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "body must be JSON {sdp, type}"),
        (b"", "body must be JSON"),
        (b'["offer"]', "body must be JSON"),
        (b'{"type": "offer"}', "body must be JSON"),
        (b'{"sdp": 5, "type": "offer"}', "body must be JSON"),
        (b'{"sdp": "v=0", "type": "answer"}', "type must be 'offer', got 'answer'"),
        (b'{"sdp": "hello", "type": "offer"}', "malformed SDP: SDP must start with v=0"),
        (b'{"sdp": "\xff\xfe", "type": "offer"}', "not UTF-8"),
        ({"sdp": PCM_ONLY, "type": "offer"}, "PCMA/8000, PCMU/8000"),
        ({"sdp": OPUS_16K, "type": "offer"}, "voxgate takes opus/48000"),
        ({"sdp": NO_FINGERPRINT, "type": "offer"}, "a=fingerprint"),
        ({"sdp": NO_UFRAG, "type": "offer"}, "a=ice-ufrag"),
        ({"sdp": NO_PWD, "type": "offer"}, "a=ice-pwd"),
        ({"sdp": AUDIO_PORT_0, "type": "offer"}, "no audio section"),
        ({"sdp": NO_RTCP_MUX, "type": "offer"}, "the offer was refused"),
        ({"sdp": HUGE, "type": "offer"}, "body too large"),
    ],
    ids=[
        "not-json",
        "empty",
        "array",
        "no-sdp",
        "sdp-not-text",
        "answer",
        "malformed-sdp",
        "not-utf8",
        "pcmu-pcma-only",
        "opus-16k",
        "no-fingerprint",
        "no-ufrag",
        "no-pwd",
        "audio-port-0",
        "no-rtcp-mux",
        "huge",
    ],
)
async def test_bad_offer_is_400_with_reason_and_leaves_nothing(
    aiohttp_client: AiohttpClient, body: Any, reason: str
) -> None:
    client = await start(aiohttp_client)
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    text = await refused(client, "POST", "/webrtc/offer", 400, reason, **kwargs)
    assert text.endswith("\n") and len(text) > 10


async def test_bad_whip_offers(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    await refused(client, "POST", "/whip", 400, "malformed SDP", data="hello", headers=SDP_TYPE)
    await refused(client, "POST", "/whip", 400, "body too large", data=HUGE, headers=SDP_TYPE)
    await refused(
        client, "POST", "/whip", 400, "PCMA/8000, PCMU/8000", data=PCM_ONLY, headers=SDP_TYPE
    )
    for content_type in ("application/json", "text/plain"):
        await refused(
            client,
            "POST",
            "/whip",
            415,
            "application/sdp",
            data=CHROMIUM_OFFER,
            headers={"Content-Type": content_type},
        )


async def test_offer_without_audio_is_refused(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with WebRtcPeer(None, channel=True) as peer:
        offer = await peer.offer()
        assert [m.kind for m in parse_sdp(offer).media] == ["application"]
        await refused(
            client,
            "POST",
            "/webrtc/offer",
            400,
            "no audio section",
            json={"sdp": offer, "type": "offer"},
        )
        await refused(
            client, "POST", "/whip", 400, "no audio section", data=offer, headers=SDP_TYPE
        )


async def test_unknown_and_finished_calls(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    async with WebRtcPeer(tone(TONE_HZ, 200)) as peer:
        offer = await peer.offer()
        response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
        assert response.status == 200
        call_id = (await response.json())["call_id"]
        session = sessions_of(client).live[call_id]
        # A live call cannot be renegotiated either.
        body = {"sdp": offer, "type": "offer", "call_id": call_id}
        response = await client.post("/webrtc/offer", json=body)
        assert response.status == 400
        assert f"call {call_id} is live" in await response.text()
        response = await client.delete(f"/whip/{call_id}")
        assert response.status == 200
        await asyncio.wait_for(session.done.wait(), SETTLE_S)

    ended = f"call {call_id} has ended (remote_hangup)"
    await refused(client, "POST", "/webrtc/offer", 400, f"call {call_id} has ended", json=body)
    unknown = body | {"call_id": "f" * 32}
    await refused(client, "POST", "/webrtc/offer", 400, f"call {'f' * 32} is unknown", json=unknown)
    frag = "a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n"
    await refused(client, "PATCH", f"/whip/{call_id}", 404, ended, data=frag, headers=FRAG_TYPE)
    await refused(client, "DELETE", f"/whip/{call_id}", 404, ended)
    await refused(
        client, "PATCH", "/whip/nope", 404, "no such call nope", data=frag, headers=FRAG_TYPE
    )
    await refused(client, "DELETE", "/whip/nope", 404, "no such call nope")


async def test_patch_refusals_leave_the_call_alone(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 10.0})
    async with WebRtcPeer(tone(TONE_HZ, 200)) as peer:
        response = await client.post("/whip", data=await peer.offer(), headers=SDP_TYPE)
        assert response.status == 201
        resource = response.headers["Location"]
        bad = "a=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 port typ host\r\n"
        response = await client.patch(resource, data=bad, headers=FRAG_TYPE)
        assert response.status == 400
        assert "bad candidate line" in await response.text()
        response = await client.patch(resource, data=bad, headers=SDP_TYPE)
        assert response.status == 415
        response = await client.patch(resource, data="a=x:" + "y" * 40_000, headers=FRAG_TYPE)
        assert response.status == 400
        assert "body too large" in await response.text()
        assert resource.rsplit("/", 1)[1] in await live_calls(client)
        response = await client.delete(resource)
        assert response.status == 200
        assert await live_calls(client) == []


# -- a good call ---------------------------------------------------------------------------


async def test_good_call_end_to_end(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 10.0})
    async with WebRtcPeer(tone(TONE_HZ, 1000)) as peer:
        response = await client.post(
            "/webrtc/offer", json={"sdp": await peer.offer(), "type": "offer"}
        )
        assert response.status == 200
        body = await response.json()
        assert body["type"] == "answer"
        call_id = body["call_id"]
        answer = parse_sdp(body["sdp"])
        audio = next(m for m in answer.media if m.kind == "audio")
        preferred = audio.rtpmaps[audio.payload_types()[0]]
        assert (preferred.encoding.lower(), preferred.clock_rate_hz) == ("opus", 48000)
        assert audio.attribute("sendrecv") == ""
        assert candidate_addresses(body["sdp"])
        assert set(candidate_addresses(body["sdp"])) == {"127.0.0.1"}
        assert {m.connection for m in answer.media} == {"127.0.0.1"}
        session = sessions_of(client).live[call_id]

        await peer.accept(body["sdp"])
        await peer.connected()
        assert await live_calls(client) == [call_id]

        # The loopback agent sends the tone back.
        await peer.wait_for(lambda: len(peer.loud_frames()) >= 30, SETTLE_S)
        back = np.concatenate(peer.loud_frames()[5:30])
        assert abs(dominant_frequency_hz(back, 48000) - TONE_HZ) < 10
        assert session.inbound.frames >= 30
        assert session.transport.track.sent_frames >= 30

        assert (await peer.message("hello"))["call_id"] == call_id
        assert (await peer.message("state"))["state"] in STATES

        peer.send({"type": "dtmf", "digits": "12"})
        peer.send({"type": "dance"})
        error = await peer.message("error")
        assert "bad message" in error["reason"]

        async def dtmf_count() -> int:
            summary = await (await client.get(f"/calls/{call_id}")).json()
            count: int = summary["stats"]["dtmf"]
            return count

        for _ in range(100):
            if await dtmf_count() == 2:
                break
            await asyncio.sleep(0.02)
        assert await dtmf_count() == 2

        response = await client.delete(f"/whip/{call_id}")
        assert response.status == 200
        await asyncio.wait_for(session.done.wait(), SETTLE_S)
        assert session.end_reason == "remote_hangup"
        assert await live_calls(client) == []
        assert sessions_of(client).live == {}
        assert (await peer.message("bye"))["reason"] == "remote_hangup"


async def test_whip_trickle_connect_and_delete(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 10.0})
    async with WebRtcPeer(tone(TONE_HZ, 1000)) as peer:
        full = await peer.offer()
        # A trickling client: its offer has no candidates; they follow by PATCH.
        trickled = [line for line in full.split("\r\n") if line.startswith("a=candidate:")]
        offer = offer_with(
            full, lambda s: s.startswith(("a=candidate:", "a=end-of-candidates")), {}
        )
        response = await client.post("/whip", data=offer, headers=SDP_TYPE)
        assert response.status == 201
        assert response.content_type == "application/sdp"
        resource = response.headers["Location"]
        call_id = resource.removeprefix("/whip/")
        assert resource == f"/whip/{call_id}"
        assert call_id in sessions_of(client).live
        answer = await response.text()
        assert [m.kind for m in parse_sdp(answer).media] == ["audio", "application"]
        assert set(candidate_addresses(answer)) == {"127.0.0.1"}

        mid = parse_sdp(full).media[0].attribute("mid")
        fragment = "\r\n".join([f"a=mid:{mid}", *trickled, "a=end-of-candidates", ""])
        response = await client.patch(resource, data=fragment, headers=FRAG_TYPE)
        assert response.status == 204
        await peer.accept(answer)
        await peer.connected()
        await peer.wait_for(lambda: len(peer.loud_frames()) >= 5, SETTLE_S)

        session = sessions_of(client).live[call_id]
        response = await client.delete(resource)
        assert response.status == 200
        await asyncio.wait_for(session.done.wait(), SETTLE_S)
        assert await live_calls(client) == []


async def test_second_call_over_max_calls_gets_503(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, {"server.max_calls": 1, "webrtc.connect_timeout_s": 10.0})
    async with WebRtcPeer(tone(TONE_HZ, 200)) as first, WebRtcPeer(tone(TONE_HZ, 200)) as second:
        response = await client.post("/whip", data=await first.offer(), headers=SDP_TYPE)
        assert response.status == 201
        resource = response.headers["Location"]
        await first.accept(await response.text())
        await first.connected()
        offer = await second.offer()
        text = await refused_while_live(client, offer)
        assert "full" in text
        response = await client.delete(resource)
        assert response.status == 200
        await eventually(lambda: not registry_of(client).calls, "the first call removed")
        # The place is free again.
        response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
        assert response.status == 200
        response = await client.delete(f"/whip/{(await response.json())['call_id']}")
        assert response.status == 200


async def refused_while_live(client: Client, offer: str) -> str:
    live = set(sessions_of(client).live)
    response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
    assert response.status == 503
    assert set(sessions_of(client).live) == live
    text: str = await response.text()
    return text


async def test_unconnected_call_is_torn_down_after_connect_timeout(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 0.5})
    before = other_tasks()
    peer = WebRtcPeer(tone(TONE_HZ, 200))
    offer = await peer.offer()
    await peer.close()  # gone before it could apply the answer: ICE never connects
    response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
    assert response.status == 200
    call_id = (await response.json())["call_id"]
    session = sessions_of(client).live[call_id]
    assert call_id in await live_calls(client)
    await asyncio.wait_for(session.done.wait(), SETTLE_S)
    assert session.end_reason == "connect_timeout"
    assert sessions_of(client).finished[call_id] == "connect_timeout"
    await assert_nothing_running(client, before)


# -- known bugs ----------------------------------------------------------------------------


async def test_answer_is_opus_only(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client)
    pcmu_first = CHROMIUM_OFFER.replace("a=rtpmap:0 PCMU/8000\r\n", "").replace(
        "a=rtpmap:111 opus/48000/2", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:111 opus/48000/2"
    )
    for offer in (CHROMIUM_OFFER, pcmu_first):
        response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
        assert response.status == 200
        audio = parse_sdp((await response.json())["sdp"]).media[0]
        assert [audio.rtpmaps[pt].encoding.lower() for pt in audio.payload_types()] == ["opus"]


async def test_patch_with_a_short_candidate_line_is_400(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 10.0})
    async with WebRtcPeer(tone(TONE_HZ, 200)) as peer:
        response = await client.post("/whip", data=await peer.offer(), headers=SDP_TYPE)
        resource = response.headers["Location"]
        try:
            bad = "a=mid:0\r\na=candidate:garbage\r\n"
            response = await client.patch(resource, data=bad, headers=FRAG_TYPE)
            assert response.status == 400
            assert "bad candidate line" in await response.text()
        finally:
            await client.delete(resource)


VIDEO_AV1: Final = "\r\n".join(
    [
        "m=video 9 UDP/TLS/RTP/SAVPF 45",
        "c=IN IP4 0.0.0.0",
        "a=mid:2",
        "a=ice-ufrag:Qx7v",
        "a=ice-pwd:k3Jd9fLw2ZpQ8rTn5vYb1Hc6",
        "a=setup:actpass",
        "a=rtcp-mux",
        "a=sendrecv",
        "a=rtpmap:45 AV1/90000",
        "",
    ]
)


@pytest.mark.parametrize(
    "offer",
    [
        CHROMIUM_OFFER.replace("BUNDLE 0 1", "BUNDLE 0 1 2") + VIDEO_AV1,
        CHROMIUM_OFFER.replace("a=mid:0\r\n", ""),
        CHROMIUM_OFFER.replace("m=audio 9 ", "m=audio \u00b2 "),
    ],
    ids=["video-without-common-codec", "audio-without-mid", "superscript-port"],
)
async def test_offers_aiortc_refuses_are_400(aiohttp_client: AiohttpClient, offer: str) -> None:
    client = await start(aiohttp_client)
    response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
    assert response.status == 400


async def test_binary_garbage_on_the_data_channel_is_refused_not_fatal(
    aiohttp_client: AiohttpClient,
) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 10.0})
    async with WebRtcPeer(tone(TONE_HZ, 200)) as peer:
        response = await client.post(
            "/webrtc/offer", json={"sdp": await peer.offer(), "type": "offer"}
        )
        body = await response.json()
        await peer.accept(body["sdp"])
        await peer.connected()
        await peer.message("hello")
        session = sessions_of(client).live[body["call_id"]]
        peer.send(b'{"type":"text","text":"\xff"}')
        peer.send({"type": "dance"})

        def answered() -> bool:
            errors = sum(m.get("type") == "error" for m in peer.messages)
            return errors == 2 or session.closed

        await eventually(answered, "two error replies, or the call ended")
        assert session.end_reason is None
        assert await live_calls(client) == [body["call_id"]]
        response = await client.delete(f"/whip/{body['call_id']}")
        assert response.status == 200


# -- leaks ---------------------------------------------------------------------------------


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def call_threads() -> list[str]:
    """Live threads other than the loop's default executor workers (named ``asyncio_N``).

    aiortc encodes in the default executor, whose idle workers are kept for
    reuse (at most ``min(32, cpus + 4)``): a pool, not a per-call resource.
    aiortc's per-receiver decoder threads and anything else must go away.
    """
    return sorted(t.name for t in threading.enumerate() if not t.name.startswith("asyncio_"))


async def good_call(client: Client, hang_up_by_delete: bool) -> WebRtcSession:
    async with WebRtcPeer(tone(TONE_HZ, 400)) as peer:
        response = await client.post(
            "/webrtc/offer", json={"sdp": await peer.offer(), "type": "offer"}
        )
        assert response.status == 200, await response.text()
        body = await response.json()
        session = sessions_of(client).live[body["call_id"]]
        await peer.accept(body["sdp"])
        await peer.connected()
        await peer.wait_for(lambda: len(peer.received) >= 10, SETTLE_S)
        await eventually(lambda: session.inbound.frames >= 10, "caller audio reached the call")
        if hang_up_by_delete:
            response = await client.delete(f"/whip/{body['call_id']}")
            assert response.status == 200
    # Leaving the block closed the peer: the server notices on its own.
    await asyncio.wait_for(session.done.wait(), SETTLE_S)
    return session


async def failed_call(client: Client, offer: str) -> WebRtcSession:
    response = await client.post("/webrtc/offer", json={"sdp": offer, "type": "offer"})
    assert response.status == 200, await response.text()
    session = sessions_of(client).live[(await response.json())["call_id"]]
    await asyncio.wait_for(session.done.wait(), SETTLE_S)
    return session


async def dead_offers(n: int) -> list[str]:
    """``n`` real offers whose peers are closed (their ports refuse), half without candidates."""
    offers = []
    for i in range(n):
        peer = WebRtcPeer(tone(TONE_HZ, 200))
        offer = await peer.offer()
        await peer.close()
        if i % 2:
            offer = offer_with(offer, lambda s: s.startswith("a=candidate:"), {})
        offers.append(offer)
    return offers


@pytest.mark.slow
async def test_no_leaks_after_50_failed_and_50_good_calls(aiohttp_client: AiohttpClient) -> None:
    client = await start(aiohttp_client, {"webrtc.connect_timeout_s": 0.5})
    offers = await dead_offers(10)
    # Warm up once (lazy imports, codec libraries, the executor), then take the baseline.
    await good_call(client, hang_up_by_delete=True)
    await failed_call(client, offers[0])
    tasks, fds, threads = other_tasks(), open_fds(), call_threads()

    failed = []
    for _ in range(2):
        failed += await asyncio.gather(*(failed_call(client, offers[i % 10]) for i in range(25)))
    assert [s.end_reason for s in failed] == ["connect_timeout"] * 50

    good = []
    for _ in range(5):
        good += await asyncio.gather(
            *(good_call(client, hang_up_by_delete=bool(i % 2)) for i in range(10))
        )
    reasons = {s.end_reason for s in good}
    assert "remote_hangup" in reasons
    assert reasons - {"remote_hangup"}  # the other half ended by the peer closing its pc
    assert all(s.closed and s.done.is_set() for s in good + failed)

    await eventually(lambda: other_tasks() <= tasks, "asyncio tasks back to the baseline")
    # Every fd the calls opened (ICE UDP sockets, HTTP connections) is closed.  No
    # tolerance is needed: the client keeps no pooled connection (force_close) and
    # the warm-up call opened whatever is opened once per process; the poll covers
    # a socket whose close is still pending in the loop.
    await eventually(lambda: open_fds() == fds, f"open fds back to {fds}")
    await eventually(lambda: call_threads() == threads, f"threads back to {threads}")
    assert sessions_of(client).live == {}
    assert registry_of(client).calls == {}
    assert await live_calls(client) == []
