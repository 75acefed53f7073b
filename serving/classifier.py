"""A registry bundle as a callable classifier: its own tokenizer plus ONNX Runtime (no Ray, no torch).

Tokenization mirrors compression's (truncate to the manifest's max_length, pad with id 0 to the
longest row of the batch), so served probabilities match the validated ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from compression.errors import CompressionError
from compression.registry import Bundle, Registry
from compression.runtime import session
from serving.errors import BundleRejectedError
from serving.routing import softmax


@dataclass(frozen=True)
class Scored:
    """Probabilities for a batch of texts and the wall-clock seconds the model spent on them."""

    probabilities: np.ndarray  # float32 [n, labels]
    compute_s: float


def load_bundle(registry_root: Path, ref: str) -> Bundle:
    """The bundle `ref` (id, prefix or name), refused unless its files match its manifest."""
    try:
        bundle = Registry(registry_root).get(ref)
        bundle.verify_files()
    except CompressionError as exc:
        raise BundleRejectedError(f"refusing to serve '{ref}' from {registry_root}: {exc}") from exc
    if not bundle.model_path.is_file():
        raise BundleRejectedError(f"refusing to serve bundle {bundle.id}: it has no ONNX model to serve")
    return bundle


def threads_for(cpus: float) -> int:
    """Intra-op threads for a replica holding `cpus` CPUs: rounded up, at least 1."""
    return max(1, math.ceil(cpus))


class Classifier:
    def __init__(self, bundle: Bundle, threads: int) -> None:
        self.bundle = bundle
        self.label_names = tuple(bundle.manifest.label_names)
        tokenizer_file = bundle.path / bundle.manifest.preprocessing.tokenizer / "tokenizer.json"
        try:
            self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
            self._session = session(bundle.model_path, threads)
        except Exception as exc:  # ORT and tokenizers raise their own untyped errors
            raise BundleRejectedError(f"bundle {bundle.id}: cannot load model or tokenizer ({exc})") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(bundle.manifest.preprocessing.max_length)
        self._inputs = {i.name for i in self._session.get_inputs()}

    def score(self, texts: list[str]) -> Scored:
        start = time.perf_counter()
        ids, mask = self._encode(texts)
        feed = {k: v for k, v in (("input_ids", ids), ("attention_mask", mask)) if k in self._inputs}
        logits = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        return Scored(softmax(logits), time.perf_counter() - start)

    def _encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        rows = [e.ids for e in self._tokenizer.encode_batch(texts)]
        width = max(1, max(len(r) for r in rows))
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask
