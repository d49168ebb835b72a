"""TurnRecord: stage latencies, the server's own overhead, and the per-turn log line."""

from __future__ import annotations

import msgspec
import pytest

from server.agents.turnlog import STAGES, NoStageObserver, StageObserver, TurnRecord

FOUR = {"eou": 100.0, "stt_final": 200.0, "llm_first_token": 300.0, "tts_first_audio": 150.0}


def record(**stages: float) -> TurnRecord:
    rec = TurnRecord(index=3, generation=7, kind="user")
    for stage, ms in stages.items():
        rec.set_stage(stage, ms)
    return rec


def test_stages_in_order() -> None:
    assert STAGES == ("eou", "stt_final", "llm_first_token", "tts_first_audio", "turn_total")


def test_set_stage_rounds_to_a_tenth_of_a_ms() -> None:
    rec = record(eou=123.456, stt_final=0.04)
    assert rec.stages_ms == {"eou": 123.5, "stt_final": 0.0}


def test_overhead_is_the_total_minus_the_four_stages() -> None:
    rec = record(**FOUR)
    before_total = rec.overhead_ms
    rec.set_stage("turn_total", 900)
    assert before_total is None
    assert rec.overhead_ms == 150.0
    assert rec.stages_ms["turn_total"] == 900.0


def test_overhead_uses_the_rounded_stages() -> None:
    rec = record(eou=10.04, stt_final=10.04, llm_first_token=10.04, tts_first_audio=10.04)
    rec.set_stage("turn_total", 50.0)
    assert rec.overhead_ms == 10.0  # 50 - 4 * 10.0


@pytest.mark.parametrize("missing", STAGES[:4])
def test_no_overhead_when_a_stage_is_missing(missing: str) -> None:
    rec = record(**{k: v for k, v in FOUR.items() if k != missing})
    rec.set_stage("turn_total", 900)
    assert rec.overhead_ms is None
    assert rec.stages_ms["turn_total"] == 900.0


def test_no_overhead_when_a_filler_was_used() -> None:
    rec = record(**FOUR)
    rec.fallbacks.append("turn:filler")
    rec.set_stage("turn_total", 900)
    assert rec.overhead_ms is None


def test_greeting_has_no_overhead() -> None:
    rec = TurnRecord(index=1, generation=1, kind="greeting")
    rec.set_stage("tts_first_audio", 120)
    rec.set_stage("turn_total", 160)
    assert rec.overhead_ms is None


def test_describe_names_stages_providers_violations_and_fallbacks() -> None:
    rec = record(**FOUR)
    rec.set_stage("turn_total", 900.4)
    rec.outcome = "answered"
    rec.providers.update({"stt": "deepgram", "llm": "openai", "tts": "espeak"})
    rec.violations.append("llm_first_token")
    rec.fallbacks += ["llm:retry", "tts:next:espeak"]
    line = rec.describe()
    assert line.startswith("turn 3 (user, answered)")
    for part in (
        "eou=100",
        "stt_final=200",
        "llm_first_token=300",
        "tts_first_audio=150",
        "turn_total=900",
        "overhead=150",
        "stt:deepgram",
        "llm:openai",
        "tts:espeak",
        "over_budget=llm_first_token",
        "fallbacks=llm:retry,tts:next:espeak",
    ):
        assert part in line, part
    # Stages appear in the order they were set.
    assert line.index("eou=") < line.index("stt_final=") < line.index("turn_total=")


def test_describe_a_clean_turn_mentions_no_faults() -> None:
    rec = TurnRecord(index=1, generation=1, kind="greeting", outcome="answered")
    rec.set_stage("tts_first_audio", 120)
    rec.providers["tts"] = "espeak"
    line = rec.describe()
    assert line.startswith("turn 1 (greeting, answered)")
    assert "tts_first_audio=120" in line
    assert "[tts:espeak]" in line
    for absent in ("overhead", "over_budget", "fallbacks"):
        assert absent not in line


def test_describe_with_nothing_recorded() -> None:
    line = TurnRecord(index=2, generation=5, kind="dtmf").describe()
    assert line.startswith("turn 2 (dtmf, pending)")
    assert "[]" in line


def test_record_round_trips_through_json() -> None:
    rec = record(**FOUR)
    rec.set_stage("turn_total", 900)
    rec.providers["llm"] = "openai"
    rec.fallbacks.append("llm:retry")
    back = msgspec.json.decode(msgspec.json.encode(rec), type=TurnRecord)
    assert back == rec
    assert back.overhead_ms == 150.0


def test_no_stage_observer_accepts_everything() -> None:
    observer: StageObserver = NoStageObserver()
    observer.observe_stage_ms("eou", 1.0)
    observer.observe_overhead_ms(1.0)
    observer.count_violation("eou")
    observer.count_fallback("llm", "retry")
    observer.count_provider_error("openai", "timeout")
