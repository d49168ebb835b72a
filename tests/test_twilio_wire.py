"""Twilio Media Streams wire module: messages, per-stream state, TwiML, signatures.

The helpers below play the part of Twilio: they build the text frames Twilio
sends (field names, string-typed counters and nesting as documented) so every
test reads as a short script of one WebSocket.  Conformance items refer to
§12.2 of the telephony protocol spec.
"""

from __future__ import annotations

import base64
import json
import math
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import g711
from server.transport import AudioIn, CallStarted, Dtmf, Hangup, MarkPlayed
from server.transports import twilio
from server.transports.twilio import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    MAX_MESSAGE_BYTES,
    ConnectedMessage,
    DtmfMessage,
    MarkLedger,
    MarkMessage,
    MediaMessage,
    MessageTooLargeError,
    StartMessage,
    StopMessage,
    StreamFault,
    TwilioProtocolError,
    TwilioStream,
    UnknownEventError,
    compute_signature,
    decode,
    decode_payload,
    encode_clear,
    encode_mark,
    encode_media,
    twiml_connect_stream,
    validate_signature,
)

STREAM_SID = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL_SID = "CA362ef51a2b1e4a4ca6bbd1c0f7e9a2c1"
ACCOUNT_SID = "AC25e16e9a716a4a1786a7c83f58e30482"
SILENCE_20MS = b"\xff" * 160


# ------------------------------------------------------------ fake Twilio frames


def frame(message: dict[str, Any]) -> str:
    return json.dumps(message)


def connected(**extra: Any) -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0", **extra}


def start(
    seq: Any = "1",
    sid: str = STREAM_SID,
    tracks: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "event": "start",
        "sequenceNumber": seq,
        "start": {
            "accountSid": ACCOUNT_SID,
            "streamSid": sid,
            "callSid": CALL_SID,
            "tracks": tracks if tracks is not None else ["inbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": parameters if parameters is not None else {},
        },
        "streamSid": sid,
    }


def media(
    seq: Any,
    payload: bytes = SILENCE_20MS,
    *,
    chunk: Any = "1",
    timestamp: Any = "0",
    track: str = "inbound",
    sid: str = STREAM_SID,
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": seq,
        "media": {
            "track": track,
            "chunk": chunk,
            "timestamp": timestamp,
            "payload": base64.b64encode(payload).decode("ascii"),
        },
        "streamSid": sid,
    }


def dtmf(
    seq: Any, digit: str, track: str = "inbound_track", sid: str = STREAM_SID
) -> dict[str, Any]:
    return {
        "event": "dtmf",
        "streamSid": sid,
        "sequenceNumber": seq,
        "dtmf": {"track": track, "digit": digit},
    }


def mark(seq: Any, name: str, sid: str = STREAM_SID) -> dict[str, Any]:
    return {"event": "mark", "sequenceNumber": seq, "streamSid": sid, "mark": {"name": name}}


def stop(seq: Any, sid: str = STREAM_SID) -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": seq,
        "streamSid": sid,
        "stop": {"accountSid": ACCOUNT_SID, "callSid": CALL_SID},
    }


def started_stream(*, bidirectional: bool = True, **start_kwargs: Any) -> TwilioStream:
    stream = TwilioStream(bidirectional=bidirectional)
    assert stream.receive(frame(connected())) is None
    assert isinstance(stream.receive(frame(start(**start_kwargs))), CallStarted)
    return stream


class Sequencer:
    """Numbers frames the way Twilio does: ``start`` is 1, then +1 per message."""

    def __init__(self) -> None:
        self.seq = 1

    def __call__(self) -> str:
        self.seq += 1
        return str(self.seq)


# ------------------------------------------------------------------- decode


def test_decode_connected() -> None:
    message = decode(frame(connected()))
    assert message == ConnectedMessage(protocol="Call", version="1.0.0")


def test_decode_connected_without_protocol_is_tolerated() -> None:
    assert decode('{"event":"connected"}') == ConnectedMessage(protocol=None, version=None)


def test_decode_start_reads_every_field() -> None:
    message = decode(frame(start(parameters={"caller": "+15550100", "lang": "fr"})))
    assert isinstance(message, StartMessage)
    assert message.sequenceNumber == 1
    assert message.streamSid == STREAM_SID
    info = message.start
    assert (info.streamSid, info.callSid, info.accountSid) == (STREAM_SID, CALL_SID, ACCOUNT_SID)
    assert info.tracks == ["inbound"]
    assert info.customParameters == {"caller": "+15550100", "lang": "fr"}
    assert (info.mediaFormat.encoding, info.mediaFormat.sampleRate) == ("audio/x-mulaw", 8000)
    assert info.mediaFormat.channels == 1


def test_decode_media_decodes_base64_payload() -> None:
    ulaw = bytes(range(256)) + bytes(range(255, -1, -1))
    message = decode(frame(media("7", ulaw, chunk="6", timestamp="120")))
    assert isinstance(message, MediaMessage)
    assert message.sequenceNumber == 7
    assert (message.media.track, message.media.chunk, message.media.timestamp) == (
        "inbound",
        6,
        120,
    )
    assert message.media.payload == ulaw


