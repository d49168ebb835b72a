"""Offline LLM stand-in: replies picked by matching the caller's words against intents.

The intents live in a small TOML file (``intents.toml`` next to this module by
default; see its header for the format).  For the last user message the
provider picks the intent whose patterns cover the most of its words (whole
words, case- and punctuation-insensitive; ties go to the intent listed first),
else the ``[fallback]`` replies (by default "You said: ..."), and streams the
reply word by word as :class:`LlmDelta` without artificial delay, ending with
``finish_reason="stop"``.

Replies of an intent take turns: the n-th reply is used when the conversation
already holds n assistant messages (mod the number of replies), so the
provider itself keeps no state.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Final

import msgspec

from server.providers.base import ChatMessage, LlmDelta

PROVIDER: Final = "rules"
SLOTS: Final = frozenset({"heard", "time", "date", "day", "name", "last_reply"})

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_SLOT = re.compile(r"\{([a-z_]+)\}")
_PIECE = re.compile(r"\s*\S+")


class RulesLlmSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``[providers.rules]``: where the intents are and how the assistant calls itself."""

    intents_path: str | None = None
    """TOML file of intents; ``None`` = the ``intents.toml`` packaged with voxgate."""
    assistant_name: str = "Vox"
    """What ``{name}`` says."""


# ------------------------------------------------------------------------ intents


class Intent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    patterns: list[str]
    replies: list[str]


class Replies(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    replies: list[str]


class IntentsFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole TOML file."""

    intent: list[Intent] = msgspec.field(default_factory=list)
    fallback: Replies = msgspec.field(
        default_factory=lambda: Replies(replies=["You said: {heard}."])
    )
    empty: Replies = msgspec.field(
        default_factory=lambda: Replies(replies=["Sorry, I didn't catch that."])
    )


def words(text: str) -> tuple[str, ...]:
    """Lower-case words of ``text`` (letters, digits, inner apostrophes)."""
    return tuple(_WORD.findall(text.lower().replace("\u2019", "'")))


class _CompiledIntent(msgspec.Struct, frozen=True):
    name: str
    patterns: tuple[tuple[str, ...], ...]
    replies: tuple[str, ...]

    def coverage(self, heard: tuple[str, ...]) -> int:
        """How many of ``heard``'s words this intent's patterns cover (0: no match)."""
        covered: set[int] = set()
        for pattern in self.patterns:
            n = len(pattern)
            for i in range(len(heard) - n + 1):
                if heard[i : i + n] == pattern:
                    covered.update(range(i, i + n))
        return len(covered)


class Intents:
    """Validated intents; :meth:`match` picks the best one for a message."""

    def __init__(self, spec: IntentsFile) -> None:
        compiled: list[_CompiledIntent] = []
        for intent in spec.intent:
            patterns = tuple(words(p) for p in intent.patterns)
            if not intent.name or not patterns or not all(patterns):
                raise ValueError(f"intent {intent.name!r}: needs a name and non-empty patterns")
            _check_replies(intent.name, intent.replies)
            compiled.append(_CompiledIntent(intent.name, patterns, tuple(intent.replies)))
        _check_replies("fallback", spec.fallback.replies)
        _check_replies("empty", spec.empty.replies)
        self.intents = tuple(compiled)
        self.fallback = tuple(spec.fallback.replies)
        self.empty = tuple(spec.empty.replies)

    @classmethod
    def load(cls, path: str | None = None) -> Intents:
        """Read ``path`` (``None`` = the packaged default); ValueError names the problem."""
        if path is None:
            data = resources.files("server.providers").joinpath("intents.toml").read_bytes()
            where = "packaged intents.toml"
        else:
            data = Path(path).read_bytes()
            where = path
        try:
            spec = msgspec.toml.decode(data, type=IntentsFile)
        except msgspec.DecodeError as exc:
            raise ValueError(f"{where}: {exc}") from exc
        try:
            return cls(spec)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc

    def match(self, text: str) -> str | None:
        """Name of the best-matching intent, or None."""
        heard = words(text)
        best: _CompiledIntent | None = None
        best_score = 0
        for intent in self.intents:
            score = intent.coverage(heard)
            if score > best_score:
                best, best_score = intent, score
        return best.name if best is not None else None

    def replies_for(self, name: str | None) -> tuple[str, ...]:
        for intent in self.intents:
            if intent.name == name:
                return intent.replies
        return self.fallback


def _check_replies(where: str, replies: list[str]) -> None:
    if not replies or not all(r.strip() for r in replies):
        raise ValueError(f"{where}: needs at least one non-empty reply")
    for reply in replies:
        unknown = set(_SLOT.findall(reply)) - SLOTS
        if unknown:
            raise ValueError(f"{where}: unknown slot(s) {sorted(unknown)} in {reply!r}")


def fill_slots(reply: str, values: dict[str, str]) -> str:
    """``reply`` with each ``{slot}`` replaced (values are not re-scanned)."""
    return _SLOT.sub(lambda m: values.get(m.group(1), m.group(0)), reply)


# ----------------------------------------------------------------------- provider


class RulesLlm:
    """The offline LLM provider: intents in, streamed reply out."""

    name = PROVIDER

    def __init__(
        self,
        settings: RulesLlmSettings | None = None,
        *,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.settings = settings or RulesLlmSettings()
        self.intents = Intents.load(self.settings.intents_path)
        self._clock = clock

    def reply(self, messages: Sequence[ChatMessage]) -> str:
        """The whole reply to the conversation's last user message."""
        heard = next((m.content.strip() for m in reversed(messages) if m.role == "user"), "")
        assistant = [m.content for m in messages if m.role == "assistant"]
        if words(heard):
            replies = self.intents.replies_for(self.intents.match(heard))
        else:
            replies = self.intents.empty
        now = self._clock()
        values = {
            "heard": heard.rstrip(".!?,;: "),
            "time": now.strftime("%I:%M %p").lstrip("0"),
            "date": f"{now:%A}, {now:%B} {now.day}",
            "day": f"{now:%A}",
            "name": self.settings.assistant_name,
            "last_reply": assistant[-1] if assistant else "nothing yet.",
        }
        return fill_slots(replies[len(assistant) % len(replies)], values)

    async def stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[LlmDelta]:
        """The reply word by word (each piece keeps its leading space), then ``stop``."""
        for piece in _PIECE.findall(self.reply(messages)):
            yield LlmDelta(received_ns=time.monotonic_ns(), text=piece)
            await asyncio.sleep(0)
        yield LlmDelta(received_ns=time.monotonic_ns(), finish_reason="stop")
