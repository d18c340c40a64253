"""Transcript chunking: boundaries, overlap, cue times, units, bad settings."""

from __future__ import annotations

import random

import pytest
from pydantic import ValidationError

from videolib.chunking import (
    ChunkingConfig,
    TranscriptError,
    chunk_transcript,
    parse_transcript,
)


def _sentences(count: int, words: int) -> str:
    return " ".join(" ".join([f"s{i}w{j}" for j in range(words - 1)] + [f"s{i}end."]) for i in range(count))


def test_chunks_end_at_sentences_and_overlap_whole_sentences():
    # 10 sentences of 6 words; target 20 -> 3 sentences (18 words); overlap 7 -> 1 sentence.
    chunks = chunk_transcript(_sentences(10, 6), ChunkingConfig(target=20, overlap=7))
    texts = [c.content.split() for c in chunks]
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert texts[0] == _sentences(3, 6).split()
    for words in texts:
        assert words[0].endswith("w0"), "every chunk starts at a sentence"
        assert words[-1].endswith("end."), "every chunk ends at a sentence"
        assert len(words) <= 20
    for prev, nxt in zip(texts, texts[1:]):
        assert nxt[:6] == prev[-6:], "the overlap is the previous chunk's last sentence"
    assert texts[-1][-1] == "s9end."
    assert len(chunks) == 5  # sentences 0-2, 2-4, 4-6, 6-8, 8-9


def test_no_overlap_partitions_the_words():
    text = _sentences(9, 5)
    chunks = chunk_transcript(text, ChunkingConfig(target=10, overlap=0))
    assert " ".join(c.content for c in chunks) == text
    assert all(len(c.content.split()) == 10 for c in chunks[:-1])


def test_a_sentence_longer_than_the_target_is_cut_at_the_target():
    text = " ".join(f"w{i}" for i in range(50)) + "."
    chunks = chunk_transcript(text, ChunkingConfig(target=20, overlap=5))
    sizes = [len(c.content.split()) for c in chunks]
    assert sizes[:-1] == [20] * (len(sizes) - 1)
    starts = [int(c.content.split()[0][1:]) for c in chunks]
    assert starts == [0, 15, 30, 45][: len(starts)]
    assert chunks[-1].content.endswith("w49.")


def test_overlap_that_starts_mid_sentence_still_moves_forward():
    chunks = chunk_transcript("Hello there. This is the first cue. And a second cue follows, with more words!",
                              ChunkingConfig(target=8, overlap=3))
    contents = [c.content for c in chunks]
    assert contents[0] == "Hello there. This is the first cue."
    assert all(len(c.split()) <= 8 for c in contents)
    assert contents[-1].endswith("words!")
    assert len(contents) == 3


@pytest.mark.parametrize("seed", range(5))
def test_random_transcripts_are_covered_in_order_within_the_target(seed):
    rng = random.Random(seed)
    for _ in range(300):
        words: list[str] = []
        for _s in range(rng.randint(0, 25)):
            words += [f"w{rng.randint(0, 9)}" for _ in range(rng.randint(1, 30))]
            words[-1] += rng.choice([".", "!", "?", ""])
        target = rng.randint(8, 40)
        overlap = rng.randint(0, target - 1)
        chunks = chunk_transcript(" ".join(words), ChunkingConfig(target=target, overlap=overlap))
        covered = 0
        for chunk in chunks:
            part = chunk.content.split()
            assert 1 <= len(part) <= target
            starts = [i for i in range(covered + 1) if words[i : i + len(part)] == part and i + len(part) > covered]
            assert starts, "each chunk is a slice that adds new words"
            overlap_words = covered - starts[0]
            assert overlap_words <= overlap
            covered = starts[0] + len(part)
        assert covered == len(words)


def test_token_unit_counts_punctuation_and_word_pieces():
    text = "Well, e.g. this: (yes) no! " * 20
    by_tokens = chunk_transcript(text, ChunkingConfig(target=30, overlap=0, unit="tokens"))
    by_words = chunk_transcript(text, ChunkingConfig(target=30, overlap=0, unit="words"))
    assert len(by_tokens) > len(by_words)
    import re

    for chunk in by_tokens:
        assert len(re.findall(r"\w+|[^\w\s]", chunk.content)) <= 30


WEBVTT = """WEBVTT

NOTE a comment block
that spans lines

1
00:00:00.000 --> 00:00:04.000
Hello there. This is <b>the</b> first cue.

2
00:00:04.000 --> 00:00:08.500 align:start
And a second cue follows, with more words!

3
01:00:10.000 --> 01:00:12.000
Last one.
"""

SRT = """1
00:00:01,000 --> 00:00:03,000
First subtitle line.

2
00:00:03,000 --> 00:00:07,000
Second subtitle
on two lines.
"""


def test_webvtt_cues_carry_times_into_chunks():
    segments = parse_transcript(WEBVTT)
    assert [s.text for s in segments] == [
        "Hello there. This is the first cue.", "And a second cue follows, with more words!", "Last one."
    ]
    assert segments[2].start_s == 3610.0 and segments[2].end_s == 3612.0
    chunks = chunk_transcript(WEBVTT, ChunkingConfig(target=10, overlap=0))
    assert chunks[0].content == "Hello there. This is the first cue."
    assert chunks[0].start_s == 0.0 and chunks[0].end_s == 4.0
    assert chunks[-1].end_s == 3612.0
    for chunk in chunks:
        assert chunk.start_s is not None and chunk.end_s is not None and chunk.start_s < chunk.end_s
    assert [c.start_s for c in chunks] == sorted(c.start_s for c in chunks)


def test_srt_is_read_too():
    chunks = chunk_transcript(SRT)
    assert len(chunks) == 1
    assert chunks[0].content == "First subtitle line. Second subtitle on two lines."
    assert (chunks[0].start_s, chunks[0].end_s) == (1.0, 7.0)


def test_plain_text_has_no_times_and_empty_text_no_chunks():
    assert chunk_transcript("Just words.")[0].start_s is None
    assert chunk_transcript("") == [] and chunk_transcript("   \n ") == [] and chunk_transcript(None) == []
    assert chunk_transcript("WEBVTT\n\n") == []


def test_a_cue_that_ends_before_it_starts_is_an_error():
    with pytest.raises(TranscriptError):
        parse_transcript("1\n00:00:05.000 --> 00:00:01.000\nBackwards.\n")


@pytest.mark.parametrize(
    "kwargs",
    [{"target": 10, "overlap": 10}, {"target": 3}, {"target": 100, "overlap": -1}, {"unit": "letters"},
     {"target": 10**6}],
)
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValidationError):
        ChunkingConfig(**kwargs)
