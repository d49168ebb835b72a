"""Per-turn latency records and where a pipeline reports its stages.

Stages (ms, wall clock):

* ``eou``: end of the caller's speech to the turn decision;
* ``stt_final``: turn decision to the final transcript;
* ``llm_first_token``: LLM request to its first token;
* ``tts_first_audio``: first text sent to TTS to its first audio;
* ``turn_total``: end of the caller's speech to the first reply audio leaving the server.

``first_phrase_ms`` (not budgeted) is the LLM request to the first phrase that
can be spoken: ``llm_first_token`` plus the tokens up to a cut.  ``overhead`` is
``turn_total`` minus ``eou``, ``stt_final``, ``first_phrase_ms`` (or
``llm_first_token``) and ``tts_first_audio``: the time the server itself added
(queueing, encoding, scheduling), everything else being spent waiting for
the caller to finish or for a provider.
"""

from __future__ import annotations

from typing import Final, Literal, Protocol

import msgspec

STAGES: Final = ("eou", "stt_final", "llm_first_token", "tts_first_audio", "turn_total")

TurnKind = Literal["user", "greeting", "dtmf", "text"]
Outcome = Literal["pending", "answered", "interrupted", "no_speech", "failed", "cancelled"]


class TurnRecord(msgspec.Struct, kw_only=True):
    """One bot response and the stages that led to it."""

    index: int
    generation: int
    kind: TurnKind
    user_text: str = ""
    reply_text: str = ""
    """What the caller heard of the reply (all of it unless interrupted)."""
    heard_ms: int | None = None
    """Set when the reply was interrupted: how much of it was played."""
    yield_ms: float | None = None
    """Interrupted: the caller's onset to the playout cleared (media ms)."""
    cancel_ms: float | None = None
    """Interrupted: the playout cleared to the LLM and TTS work cancelled (ms)."""
    outcome: Outcome = "pending"
    stages_ms: dict[str, float] = msgspec.field(default_factory=dict)
    first_phrase_ms: float | None = None
    """LLM request to its first speakable phrase (ms)."""
    overhead_ms: float | None = None
    providers: dict[str, str] = msgspec.field(default_factory=dict)
    """Stage -> the provider that served it."""
    violations: list[str] = msgspec.field(default_factory=list)
    """Stages past their budget."""
    fallbacks: list[str] = msgspec.field(default_factory=list)
    """What was done about failures, e.g. ``llm:retry``, ``tts:next:espeak``, ``turn:filler``."""

    def set_stage(self, stage: str, ms: float) -> None:
        self.stages_ms[stage] = round(ms, 1)
        if stage == "turn_total" and "turn:filler" not in self.fallbacks:
            parts = [self.stages_ms.get(s) for s in STAGES[:4]]
            if self.first_phrase_ms is not None:
                parts[2] = self.first_phrase_ms
            if all(p is not None for p in parts):
                self.overhead_ms = round(ms - sum(p for p in parts if p is not None), 1)

    def describe(self) -> str:
        """One log line: the stages, the providers, what went wrong."""
        stages = " ".join(f"{k}={v:.0f}" for k, v in self.stages_ms.items())
        extra = f" overhead={self.overhead_ms:.0f}" if self.overhead_ms is not None else ""
        providers = ",".join(f"{k}:{v}" for k, v in self.providers.items())
        faults = ""
        if self.violations:
            faults += f" over_budget={','.join(self.violations)}"
        if self.fallbacks:
            faults += f" fallbacks={','.join(self.fallbacks)}"
        return (
            f"turn {self.index} ({self.kind}, {self.outcome}) ms: {stages}{extra} "
            f"[{providers}]{faults}"
        )


class StageObserver(Protocol):
    """Where stage latencies and failures are counted (the process metrics)."""

    def observe_stage_ms(self, stage: str, latency_ms: float) -> None: ...

    def observe_overhead_ms(self, latency_ms: float) -> None: ...

    def count_violation(self, stage: str) -> None: ...

    def count_fallback(self, stage: str, action: str) -> None: ...

    def count_provider_error(self, provider: str, kind: str) -> None: ...


class NoStageObserver:
    """Counts nothing (tests, tools)."""

    def observe_stage_ms(self, stage: str, latency_ms: float) -> None:
        pass

    def observe_overhead_ms(self, latency_ms: float) -> None:
        pass

    def count_violation(self, stage: str) -> None:
        pass

    def count_fallback(self, stage: str, action: str) -> None:
        pass

    def count_provider_error(self, provider: str, kind: str) -> None:
        pass
