"""Text cut for streaming: at sentence, then clause, then word boundaries; never inside a word."""

from __future__ import annotations

import pytest

from tts_runtime.engine.segmenter import FIRST_MAX_CHARS, MAX_CHARS, split


def texts(
    text: str, first_max: int = FIRST_MAX_CHARS, max_chars: int = MAX_CHARS, join: bool = True
) -> list[str]:
    return [s.text for s in split(text, first_max=first_max, max_chars=max_chars, join=join)]


def words(text: str) -> list[str]:
    return text.split()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Abbreviations, titles and initials end no sentence.
        (
            "Dr. Smith met Mr. J. K. Rowling, e.g. at noon. They talked.",
            ["Dr. Smith met Mr. J. K. Rowling, e.g. at noon.", "They talked."],
        ),
        # Decimal points and thousands separators are not boundaries.
        (
            "Pi is 3.14 today. We sold 1,000 units at $2.50 each. Done.",
            ["Pi is 3.14 today.", "We sold 1,000 units at $2.50 each.", "Done."],
        ),
        # A quoted question is one sentence with what follows it.
        ('"Is it ready?" she asked. "Yes!" he said.', ['"Is it ready?" she asked.', '"Yes!" he said.']),
        (
            "The U.S. economy grew 2.5 percent... Then it fell",
            ["The U.S. economy grew 2.5 percent...", "Then it fell"],
        ),
    ],
)
def test_sentences_end_where_a_reader_would_stop(text: str, expected: list[str]) -> None:
    assert texts(text, join=False) == expected


def test_a_long_sentence_is_cut_at_clauses_then_words_never_mid_word() -> None:
    sentence = (
        "When the long train finally pulled into the station, which had been closed for years, "
        "the crowd cheered; nobody had expected it, and the band began to play without a pause"
    )
    parts = split(sentence, first_max=60, max_chars=60)
    assert all(len(p.text) <= 60 for p in parts)
    assert [p.boundary for p in parts][:2] == ["clause", "clause"]
    assert parts[0].text == "When the long train finally pulled into the station,"
    assert words(" ".join(p.text for p in parts)) == words(sentence)


def test_text_without_punctuation_is_cut_at_word_boundaries() -> None:
    text = " ".join(f"word{i}" for i in range(300))
    parts = split(text)
    assert len(parts[0].text) <= FIRST_MAX_CHARS and all(len(p.text) <= MAX_CHARS for p in parts)
    assert {p.boundary for p in parts[:-1]} == {"word"}
    # Rejoined, every word is there, whole and in order.
    assert words(" ".join(p.text for p in parts)) == words(text)


def test_a_word_longer_than_the_limit_stays_whole() -> None:
    long_word = "x" * 50
    assert texts(f"a {long_word} b", first_max=10, max_chars=10) == ["a", long_word, "b"]


def test_short_sentences_travel_together_after_a_short_first_segment() -> None:
    text = "Hi. " + " ".join(f"Sentence number {i} is short." for i in range(40))
    parts = split(text)
    assert len(parts[0].text) <= FIRST_MAX_CHARS
    assert all(len(p.text) <= MAX_CHARS for p in parts)
    assert len(parts) < 12  # 41 sentences, joined into far fewer model calls
    assert words(" ".join(p.text for p in parts)) == words(text)


def test_paragraphs_and_spacing() -> None:
    assert texts("First line\nsecond line\n\n  Third.  ", first_max=12, max_chars=12) == [
        "First line",
        "second line",
        "Third.",
    ]
    assert split("   ") == []
