"""Cutting an LLM's token stream into phrases a TTS can speak well.

Tokens arrive a few characters at a time.  A TTS sounds natural, and its first
audio arrives soonest, when it gets whole clauses: the first phrase of a reply
is cut at the first clause boundary (``,`` ``;`` ``:`` ``—``) once it holds
``first_min_chars``, later ones only at sentence ends (``.`` ``!`` ``?`` or a
line break) unless they grow past ``clause_min_chars``.  A phrase never grows
past ``max_chars``: it is cut at its last space (or hard, for a run without
one).  A sentence end counts once the next character is whitespace, so
``3.14`` and ``e.g.`` are not cut; the first phrase of a reply does not wait
for that character when the text so far plainly ends a sentence (``Sure.``,
``Really?``): that wait would add a whole token to every turn's latency.  (So
the first phrase, unlike the others, depends on how the text was split into
tokens; ``eager=False`` turns this off.)

Markdown emphasis and code marks are dropped, and a phrase with no letter or
digit (``"..."``, ``"**"``) is not returned: TTS cannot speak it.
"""

from __future__ import annotations

import re
from typing import Final

_SENTENCE_END: Final = frozenset(".!?")
_CLAUSE_END: Final = frozenset(",;:—")
_ABBREVIATIONS: Final = frozenset(
    {"mr", "mrs", "ms", "dr", "st", "vs", "etc", "e.g", "i.e", "jr", "sr", "prof"}
)
_MARKUP: Final = re.compile(r"[*_`#~]+|\[|\]\([^)]*\)")
_SPACES: Final = re.compile(r"\s+")


def speakable(text: str) -> str:
    """``text`` without markup and with single spaces; empty if nothing in it can be spoken."""
    text = _SPACES.sub(" ", _MARKUP.sub("", text)).strip()
    return text if any(c.isalnum() for c in text) else ""


class PhraseCutter:
    """Accumulates token text; :meth:`push` returns the phrases completed by it."""

    def __init__(
        self,
        *,
        first_min_chars: int = 20,
        clause_min_chars: int = 80,
        max_chars: int = 250,
        eager: bool = True,
    ) -> None:
        if not 0 < first_min_chars <= clause_min_chars < max_chars:
            raise ValueError("need 0 < first_min_chars <= clause_min_chars < max_chars")
        self.first_min_chars = first_min_chars
        self.clause_min_chars = clause_min_chars
        self.max_chars = max_chars
        self.eager = eager
        """Cut the first phrase at a plain sentence end without waiting for the next token."""
        self._buf = ""
        self._scan = 0  # characters of _buf already scanned for a boundary
        self._emitted = 0

    def push(self, text: str) -> list[str]:
        """Add token text; return the phrases it completed, in order."""
        self._buf += text
        phrases: list[str] = []
        while (cut := self._find_cut()) is not None:
            phrase, self._buf = self._buf[:cut], self._buf[cut:]
            self._scan = 0
            if spoken := speakable(phrase):
                phrases.append(spoken)
                self._emitted += 1
        return phrases

    def flush(self) -> list[str]:
        """The text left at the end of the reply, as zero or more phrases."""
        rest, self._buf, self._scan = self._buf, "", 0
        out: list[str] = []
        while len(rest) > self.max_chars:
            cut = _space_cut(rest, self.max_chars)
            out.append(rest[:cut])
            rest = rest[cut:]
        out.append(rest)
        phrases = [p for p in (speakable(x) for x in out) if p]
        self._emitted += len(phrases)
        return phrases

    def _find_cut(self) -> int | None:
        buf = self._buf
        min_clause = self.first_min_chars if self._emitted == 0 else self.clause_min_chars
        # The character after a boundary must be seen, so stop one short of the end.
        for i in range(self._scan, min(len(buf) - 1, self.max_chars)):
            ch = buf[i]
            if ch == "\n":
                return i + 1
            if not buf[i + 1].isspace():
                continue
            if ch in _SENTENCE_END and not _is_abbreviation(buf, i):
                return i + 1
            if ch in _CLAUSE_END and i + 1 >= min_clause:
                return i + 1
        self._scan = max(0, min(len(buf) - 1, self.max_chars))
        first = self.eager and self._emitted == 0
        if first and len(buf) <= self.max_chars and _clear_sentence_end(buf):
            return len(buf)
        if len(buf) > self.max_chars:
            return _space_cut(buf, self.max_chars)
        return None


def _clear_sentence_end(buf: str) -> bool:
    """The text so far ends a sentence without a doubt that the next token could settle.

    ``?`` or ``!`` right after a word, or ``.`` right after a word of two or more
    letters that is not an abbreviation.  LLM tokenizers keep ``.com`` or ``.5``
    in one token with what follows the dot, so a lone ``.`` after a word ends a
    sentence; at worst a phrase is cut early and spoken in two parts, never lost.
    """
    if len(buf) < 3 or not buf[-2].isalpha():
        return False
    if buf[-1] in "?!":
        return True
    if buf[-1] != ".":
        return False
    start = len(buf) - 1
    while start > 0 and buf[start - 1].isalpha():
        start -= 1
    word = buf[start:-1]
    after_space = start == 0 or buf[start - 1] in " \n\"'("
    return len(word) >= 2 and word.lower() not in _ABBREVIATIONS and after_space


def _is_abbreviation(buf: str, dot: int) -> bool:
    if buf[dot] != ".":
        return False
    start = dot
    while start > 0 and (buf[start - 1].isalpha() or buf[start - 1] == "."):
        start -= 1
    raw = buf[start:dot]
    # A lone capital is an initial ("J. Smith"), except the pronoun ("So do I. Next").
    return raw.lower() in _ABBREVIATIONS or (len(raw) == 1 and raw.isupper() and raw != "I")


def _space_cut(text: str, limit: int) -> int:
    """Where to cut ``text`` (longer than ``limit``): after its last space before ``limit``."""
    space = text.rfind(" ", 1, limit)
    return space + 1 if space > 0 else limit
