"""Transcript -> chunks: windows of words (or tokens) with overlap, cut at sentences.

A transcript is plain text, or WebVTT / SRT cues (``00:01:02.500 --> 00:01:05.000``
lines followed by text). Cue times are carried into the chunks: each word gets a
time interpolated inside its cue, a chunk starts at its first word's time and ends at
its last word's. Plain text gives chunks without times.

Cutting, for a target size ``T`` and an overlap ``O`` (in words, or in tokens where a
token is a run of letters/digits or one punctuation mark, roughly what a WordPiece
tokenizer counts):

- a chunk ends at the last sentence end that keeps it within ``T`` and adds words the
  previous chunk did not have; failing that (a sentence longer than ``T``, or an
  overlap that started mid-sentence), it is cut at ``T``;
- the next chunk starts at the first sentence start inside the last ``O`` units of the
  previous chunk, so the overlap is whole sentences where it can be; when no sentence
  starts there, it starts exactly ``O`` units back (mid-sentence).

Every word of the transcript lands in at least one chunk, in order, and chunk texts
are the words joined by single spaces.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

from pydantic import BaseModel, Field, ValidationError, model_validator

from videolib.ids import RequestError

UNITS = ("words", "tokens")

_CUE_TIME = re.compile(
    r"^\s*(?P<a>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*(?P<b>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})"
)
_TOKEN = re.compile(r"\w+|[^\w\s]", re.UNICODE)
_TAG = re.compile(r"<[^>]{0,200}>")


class ChunkingConfig(BaseModel):
    """How transcripts are cut. Sizes count ``unit``s (words or tokens)."""

    target: int = Field(80, ge=8, le=2000, description="Most units per chunk (~500 characters at 80 words).")
    overlap: int = Field(16, ge=0, le=1000, description="Units repeated from the end of the previous chunk.")
    unit: Literal["words", "tokens"] = Field("words", description="'words' or 'tokens'.")

    @model_validator(mode="after")
    def _overlap_below_target(self) -> ChunkingConfig:
        if self.overlap >= self.target:
            raise ValueError(f"`overlap` ({self.overlap}) must be smaller than `target` ({self.target})")
        return self


def chunking_config(target: int = 80, overlap: int = 16, unit: str = "words") -> ChunkingConfig:
    """A ``ChunkingConfig``, or a ``RequestError`` that says which option is wrong."""
    try:
        return ChunkingConfig(target=target, overlap=overlap, unit=unit)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise RequestError("bad_chunking", "bad chunking options: " + "; ".join(problems)) from None


class Chunk(NamedTuple):
    """One chunk of a transcript (a named tuple: chunking makes and pickles ~10 per video,
    2.5x cheaper to build than a frozen dataclass)."""

    index: int
    content: str
    start_s: float | None = None
    end_s: float | None = None


@dataclass(frozen=True)
class Segment:
    text: str
    start_s: float | None = None
    end_s: float | None = None


class TranscriptError(ValueError):
    """A transcript that cannot be read (e.g. a cue ending before it starts)."""


@lru_cache(maxsize=8192)  # a cue's end is usually the next cue's start
def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    seconds = float(parts[-1])
    minutes = int(parts[-2]) if len(parts) >= 2 else 0
    hours = int(parts[-3]) if len(parts) >= 3 else 0
    return hours * 3600 + minutes * 60 + seconds


def parse_transcript(text: str) -> list[Segment]:
    """Plain text -> one segment without times; WebVTT/SRT -> one segment per cue."""
    is_webvtt = text.lstrip("\ufeff \t\r\n").startswith("WEBVTT")
    if "-->" not in text and not is_webvtt:  # no cue timings: plain text (the common, fast case)
        return [Segment(text)] if text.strip() else []
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not is_webvtt and not any("-->" in line and _CUE_TIME.match(line) for line in lines):
        return [Segment(text)] if text.strip() else []
    segments: list[Segment] = []
    current: tuple[float, float] | None = None
    body: list[str] = []

    def flush() -> None:
        if current is not None and body:
            segments.append(Segment(" ".join(body), current[0], current[1]))

    for line in lines:
        match = _CUE_TIME.match(line) if "-->" in line else None
        if match:
            flush()
            start, end = _seconds(match["a"]), _seconds(match["b"])
            if end < start:
                raise TranscriptError(f"cue ends before it starts: {line.strip()[:80]!r}")
            current, body = (start, end), []
            continue
        stripped = line.strip()
        if not stripped:
            flush()
            current, body = None, []
            continue
        if current is None:
            # Outside a cue: the WEBVTT header, NOTE/STYLE blocks, SRT sequence numbers.
            continue
        body.append(_TAG.sub("", stripped) if "<" in stripped else stripped)
    flush()
    return segments


_CLOSERS = "\"'”’)]"
_ENDERS = (".", "!", "?", "…", "。", "！", "？")
# An ender, its closing quotes/brackets, then the whitespace before the next sentence.
_SENTENCE_SPLIT = re.compile(r"([.!?…。！？][\"'”’)\]]*)\s+")


@dataclass
class _Words:
    words: list[str]
    sentence_starts: list[int]  # indices of the words that start a sentence, ascending
    seg_first: list[int]  # index of each timed segment's first word
    seg_times: list[tuple[float, float, int]]  # (start_s, end_s, word count) per timed segment

    def start_s(self, i: int) -> float | None:
        return self._time(i, 0)

    def end_s(self, i: int) -> float | None:
        return self._time(i, 1)

    def _time(self, i: int, after: int) -> float | None:
        k = bisect_right(self.seg_first, i) - 1
        if k < 0:
            return None
        start, end, count = self.seg_times[k]
        if start is None:
            return None
        step = (end - start) / count
        return round(start + (i - self.seg_first[k] + after) * step, 3)


def _split_words(segments: list[Segment]) -> _Words:
    """Words, the sentence starts among them, and where each segment's times apply."""
    words: list[str] = []
    sentence_starts: list[int] = []
    seg_first: list[int] = []
    seg_times: list = []
    previous_ended = True
    for segment in segments:
        # Sentences by one C-level split (a word that ends in . ! ? ... before its closing
        # quotes or brackets ends a sentence), then one whitespace split per sentence:
        # its words are the segment's words (the splits fall on whitespace), so the text
        # is split once, not once for words and again for sentences. This is most of
        # reprocessing's CPU otherwise.
        parts = _SENTENCE_SPLIT.split(segment.text)
        offset = len(words)
        last = len(parts) - 1
        for k in range(0, len(parts), 2):
            sentence = (parts[k] + parts[k + 1]).split() if k < last else parts[k].split()
            if sentence:
                if len(words) > offset or previous_ended:
                    sentence_starts.append(len(words))
                words.extend(sentence)
        count = len(words) - offset
        if not count:
            continue
        seg_first.append(offset)
        seg_times.append((segment.start_s, segment.end_s, count))
        previous_ended = words[-1].rstrip(_CLOSERS).endswith(_ENDERS)
    return _Words(words, sentence_starts, seg_first, seg_times)


