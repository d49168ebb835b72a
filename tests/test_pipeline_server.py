"""The default server: the offline pipeline agent answering a Twilio call end to end.

No configuration at all: pocketsphinx hears the caller, the rule-based LLM
answers, espeak-ng speaks.  A scripted Twilio client streams real speech in
real time over a loopback WebSocket, hears the greeting and the answer, and
reads the call's summary and the stage metrics while the call is live.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.pytest_plugin import AiohttpServer

from engine.g711 import ulaw_decode
from server.app import build_app
from server.config import ConfigError, load_config
from tests import speech
from tests.test_twilio_server import STREAM_SID, frames_of, media_message, start_message

CALL_SID = "CA" + "c" * 32


def level_dbfs(ulaw: bytes) -> float:
    pcm = np.frombuffer(ulaw_decode(ulaw), dtype=np.int16).astype(np.float64)
    rms = float(np.sqrt(np.mean(pcm**2))) if len(pcm) else 0.0
    return 20 * np.log10(max(rms, 1e-9) / 32768)


async def test_offline_agent_greets_and_answers(aiohttp_server: AiohttpServer) -> None:
    server = await aiohttp_server(
        build_app(load_config(environ={"VOXGATE_SIP__PORT": "0"})), host="127.0.0.1"
    )
    base = str(server.make_url("/"))
    received: list[tuple[int, bytes]] = []  # (frame index when received, payload)
    sent = 0
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(str(server.make_url("/twilio"))) as ws:
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call"}))
            await ws.send_str(start_message(CALL_SID))

            async def read() -> None:
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data["event"] == "media":
                        received.append((sent, base64.b64decode(data["media"]["payload"])))
                    elif data["event"] == "mark":
                        echo = {"event": "mark", "streamSid": STREAM_SID, "mark": data["mark"]}
                        await ws.send_str(json.dumps(echo | {"sequenceNumber": "0"}))

            reader = asyncio.create_task(read())
            greeting_wait = frames_of(speech.silence(4500, 8000))
            question = frames_of(speech.speech("hello", 8000))
            after = frames_of(speech.silence(4000, 8000))
            for frame in greeting_wait + question + after:
                await ws.send_str(media_message(sent + 2, sent + 1, frame))
                sent += 1
                await asyncio.sleep(0.02)
            async with session.get(base + f"calls/{CALL_SID}") as response:
                assert response.status == 200
                summary: dict[str, Any] = await response.json()
            async with session.get(base + "metrics") as response:
                metrics = await response.text()
            stop = {"event": "stop", "sequenceNumber": "0", "streamSid": STREAM_SID}
            await ws.send_str(json.dumps(stop | {"stop": {"callSid": CALL_SID}}))
            await asyncio.wait_for(reader, 5)
        async with session.get(base + f"calls/{CALL_SID}") as response:
            assert response.status == 404  # not live any more

    turns = summary["turns"]
    assert [t["kind"] for t in turns[:2]] == ["greeting", "user"]
    greeting, answer = turns[0], turns[1]
    assert greeting["outcome"] == "answered" and greeting["providers"] == {"tts": "espeak"}
    assert answer["outcome"] == "answered", answer
    assert answer["user_text"] and answer["reply_text"]
    assert answer["providers"] == {"stt": "sphinx", "llm": "rules", "tts": "espeak"}
    assert set(answer["stages_ms"]) >= {"eou", "stt_final", "llm_first_token", "turn_total"}
    # Both the greeting and the answer were audible speech.
    end_of_question = len(greeting_wait) + len(question)
    before = b"".join(p for i, p in received if i < len(greeting_wait))
    reply = b"".join(p for i, p in received if i >= end_of_question)
    assert len(before) > 8000 and level_dbfs(before) > -40
    assert len(reply) > 4000 and level_dbfs(reply) > -40
    assert 'voxgate_stage_latency_seconds_count{stage="turn_total"}' in metrics


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[agent]\nstt = ["deepgram"]\n', r"providers\.deepgram"),
        ('[agent]\ntts = ["espeak", "nonsense"]\n', r"agent\.tts\[1\]"),
        ('[providers.cartesia]\nmodel = "sonic-2"\n', r"providers\.cartesia.*api_key"),
    ],
)
def test_provider_configuration_errors_name_the_setting(
    tmp_path: Path, toml: str, key: str
) -> None:
    path = tmp_path / "voxgate.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=key):
        load_config(path, environ={})


def test_provider_key_from_the_environment_enables_it() -> None:
    config = load_config(
        environ={"VOXGATE_PROVIDERS__DEEPGRAM__API_KEY": "k"}, overrides={"agent.stt": ["deepgram"]}
    )
    assert config.providers.deepgram is not None and config.providers.deepgram.api_key == "k"