def test_decode_dtmf_mark_stop() -> None:
    message = decode(frame(dtmf("5", "#")))
    assert isinstance(message, DtmfMessage)
    assert (message.dtmf.track, message.dtmf.digit, message.sequenceNumber) == (
        "inbound_track",
        "#",
        5,
    )
    message = decode(frame(mark("6", "reply-1")))
    assert isinstance(message, MarkMessage)
    assert message.mark.name == "reply-1"
    message = decode(frame(stop("9")))
    assert isinstance(message, StopMessage)
    assert (message.stop.accountSid, message.stop.callSid, message.sequenceNumber) == (
        ACCOUNT_SID,
        CALL_SID,
        9,
    )


def test_decode_accepts_bytes_and_str() -> None:
    text = frame(media("2"))
    assert decode(text) == decode(text.encode("utf-8"))


def test_string_counters_and_number_counters_decode_alike() -> None:
    as_strings = decode(frame(media("12", chunk="11", timestamp="200")))
    as_numbers = decode(frame(media(12, chunk=11, timestamp=200)))
    assert as_strings == as_numbers
    assert isinstance(as_numbers, MediaMessage)
    assert (as_numbers.sequenceNumber, as_numbers.media.chunk) == (12, 11)


def test_unknown_fields_are_ignored_at_every_level() -> None:
    message = start()
    message["extra"] = {"nested": [1, 2, 3]}
    message["start"]["newThing"] = True
    message["start"]["mediaFormat"]["bitDepth"] = 8
    decoded = decode(frame(message))
    assert isinstance(decoded, StartMessage)
    assert decoded.start.callSid == CALL_SID


def test_unknown_event_is_reported_as_such() -> None:
    with pytest.raises(UnknownEventError) as info:
        decode('{"event":"transcription","streamSid":"MZ1"}')
    assert info.value.event == "transcription"
    assert isinstance(info.value, TwilioProtocolError)
    assert "transcription" in str(info.value)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{not json", "invalid JSON"),
        ("", "invalid JSON"),
        ('{"event":"connected"} trailing', "invalid JSON"),
        (b"\xff\xfe{}", "invalid JSON"),
        ("[1, 2]", "Expected `object`"),
        ('"media"', "Expected `object`"),
        ('{"streamSid":"MZ1"}', "`event`"),
        ('{"event":5}', "$.event"),
    ],
)
def test_invalid_json_and_shapes_are_protocol_errors(data: str | bytes, reason: str) -> None:
    with pytest.raises(TwilioProtocolError) as info:
        decode(data)
    assert not isinstance(info.value, UnknownEventError)
    assert reason in str(info.value)


def _without(message: dict[str, Any], *path: str) -> dict[str, Any]:
    inner = message
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return message


@pytest.mark.parametrize(
    ("message", "where"),
    [
        (_without(start(), "streamSid"), "streamSid"),
        (_without(start(), "start"), "start"),
        (_without(start(), "start", "callSid"), "callSid"),
        (_without(media("2"), "media", "payload"), "payload"),
        (_without(media("2"), "media", "track"), "track"),
        (_without(media("2"), "streamSid"), "streamSid"),
        (_without(dtmf("2", "1"), "dtmf", "digit"), "digit"),
        (_without(mark("2", "m"), "mark", "name"), "name"),
        (_without(mark("2", "m"), "mark"), "mark"),
        (_without(stop("2"), "streamSid"), "streamSid"),
    ],
)
def test_missing_fields_are_protocol_errors(message: dict[str, Any], where: str) -> None:
    with pytest.raises(TwilioProtocolError, match=where):
        decode(frame(message))


@pytest.mark.parametrize(
    ("message", "where"),
    [
        ({**media("2"), "streamSid": 42}, r"\$\.streamSid"),
        ({**media("2"), "sequenceNumber": "two"}, r"\$\.sequenceNumber"),
        ({**media("2"), "sequenceNumber": "-3"}, r"\$\.sequenceNumber"),
        ({**media("2"), "sequenceNumber": True}, r"\$\.sequenceNumber"),
        ({**mark("2", "m"), "mark": {"name": 7}}, r"\$\.mark\.name"),
        (start(parameters={"n": 5}), r"customParameters"),
        (start(tracks="inbound"), r"\$\.start\.tracks"),  # type: ignore[arg-type]
    ],
)
def test_ill_typed_fields_are_protocol_errors(message: dict[str, Any], where: str) -> None:
    with pytest.raises(TwilioProtocolError, match=where):
        decode(frame(message))


@pytest.mark.parametrize("payload", ["not base64!", "AAE", "A===", "//8=\n//8="])
def test_bad_base64_is_a_protocol_error(payload: str) -> None:
    message = media("2")
    message["media"]["payload"] = payload
    with pytest.raises(TwilioProtocolError, match="base64"):
        decode(frame(message))
    with pytest.raises(TwilioProtocolError, match="base64"):
        decode_payload(payload)


def test_empty_payload_is_a_protocol_error() -> None:
    with pytest.raises(TwilioProtocolError, match="payload"):
        decode(frame(media("2", b"")))
    with pytest.raises(TwilioProtocolError, match="empty"):
        decode_payload("")


