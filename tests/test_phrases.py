"""PhraseCutter and speakable: where an LLM token stream is cut into TTS phrases."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server.agents.phrases import PhraseCutter, speakable

MARKUP_CHARS = "*_`#~"


def cut(tokens: Iterable[str], cutter: PhraseCutter | None = None) -> list[str]:
    """Every phrase of a token stream: what each push returned, then the flush."""
    cutter = cutter or PhraseCutter()
    phrases: list[str] = []
    for token in tokens:
        phrases += cutter.push(token)
    return phrases + cutter.flush()


def small(**overrides: int) -> PhraseCutter:
    params = {"first_min_chars": 2, "clause_min_chars": 5, "max_chars": 10} | overrides
    return PhraseCutter(**params)


# --------------------------------------------------------------------- speakable


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        ("  Hello \n\t there  ", "Hello there"),
        ("**Bold** and _em_ and `code`", "Bold and em and code"),
        ("## Heading ~~gone~~", "Heading gone"),
        ("see [the docs](https://example.com/a.b) now", "see the docs now"),
        ("3.14, e.g. this", "3.14, e.g. this"),
        ("...", ""),
        ("** -- !", ""),
        ("", ""),
        ("   ", ""),
        ("7", "7"),
        ("é!", "é!"),
    ],
)
def test_speakable(text: str, spoken: str) -> None:
    assert speakable(text) == spoken


# ------------------------------------------------------------------ sentence ends


def test_sentence_end_waits_for_the_next_character() -> None:
    cutter = PhraseCutter(eager=False)
    assert cutter.push("Hello there.") == []
    assert cutter.push(" How") == ["Hello there."]
    assert cutter.push(" are you?") == []
    assert cutter.push("\n") == ["How are you?"]
    assert cutter.flush() == []


def test_the_first_phrase_does_not_wait_for_a_plain_sentence_end() -> None:
    cutter = PhraseCutter()
    assert cutter.push("Hello there.") == ["Hello there."]  # no token of delay
    assert cutter.push(" How are you?") == []  # later phrases wait as usual
    assert cutter.push(" Fine") == ["How are you?"]


@pytest.mark.parametrize("start", ["It is 3.", "Ask Dr.", "Call J.", "Use v2.", "A.", "Done ."])
def test_an_ambiguous_first_end_still_waits(start: str) -> None:
    assert PhraseCutter().push(start) == []


@pytest.mark.parametrize("end", [".", "!", "?"])
def test_each_sentence_end_cuts(end: str) -> None:
    assert cut([f"Short{end} Next"]) == [f"Short{end}", "Next"]


@pytest.mark.parametrize(
    "text",
    [
        "It costs 3.14 dollars today",
        "Bring fruit, e.g. apples and pears",
        "Bring fruit, i.e. apples and pears",
        "Dr. Smith and Mrs. Jones met Mr. Brown",
        "Call J. Smith at once",
        "Version 2.0.1 is out",
        "Go to example.com now",
    ],
)
def test_no_cut_inside_numbers_or_after_abbreviations(text: str) -> None:
    assert cut([text]) == [text]
    assert cut(list(text), PhraseCutter(eager=False)) == [text]
    # As an LLM streams it: a dot starts a token, with what follows it ("example", ".com").
    tokens = [t for t in re.findall(r"\s*\.?[^\s.]*", text) if t]
    assert cut(tokens) == [text]


def test_line_break_cuts() -> None:
    cutter = PhraseCutter()
    assert cutter.push("Line one\n") == []  # the character after it is not seen yet
    assert cutter.push("Line two") == ["Line one"]
    assert cutter.flush() == ["Line two"]


# --------------------------------------------------------------- clause boundaries


def test_first_phrase_cuts_at_a_clause_once_it_holds_first_min_chars() -> None:
    text = "Hi, yes, well, I think so, and you, my friend, agree"
    # "Hi, yes, well, I think so," is the first clause end at or past 20 characters.
    phrases = cut(list(text), PhraseCutter(first_min_chars=20, clause_min_chars=80))
    assert phrases == ["Hi, yes, well, I think so,", "and you, my friend, agree"]


def test_clause_boundaries_are_colon_semicolon_and_dash() -> None:
    for mark in (",", ";", ":", "—"):
        text = f"Twenty one characters{mark} then more"
        assert cut([text], PhraseCutter(first_min_chars=20)) == [
            f"Twenty one characters{mark}",
            "then more",
        ]


def test_clause_mark_needs_whitespace_after_it() -> None:
    text = "A number like 1,000,000 or a time 10:30 stays whole"
    assert cut([text], PhraseCutter(first_min_chars=5)) == [text]


def test_later_phrases_cut_at_clauses_only_past_clause_min_chars() -> None:
    cutter = PhraseCutter(first_min_chars=10, clause_min_chars=40, max_chars=200)
    first = "Sure thing. "
    short_clauses = "Yes, of course, I can, and I will, "  # 35 chars: no clause cut in it
    long_clause = "and then some more words to pass it, "  # crosses 40 chars at its comma
    phrases = cut(list(first + short_clauses + long_clause + "done"), cutter)
    assert phrases == [
        "Sure thing.",
        "Yes, of course, I can, and I will, and then some more words to pass it,",
        "done",
    ]


def test_sentence_ends_cut_short_later_phrases() -> None:
    cutter = PhraseCutter(first_min_chars=10, clause_min_chars=40)
    assert cut(["One. Two, three. Four"], cutter) == ["One.", "Two, three.", "Four"]


# -------------------------------------------------------------------- max_chars


def test_max_chars_cuts_at_the_last_space() -> None:
    words = [f"w{i:02d}" for i in range(40)]  # 4-character words, no punctuation
    text = " ".join(words)
    cutter = PhraseCutter(first_min_chars=10, clause_min_chars=20, max_chars=30)
    phrases = cut(list(text), cutter)
    assert all(len(p) <= 30 for p in phrases)
    assert len(phrases) > 1
    # Cut at spaces: every word arrives whole, in order.
    assert [w for p in phrases for w in p.split()] == words


def test_hard_cut_for_a_run_without_spaces() -> None:
    cutter = small()
    assert cutter.push("x" * 25) == ["x" * 10, "x" * 10]
    assert cutter.flush() == ["x" * 5]


def test_hard_cut_char_by_char() -> None:
    assert cut("y" * 23, small()) == ["y" * 10, "y" * 10, "yyy"]


def test_flush_respects_max_chars() -> None:
    cutter = small()
    assert cutter.push("abc defgh") == []
    assert cutter.flush() == ["abc defgh"]


def test_one_big_push_never_exceeds_max_chars() -> None:
    text = "word " * 60 + "end. More."  # 300 characters before the first sentence end
    phrases = cut([text], PhraseCutter(max_chars=250))
    assert max(len(p) for p in phrases) <= 250


# ------------------------------------------------------------- markup and junk


def test_markdown_is_stripped_from_phrases() -> None:
    text = "**Great** question. Use `pip` or _conda_ here. ## Next ~~step~~ now"
    assert cut(list(text)) == ["Great question.", "Use pip or conda here.", "Next step now"]


def test_punctuation_only_phrases_are_never_returned() -> None:
    cutter = PhraseCutter()
    assert cutter.push("Well. ... ** !? ") == ["Well."]
    assert cutter.push("\n\n") == []
    assert cutter.push("Right.") == []
    assert cutter.flush() == ["Right."]


def test_punctuation_only_rest_flushes_to_nothing() -> None:
    cutter = PhraseCutter()
    assert cutter.push("...") == []
    assert cutter.flush() == []


def test_empty_stream() -> None:
    cutter = PhraseCutter()
    assert cutter.push("") == []
    assert cutter.flush() == []


def test_flush_returns_the_rest_and_empties_the_cutter() -> None:
    cutter = PhraseCutter()
    assert cutter.push("The rest of it") == []
    assert cutter.flush() == ["The rest of it"]
    assert cutter.flush() == []


@pytest.mark.parametrize(
    ("first", "clause", "max_"), [(0, 10, 20), (11, 10, 20), (5, 20, 20), (5, 30, 20)]
)
def test_bad_limits_are_refused(first: int, clause: int, max_: int) -> None:
    with pytest.raises(ValueError, match="first_min_chars"):
        PhraseCutter(first_min_chars=first, clause_min_chars=clause, max_chars=max_)


# --------------------------------------------------------------------- properties

ALPHABET = "abcXYZ019é .,;:!?—\n\t'-" + MARKUP_CHARS
"""Text, sentence and clause marks, whitespace and markup (no link brackets)."""


@st.composite
def limits(draw: st.DrawFn, *, min_max_chars: int = 3) -> PhraseCutter:
    first = draw(st.integers(1, 60))
    clause = draw(st.integers(first, 120))
    max_chars = draw(st.integers(max(clause + 1, min_max_chars), 300))
    return PhraseCutter(first_min_chars=first, clause_min_chars=clause, max_chars=max_chars)


@st.composite
def split(draw: st.DrawFn, text: str) -> list[str]:
    """``text`` as arbitrary tokens (possibly empty ones)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=max(1, len(text) // 2))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def word_text(draw: st.DrawFn) -> str:
    """Words (each with a letter, maybe wrapped in markup, maybe punctuated) and separators."""
    n = draw(st.integers(0, 60))
    out = []
    for _ in range(n):
        core = draw(st.text("abcdefXYZ0129é", min_size=1, max_size=10).filter(str.isalnum))
        if not any(c.isalpha() for c in core):
            core += "a"
        mark = draw(st.sampled_from(["", "", "**", "_", "`"]))
        punct = draw(st.sampled_from(["", "", "", ".", ",", ";", ":", "!", "?", "—"]))
        sep = draw(st.sampled_from([" ", " ", " ", "  ", "\n"]))
        out.append(f"{mark}{core}{punct}{mark}{sep}")
    return "".join(out)


def alnum(text: str) -> str:
    return "".join(c for c in text if c.isalnum())


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=st.text(ALPHABET, max_size=400))
def test_no_letter_or_digit_is_lost_duplicated_or_reordered(data: st.DataObject, text: str) -> None:
    cutter = data.draw(limits())
    phrases = cut(data.draw(split(text)), cutter)
    assert alnum("".join(phrases)) == alnum(text)
    for phrase in phrases:
        assert phrase == speakable(phrase) != ""  # normalised, non-empty, speakable
        assert not set(phrase) & set(MARKUP_CHARS)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=word_text())
