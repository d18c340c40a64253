"""A fast, offline embedder: signed feature hashing of word unigrams and bigrams.

It is lexical, not semantic: texts that share words land close together, paraphrases
with other words do not. It needs no download, is deterministic across processes and
machines (a keyed hash, not Python's salted ``hash``), and embeds tens of thousands of
chunks per second on one core.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_TOKEN_RE = re.compile(r"\w+", re.UNICODE)
_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _ascii_table() -> bytes:
    r"""Lower-case ASCII word characters ([a-z0-9_], as ``\w`` has them) and turn every
    other byte into a space: for ASCII text, ``text.encode().translate(T).split()`` gives
    the tokens ``re.findall(r"\w+", text.lower())`` gives, 2-3x faster."""
    table = bytearray(b" " * 256)
    for c in range(128):
        ch = chr(c)
        if ch.isalnum() or ch == "_":
            table[c] = ord(ch.lower())
    return bytes(table)


_ASCII_WORDS = _ascii_table()
# The same, but every byte of a multi-byte UTF-8 character kept: for a lower-cased text
# whose non-ASCII characters are all word characters, ``encode().translate(T).split()``
# gives the UTF-8 bytes of the tokens ``\w+`` finds (a quarter of the seeded chunks have
# such characters: é, ł, ź, ...; they took 40 % of the embedder's time on the regex).
_UTF8_WORDS = _ASCII_WORDS[:128] + bytes(range(128, 256))
_ASCII_CHARS = frozenset(chr(c) for c in range(128))
_word_chars: dict[str, bool] = {}


def _all_word_chars(chars: set[str]) -> bool:
    for ch in chars:
        known = _word_chars.get(ch)
        if known is None:
            known = _word_chars[ch] = _TOKEN_RE.fullmatch(ch) is not None
        if not known:
            return False
    return True


class HashingEmbedder:
    name = "hashing-v1"
    dim = 384

    def __init__(self, *, dim: int = 384, cache_size: int = 500_000) -> None:
        self.dim = dim
        # token -> hash; the byte paths look their tokens up as bytes, the regex path as
        # str (the hash of a token is the same either way: blake2b of its UTF-8 bytes)
        self._cache: dict[str | bytes, int] = {}
        self._cache_size = cache_size

    def process_spec(self) -> tuple[str, dict]:
        """What rebuilds this embedder in a worker process (``embedder_from_spec``)."""
        return ("hashing", {"dim": self.dim})

    def _token_hash(self, token: str | bytes) -> int:
        value = self._cache.get(token)
        if value is None:
            data = token if isinstance(token, bytes) else token.encode()
            value = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
            if len(self._cache) >= self._cache_size:
                self._cache.clear()
            self._cache[token] = value
        return value

    def embed(self, texts: list[str]) -> np.ndarray:
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        if n == 0:
            return out
        hashes: list[int] = []
        counts: list[int] = []
        get = self._cache.get
        findall = _TOKEN_RE.findall
        for text in texts:
            if text.isascii():
                tokens = text.encode("ascii").translate(_ASCII_WORDS).split()
            else:
                lowered = text.lower()
                if _all_word_chars(set(lowered).difference(_ASCII_CHARS)):
                    tokens = lowered.encode().translate(_UTF8_WORDS).split()
                else:
                    tokens = findall(lowered)
            values = list(map(get, tokens))  # C-level lookups; misses filled below
            if None in values:
                values = [self._token_hash(t) if v is None else v for t, v in zip(tokens, values, strict=True)]
            hashes.extend(values)
            counts.append(len(values))
        if not hashes:
            return out
        h = np.array(hashes, dtype=np.uint64)
        r = np.repeat(np.arange(n, dtype=np.int64), counts)
        # Bigrams: mix each hash with its successor's, within the same text only.
        same = r[1:] == r[:-1]
        with np.errstate(over="ignore"):
            bigrams = (h[:-1] * np.uint64(0x9E3779B97F4A7C15) ^ (h[1:] >> np.uint64(7))) & _MASK
        features = np.concatenate([h, bigrams[same]])
        feature_rows = np.concatenate([r, r[:-1][same]])
        index = (features % np.uint64(self.dim)).astype(np.int64)
        sign = np.where((features >> np.uint64(63)) == 0, 1.0, -1.0)
        flat = np.bincount(feature_rows * self.dim + index, weights=sign, minlength=n * self.dim)
        out[:] = flat.reshape(n, self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out
