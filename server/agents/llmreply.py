"""The LLM stage of one turn: the first provider whose first token beats the budget.

:meth:`LlmReply.start` asks the chain's providers in order, each with
``budget_ms`` to produce its first token: the first provider once, and once
more if it failed retryably and a whole budget still fits before the turn's
deadline; then the next providers.  The stream that answers is kept and
:meth:`LlmReply.pieces` yields its text; a failure after the first token ends
the reply early (what was said stands) with a log line naming the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from server.agents.sttsession import error_kind, explain
from server.agents.turnlog import StageObserver, TurnRecord
from server.providers.base import ChatMessage, LlmDelta, LlmProvider, ProviderError

log = logging.getLogger(__name__)


class LlmReply:
    """One turn's LLM reply; :meth:`aclose` aborts the request (idempotent)."""

    def __init__(
        self,
        chain: list[tuple[str, LlmProvider]],
        messages: Sequence[ChatMessage],
        *,
        budget_ms: float,
        turn_deadline: float,
        record: TurnRecord,
        observer: StageObserver,
        call_id: str,
    ) -> None:
        self._chain = chain
        self._messages = list(messages)
        self._budget_s = budget_ms / 1000
        self._turn_deadline = turn_deadline
        self._record = record
        self._observer = observer
        self._call_id = call_id
        self._stream: AsyncIterator[LlmDelta] | None = None
        self._first = ""
        self._finished = False
        self.provider: str | None = None
        self.started_at: float | None = None
        """``time.monotonic()`` of the first request."""

    async def start(self) -> bool:
        """Find a provider that starts answering; False when every one failed."""
        attempts = [(i, False) for i in range(len(self._chain))]
        attempts.insert(1, (0, True))
        over_budget = False
        first_try = True
        no_retry = False
        t0 = self.started_at = time.monotonic()  # the stage runs from the first request
        for index, retry in attempts:
            name, llm = self._chain[index]
            if retry and (no_retry or time.monotonic() + self._budget_s > self._turn_deadline):
                continue  # a retry only while a whole budget fits; the next provider always
            if not first_try:
                self._fallback("retry" if retry else f"next:{name}")
            first_try = False
            stream = llm.stream(self._messages)
            try:
                async with asyncio.timeout(self._budget_s):
                    first, finished = await _first_text(stream)
            except TimeoutError:
                await _close(stream)
                if not over_budget:
                    over_budget = True
                    self._record.violations.append("llm_first_token")
                    self._observer.count_violation("llm_first_token")
                self._observer.count_provider_error(name, "timeout")
                log.warning(
                    "call %s: LLM %s gave no first token within %.0f ms",
                    self._call_id,
                    name,
                    self._budget_s * 1000,
                )
                continue
            except ProviderError as exc:
                await _close(stream)
                self._observer.count_provider_error(name, error_kind(exc))
                log.warning("call %s: LLM %s failed: %s", self._call_id, name, explain(name, exc))
                no_retry = no_retry or not exc.retryable
                continue
            latency_ms = (time.monotonic() - t0) * 1000
            self._record.set_stage("llm_first_token", latency_ms)
            self._observer.observe_stage_ms("llm_first_token", latency_ms)
            self._record.providers["llm"] = name
            self.provider = name
            self._stream, self._first, self._finished = stream, first, finished
            return True
        self._fallback("failed")
        return False

    async def pieces(self) -> AsyncIterator[str]:
        """The reply's text as it is generated (after a successful :meth:`start`)."""
        if self._first:
            yield self._first
        stream = self._stream
        if stream is None or self._finished:
            return
        try:
            async for delta in stream:
                if delta.text:
                    yield delta.text
                if delta.finish_reason is not None:
                    return
        except ProviderError as exc:
            self._observer.count_provider_error(self.provider or "?", error_kind(exc))
            log.warning(
                "call %s: LLM %s failed mid-reply (the reply ends here): %s",
                self._call_id,
                self.provider,
                exc,
            )

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await _close(stream)

    def _fallback(self, action: str) -> None:
        self._record.fallbacks.append(f"llm:{action}")
        self._observer.count_fallback("llm", action.partition(":")[0])


async def _first_text(stream: AsyncIterator[LlmDelta]) -> tuple[str, bool]:
    """The first non-empty text of ``stream`` and whether the stream already finished."""
    async for delta in stream:
        if delta.text:
            return delta.text, delta.finish_reason is not None
        if delta.finish_reason is not None:
            return "", True
    return "", True


async def _close(stream: AsyncIterator[LlmDelta]) -> None:
    if isinstance(stream, AsyncGenerator):
        with contextlib.suppress(ProviderError, RuntimeError):
            await stream.aclose()