def test_any_payload_length_is_whole_samples() -> None:
    """μ-law is one byte per sample: odd lengths are fine."""
    for n in (1, 3, 159, 161):
        decoded = decode(frame(media("2", b"\x7f" * n)))
        assert isinstance(decoded, MediaMessage)
        assert len(decoded.media.payload) == n
        assert decode_payload(base64.b64encode(b"\x7f" * n)) == b"\x7f" * n


def _padded(message: dict[str, Any], n_bytes: int) -> bytes:
    """``message`` as JSON padded with trailing whitespace to exactly ``n_bytes``."""
    text = frame(message).encode("utf-8")
    return text + b" " * (n_bytes - len(text))


def test_message_of_exactly_64_kib_is_accepted() -> None:
    assert isinstance(decode(_padded(media("2"), MAX_MESSAGE_BYTES)), MediaMessage)
    assert isinstance(decode(_padded(media("2"), MAX_MESSAGE_BYTES).decode()), MediaMessage)


def test_message_over_64_kib_is_refused_before_parsing() -> None:
    # Valid JSON one byte too long, and garbage that would otherwise be invalid JSON:
    # both are refused for their size alone.
    for data in (_padded(media("2"), MAX_MESSAGE_BYTES + 1), b"{" * (MAX_MESSAGE_BYTES + 1)):
        with pytest.raises(MessageTooLargeError, match="limit"):
            decode(data)
        with pytest.raises(MessageTooLargeError):
            decode(data.decode("utf-8"))


def test_size_limit_counts_utf8_bytes_of_text() -> None:
    # 30 000 characters, 90 000 bytes in UTF-8.
    message = start(parameters={"note": "€" * 30_000})
    text = frame(message).replace("\\u20ac", "€")
    assert len(text) < MAX_MESSAGE_BYTES < len(text.encode("utf-8"))
    with pytest.raises(MessageTooLargeError):
        decode(text)


def test_lone_surrogate_in_text_is_a_protocol_error() -> None:
    with pytest.raises(TwilioProtocolError):
        decode('{"event":"mark","streamSid":"MZ1","mark":{"name":"\ud800"}}')
    with pytest.raises(TwilioProtocolError):
        decode('{"event":"mark","note":"' + "\ud800" * 20_000 + '"}')


# ----------------------------------------------------------------- outbound


def test_encode_media_is_exact() -> None:
    text = encode_media(STREAM_SID, b"\x00\x01\xfe\xff")
    assert text == (
        '{"event":"media","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
        '"media":{"payload":"AAH+/w=="}}'
    )
    assert isinstance(text, str)


def test_encode_mark_and_clear_are_exact() -> None:
    assert encode_mark(STREAM_SID, "reply-1") == (
        '{"event":"mark","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0",'
        '"mark":{"name":"reply-1"}}'
    )
    assert encode_clear(STREAM_SID) == (
        '{"event":"clear","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
    )


@given(sid=st.text(min_size=1, max_size=40), ulaw=st.binary(min_size=1, max_size=400))
def test_media_template_matches_struct_encoding_for_any_sid(sid: str, ulaw: bytes) -> None:
    """The byte template is the msgspec encoding of the same message, escapes included."""
    struct = twilio.OutboundMedia(streamSid=sid, media=twilio.OutboundMediaInfo(payload=ulaw))
    text = encode_media(sid, ulaw)
    assert text == msgspec.json.encode(struct).decode("utf-8")
    assert json.loads(text) == {
        "event": "media",
        "streamSid": sid,
        "media": {"payload": base64.b64encode(ulaw).decode("ascii")},
    }


@given(sid=st.text(min_size=1, max_size=40), name=st.text(min_size=1, max_size=40))
def test_mark_and_clear_round_trip_any_text(sid: str, name: str) -> None:
    assert json.loads(encode_mark(sid, name)) == {
        "event": "mark",
        "streamSid": sid,
        "mark": {"name": name},
    }
    assert json.loads(encode_clear(sid)) == {"event": "clear", "streamSid": sid}


def test_outbound_encoders_refuse_empty_values() -> None:
    with pytest.raises(ValueError, match="payload is empty"):
        encode_media(STREAM_SID, b"")
    with pytest.raises(ValueError, match="streamSid"):
        encode_media("", b"\xff")
    with pytest.raises(ValueError, match="mark name"):
        encode_mark(STREAM_SID, "")
    with pytest.raises(ValueError, match="streamSid"):
        encode_clear("")


# ------------------------------------------------------- §12.2 conformance


def test_c1_connected_then_start_starts_the_call() -> None:
    stream = TwilioStream()
    assert stream.receive(frame(connected())) is None
    assert (stream.protocol, stream.version) == ("Call", "1.0.0")
    event = stream.receive(frame(start(parameters={"agent": "echo"})))
    assert event == CallStarted(
        call_id=CALL_SID,
        stream_id=STREAM_SID,
        codec="pcmu",
        rate_hz=8000,
        parameters={"agent": "echo"},
    )
    assert stream.started and stream.can_send
    assert (stream.stream_sid, stream.call_sid, stream.account_sid) == (
        STREAM_SID,
        CALL_SID,
        ACCOUNT_SID,
    )


def test_c1_connected_without_protocol_is_tolerated() -> None:
    stream = TwilioStream()
    assert stream.receive('{"event":"connected"}') is None
    assert isinstance(stream.receive(frame(start())), CallStarted)


