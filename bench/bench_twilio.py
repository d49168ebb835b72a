"""Twilio Media Streams per-frame wire work: one 20 ms μ-law frame (160 bytes).

``twilio_media_encode``: the outbound ``media`` text frame.  ``voxgate`` is
``TwilioStream.media_message`` (pre-built per-stream prefix + base64 + suffix);
baselines are ``json`` (``json.dumps`` of a dict, compact separators) and
``msgspec`` (``msgspec.json.encode`` of an outbound Struct, then to str).

``twilio_media_decode``: an inbound ``media`` text frame to an ``AudioIn``.
``voxgate`` is ``TwilioStream.receive`` (one msgspec tagged-union decode with
the base64 payload decoded in C, sequence and streamSid checks); the baseline
``json`` is ``json.loads`` + ``base64.b64decode`` + dict lookups.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from bench.conftest import Measure
from server.transport import AudioIn, CallStarted
from server.transports import twilio

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
FRAME = bytes((i * 37) & 0xFF for i in range(160))  # 20 ms of μ-law at 8 kHz

START = json.dumps(
    {
        "event": "start",
        "sequenceNumber": "1",
        "start": {
            "accountSid": "AC25e16e9a716a4a1786a7c83f58e30482",
            "streamSid": STREAM_SID,
            "callSid": "CA362ef51a2b1e4a4ca6bbd1c0f7e9a2c1",
            "tracks": ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {},
        },
        "streamSid": STREAM_SID,
    }
)


def started_stream() -> twilio.TwilioStream:
    stream = twilio.TwilioStream()
    assert isinstance(stream.receive(START), CallStarted)
    return stream


# ------------------------------------------------------------------ encode


def json_encoder() -> Callable[[bytes], str]:
    def encode(ulaw: bytes) -> str:
        message = {
            "event": "media",
            "streamSid": STREAM_SID,
            "media": {"payload": base64.b64encode(ulaw).decode("ascii")},
        }
        return json.dumps(message, separators=(",", ":"))

    return encode


def msgspec_encoder() -> Callable[[bytes], str]:
    encoder = msgspec.json.Encoder()

    def encode(ulaw: bytes) -> str:
        message = twilio.OutboundMedia(STREAM_SID, twilio.OutboundMediaInfo(ulaw))
        return encoder.encode(message).decode("utf-8")

    return encode


def voxgate_encoder() -> Callable[[bytes], str | None]:
    return started_stream().media_message


ENCODERS: dict[str, Callable[[], Callable[[bytes], Any]]] = {
    "voxgate": voxgate_encoder,
    "json": json_encoder,
    "msgspec": msgspec_encoder,
}


@pytest.mark.benchmark(group="twilio_media_encode")
@pytest.mark.parametrize("impl", list(ENCODERS))
def test_twilio_media_encode(measure: Measure, impl: str) -> None:
    encode = ENCODERS[impl]()
    expected = twilio.encode_media(STREAM_SID, FRAME)
    assert encode(FRAME) == expected
    measure(impl, encode, FRAME, frames=1)


# ------------------------------------------------------------------ decode

MEDIA_TEXT = json.dumps(
    {
        "event": "media",
        "sequenceNumber": "2",
        "media": {
            "track": "inbound",
            "chunk": "1",
            "timestamp": "20",
            "payload": base64.b64encode(FRAME).decode("ascii"),
        },
        "streamSid": STREAM_SID,
    }
)


def json_decoder() -> Callable[[str], AudioIn | None]:
    def decode(text: str) -> AudioIn | None:
        message = json.loads(text)
        if message.get("event") != "media" or message.get("streamSid") != STREAM_SID:
            return None
        media = message["media"]
        if media.get("track") != "inbound":
            return None
        payload = base64.b64decode(media["payload"], validate=True)
        return AudioIn(payload, "pcmu", 8000, int(media["timestamp"]))

    return decode


def voxgate_decoder() -> Callable[[str], object]:
    return started_stream().receive


DECODERS: dict[str, Callable[[], Callable[[str], object]]] = {
    "voxgate": voxgate_decoder,
    "json": json_decoder,
}


@pytest.mark.benchmark(group="twilio_media_decode")
@pytest.mark.parametrize("impl", list(DECODERS))
def test_twilio_media_decode(measure: Measure, impl: str) -> None:
    decode = DECODERS[impl]()
    assert decode(MEDIA_TEXT) == AudioIn(FRAME, "pcmu", 8000, 20)
    measure(impl, decode, MEDIA_TEXT, frames=1)
