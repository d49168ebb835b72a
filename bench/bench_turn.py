"""Turn machine: the per-frame ``tick`` in its steady states.

``turn_tick`` measures a tick while the bot speaks (the common case during a
reply) and ``turn_tick_listening`` while nobody speaks.  There is no baseline:
a tick is one or two attribute reads and a comparison, and it returns the
shared empty tuple (checked below), so it allocates nothing.
"""

from __future__ import annotations

import pytest

from bench.conftest import Measure
from engine.turn import NO_COMMANDS, TurnMachine, TurnState


def bot_speaking_machine() -> TurnMachine:
    m = TurnMachine()
    m.on_speech_started(0, 60)
    m.on_speech_stopped(1000, 1300)
    assert m.tick(1500) != NO_COMMANDS  # the user's turn ends
    m.on_playout_started(m.generation, 1700)
    assert m.state is TurnState.BOT_SPEAKING
    return m


@pytest.mark.benchmark(group="turn_tick")
def test_turn_tick_bot_speaking(measure: Measure) -> None:
    m = bot_speaking_machine()
    assert m.tick(2000) is NO_COMMANDS
    measure("voxgate", m.tick, 2000, frames=1)
    assert m.state is TurnState.BOT_SPEAKING


@pytest.mark.benchmark(group="turn_tick_listening")
def test_turn_tick_listening(measure: Measure) -> None:
    m = TurnMachine()
    assert m.tick(2000) is NO_COMMANDS
    measure("voxgate", m.tick, 2000, frames=1)
    assert m.state is TurnState.LISTENING