def test_c1_start_without_connected_is_tolerated() -> None:
    stream = TwilioStream()
    assert isinstance(stream.receive(frame(start())), CallStarted)


def test_c1_media_before_start_is_ignored_not_fatal() -> None:
    stream = TwilioStream()
    stream.receive(frame(connected()))
    fault = stream.receive(frame(media("1")))
    assert fault == StreamFault("media before start", None)
    for early in (dtmf("1", "5"), mark("1", "m")):
        result = stream.receive(frame(early))
        assert isinstance(result, StreamFault)
        assert result.close_code is None
        assert "before start" in result.reason
    assert stream.counters.bad_messages == 3
    # The stream is still usable.
    assert isinstance(stream.receive(frame(start(seq="4"))), CallStarted)
    assert isinstance(stream.receive(frame(media("5"))), AudioIn)


def test_c1_second_start_closes_with_policy_violation() -> None:
    stream = started_stream()
    fault = stream.receive(frame(start(seq="2")))
    assert isinstance(fault, StreamFault)
    assert fault.close_code == CLOSE_POLICY_VIOLATION
    assert "second start" in fault.reason


def test_c1_stop_before_start_closes() -> None:
    stream = TwilioStream()
    fault = stream.receive(frame(stop("1")))
    assert isinstance(fault, StreamFault)
    assert fault.close_code == CLOSE_POLICY_VIOLATION


def test_c1_duplicate_connected_is_ignored() -> None:
    stream = TwilioStream()
    assert stream.receive(frame(connected())) is None
    fault = stream.receive(frame(connected()))
    assert isinstance(fault, StreamFault)
    assert fault.close_code is None


def test_start_with_mismatched_stream_sids_closes() -> None:
    message = start()
    message["start"]["streamSid"] = "MZother"
    fault = TwilioStream().receive(frame(message))
    assert isinstance(fault, StreamFault)
    assert fault.close_code == CLOSE_POLICY_VIOLATION


@pytest.mark.parametrize(
    "media_format",
    [
        {"encoding": "audio/x-alaw", "sampleRate": 8000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 16000, "channels": 1},
        {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 2},
    ],
)
def test_start_with_other_media_format_closes(media_format: dict[str, Any]) -> None:
    message = start()
    message["start"]["mediaFormat"] = media_format
    stream = TwilioStream()
    fault = stream.receive(frame(message))
    assert isinstance(fault, StreamFault)
    assert fault.close_code == CLOSE_POLICY_VIOLATION
    assert "media format" in fault.reason
    assert not stream.started


def test_start_without_optional_fields_assumes_twilio_defaults() -> None:
    message = start()
    for key in ("mediaFormat", "customParameters", "accountSid", "tracks"):
        del message["start"][key]
    del message["sequenceNumber"]
    stream = TwilioStream()
    assert stream.receive(frame(message)) == CallStarted(CALL_SID, STREAM_SID, "pcmu", 8000, {})
    assert stream.can_send


def test_c2_counters_as_strings_or_numbers_and_gaps_are_counted() -> None:
    stream = TwilioStream()
    stream.receive(frame(connected()))
    stream.receive(frame(start(seq="1")))
    first = stream.receive(frame(media("2", chunk="1", timestamp="0")))
    second = stream.receive(frame(media(3, chunk=2, timestamp=20)))
    assert isinstance(first, AudioIn) and isinstance(second, AudioIn)
    assert (first.timestamp_ms, second.timestamp_ms) == (0, 20)
    assert stream.counters.sequence_gaps == 0
    # Messages 4 and 5 were lost: counted, and the audio still flows.
    after_gap = stream.receive(frame(media("6", chunk="5", timestamp="80")))
    assert isinstance(after_gap, AudioIn)
    assert stream.counters.sequence_gaps == 1
    assert isinstance(stream.receive(frame(media("7"))), AudioIn)
    assert stream.counters.sequence_gaps == 1
    # A repeat (or reordering) is a gap too.
    assert isinstance(stream.receive(frame(media("7"))), AudioIn)
    assert stream.counters.sequence_gaps == 2
    assert stream.counters.media_in == 5


def test_c2_media_without_chunk_or_timestamp_has_no_timestamp() -> None:
    stream = started_stream()
    message = media("2")
    del message["media"]["chunk"], message["media"]["timestamp"]
    event = stream.receive(frame(message))
    assert isinstance(event, AudioIn)
    assert event.timestamp_ms is None


def test_c3_custom_parameters_are_handed_over_as_strings() -> None:
    parameters = {"tenant": "acme", "token": "s3cr3t", "empty": "", "unicode": "Zoë ☎"}
    stream = TwilioStream()
    event = stream.receive(frame(start(parameters=parameters)))
    assert isinstance(event, CallStarted)
    assert event.parameters == parameters
    assert stream.parameters == parameters


def test_c4_outbound_media_is_raw_ulaw_with_the_start_stream_sid() -> None:
    stream = started_stream()
    tone = bytearray()
    for i in range(160):
        sample = round(12000 * math.sin(2 * math.pi * 440 * i / 8000))
        tone += sample.to_bytes(2, "little", signed=True)
    ulaw = g711.ulaw_encode(bytes(tone))
    text = stream.media_message(ulaw)
    assert text is not None
    sent = json.loads(text)
    assert list(sent) == ["event", "streamSid", "media"]
    assert sent["event"] == "media"
    assert sent["streamSid"] == STREAM_SID
    assert list(sent["media"]) == ["payload"]
    payload = base64.b64decode(sent["media"]["payload"], validate=True)
    assert payload == ulaw
    assert len(payload) == 160
    assert payload[:4] not in (b"RIFF", b".snd")
    assert text == encode_media(STREAM_SID, ulaw)
    assert stream.counters.media_out == 1


