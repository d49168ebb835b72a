"""LlmReply: first-token budget, one retry, next provider, mid-reply failure and aclose.

The providers are in-process fakes whose streams follow a script (text, sleeps,
errors) and record every request and whether its generator's ``finally`` ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest

from server.agents.llmreply import LlmReply
from server.agents.turnlog import TurnRecord
from server.providers.base import (
    AuthError,
    ChatMessage,
    ConnectionLostError,
    LlmDelta,
    LlmProvider,
    ProviderError,
    RateLimitedError,
)
from tests.fakes.scripted import RecordingObserver

BUDGET_MS = 150.0
MESSAGES = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]

Step = float | str | LlmDelta | ProviderError
"""A script step: sleep (s), a text delta, a delta as is, or an error to raise."""

STALL: list[Step] = [3600.0]
DONE = LlmDelta(received_ns=0, finish_reason="stop")


def answer(*texts: str) -> list[Step]:
    return [0.0, *texts, DONE]


@dataclass
class FakeLlm:
    """Each ``stream`` call plays the next script (the last one repeats)."""

    name: str
    scripts: list[list[Step]]
    requests: list[list[ChatMessage]] = field(default_factory=list)
    closed: list[int] = field(default_factory=list)
    """Requests (by number) whose generator ran its ``finally``."""

    def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        self.requests.append(list(messages))
        number = len(self.requests)
        return self._play(self.scripts[min(number, len(self.scripts)) - 1], number)

    async def _play(self, script: list[Step], number: int) -> AsyncIterator[LlmDelta]:
        try:
            for step in script:
                if isinstance(step, float):
                    await asyncio.sleep(step)
                elif isinstance(step, str):
                    yield LlmDelta(received_ns=time.monotonic_ns(), text=step)
                elif isinstance(step, LlmDelta):
                    yield step
                else:
                    raise step
        finally:
            self.closed.append(number)


@dataclass
class Turn:
    reply: LlmReply
    record: TurnRecord
    observer: RecordingObserver


def turn(*providers: FakeLlm, deadline_in_s: float = 60.0) -> Turn:
    record = TurnRecord(index=1, generation=1, kind="user")
    observer = RecordingObserver()
    chain: list[tuple[str, LlmProvider]] = [(p.name, p) for p in providers]
    reply = LlmReply(
        chain,
        MESSAGES,
        budget_ms=BUDGET_MS,
        turn_deadline=time.monotonic() + deadline_in_s,
        record=record,
        observer=observer,
        call_id="call-1",
    )
    return Turn(reply, record, observer)


async def pieces(reply: LlmReply) -> list[str]:
    return [piece async for piece in reply.pieces()]


@contextlib.asynccontextmanager
async def nothing_left_running() -> AsyncIterator[None]:
    """Asserts that the block leaves no task behind."""
    before = asyncio.all_tasks()
    yield
    await asyncio.sleep(0)
    assert asyncio.all_tasks() == before


# -------------------------------------------------------------------- answering


async def test_first_provider_answers_within_budget() -> None:
    async with nothing_left_running():
        a = FakeLlm("a", [[0.0, LlmDelta(received_ns=1), "Hello", " there", ".", DONE]])
        b = FakeLlm("b", [answer("never")])
        t = turn(a, b)
        assert await t.reply.start()
        assert t.reply.provider == "a"
        assert t.record.providers == {"llm": "a"}
        assert t.record.stages_ms["llm_first_token"] >= 0
        assert [stage for stage, _ in t.observer.stages] == ["llm_first_token"]
        assert await pieces(t.reply) == ["Hello", " there", "."]
        assert a.requests == [MESSAGES]
        assert b.requests == []
        assert t.record.fallbacks == t.record.violations == []
        assert t.observer.fallbacks == t.observer.errors == []
        assert t.observer.violations == []
        await t.reply.aclose()
        assert a.closed == [1]


async def test_a_reply_in_one_delta() -> None:
    a = FakeLlm("a", [[LlmDelta(received_ns=1, text="Bye.", finish_reason="stop"), "unread"]])
    t = turn(a)
    assert await t.reply.start()
    assert await pieces(t.reply) == ["Bye."]  # finished with its first delta
    await t.reply.aclose()
    assert a.closed == [1]


# -------------------------------------------------------------------- fallbacks


async def test_stall_is_retried_once_then_the_next_provider_answers() -> None:
    a = FakeLlm("a", [STALL])
    b = FakeLlm("b", [answer("From", " b")])
    t = turn(a, b)
    assert await t.reply.start()
    assert t.reply.provider == "b"
    assert t.record.providers == {"llm": "b"}
    assert await pieces(t.reply) == ["From", " b"]
    assert len(a.requests) == 2
    assert a.closed == [1, 2]  # each stalled request was aborted
    assert t.record.fallbacks == ["llm:retry", "llm:next:b"]
    assert t.observer.fallbacks == [("llm", "retry"), ("llm", "next")]
    assert t.record.violations == ["llm_first_token"]  # once, though two attempts were late
    assert t.observer.violations == ["llm_first_token"]
    assert t.observer.errors == [("a", "timeout"), ("a", "timeout")]
    assert "llm_first_token" in t.record.stages_ms
    await t.reply.aclose()


async def test_stall_then_the_retry_answers() -> None:
    a = FakeLlm("a", [STALL, answer("Second", " try")])
    b = FakeLlm("b", [answer("never")])
    t = turn(a, b)
    assert await t.reply.start()
    assert t.reply.provider == "a"
    assert await pieces(t.reply) == ["Second", " try"]
    assert t.record.fallbacks == ["llm:retry"]
    assert t.record.violations == ["llm_first_token"]
    assert b.requests == []
    await t.reply.aclose()


async def test_first_token_stage_counts_from_the_first_request() -> None:
    a = FakeLlm("a", [STALL, answer("Second", " try")])
    t = turn(a)
    assert await t.reply.start()
    await t.reply.aclose()
    # Not a speed check: the first request stalled a whole budget before the retry began.
    assert t.record.stages_ms["llm_first_token"] >= 0.9 * BUDGET_MS


async def test_every_provider_stalls_counts_one_violation() -> None:
    a, b, c = FakeLlm("a", [STALL]), FakeLlm("b", [STALL]), FakeLlm("c", [answer("c")])
    t = turn(a, b, c)
    assert await t.reply.start()
    assert t.reply.provider == "c"
    assert t.record.fallbacks == ["llm:retry", "llm:next:b", "llm:next:c"]
    assert t.observer.violations == ["llm_first_token"]
    assert t.observer.errors == [("a", "timeout"), ("a", "timeout"), ("b", "timeout")]
    assert (len(a.requests), len(b.requests)) == (2, 1)  # only the first provider is retried
    await t.reply.aclose()


async def test_auth_error_is_not_retried() -> None:
    a = FakeLlm("a", [[AuthError("a", "bad key", status=401)]])
    b = FakeLlm("b", [answer("From b")])
    t = turn(a, b)
    assert await t.reply.start()
    assert t.reply.provider == "b"
    assert len(a.requests) == 1
    assert a.closed == [1]
    assert t.record.fallbacks == ["llm:next:b"]
    assert t.observer.errors == [("a", "auth")]
    assert t.record.violations == []  # a failure, not a late first token
    await t.reply.aclose()


async def test_rate_limit_is_retried() -> None:
    a = FakeLlm("a", [[RateLimitedError("a", "slow down", retry_after_s=None)], answer("ok")])
    t = turn(a)
    assert await t.reply.start()
    assert t.reply.provider == "a"
    assert await pieces(t.reply) == ["ok"]
    assert t.record.fallbacks == ["llm:retry"]
    assert t.observer.errors == [("a", "rate_limited")]
    await t.reply.aclose()


async def test_every_provider_fails() -> None:
    a = FakeLlm("a", [[0.0, ProviderError("a", "boom")]])
    b = FakeLlm("b", [[ConnectionLostError("b", "closed")]])
    t = turn(a, b)
    assert not await t.reply.start()
    assert t.reply.provider is None
    assert t.record.fallbacks == ["llm:retry", "llm:next:b", "llm:failed"]
    assert t.observer.fallbacks[-1] == ("llm", "failed")
    assert t.observer.errors == [("a", "error"), ("a", "error"), ("b", "connection")]
    assert "llm" not in t.record.providers
    assert "llm_first_token" not in t.record.stages_ms
    assert await pieces(t.reply) == []
    assert a.closed == [1, 2]
    assert b.closed == [1]
    await t.reply.aclose()


async def test_no_retry_when_the_deadline_leaves_no_whole_budget() -> None:
    a = FakeLlm("a", [[ProviderError("a", "boom")], answer("never")])
    t = turn(a, deadline_in_s=BUDGET_MS / 1000 / 2)
    assert not await t.reply.start()
    assert len(a.requests) == 1
    assert t.record.fallbacks == ["llm:failed"]


async def test_no_retry_after_a_stall_that_used_up_the_deadline() -> None:
    a = FakeLlm("a", [STALL, answer("never")])
    t = turn(a, deadline_in_s=1.5 * BUDGET_MS / 1000)
    assert not await t.reply.start()
    assert len(a.requests) == 1
    assert t.record.fallbacks == ["llm:failed"]
    assert t.record.violations == ["llm_first_token"]


async def test_next_provider_is_asked_when_only_the_retry_does_not_fit() -> None:
    a = FakeLlm("a", [STALL])
    b = FakeLlm("b", [answer("From b")])
    t = turn(a, b, deadline_in_s=1.5 * BUDGET_MS / 1000)
    try:
        assert await t.reply.start()
        assert t.reply.provider == "b"
        assert len(a.requests) == 1
        assert t.record.fallbacks == ["llm:next:b"]
    finally:
        await t.reply.aclose()


# ------------------------------------------------------------- after the first token


async def test_failure_mid_reply_ends_it_with_what_was_said() -> None:
    a = FakeLlm("a", [[0.0, "Hello", " there", ConnectionLostError("a", "reset"), "unsaid"]])
    t = turn(a, FakeLlm("b", [answer("never")]))
    assert await t.reply.start()
    assert await pieces(t.reply) == ["Hello", " there"]
    assert t.observer.errors == [("a", "connection")]
    assert t.record.fallbacks == []  # no fallback once the reply has begun
    assert a.closed == [1]
    await t.reply.aclose()


async def test_aclose_aborts_the_request() -> None:
    async with nothing_left_running():
        a = FakeLlm("a", [[0.0, "Hello", 0.01, " there", *STALL, "never"]])
        t = turn(a)
        assert await t.reply.start()
        stream = t.reply.pieces()
        assert await anext(stream) == "Hello"
        assert await anext(stream) == " there"
        assert a.closed == []
        await t.reply.aclose()
        assert a.closed == [1]  # the provider's generator ran its finally
        await t.reply.aclose()  # idempotent
        assert a.closed == [1]
        await stream.aclose()  # type: ignore[attr-defined]


async def test_aclose_before_reading() -> None:
    a = FakeLlm("a", [[0.0, "Hello", *STALL]])
    t = turn(a)
    assert await t.reply.start()
    await t.reply.aclose()
    assert a.closed == [1]
    assert await pieces(t.reply) == ["Hello"]  # the first token was already received


async def test_aclose_without_start() -> None:
    a = FakeLlm("a", [answer("never")])
    t = turn(a)
    await t.reply.aclose()
    assert a.requests == []


async def test_cancelled_start_leaves_nothing_running() -> None:
    async with nothing_left_running():
        a = FakeLlm("a", [STALL])
        t = turn(a)
        task = asyncio.create_task(t.reply.start())
        while not a.requests:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert a.closed == [1]
        assert len(a.requests) == 1  # cancelled, not treated as a stall
        assert t.record.fallbacks == []
        assert t.observer.errors == []
        await t.reply.aclose()


async def test_cancelled_reading_leaves_nothing_running() -> None:
    async with nothing_left_running():
        a = FakeLlm("a", [[0.0, "Hello", *STALL]])
        t = turn(a)
        assert await t.reply.start()
        got: list[str] = []

        async def read() -> None:
            async for piece in t.reply.pieces():
                got.append(piece)

        task = asyncio.create_task(read())
        while not got:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await t.reply.aclose()
        assert got == ["Hello"]
        assert a.closed == [1]
