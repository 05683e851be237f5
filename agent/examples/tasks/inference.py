"""An inference-style worker: a model loaded once per child in ``@load``, served by a batched
handler (run it with agent/examples/inference.yml).

The "model" is a tiny text embedder (hashed bag of words times a fixed random projection, in
plain Python) standing in for a real one: loading it costs once per child, and one call on 32
texts costs little more than a call on one, which is what batching is for. With a real model
(torch, onnxruntime, ...) ``@load`` would read its weights and ``embed`` would run one forward
pass over the batch.
"""

import math
import os
import random
import time
import zlib

from task_sdk import ItemError, load, run, task

DIMENSIONS = 16
VOCABULARY = 4096
CALL_OVERHEAD = float(os.environ.get("MODEL_CALL_SECONDS", "0.02"))  # a forward pass's fixed cost


class TinyEmbedder:
    """Weights: a VOCABULARY x DIMENSIONS projection, made once (a real model loads them)."""

    def __init__(self, seed: int = 17) -> None:
        rng = random.Random(seed)
        self.weights = [[rng.gauss(0, 1) for _ in range(DIMENSIONS)] for _ in range(VOCABULARY)]
        self.calls = 0

    def embed(self, texts: list[str]) -> list[list[float]]:
        """One "forward pass" over a batch: a fixed cost per call, a small one per text."""
        self.calls += 1
        time.sleep(CALL_OVERHEAD)
        out = []
        for text in texts:
            vector = [0.0] * DIMENSIONS
            for word in text.lower().split():
                row = self.weights[zlib.crc32(word.encode()) % VOCABULARY]
                vector = [v + w for v, w in zip(vector, row, strict=True)]
            norm = math.sqrt(sum(v * v for v in vector)) or 1.0
            out.append([round(v / norm, 5) for v in vector])
        return out


@load
def load_model():
    return {"model": TinyEmbedder(), "loaded_at": time.time(), "pid": os.getpid()}


@task("embed", batch=32, max_wait=0.01)
def embed(payloads, ctx):
    """Up to 32 texts per call, waiting at most 10 ms for a batch to fill. A payload without
    a text fails alone (ItemError); the others get their vectors."""
    model = ctx["model"]
    texts = [p.get("text") if isinstance(p, dict) else None for p in payloads]
    good = [t for t in texts if isinstance(t, str) and t.strip()]
    vectors = iter(model.embed(good)) if good else iter(())
    results = []
    for text in texts:
        if isinstance(text, str) and text.strip():
            results.append({"vector": next(vectors), "batch": len(payloads), "pid": ctx["pid"]})
        else:
            results.append(ItemError("payload needs a non-empty \"text\"", retry=False))
    return results


if __name__ == "__main__":
    run()