def test_c4_outbound_media_refuses_an_empty_frame() -> None:
    with pytest.raises(ValueError, match="empty"):
        started_stream().media_message(b"")


def test_c5_outbound_mark_is_exact_and_names_are_unique() -> None:
    stream = started_stream()
    text = stream.mark_message("reply-1")
    assert text == encode_mark(STREAM_SID, "reply-1")
    names = {stream.next_mark_name() for _ in range(1000)}
    assert len(names) == 1000
    sent = [json.loads(stream.mark_message() or "") for _ in range(10)]
    generated = [message["mark"]["name"] for message in sent]
    assert len(set(generated) | {"reply-1"}) == 11
    assert all(
        m == {"event": "mark", "streamSid": STREAM_SID, "mark": {"name": n}}
        for m, n in zip(sent, generated, strict=True)
    )
    with pytest.raises(ValueError, match="already awaiting"):
        stream.mark_message("reply-1")
    with pytest.raises(ValueError, match="empty"):
        stream.mark_message("")
    assert stream.counters.marks_sent == 11


def test_c5_generated_names_skip_names_already_outstanding() -> None:
    stream = started_stream()
    stream.mark_message("vg1")
    text = stream.mark_message()
    assert text is not None
    assert json.loads(text)["mark"]["name"] == "vg2"


def test_c6_clear_is_sent_even_with_nothing_queued() -> None:
    stream = started_stream()
    assert stream.clear_message() == (
        '{"event":"clear","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0"}'
    )
    assert stream.counters.clears_sent == 1


def test_c7_marks_pending_at_clear_come_back_as_cleared() -> None:
    stream = started_stream()
    seq = Sequencer()
    stream.media_message(SILENCE_20MS)
    stream.mark_message("a")
    stream.media_message(SILENCE_20MS)
    stream.mark_message("b")
    stream.media_message(SILENCE_20MS)
    stream.mark_message("c")
    # Twilio plays up to "a", then we barge in.
    assert stream.receive(frame(mark(seq(), "a"))) == MarkPlayed("a", True)
    assert stream.marks.pending() == ["b", "c"]
    stream.clear_message()
    assert stream.marks.pending() == []
    # Twilio echoes every remaining mark after the clear.
    assert stream.receive(frame(mark(seq(), "b"))) == MarkPlayed("b", False)
    assert stream.receive(frame(mark(seq(), "c"))) == MarkPlayed("c", False)
    # A mark sent after the clear plays normally.
    stream.mark_message("d")
    assert stream.receive(frame(mark(seq(), "d"))) == MarkPlayed("d", True)
    counters = stream.counters
    assert (counters.marks_played, counters.marks_cleared, counters.marks_unknown) == (2, 2, 0)
    assert counters.sequence_gaps == 0


def test_c8_mark_with_nothing_queued_is_echoed_at_once() -> None:
    stream = started_stream()
    stream.mark_message("empty-queue")
    assert stream.receive(frame(mark("2", "empty-queue"))) == MarkPlayed("empty-queue", True)
    assert len(stream.marks) == 0


def test_c9_unknown_and_repeated_mark_names_are_ignored() -> None:
    stream = started_stream()
    stream.mark_message("real")
    assert stream.receive(frame(mark("2", "never-sent"))) is None
    assert stream.marks.pending() == ["real"]
    assert stream.receive(frame(mark("3", "real"))) == MarkPlayed("real", True)
    assert stream.receive(frame(mark("4", "real"))) is None
    assert stream.counters.marks_unknown == 2
    assert stream.counters.bad_messages == 0


@pytest.mark.parametrize("bidirectional", [True, False])
def test_c10_unidirectional_stream_sends_nothing(bidirectional: bool) -> None:
    tracks = ["inbound", "outbound"] if bidirectional else ["inbound"]
    stream = started_stream(bidirectional=bidirectional, tracks=tracks)
    assert not stream.can_send
    assert stream.media_message(SILENCE_20MS) is None
    assert stream.mark_message("m") is None
    assert stream.mark_message() is None
    assert stream.clear_message() is None
    assert len(stream.marks) == 0
    assert stream.counters.media_out == stream.counters.marks_sent == 0


def test_c10_outbound_only_track_is_unidirectional() -> None:
    stream = started_stream(tracks=["outbound"])
    assert not stream.can_send
    assert stream.receive(frame(media("2", track="outbound"))) is None


def test_nothing_is_sent_before_start() -> None:
    stream = TwilioStream()
    stream.receive(frame(connected()))
    assert not stream.can_send
    assert stream.media_message(SILENCE_20MS) is None
    assert stream.mark_message() is None
    assert stream.clear_message() is None


@pytest.mark.parametrize("digit", [*"0123456789*#ABCD"])
def test_c11_dtmf_on_inbound_track_is_a_digit(digit: str) -> None:
    stream = started_stream()
    assert stream.receive(frame(dtmf("2", digit))) == Dtmf(digit)


