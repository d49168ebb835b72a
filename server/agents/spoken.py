"""What one bot utterance says and when: to cut its text at what the caller heard.

An utterance (one generation) is a run of *segments*, each the audio of one TTS
stream (or a canned clip) laid end to end: ms of the generation's audio.  A
segment knows the text sent for it and, when the TTS aligns it, when each
word is spoken.  After an interruption at ``heard_ms`` (how much of the
generation the caller heard), :meth:`SpokenLedger.heard_text` keeps:

* every word whose middle was played, when the segment has word timings
  (counted against the segment's own text, so the history keeps the LLM's
  spelling, not the TTS's normalisation);
* otherwise the share of the segment's text its played share of audio holds
  (once its audio is complete), or what an average speaking rate
  (``CHARS_PER_S``) covers in the played time (while it is still arriving);

cut back to a whole word.  Segments marked ``in_history=False`` (a filler)
take time but add no text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from server.providers.base import Word

CHARS_PER_S: Final = 14.0
"""Characters of English text spoken per second at an ordinary pace (~160 words/min)."""


@dataclass
class Segment:
    start_ms: float
    in_history: bool
    texts: list[str] = field(default_factory=list)
    audio_ms: float = 0.0
    words: list[Word] = field(default_factory=list)
    complete: bool = False

    @property
    def text(self) -> str:
        return " ".join(self.texts)


class SpokenLedger:
    """Text and audio timing of one generation, in order."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    @property
    def audio_ms(self) -> float:
        """Audio of the generation received so far (ms)."""
        last = self.segments[-1] if self.segments else None
        return last.start_ms + last.audio_ms if last else 0.0

    def begin(self, *, in_history: bool = True) -> Segment:
        """Start a segment at the current end of the audio (the previous one is complete)."""
        if self.segments:
            self.segments[-1].complete = True
        segment = Segment(start_ms=self.audio_ms, in_history=in_history)
        self.segments.append(segment)
        return segment

    def insert_clip(self, ms: float) -> None:
        """Put ``ms`` of audio that is not in the history (a filler) before everything.

        Only while no audio has arrived: the clip is queued first, so it plays first.
        """
        if self.audio_ms > 0:
            raise ValueError("a clip goes before the generation's audio, not after it")
        for segment in self.segments:
            segment.start_ms += ms
        self.segments.insert(0, Segment(start_ms=0.0, in_history=False, audio_ms=ms, complete=True))

    def add_text(self, text: str) -> None:
        """Text sent to the current segment's TTS."""
        self.segments[-1].texts.append(text)

    def add_audio(self, ms: float, words: tuple[Word, ...] = ()) -> None:
        """``ms`` of audio for the current segment; ``words`` timed from the segment's start."""
        segment = self.segments[-1]
        segment.audio_ms += ms
        segment.words.extend(words)

    def complete(self) -> None:
        """The current segment's audio is all there."""
        if self.segments:
            self.segments[-1].complete = True

    def full_text(self) -> str:
        """Everything the generation was to say (the history entry when heard to the end)."""
        return " ".join(s.text for s in self.segments if s.in_history and s.texts)

    def heard_text(self, heard_ms: float) -> str:
        """The text the caller heard of the generation, ending on a whole word."""
        parts: list[str] = []
        for segment in self.segments:
            local_ms = heard_ms - segment.start_ms
            if local_ms <= 0:
                break
            if not segment.in_history or not segment.texts:
                continue
            whole = segment.complete and heard_ms >= segment.start_ms + segment.audio_ms
            part = segment.text if whole else _partial(segment, local_ms)
            if part:
                parts.append(part)
            if not whole:
                break
        return " ".join(parts)


def _partial(segment: Segment, local_ms: float) -> str:
    text = segment.text
    tokens = text.split()
    if segment.words:
        n = sum(1 for w in segment.words if (w.start_ms + w.end_ms) / 2 <= local_ms)
        return " ".join(tokens[: min(n, len(tokens))])
    if segment.complete and segment.audio_ms > 0:
        n_chars = len(text) * min(1.0, local_ms / segment.audio_ms)
    else:
        n_chars = local_ms / 1000 * CHARS_PER_S
    if n_chars >= len(text):
        return text
    cut = text.rfind(" ", 0, int(n_chars) + 1)
    return text[:cut] if cut > 0 else ""
