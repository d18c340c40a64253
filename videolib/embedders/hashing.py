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


class HashingEmbedder:
    name = "hashing-v1"
    dim = 384

    def __init__(self, *, dim: int = 384, cache_size: int = 500_000) -> None:
        self.dim = dim
        self._cache: dict[str, int] = {}
        self._cache_size = cache_size

    def process_spec(self) -> tuple[str, dict]:
        """What rebuilds this embedder in a worker process (``embedder_from_spec``)."""
        return ("hashing", {"dim": self.dim})

    def _token_hash(self, token: str) -> int:
        value = self._cache.get(token)
        if value is None:
            value = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
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
            tokens = findall(text.lower())
            values = [get(t) for t in tokens]  # C-level lookups; misses filled below
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
