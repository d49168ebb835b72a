"""The rule-based offline LLM: intent matching, slots, fallback and streaming."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server.providers.base import ChatMessage, LlmDelta
from server.providers.rules_llm import Intents, RulesLlm, RulesLlmSettings, fill_slots, words

NOON = datetime(2024, 6, 3, 15, 7)  # a Monday


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def bot(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


def provider(**overrides: str | None) -> RulesLlm:
    return RulesLlm(RulesLlmSettings(**overrides), clock=lambda: NOON)  # type: ignore[arg-type]


async def collect(llm: RulesLlm, messages: list[ChatMessage]) -> list[LlmDelta]:
    return [delta async for delta in llm.stream(messages)]


# ------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("heard", "intent"),
    [
        ("Hello!", "greeting"),
        ("hey there", "greeting"),
        ("Good morning", "greeting"),
        ("how are you", "how_are_you"),
        ("hi, how are you doing?", "how_are_you"),
        ("What's your name?", "name"),
        ("who am I talking to", "name"),
        ("what time is it", "time"),
        ("Hi, what time is it please?", "time"),
        ("what day is it", "date"),
        ("I need help", "help"),
        ("could you say that again", "repeat"),
        ("tell me a joke", "joke"),
        ("is it going to rain", "weather"),
        ("let me speak to a real person", "human"),
        ("yes please", "yes"),
        ("no thanks", "no"),
        ("okay bye", "goodbye"),
        ("thanks, bye", "goodbye"),
        ("Thank you very much", "thanks"),
        ("THANK YOU", "thanks"),
    ],
)
def test_matches_intents(heard: str, intent: str) -> None:
    assert provider().intents.match(heard) == intent


def test_patterns_match_whole_words_only() -> None:
    intents = provider().intents
    assert intents.match("this is a thistle") is None  # "hi" inside "this" and "thistle"
    assert intents.match("shipment nowhere") is None  # "hi", "no" inside words
    assert intents.match("chime in") is None


def test_words_normalise_case_punctuation_and_apostrophes() -> None:
    assert words("What\u2019s  the TIME, please?!") == ("what's", "the", "time", "please")
    assert words("") == ()


# -------------------------------------------------------------------- replies


def test_time_date_and_name_slots() -> None:
    llm = provider(assistant_name="Ada")
    assert llm.reply([user("what time is it")]) == "It's 3:07 PM."
    assert llm.reply([user("what's the date today")]) == "Today is Monday, June 3."
    assert "I'm Ada" in llm.reply([user("what is your name")])


def test_fallback_repeats_what_it_heard() -> None:
    llm = provider()
    assert llm.reply([user("purple elephants dance")]) == "You said: purple elephants dance."
    # Only the last user message counts.
    convo = [user("hello"), bot("Hello! How can I help you today?"), user("banana bread.")]
    assert llm.reply(convo) == "You said: banana bread."


def test_empty_input_asks_again() -> None:
    llm = provider()
    assert "didn't catch" in llm.reply([user("  ... ")])
    assert "didn't catch" in llm.reply([ChatMessage(role="system", content="Be nice.")])


def test_replies_take_turns_with_the_conversation() -> None:
    llm = provider()
    first = llm.reply([user("hello")])
    second = llm.reply([user("hello"), bot(first), user("hello")])
    third = llm.reply([user("hello"), bot(first), user("hello"), bot(second), user("hi")])
    assert first != second
    assert third == first  # two greeting replies alternate


def test_repeat_uses_the_last_reply() -> None:
    llm = provider()
    convo = [user("what time is it"), bot("It's 3:07 PM."), user("say that again")]
    assert llm.reply(convo) == "I said: It's 3:07 PM."


def test_heard_is_not_expanded_as_a_template() -> None:
    assert fill_slots("You said: {heard}.", {"heard": "{time} {0}"}) == "You said: {time} {0}."
    assert provider().reply([user("{time} {name} {")]) == "You said: {time} {name} {."


# ------------------------------------------------------------------ streaming


async def test_streams_word_by_word_then_stop() -> None:
    llm = provider()
    deltas = await collect(llm, [user("tell me a joke")])
    assert deltas[-1].finish_reason == "stop" and deltas[-1].text == ""
    assert all(d.finish_reason is None for d in deltas[:-1])
    text = "".join(d.text for d in deltas)
    assert text == llm.reply([user("tell me a joke")])
    assert len(deltas) - 1 == len(text.split())  # one delta per word
    assert all(d.text.strip() and " " not in d.text.strip() for d in deltas[:-1])
    stamps = [d.received_ns for d in deltas]
    assert stamps == sorted(stamps)


async def test_closing_the_stream_early_stops_it() -> None:
    baseline = asyncio.all_tasks()
    llm = provider()
    stream = llm.stream([user("tell me a joke")])
    first = await anext(stream)
    assert first.text
    await stream.aclose()  # type: ignore[attr-defined]
    assert asyncio.all_tasks() == baseline


async def test_consumer_task_cancelled_mid_stream_leaves_nothing_running() -> None:
    baseline = asyncio.all_tasks()
    llm = provider()
    seen: list[str] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for delta in llm.stream([user("tell me a joke")]):
            seen.append(delta.text)
            started.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(consume())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) == 1
    # asyncio closes the abandoned generator in a finalizer task of its own.
    for _ in range(100):
        if asyncio.all_tasks() == baseline:
            break
        await asyncio.sleep(0)
    assert asyncio.all_tasks() == baseline


# --------------------------------------------------------------- intents file


def test_custom_intents_file(tmp_path: Path) -> None:
    path = tmp_path / "intents.toml"
    path.write_text(
        """