def _prefix_costs(words: list[str], unit: str) -> list[int]:
    """``prefix[i]`` = the size of ``words[:i]`` in ``unit``s (strictly increasing)."""
    if unit == "words":
        return list(range(len(words) + 1))
    prefix = [0]
    total = 0
    for word in words:
        total += max(1, len(_TOKEN.findall(word)))
        prefix.append(total)
    return prefix


def chunk_transcript(text: str | None, config: ChunkingConfig | None = None) -> list[Chunk]:
    """Cut a transcript into overlapping chunks (see the module's doc). ``[]`` if empty."""
    config = config or ChunkingConfig()
    if not text or not text.strip():
        return []
    split = _split_words(parse_transcript(text))
    words, starts = split.words, split.sentence_starts
    n = len(words)
    if n == 0:
        return []
    prefix = _prefix_costs(words, config.unit)
    target, overlap = config.target, config.overlap

    chunks: list[Chunk] = []
    start = 0
    covered = 0  # words[:covered] are in some chunk already
    while start < n:
        # The longest run from `start` within the target (at least one word) ...
        limit = max(bisect_right(prefix, prefix[start] + target) - 1, start + 1)
        end = limit
        if limit < n:
            # ... backed off to the last sentence start that still adds new words.
            k = bisect_right(starts, limit) - 1
            if k >= 0 and starts[k] > max(start, covered):
                end = starts[k]
        chunks.append(
            Chunk(index=len(chunks), content=" ".join(words[start:end]),
                  start_s=split.start_s(start), end_s=split.end_s(end - 1))
        )
        covered = end
        if end >= n:
            break
        # Overlap: the first sentence start within the last `overlap` units, else
        # exactly `overlap` units back; always moving forward.
        back = max(bisect_left(prefix, prefix[end] - overlap), start + 1)
        k = bisect_left(starts, back)
        start = starts[k] if k < len(starts) and starts[k] < end else back
    return chunks