def test_c11_lower_case_letters_are_the_same_keys() -> None:
    assert started_stream().receive(frame(dtmf("2", "b"))) == Dtmf("B")


@pytest.mark.parametrize(
    ("digit", "track"),
    [
        ("E", "inbound_track"),
        ("12", "inbound_track"),
        ("", "inbound_track"),
        ("5", "outbound_track"),
        ("5", "inbound"),
    ],
)
def test_c11_unknown_digits_and_tracks_are_ignored(digit: str, track: str) -> None:
    stream = started_stream()
    assert stream.receive(frame(dtmf("2", digit, track))) is None
    assert stream.counters.dtmf_ignored == 1
    assert stream.counters.bad_messages == 0


def test_c12_stop_ends_the_session() -> None:
    stream = started_stream()
    stream.mark_message("m")
    assert stream.receive(frame(stop("2"))) == Hangup("stop")
    assert stream.stopped and not stream.can_send
    assert stream.media_message(SILENCE_20MS) is None
    assert stream.mark_message() is None
    assert stream.clear_message() is None
    late = stream.receive(frame(media("3")))
    assert isinstance(late, StreamFault)
    assert late.close_code is None
    assert "after stop" in late.reason
    assert stream.receive(frame(stop("4"))) == StreamFault("stop after stop", None)


def test_c14_both_tracks_separates_inbound_from_outbound() -> None:
    stream = started_stream(bidirectional=False, tracks=["inbound", "outbound"])
    caller = b"\x10" * 160
    ours = b"\x20" * 160
    events = [
        stream.receive(frame(media("2", caller, track="inbound"))),
        stream.receive(frame(media("3", ours, track="outbound"))),
        stream.receive(frame(media("4", caller, track="inbound", chunk="2", timestamp="20"))),
    ]
    audio = [event for event in events if event is not None]
    assert all(isinstance(event, AudioIn) and event.payload == caller for event in audio)
    assert len(audio) == 2
    assert (stream.counters.media_in, stream.counters.media_ignored) == (2, 1)


# ---------------------------------------------------------- bad input at the stream


def test_wrong_stream_sid_is_ignored_with_a_reason() -> None:
    stream = started_stream()
    stream.mark_message("m")
    for message in (
        media("2", sid="MZwrong"),
        mark("3", "m", sid="MZwrong"),
        dtmf("4", "1", sid="MZwrong"),
        stop("5", sid="MZwrong"),
    ):
        fault = stream.receive(frame(message))
        assert isinstance(fault, StreamFault)
        assert fault.close_code is None
        assert "MZwrong" in fault.reason
    assert stream.marks.pending() == ["m"]
    assert not stream.stopped
    assert stream.counters.bad_messages == 4
    assert stream.counters.media_in == 0


@pytest.mark.parametrize(
    "data",
    [
        "{oops",
        '{"event":"bogus"}',
        '{"event":"media","streamSid":"MZ1"}',
        frame({**media("2"), "media": {"track": "inbound", "payload": "%%%"}}),
    ],
)
def test_undecodable_frames_are_ignored(data: str) -> None:
    stream = started_stream()
    fault = stream.receive(data)
    assert isinstance(fault, StreamFault)
    assert fault.close_code is None
    assert stream.counters.bad_messages == 1
    assert isinstance(stream.receive(frame(media("3"))), AudioIn)


def test_oversize_frame_closes_with_message_too_big() -> None:
    stream = started_stream()
    fault = stream.receive(b" " * (MAX_MESSAGE_BYTES + 1))
    assert isinstance(fault, StreamFault)
    assert fault.close_code == CLOSE_MESSAGE_TOO_BIG


def test_counters_count_every_frame() -> None:
    stream = started_stream()
    stream.receive("garbage")
    stream.receive(frame(media("3")))
    assert stream.counters.messages == 4
    assert stream.counters.bad_messages == 1


# ------------------------------------------------------------- mark ledger


def test_ledger_forgets_the_oldest_beyond_its_bound() -> None:
    ledger = MarkLedger(max_outstanding=3)
    for name in "abcd":
        ledger.add(name)
    assert ledger.pending() == ["b", "c", "d"]
    assert ledger.resolve("a") is None
    ledger.clear()
    ledger.add("e")
    assert ledger.pending() == ["e"]
    assert [ledger.resolve(n) for n in "bcde"] == [None, False, False, True]
    with pytest.raises(ValueError, match=">= 1"):
        MarkLedger(max_outstanding=0)


class FakeTwilioPlayer:
    """Twilio's side of marks: a FIFO of sent marks; playing echoes the head,
    ``clear`` echoes everything still queued."""

    def __init__(self) -> None:
        self.queue: deque[str] = deque()
        self.truth: dict[str, bool] = {}

    def on_sent(self, text: str) -> list[str]:
        message = json.loads(text)
        if message["event"] == "mark":
            self.queue.append(message["mark"]["name"])
            return []
        assert message["event"] == "clear"
        echoed = list(self.queue)
        self.truth.update(dict.fromkeys(echoed, False))
        self.queue.clear()
        return echoed

    def play_next(self) -> list[str]:
        if not self.queue:
            return []
        name = self.queue.popleft()
        self.truth[name] = True
        return [name]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["mark", "clear", "play", "media"]), max_size=60))