[fallback]
replies = ["Pardon? I heard {heard}"]

[[intent]]
name = "pizza"
patterns = ["pizza", "order food"]
replies = ["One pizza for {day}, coming up."]
""",
        encoding="utf-8",
    )
    llm = RulesLlm(RulesLlmSettings(intents_path=str(path)), clock=lambda: NOON)
    assert llm.reply([user("I'd like to order food")]) == "One pizza for Monday, coming up."
    assert llm.reply([user("hello")]) == "Pardon? I heard hello"


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ('[[intent]]\nname = "x"\npatterns = ["a"]\nreplies = ["{nope}"]\n', "unknown slot"),
        ('[[intent]]\nname = "x"\npatterns = []\nreplies = ["hi"]\n', "patterns"),
        ('[[intent]]\nname = "x"\npatterns = ["!!"]\nreplies = ["hi"]\n', "patterns"),
        ('[[intent]]\nname = "x"\npatterns = ["a"]\nreplies = []\n', "reply"),
        ('[[intent]]\nname = "x"\npatterns = ["a"]\nreplies = ["hi"]\nextra = 1\n', "extra"),
        ("[fallback\n", "intents.toml"),
    ],
)
def test_bad_intents_files_name_the_problem(tmp_path: Path, body: str, problem: str) -> None:
    path = tmp_path / "intents.toml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ValueError, match=problem):
        Intents.load(str(path))


def test_packaged_default_has_the_promised_intents() -> None:
    names = {intent.name for intent in Intents.load().intents}
    assert {"greeting", "goodbye", "help", "time", "name", "thanks"} <= names


# ----------------------------------------------------------------------- fuzz


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system"]), st.text())))
def test_any_conversation_gets_a_nonempty_reply(turns: list[tuple[str, str]]) -> None:
    llm = provider()
    messages = [ChatMessage(role=role, content=text) for role, text in turns]  # type: ignore[arg-type]
    reply = llm.reply(messages)
    assert reply.strip()

    async def run() -> list[LlmDelta]:
        return await collect(llm, messages)

    deltas = asyncio.run(run())
    assert "".join(d.text for d in deltas) == reply.rstrip()
    assert deltas[-1].finish_reason == "stop"
