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
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from videolib.ids import RequestError

UNITS = ("words", "tokens")

_CUE_TIME = re.compile(
    r"^\s*(?P<a>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})\s*-->\s*(?P<b>(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3})"
)
_SENTENCE_END = re.compile(r"[.!?…。！？][\"'”’)\]]*$")
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


@dataclass(frozen=True)
class Chunk:
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


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    seconds = float(parts[-1])
    minutes = int(parts[-2]) if len(parts) >= 2 else 0
    hours = int(parts[-3]) if len(parts) >= 3 else 0
    return hours * 3600 + minutes * 60 + seconds


def parse_transcript(text: str) -> list[Segment]:
    """Plain text -> one segment without times; WebVTT/SRT -> one segment per cue."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    is_webvtt = text.lstrip("\ufeff \t\n").startswith("WEBVTT")
    if not is_webvtt and not any(_CUE_TIME.match(line) for line in lines):
        return [Segment(text)] if text.strip() else []
    segments: list[Segment] = []
    current: tuple[float, float] | None = None
    body: list[str] = []

    def flush() -> None:
        if current is not None and body:
            segments.append(Segment(" ".join(body), current[0], current[1]))

    for line in lines:
        match = _CUE_TIME.match(line)
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
        body.append(_TAG.sub("", stripped))
    flush()
    return segments


def _words_with_times(segments: list[Segment]) -> tuple[list[str], list[float | None], list[float | None], list[bool]]:
    """Words, their start and end times, and whether each starts a sentence."""
    words: list[str] = []
    starts: list[float | None] = []
    ends: list[float | None] = []
    sentence_start: list[bool] = []
    previous_ended = True
    for segment in segments:
        seg_words = segment.text.split()
        if not seg_words:
            continue
        if segment.start_s is not None and segment.end_s is not None:
            step = (segment.end_s - segment.start_s) / len(seg_words)
            for i in range(len(seg_words)):
                starts.append(round(segment.start_s + i * step, 3))
                ends.append(round(segment.start_s + (i + 1) * step, 3))
        else:
            starts.extend([None] * len(seg_words))
            ends.extend([None] * len(seg_words))
        for word in seg_words:
            words.append(word)
            sentence_start.append(previous_ended)
            previous_ended = bool(_SENTENCE_END.search(word))
    return words, starts, ends, sentence_start


def _costs(words: list[str], unit: str) -> list[int]:
    if unit == "words":
        return [1] * len(words)
    return [max(1, len(_TOKEN.findall(word))) for word in words]


def chunk_transcript(text: str | None, config: ChunkingConfig | None = None) -> list[Chunk]:
    """Cut a transcript into overlapping chunks (see the module's doc). ``[]`` if empty."""
    config = config or ChunkingConfig()
    if not text or not text.strip():
        return []
    words, starts, ends, sentence_start = _words_with_times(parse_transcript(text))
    n = len(words)
    if n == 0:
        return []
    costs = _costs(words, config.unit)
    # prefix[i] = cost of words[:i]
    prefix = [0] * (n + 1)
    for i, cost in enumerate(costs):
        prefix[i + 1] = prefix[i] + cost

    chunks: list[Chunk] = []
    start = 0
    covered = 0  # words[:covered] are in some chunk already
    while start < n:
        # Longest run from `start` within the target, then back off to a sentence end.
        limit = start
        while limit < n and prefix[limit + 1] - prefix[start] <= config.target:
            limit += 1
        limit = max(limit, start + 1)  # one word over the target still makes a chunk
        end = limit
        if limit < n:
            # Only ends that add words the previous chunk did not have.
            for b in range(limit, max(start, covered), -1):
                if sentence_start[b]:
                    end = b
                    break
        chunks.append(
            Chunk(
                index=len(chunks),
                content=" ".join(words[start:end]),
                start_s=starts[start],
                end_s=ends[end - 1],
            )
        )
        covered = end
        if end >= n:
            break
        # Overlap: the first sentence start within the last `overlap` units, else
        # exactly `overlap` units back; always moving forward.
        back = end
        while back > start + 1 and prefix[end] - prefix[back - 1] <= config.overlap:
            back -= 1
        next_start = end
        for s in range(back, end):
            if sentence_start[s]:
                next_start = s
                break
        else:
            next_start = back
        start = max(next_start, start + 1)
    return chunks
