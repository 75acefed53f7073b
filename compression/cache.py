"""Content-addressed cache of teacher outputs.

A key is the hash of (teacher bundle id — itself a hash of the teacher's files —, the text's
content hash, the preprocessing settings, what is stored). Raw logits are stored, not
probabilities: temperature is applied at loss time, so one entry serves a whole sweep, and a
second run or a second student computes no teacher forward pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np


class TeacherCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits = 0
        self.misses = 0

    def key(self, teacher_id: str, text_hash: str, max_length: int, output: str) -> str:
        parts = {"teacher": teacher_id, "text": text_hash, "max_length": max_length, "output": output}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]

    def get_or_compute(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        path = self.root / f"{key}.npy"
        if path.is_file():
            self.hits += 1
            return np.load(path)
        self.misses += 1
        value = compute()
        self.root.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        with partial.open("wb") as handle:
            np.save(handle, value)
        os.replace(partial, path)  # readers never see a half-written array
        return value
