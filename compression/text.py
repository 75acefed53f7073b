"""Tokenisation once per split, and the length-bucketed batches every stage iterates over."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from compression.errors import TeacherLoadError


@dataclass(frozen=True)
class Encoded:
    """Token ids of a split, unpadded; batches pad to their own longest row."""

    ids: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> Encoded:
        return Encoded([self.ids[i] for i in index])


def load_tokenizer(path: Path, field: str = "tokenizer") -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory only: nothing is ever fetched from a hub."""
    if not path.is_dir():
        raise TeacherLoadError(f"{field} {path}: not a directory")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TeacherLoadError(f"{field} {path}: no usable tokenizer ({exc})") from exc


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> Encoded:
    out = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    return Encoded([np.asarray(row, dtype=np.int64) for row in out["input_ids"]])


def pad(rows: list[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded to the longest row."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


def batches(
    encoded: Encoded, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (row indices, ids, mask). Without an rng: rows sorted by length (fast inference);
    with one: shuffled, then grouped by similar length within windows (less padding, still random)."""
    lengths = np.asarray([len(r) for r in encoded.ids])
    if rng is None:
        order = np.argsort(lengths, kind="stable")
    else:
        order = rng.permutation(len(lengths))
        window = batch_size * 50
        order = np.concatenate(
            [
                chunk[np.argsort(lengths[chunk], kind="stable")]
                for chunk in np.array_split(order, max(1, len(order) // window))
            ]
        )
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if rng is not None:
        chunks = [chunks[i] for i in rng.permutation(len(chunks))]
    for index in chunks:
        ids, mask = pad([encoded.ids[i] for i in index])
        yield index, ids, mask
