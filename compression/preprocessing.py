"""The one preprocessing: text -> token ids -> a padded batch -> ONNX Runtime logits.

Compression (the logit cache, training, every stage's validation, the recorded answers) and
serving (each replica's Classifier) both turn text into model inputs here, so a served bundle
sees exactly the inputs it was validated on. Torch-free: serving replicas import it without
paying for torch. A tokenizer is a `tokenizers.Tokenizer` (the bundle's tokenizer.json; in
compression, the fast tokenizer behind the teacher's or a student's Hugging Face tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>")  # BERT/WordPiece, RoBERTa/MPNet/SentencePiece conventions


class TextEncoder:
    """Truncates to `max_length` tokens (special tokens included), no padding: batches pad to
    their own longest row with the tokenizer's pad id."""

    def __init__(self, tokenizer: Tokenizer, max_length: int) -> None:
        own = Tokenizer.from_str(tokenizer.to_str())  # a copy: truncation settings are mutable state
        self.pad_id = _pad_id(own)
        self.max_length = max_length
        own.no_padding()
        own.enable_truncation(max_length)
        self._tokenizer = own

    @classmethod
    def from_dir(cls, directory: Path, max_length: int) -> TextEncoder:
        """The tokenizer saved in a bundle (or any directory holding tokenizer.json)."""
        return cls(Tokenizer.from_file(str(directory / TOKENIZER_FILE)), max_length)

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, dtype=np.int64) for e in self._tokenizer.encode_batch(texts)]

    def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask) of `texts`, in their order."""
        return pad(self.encode(texts), self.pad_id)


def pad(rows: list[np.ndarray], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) padded to the longest row (at least one column)."""
    width = max(1, max(len(r) for r in rows))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def run_logits(sess: ort.InferenceSession, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits of one padded batch; a graph that takes no attention mask (bag of embeddings) gets none."""
    wanted = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in (("input_ids", ids), ("attention_mask", mask)) if k in wanted}
    return np.asarray(sess.run(None, feed)[0], dtype=np.float32)


def _pad_id(tokenizer: Tokenizer) -> int:
    """The id padding uses: the tokenizer's own padding setting, else its pad token, else 0.
    (Masked positions are ignored by attention, but RoBERTa-style models derive position ids
    from which ids are padding, so the right id keeps a padded row's logits those of the row alone.)"""
    if tokenizer.padding is not None:
        return int(tokenizer.padding["pad_id"])
    for token in PAD_TOKENS:
        if (found := tokenizer.token_to_id(token)) is not None:
            return int(found)
    return 0
