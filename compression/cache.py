"""Content-addressed cache of model outputs, one row per text.

A shelf holds one model's outputs of one kind (the bundle id — itself a hash of its files —,
the max length, what is stored); within it a row is found by the hash of its text. Adding
transfer text, or a disagreement export, therefore runs the teacher over the new texts only.
Raw logits are stored, not probabilities: temperature is applied at loss time, so one entry
serves a whole sweep, and a second run or a second student computes no teacher forward pass.

Rows are written in chunks, each aside and then renamed into place, so several writers (students
fanned out on Ray) never leave a half-written chunk; two writers computing the same rows write
the same chunk name, and a row found in two chunks is the same row.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Compute = Callable[[np.ndarray], np.ndarray]  # row indices of the texts asked -> their outputs, in that order


class TeacherCache:
    def __init__(self, root: Path) -> None:
        self.root = root

    def rows(self, model_id: str, max_length: int, output: str, texts: Sequence[str], compute: Compute) -> np.ndarray:
        """The outputs for `texts`, in their order; `compute` runs only for texts not yet stored."""
        if not texts:
            return compute(np.arange(0))
        shelf = self.root / shelf_name(model_id, max_length, output)
        keys = np.array([text_key(t) for t in texts], dtype="S32")
        stored = _Shelf.read(shelf)
        found = stored.locate(keys)
        missing = np.flatnonzero(found < 0)
        if len(missing):
            first = np.sort(missing[np.unique(keys[missing], return_index=True)[1]])  # a repeated text runs once
            stored = stored.add(_write_chunk(shelf, keys[first], compute(first)))
            found = stored.locate(keys)
        assert stored.values is not None  # every text asked is stored by now
        return stored.values[found]


def shelf_name(model_id: str, max_length: int, output: str) -> str:
    parts = {"model": model_id, "max_length": max_length, "output": output}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode()).hexdigest()[:32].encode()


class _Shelf:
    """Every chunk of a shelf, read into one key index and one array of rows."""

    def __init__(self, keys: np.ndarray, values: np.ndarray | None) -> None:
        self.keys, self.values = keys, values
        self.index = {k: i for i, k in enumerate(keys.tolist())}

    @classmethod
    def read(cls, shelf: Path) -> _Shelf:
        chunks = [np.load(path) for path in sorted(shelf.glob("*.npz"))]
        if not chunks:
            return cls(np.zeros(0, dtype="S32"), None)
        return cls(np.concatenate([c["keys"] for c in chunks]), np.concatenate([c["values"] for c in chunks]))

    def locate(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key in `values`, -1 where absent."""
        return np.array([self.index.get(k, -1) for k in keys.tolist()], dtype=np.int64)

    def add(self, chunk: tuple[np.ndarray, np.ndarray]) -> _Shelf:
        keys, values = chunk
        merged = values if self.values is None else np.concatenate([self.values, values.astype(self.values.dtype)])
        return _Shelf(np.concatenate([self.keys, keys]), merged)


def _write_chunk(shelf: Path, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    shelf.mkdir(parents=True, exist_ok=True)
    path = shelf / f"{hashlib.sha256(keys.tobytes()).hexdigest()[:24]}.npz"
    partial = path.with_suffix(f".{os.getpid()}.partial")
    with partial.open("wb") as handle:
        np.savez(handle, keys=keys, values=values)
    os.replace(partial, path)  # readers never see a half-written chunk
    return keys, values
