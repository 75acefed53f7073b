"""Tokenisation once per split (through compression/preprocessing.py, the path serving uses
too), and the length-bucketed batches every stage iterates over."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from compression import preprocessing
from compression.errors import TeacherLoadError


@dataclass(frozen=True)
class Encoded:
    """Token ids of a split, unpadded; batches pad to their own longest row."""

    ids: list[np.ndarray]
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> Encoded:
        return Encoded([self.ids[i] for i in index], self.pad_id)


def load_tokenizer(path: Path, field: str = "tokenizer") -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory only: nothing is ever fetched from a hub."""
    if not path.is_dir():
        raise TeacherLoadError(f"{field} {path}: not a directory")
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TeacherLoadError(f"{field} {path}: no usable tokenizer ({exc})") from exc


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> Encoded:
    """`texts` as the served bundle will see them: the fast tokenizer behind `tokenizer` (the one
    a bundle saves as tokenizer.json) through the shared TextEncoder."""
    return encode_with(preprocessing.TextEncoder(tokenizer.backend_tokenizer, max_length), texts)


def encode_with(encoder: preprocessing.TextEncoder, texts: list[str]) -> Encoded:
    """`texts` through an encoder (a bundle's own: `TextEncoder.from_dir`), unpadded."""
    return Encoded(encoder.encode(texts), encoder.pad_id)


def pad(rows: list[np.ndarray], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded to the longest row, as torch tensors."""
    ids, mask = preprocessing.pad(rows, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)


def batch_plan(encoded: Encoded, batch_size: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
    """The row indices of each batch. Without an rng: rows sorted by length (fast inference);
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
    return chunks


def batches(
    encoded: Encoded, batch_size: int, rng: np.random.Generator | None = None
) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (row indices, ids, mask) of each batch of `batch_plan`."""
    for index in batch_plan(encoded, batch_size, rng):
        ids, mask = pad([encoded.ids[i] for i in index], encoded.pad_id)
        yield index, ids, mask
