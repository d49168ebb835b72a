"""The Twilio front door end to end over real WebSockets on loopback.

A scripted Twilio client streams real speech to the server, reads the echo
reply, answers marks as Twilio does, and stops; a misbehaving client runs
beside it without affecting it.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import aiohttp
import pytest
from aiohttp.pytest_plugin import AiohttpServer
from aiohttp.test_utils import TestServer

from engine.g711 import ulaw_encode
from server.app import build_app
from server.config import Config, load_config
from server.transports.twilio import compute_signature
from tests import speech

STREAM_SID = "MZ" + "0" * 32


def frames_of(pcm: Any) -> list[bytes]:
    n = len(pcm) // 160 * 160
    data = ulaw_encode(pcm[:n].tobytes())
    return [data[i : i + 160] for i in range(0, n, 160)]


def start_message(call_sid: str) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": "1",
            "streamSid": STREAM_SID,
            "start": {
                "streamSid": STREAM_SID,
                "accountSid": "AC" + "1" * 32,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": {"who": "test"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        }
    )


def media_message(seq: int, chunk: int, payload: bytes) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "streamSid": STREAM_SID,
            "media": {
                "track": "inbound",
                "chunk": str(chunk),
                "timestamp": str(chunk * 20),
                "payload": base64.b64encode(payload).decode(),
            },
        }
    )


def echo_config(**environ: str) -> Config:
    """The configuration with the echo agent (these tests check the reply bit for bit)."""
    return load_config(environ=environ, overrides={"agent.name": "echo", "sip.port": 0})


async def serve(aiohttp_server: AiohttpServer, config: Config) -> TestServer:
    return await aiohttp_server(build_app(config), host="127.0.0.1")


async def good_call(url: str, call_sid: str) -> dict[str, Any]:
    lead = frames_of(speech.silence(600, 8000))
    utterance = frames_of(speech.speech("my order number is four two seven", 8000))
    tail = frames_of(speech.silence(3000, 8000))
    received = bytearray()
    marks: list[str] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(
            json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        )
        await ws.send_str(start_message(call_sid))
        seq = 2
        for chunk, payload in enumerate(lead + utterance + tail, start=1):
            await ws.send_str(media_message(seq, chunk, payload))
            seq += 1
        while not marks:
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type == aiohttp.WSMsgType.TEXT, msg
            data = json.loads(msg.data)
            assert data["streamSid"] == STREAM_SID
            if data["event"] == "media":
                assert set(data) == {"event", "streamSid", "media"}
                received += base64.b64decode(data["media"]["payload"])
            elif data["event"] == "mark":
                marks.append(data["mark"]["name"])
        # Twilio echoes the mark once played.
        mark = {"event": "mark", "sequenceNumber": str(seq), "streamSid": STREAM_SID}
        await ws.send_str(json.dumps(mark | {"mark": {"name": marks[0]}}))
        stop = {"event": "stop", "sequenceNumber": str(seq + 1), "streamSid": STREAM_SID}
        await ws.send_str(json.dumps(stop | {"stop": {"callSid": call_sid}}))
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    return {"received": bytes(received), "sent": b"".join(lead + utterance), "marks": marks}


async def test_echo_call_end_to_end(aiohttp_server: AiohttpServer) -> None:
    server = await serve(aiohttp_server, echo_config())
    result = await good_call(str(server.make_url("/twilio")), "CA" + "a" * 32)
    utterance_core = result["sent"][600 * 8 + 400 : -400]
    assert utterance_core in result["received"]
    assert len(result["marks"]) == 1


async def test_bad_client_beside_a_good_one(aiohttp_server: AiohttpServer) -> None:
    server = await serve(aiohttp_server, echo_config())
    url = str(server.make_url("/twilio"))

    async def bad_client() -> int | None:
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            await ws.send_str("{not json")
            await ws.send_str(json.dumps({"event": "media", "media": {"payload": "!!!"}}))
            await ws.send_str(start_message("CA" + "b" * 32))
            await ws.send_str(media_message(2, 1, b"\xff" * 160).replace(STREAM_SID, "MZbad"))
            await ws.send_bytes(b"\x00\x01")
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type == aiohttp.WSMsgType.CLOSE
            return ws.close_code

    good, close_code = await asyncio.gather(good_call(url, "CA" + "c" * 32), bad_client())
    assert close_code == 1003
    assert good["sent"][600 * 8 + 400 : -400] in good["received"]
    async with aiohttp.ClientSession() as session:
        text = await (await session.get(server.make_url("/metrics"))).text()
    assert 'voxgate_bad_messages_total{transport="twilio"}' in text


async def test_signature_is_required_when_configured(aiohttp_server: AiohttpServer) -> None:
    config = echo_config(VOXGATE_TWILIO__AUTH_TOKEN="s3cret")
    server = await serve(aiohttp_server, config)
    url = server.make_url("/twilio")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 403
        wss_url = f"wss://{url.host}:{url.port}/twilio"
        signature = compute_signature("s3cret", wss_url, None)
        ws = await session.ws_connect(url, headers={"X-Twilio-Signature": signature})
        await ws.close()
        webhook = server.make_url("/twilio/voice")
        response = await session.post(webhook, data={"CallSid": "CA1"})
        assert response.status == 403
        http_url = f"http://{url.host}:{url.port}/twilio/voice"
        signature = compute_signature("s3cret", http_url, {"CallSid": "CA1"})
        response = await session.post(
            webhook, data={"CallSid": "CA1"}, headers={"X-Twilio-Signature": signature}
        )
        assert response.status == 200
        assert "<Connect><Stream" in await response.text()


async def test_readiness_goes_503_when_full(aiohttp_server: AiohttpServer) -> None:
    server = await serve(aiohttp_server, echo_config(VOXGATE_SERVER__MAX_CALLS="1"))
    url = str(server.make_url("/twilio"))
    async with aiohttp.ClientSession() as session:
        assert (await session.get(server.make_url("/readyz"))).status == 200
        ws = await session.ws_connect(url)
        await ws.send_str(start_message("CA" + "d" * 32))
        for _ in range(50):
            if (await session.get(server.make_url("/readyz"))).status == 503:
                break
            await asyncio.sleep(0.02)
        assert (await session.get(server.make_url("/readyz"))).status == 503
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(url)
        assert refused.value.status == 503
        await ws.close()


async def metrics_text(server: TestServer) -> str:
    async with aiohttp.ClientSession() as session:
        return await (await session.get(server.make_url("/metrics"))).text()


async def test_dtmf_cuts_the_reply_and_marks_after_clear_count_as_cleared(
    aiohttp_server: AiohttpServer,
) -> None:
    server = await serve(aiohttp_server, echo_config())
    url = str(server.make_url("/twilio"))
    frames = frames_of(speech.silence(600, 8000)) + frames_of(
        speech.speech("please read my account balance", 8000)
    )
    frames += frames_of(speech.silence(1000, 8000))
    events: list[str] = []
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(start_message("CA" + "e" * 32))
        for chunk, payload in enumerate(frames, start=1):
            await ws.send_str(media_message(chunk + 1, chunk, payload))
        # Hold the reply's end mark unanswered, as a far end still playing would.
        mark_name = None
        while mark_name is None:
            data = json.loads((await asyncio.wait_for(ws.receive(), 10)).data)
            events.append(data["event"])
            if data["event"] == "mark":
                mark_name = data["mark"]["name"]
        dtmf = {"event": "dtmf", "streamSid": STREAM_SID, "sequenceNumber": "900"}
        await ws.send_str(json.dumps(dtmf | {"dtmf": {"track": "inbound_track", "digit": "5"}}))
        data = json.loads((await asyncio.wait_for(ws.receive(), 5)).data)
        assert data == {"event": "clear", "streamSid": STREAM_SID}
        # Twilio returns pending marks after a clear: this one was not played.
        mark = {"event": "mark", "sequenceNumber": "901", "streamSid": STREAM_SID}
        await ws.send_str(json.dumps(mark | {"mark": {"name": mark_name}}))
        stop = {"event": "stop", "sequenceNumber": "902", "streamSid": STREAM_SID}
        await ws.send_str(json.dumps(stop | {"stop": {"callSid": "CA" + "e" * 32}}))
        await asyncio.wait_for(ws.receive(), 5)
    assert events[0] == "media" and events[-1] == "mark"
    text = await metrics_text(server)
    assert 'voxgate_marks_total{outcome="cleared",transport="twilio"} 1.0' in text
    assert "voxgate_turn_latency_seconds_count 1.0" in text


async def test_stop_mid_utterance_ends_the_call_cleanly(aiohttp_server: AiohttpServer) -> None:
    server = await serve(aiohttp_server, echo_config())
    registry = server.app["registry"]
    url = str(server.make_url("/twilio"))
    half = frames_of(speech.speech("I would like to change my delivery address", 8000))
    half = half[: len(half) // 2]
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(start_message("CA" + "f" * 32))
        for chunk, payload in enumerate(half, start=1):
            await ws.send_str(media_message(chunk + 1, chunk, payload))
        stop = {"event": "stop", "sequenceNumber": str(len(half) + 2), "streamSid": STREAM_SID}
        await ws.send_str(json.dumps(stop | {"stop": {"callSid": "CA" + "f" * 32}}))
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 1000
    assert registry.calls == {}
    text = await metrics_text(server)
    assert 'voxgate_calls_total{reason="stop",transport="twilio"} 1.0' in text
    assert "voxgate_turn_latency_seconds_count 0.0" in text  # no reply to half a sentence
