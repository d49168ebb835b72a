"""Hypothesis mutations of real protocol messages, line by line, for parser fuzzing."""

from __future__ import annotations

from typing import TypeVar

from hypothesis import strategies as st

Line = TypeVar("Line", str, bytes)


@st.composite
def mutated_lines(
    draw: st.DrawFn,
    lines: list[Line],
    *,
    piece: st.SearchStrategy[Line],
    new_line: st.SearchStrategy[Line],
    max_rounds: int,
) -> list[Line]:
    """``lines`` after 1..``max_rounds`` random edits: delete, duplicate or swap a
    line, overwrite one character of a line with a ``piece``, insert a ``new_line``."""
    lines = list(lines)
    for _ in range(draw(st.integers(1, max_rounds))):
        op = draw(st.sampled_from(["delete", "duplicate", "swap", "flip", "insert"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "flip" and lines[i]:
            k = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:k] + draw(piece) + lines[i][k + 1 :]
        elif op == "insert":
            lines.insert(i, draw(new_line))
    return lines