def test_mark_classification_matches_what_the_far_end_did(ops: list[str]) -> None:
    """Property (items 7-8): every echo is classified exactly as the fake played or cleared it."""
    stream = started_stream()
    player = FakeTwilioPlayer()
    seq = Sequencer()
    reported: dict[str, bool] = {}
    for op in ops:
        echoes: list[str] = []
        if op == "mark":
            echoes = player.on_sent(stream.mark_message() or "")
        elif op == "clear":
            echoes = player.on_sent(stream.clear_message() or "")
        elif op == "play":
            echoes = player.play_next()
        else:
            assert stream.media_message(SILENCE_20MS) is not None
        for name in echoes:
            event = stream.receive(frame(mark(seq(), name)))
            assert isinstance(event, MarkPlayed)
            reported[event.name] = event.played
    assert reported == player.truth
    assert sorted(stream.marks.pending()) == sorted(player.queue)
    assert stream.counters.marks_played == sum(player.truth.values())
    assert stream.counters.sequence_gaps == 0


# ------------------------------------------------------------------ fuzzing

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)

valid_frames = st.sampled_from(
    [connected(), start(), media("2"), dtmf("3", "7"), mark("4", "m"), stop("5")]
)


@st.composite
def mutated_frames(draw: st.DrawFn) -> str:
    """A valid frame with one field replaced, removed or added."""
    message = json.loads(json.dumps(draw(valid_frames)))
    target = message
    while True:
        keys = list(target)
        key = draw(st.sampled_from(keys))
        if isinstance(target[key], dict) and target[key] and draw(st.booleans()):
            target = target[key]
            continue
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            target[key] = draw(json_values)
        elif action == "remove":
            del target[key]
        else:
            target[draw(st.text(max_size=10))] = draw(json_values)
        return json.dumps(message)


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=300) | st.text(max_size=300) | json_values.map(json.dumps) | mutated_frames()
)
def test_decode_fuzz_raises_only_protocol_errors(data: str | bytes) -> None:
    try:
        message = decode(data)
    except TwilioProtocolError:
        return
    assert isinstance(
        message,
        ConnectedMessage | StartMessage | MediaMessage | DtmfMessage | MarkMessage | StopMessage,
    )


@st.composite
def frame_scripts(draw: st.DrawFn) -> list[str]:
    """Plausible and implausible frame orders with right and wrong ids and counters."""
    builders: list[Callable[[], dict[str, Any]]] = [
        connected,
        lambda: start(
            seq=draw(st.integers(0, 9)),
            sid=draw(st.sampled_from([STREAM_SID, "MZx"])),
            tracks=draw(st.sampled_from([["inbound"], ["inbound", "outbound"]])),
        ),
        lambda: media(
            draw(st.integers(0, 9)),
            draw(st.binary(min_size=1, max_size=8)),
            track=draw(st.sampled_from(["inbound", "outbound"])),
            sid=draw(st.sampled_from([STREAM_SID, "MZx"])),
        ),
        lambda: dtmf(str(draw(st.integers(0, 9))), draw(st.sampled_from(["1", "#", "Z"]))),
        lambda: mark(draw(st.integers(0, 9)), draw(st.sampled_from(["vg1", "vg2", "x"]))),
        lambda: stop(str(draw(st.integers(0, 9)))),
    ]
    script = []
    for _ in range(draw(st.integers(0, 25))):
        kind = draw(st.integers(0, len(builders)))
        if kind == len(builders):
            script.append(draw(st.text(max_size=30) | mutated_frames()))
        else:
            script.append(frame(builders[kind]()))
    return script


@settings(max_examples=300, deadline=None)
@given(frame_scripts(), st.booleans(), st.lists(st.sampled_from(["media", "mark", "clear"])))
def test_stream_fuzz_never_raises_and_keeps_its_invariants(
    script: list[str], bidirectional: bool, sends: list[str]
) -> None:
    stream = TwilioStream(bidirectional=bidirectional)
    results = []
    for i, data in enumerate(script):
        was_stopped = stream.stopped
        result = stream.receive(data)
        results.append(result)
        assert result is None or isinstance(
            result, CallStarted | AudioIn | Dtmf | MarkPlayed | Hangup | StreamFault
        )
        if was_stopped:
            assert isinstance(result, StreamFault)
        if isinstance(result, AudioIn):
            assert result.payload and result.codec == "pcmu" and result.rate_hz == 8000
        if i < len(sends) and stream.can_send:
            op = sends[i]
            text = (
                stream.media_message(b"\xff")
                if op == "media"
                else stream.mark_message()
                if op == "mark"
                else stream.clear_message()
            )
            assert text is not None and json.loads(text)["streamSid"] == stream.stream_sid
    assert sum(isinstance(r, CallStarted) for r in results) <= 1
    assert sum(isinstance(r, Hangup) for r in results) <= 1
    assert stream.counters.messages == len(script)
    assert stream.counters.bad_messages == sum(isinstance(r, StreamFault) for r in results)
    if not stream.started or (stream.tracks and "outbound" in stream.tracks):
        assert stream.counters.media_out == stream.counters.marks_sent == 0


# ---------------------------------------------------------------------- TwiML


