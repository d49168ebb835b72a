"""The ``voxgate`` data channel's wire format (server/transports/datachannel.py).

Server -> page: each call event encodes to the JSON object the module documents.
Page -> server: each command decodes; every other message raises
:class:`CommandError` (and nothing else escapes :func:`decode_command`).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.callevents import (
    CallEnded,
    CallEvent,
    StateChanged,
    Transcript,
    TurnLatency,
    TurnStages,
)
from server.transports.datachannel import (
    MAX_DIGITS,
    MAX_MESSAGE_BYTES,
    MAX_TEXT_CHARS,
    CommandError,
    DtmfCommand,
    HangupCommand,
    TextCommand,
    decode_command,
    encode_error,
    encode_event,
    encode_hello,
)

# -- server -> page ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (StateChanged("user_speaking"), {"type": "state", "state": "user_speaking"}),
        (StateChanged("listening"), {"type": "state", "state": "listening"}),
        (
            Transcript("user", "hello there", final=False),
            {
                "type": "transcript",
                "role": "user",
                "text": "hello there",
                "final": False,
                "generation": None,
            },
        ),
        (
            Transcript("assistant", "Hi! \u00e7a va? \U0001f600", final=True, generation=3),
            {
                "type": "transcript",
                "role": "assistant",
                "text": "Hi! \u00e7a va? \U0001f600",
                "final": True,
                "generation": 3,
            },
        ),
        (TurnLatency(4, 612.349), {"type": "turn", "generation": 4, "latency_ms": 612.3}),
        (TurnLatency(5, 80.0), {"type": "turn", "generation": 5, "latency_ms": 80.0}),
        (
            TurnStages(
                2,
                "reply",
                "completed",
                {"stt_ms": 120.5, "llm_ms": 300.0},
                12.25,
                {"stt": "sphinx", "tts": "espeak"},
            ),
            {
                "type": "stages",
                "generation": 2,
                "kind": "reply",
                "outcome": "completed",
                "stages_ms": {"stt_ms": 120.5, "llm_ms": 300.0},
                "overhead_ms": 12.25,
                "providers": {"stt": "sphinx", "tts": "espeak"},
            },
        ),
        (
            TurnStages(7, "filler", "cancelled", {}, None, {}),
            {
                "type": "stages",
                "generation": 7,
                "kind": "filler",
                "outcome": "cancelled",
                "stages_ms": {},
                "overhead_ms": None,
                "providers": {},
            },
        ),
        (CallEnded("remote_hangup"), {"type": "bye", "reason": "remote_hangup"}),
    ],
)
def test_every_call_event_encodes_to_its_documented_json(
    event: CallEvent, expected: dict[str, Any]
) -> None:
    text = encode_event(event)
    assert isinstance(text, str)
    decoded = json.loads(text)
    assert decoded == expected
    assert next(iter(decoded)) == "type"  # the tag leads, as a page reading a stream expects


def test_hello_and_error_messages() -> None:
    assert json.loads(encode_hello("abc123")) == {"type": "hello", "call_id": "abc123"}
    reason = 'not DTMF keys: "x"'
    assert json.loads(encode_error(reason)) == {"type": "error", "reason": reason}


# -- page -> server ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('{"type":"text","text":"what time is it?"}', TextCommand("what time is it?")),
        (b'{"type":"text","text":"caf\xc3\xa9"}', TextCommand("caf\u00e9")),
        ('{"text":" hi ","type":"text"}', TextCommand(" hi ")),
        (
            '{"type":"text","text":"' + "x" * MAX_TEXT_CHARS + '"}',
            TextCommand("x" * MAX_TEXT_CHARS),
        ),
        ('{"type":"dtmf","digits":"12"}', DtmfCommand("12")),
        ('{"type":"dtmf","digits":"0123456789*#ABCD"}', DtmfCommand("0123456789*#ABCD")),
        ('{"type":"dtmf","digits":"' + "9" * MAX_DIGITS + '"}', DtmfCommand("9" * MAX_DIGITS)),
        ('{"type":"hangup"}', HangupCommand()),
        (b'  {"type": "hangup"}  ', HangupCommand()),
    ],
)
def test_every_command_decodes(message: str | bytes, expected: object) -> None:
    assert decode_command(message) == expected


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("", "bad message"),
        (b"", "bad message"),
        ("not json", "bad message"),
        ('{"type":"text","text":"unterminated', "bad message"),
        ("null", "bad message"),
        ("[]", "bad message"),
        ('"hangup"', "bad message"),
        ("{}", "bad message"),
        ('{"type":"shout","text":"hi"}', "bad message"),
        ('{"type":7}', "bad message"),
        ('{"type":"text"}', "bad message"),
        ('{"type":"dtmf"}', "bad message"),
        ('{"type":"text","text":7}', "bad message"),
        ('{"type":"dtmf","digits":["1"]}', "bad message"),
        ('{"type":"hangup","reason":"bye"}', "bad message"),
        ('{"type":"text","text":"hi","extra":1}', "bad message"),
        ('{"type":"dtmf","digits":"1","duration_ms":100}', "bad message"),
        ('{"type":"text","text":""}', "empty text"),
        ('{"type":"text","text":" \\n\\t\u00a0"}', "empty text"),
        ('{"type":"text","text":"' + "x" * (MAX_TEXT_CHARS + 1) + '"}', "text too long"),
        ('{"type":"dtmf","digits":""}', "digits must be 1..32"),
        ('{"type":"dtmf","digits":"' + "1" * (MAX_DIGITS + 1) + '"}', "digits must be 1..32"),
        ('{"type":"dtmf","digits":"12x"}', "not DTMF keys: 'x'"),
        ('{"type":"dtmf","digits":"1 2"}', "not DTMF keys: ' '"),
        ('{"type":"dtmf","digits":"abcd"}', "not DTMF keys: 'abcd'"),
        ('{"type":"dtmf","digits":"\u0661"}', "not DTMF keys"),
        ('{"type":"text","text":"' + "y" * MAX_MESSAGE_BYTES + '"}', "message too large"),
        (b"{" * (MAX_MESSAGE_BYTES + 1), "message too large"),
    ],
)
def test_every_bad_message_is_a_command_error_with_its_reason(
    message: str | bytes, reason: str
) -> None:
    with pytest.raises(CommandError, match=reason.replace("*", r"\*")) as refused:
        decode_command(message)
    assert str(refused.value)


@pytest.mark.parametrize(
    "message",
    [
        b'{"type":"text","text":"\xff"}',
        b'{"type":"dtmf","digits":"1\xc3"}',
        b'{"type":"\xed\xa0\x80"}',
        '{"type":"text","text":"\ud800"}',
    ],
)
def test_invalid_unicode_is_a_command_error(message: str | bytes) -> None:
    with pytest.raises(CommandError):
        decode_command(message)


# -- fuzzing -------------------------------------------------------------------------------


def _decodes_or_refuses(message: str | bytes) -> None:
    try:
        command = decode_command(message)
    except CommandError as exc:
        assert str(exc)
        return
    assert isinstance(command, TextCommand | DtmfCommand | HangupCommand)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
@example('{"type":"dtmf","digits":"1"}')
def test_fuzz_random_text(text: str) -> None:
    _decodes_or_refuses(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300).map(str.encode))
def test_fuzz_random_utf8_bytes(data: bytes) -> None:
    _decodes_or_refuses(data)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["type", "text", "digits", "reason", "x"]),
        st.sampled_from(["text", "dtmf", "hangup", "hello", "", "12", "#*", " "]) | _json_values,
        max_size=4,
    ),
    st.booleans(),
)
def test_fuzz_json_objects_shaped_like_commands(obj: dict[str, Any], as_bytes: bool) -> None:
    text = json.dumps(obj)
    _decodes_or_refuses(text.encode() if as_bytes else text)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=40))
@example(b"\xff")
def test_fuzz_binary_string_values(junk: bytes) -> None:
    _decodes_or_refuses(b'{"type":"text","text":"' + junk + b'"}')
