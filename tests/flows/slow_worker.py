"""Set up in a task runner's worker process (``ProcessPoolTaskRunner(initializer=...)``):
the reprocess batches there embed with the real hashing embedder slowed down, as a heavy
model would. A monkeypatch in the test's own process would not reach a spawned worker."""

from __future__ import annotations

import time


class SlowedHashing:
    def __init__(self, per_text_s: float):
        from videolib.embedders import get_embedder

        self.inner = get_embedder("hashing")
        self.name, self.dim = self.inner.name, self.inner.dim
        self.per_text_s = per_text_s

    def embed(self, texts):
        time.sleep(self.per_text_s * len(texts))
        return self.inner.embed(texts)


def install(per_text_s: float) -> None:
    import tasks.resources

    # The task itself may arrive pickled by value (its globals travel with it); the
    # embedder cache it calls is looked up here, in the worker's own modules.
    slowed = SlowedHashing(per_text_s)
    tasks.resources.get_embedder = lambda name: slowed
    tasks.resources.embedder_for.cache_clear()