def test_twiml_connect_stream_is_exact() -> None:
    assert twiml_connect_stream("wss://voice.example.com/twilio", {"from": "+15550100"}) == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<Stream url="wss://voice.example.com/twilio">'
        '<Parameter name="from" value="+15550100"/>'
        "</Stream></Connect></Response>"
    )
    assert twiml_connect_stream("wss://h/twilio", {}) == (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
        '<Stream url="wss://h/twilio"></Stream></Connect></Response>'
    )


xml_text = st.text(st.characters(codec="utf-8"), max_size=60).filter(
    lambda s: all(c in "\t\n\r" or (ord(c) >= 0x20 and c not in "\ufffe\uffff") for c in s)
)


@given(st.dictionaries(xml_text.filter(bool), xml_text, max_size=5), xml_text)
def test_twiml_parameters_survive_an_xml_parser_exactly(
    parameters: dict[str, str], path: str
) -> None:
    url = "wss://example.com/" + path.replace("?", "")
    root = ET.fromstring(twiml_connect_stream(url, parameters).encode("utf-8"))
    assert root.tag == "Response"
    (connect,) = list(root)
    (stream,) = list(connect)
    assert (connect.tag, stream.tag, stream.get("url")) == ("Connect", "Stream", url)
    assert {p.get("name"): p.get("value") for p in stream} == parameters
    assert all(p.tag == "Parameter" for p in stream)


def test_twiml_parameter_length_limit() -> None:
    twiml_connect_stream("wss://h/t", {"n": "v" * 498})
    with pytest.raises(ValueError, match="fewer than 500"):
        twiml_connect_stream("wss://h/t", {"n": "v" * 499})
    with pytest.raises(ValueError, match="empty"):
        twiml_connect_stream("wss://h/t", {"": "v"})


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ws://h/twilio", "wss://"),
        ("https://h/twilio", "wss://"),
        ("/twilio", "wss://"),
        ("wss://", "wss://"),
        ("wss://h/twilio?token=1", "query string"),
    ],
)
def test_twiml_refuses_urls_twilio_cannot_use(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        twiml_connect_stream(url, {})


def test_twiml_refuses_characters_xml_cannot_carry() -> None:
    with pytest.raises(ValueError, match="XML"):
        twiml_connect_stream("wss://h/t", {"k": "a\x00b"})
    with pytest.raises(ValueError, match="XML"):
        twiml_connect_stream("wss://h/t", {"k\x1b": "v"})


# ---------------------------------------------------------------- signatures

# The example of Twilio's request-validation documentation (two editions).
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_TOKEN = "12345"


def doc_params(caller: str) -> dict[str, str]:
    return {
        "CallSid": "CA1234567890ABCDE",
        "Caller": caller,
        "Digits": "1234",
        "From": caller,
        "To": "+18005551212",
    }


@pytest.mark.parametrize(
    ("caller", "signature"),
    [
        ("+14158675309", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        ("+12349013030", "0/KCTR6DLpKmkAf8muzZqo1nDgQ="),
    ],
)
def test_signature_matches_twilio_documented_vector(caller: str, signature: str) -> None:
    assert compute_signature(DOC_TOKEN, DOC_URL, doc_params(caller)) == signature
    assert validate_signature(DOC_TOKEN, DOC_URL, doc_params(caller), signature)


def test_signature_of_the_websocket_upgrade_covers_the_url_only() -> None:
    url = "wss://voice.example.com/twilio"
    signature = compute_signature("token", url, None)
    assert signature == compute_signature("token", url, {})
    assert validate_signature("token", url, None, signature)
    assert not validate_signature("token", url + "/", None, signature)
    assert not validate_signature("token", "ws://voice.example.com/twilio", None, signature)


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6), st.randoms())
def test_signature_does_not_depend_on_parameter_order(params: dict[str, str], rng: Any) -> None:
    items = list(params.items())
    rng.shuffle(items)
    assert compute_signature("tok", DOC_URL, dict(items)) == compute_signature(
        "tok", DOC_URL, params
    )


def test_any_change_breaks_the_signature() -> None:
    params = doc_params("+14158675309")
    good = compute_signature(DOC_TOKEN, DOC_URL, params)
    assert not validate_signature("12346", DOC_URL, params, good)
    assert not validate_signature(DOC_TOKEN, DOC_URL + "&x=1", params, good)
    assert not validate_signature(DOC_TOKEN, DOC_URL, {**params, "Digits": "9999"}, good)
    assert not validate_signature(DOC_TOKEN, DOC_URL, {**params, "Extra": ""}, good)
    assert not validate_signature(DOC_TOKEN, DOC_URL, {**params, "extra": "x"}, good)
    assert not validate_signature(DOC_TOKEN, DOC_URL, None, good)
    assert not validate_signature(DOC_TOKEN, DOC_URL, params, good[:-1])
    assert not validate_signature(DOC_TOKEN, DOC_URL, params, "")
    assert not validate_signature(DOC_TOKEN, DOC_URL, params, "é" + good[1:])


def test_empty_auth_token_is_refused() -> None:
    with pytest.raises(ValueError, match="auth token"):
        compute_signature("", DOC_URL, None)
    with pytest.raises(ValueError, match="auth token"):
        validate_signature("", DOC_URL, None, "x")
