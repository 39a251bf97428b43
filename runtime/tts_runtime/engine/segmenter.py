"""Cut text into speakable segments (sentences, then clauses, then words) for streamed synthesis."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

from sentencex import segment as sentences

Boundary = Literal["sentence", "clause", "word"]

# The first segment is what the client waits for: keep it short. Later segments may be longer, which
# costs no latency (they are synthesized while earlier audio plays) and means fewer joins.
FIRST_MAX_CHARS: Final = 160
MAX_CHARS: Final = 400
# A clause ends at , ; : or a dash followed by a space ("1,000" and "3:30" have none, so stay whole).
_CLAUSE_END = re.compile(r"(?<=[,;:\u2014\u2013])\s+|\s+(?=[\u2014\u2013-]\s)")
_PARAGRAPH = re.compile(r"\n\s*\n|\n")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Segment:
    text: str
    boundary: Boundary  # what ends this segment (the last one ends the text, reported as "sentence")


def split(
    text: str,
    language: str = "en",
    first_max: int = FIRST_MAX_CHARS,
    max_chars: int = MAX_CHARS,
    join: bool = True,
) -> list[Segment]:
    """Segments in order, each at most `first_max` (the first) or `max_chars` characters unless one
    word is longer; with `join`, neighbours are joined while they fit. Whitespace between segments is
    dropped; no segment is empty and no word is ever cut."""
    pieces: list[Segment] = []
    for paragraph in _PARAGRAPH.split(text):
        for sentence in sentences(language, paragraph):
            sentence = _SPACE.sub(" ", sentence).strip()
            if sentence:
                pieces.extend(_fit(sentence, first_max if not pieces else max_chars, join))
    return _merge(pieces, first_max, max_chars) if join else pieces


def _fit(sentence: str, limit: int, join: bool) -> list[Segment]:
    """One sentence as segments within `limit`: whole, else at clause ends, else at spaces."""
    if len(sentence) <= limit:
        return [Segment(sentence, "sentence")]
    out: list[Segment] = []
    clauses = [c for c in _CLAUSE_END.split(sentence) if c.strip()]
    for i, clause in enumerate(clauses):
        end: Boundary = "sentence" if i == len(clauses) - 1 else "clause"
        if len(clause) <= limit:
            out.append(Segment(clause, end))
            continue
        words = _words(clause, limit)
        out.extend(Segment(w, "word") for w in words[:-1])
        out.append(Segment(words[-1], end))
    # Clauses that fit together travel together: fewer joins, more context for the model.
    return _merge(out, limit, limit) if join else out


def _words(text: str, limit: int) -> list[str]:
    """Greedy word wrap at `limit` characters; a single longer word is its own piece, never cut."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > limit:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    return lines


def _merge(pieces: list[Segment], first_limit: int, limit: int) -> list[Segment]:
    """Join neighbours while they fit: the first segment within `first_limit`, the others `limit`."""
    out: list[Segment] = []
    for piece in pieces:
        if out and len(out[-1].text) + 1 + len(piece.text) <= (first_limit if len(out) == 1 else limit):
            out[-1] = Segment(f"{out[-1].text} {piece.text}", piece.boundary)
        else:
            out.append(piece)
    return out