def test_phrases_joined_are_the_speakable_text(data: st.DataObject, text: str) -> None:
    """With whole words (no run longer than max_chars, nothing punctuation-only),
    the phrases joined by spaces are exactly ``speakable`` of the whole reply."""
    cutter = data.draw(limits(min_max_chars=40))
    phrases = cut(data.draw(split(text)), cutter)
    assert " ".join(phrases) == speakable(text)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=st.text(ALPHABET + "[]()", max_size=150))
def test_split_does_not_matter_while_under_max_chars(data: st.DataObject, text: str) -> None:
    first = data.draw(st.integers(1, 60))
    clause = data.draw(st.integers(first, 120))

    def fresh() -> PhraseCutter:
        return PhraseCutter(
            first_min_chars=first, clause_min_chars=clause, max_chars=1000, eager=False
        )

    tokens = data.draw(split(text))
    assert cut(tokens, fresh()) == cut(list(text), fresh()) == cut([text], fresh())


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=st.text(ALPHABET, max_size=600))
def test_char_by_char_never_exceeds_max_chars(data: st.DataObject, text: str) -> None:
    cutter = data.draw(limits())
    assert all(len(p) <= cutter.max_chars for p in cut(list(text), cutter))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=st.text(ALPHABET, max_size=600))
def test_overshoot_is_bounded_by_the_token_length(data: st.DataObject, text: str) -> None:
    """A looser bound, for any limits: a phrase exceeds ``max_chars`` by less than the
    longest token pushed."""
    cutter = data.draw(limits())
    tokens = data.draw(split(text))
    longest = max((len(t) for t in tokens), default=0)
    assert all(len(p) <= cutter.max_chars + max(0, longest - 1) for p in cut(tokens, cutter))


BIG_PUSH = ("word " * 60 + "end. More.", ["word " * 60 + "end. More."])


@st.composite
def text_and_split(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(st.text(ALPHABET, max_size=600))
    return text, draw(split(text))


@settings(max_examples=300, deadline=None)
@example(BIG_PUSH)
@given(text_and_split())
def test_phrases_do_not_depend_on_the_token_split(case: tuple[str, list[str]]) -> None:
    text, tokens = case
    phrases = cut(tokens, PhraseCutter(max_chars=250, eager=False))
    assert phrases == cut(list(text), PhraseCutter(max_chars=250, eager=False))
    assert all(len(p) <= 250 for p in phrases)
