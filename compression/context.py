"""What every stage of one `kdcanary compress` run shares: data, registry, caches, teacher.

Model outputs on a split are always read through the content-addressed cache, keyed by the
bundle id, so nothing (teacher or student) is run twice over the same text; `forward_batches`
counts the batches that really ran, per bundle, which is how tests prove a re-run is free.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from transformers import PreTrainedTokenizerBase

from compression.cache import TeacherCache
from compression.data import Corpus, Split
from compression.errors import StudentSpecError
from compression.models import Classifier, EncoderClassifier, load_model
from compression.onnx_runtime import predict
from compression.preprocessing import TOKENIZER_FILE, TextEncoder
from compression.recipe import Recipe
from compression.registry import Bundle, Registry
from compression.runtime import session
from compression.text import Encoded, batches, encode, encode_with

PREDICT_BATCH = 64  # rows per ONNX Runtime call over a split: shards split on these batches

ShardPredict = Callable[[Path, Encoded, int], np.ndarray]  # (model, rows, batch size) -> logits in row order


@dataclass
class Context:
    recipe: Recipe
    corpus: Corpus
    registry: Registry
    tokenizer: PreTrainedTokenizerBase
    forward_batches: Counter[str] = field(default_factory=Counter)
    shard_predict: ShardPredict | None = None  # compression/fanout.py: a split's batches as Ray tasks
    vocabulary: np.ndarray | None = None  # the teacher's token ids a trimmed student keeps (vocabulary.py)
    reuse_only: bool = False  # a stage not registered yet raises StageNotRegistered instead of building
    _encoded: dict[tuple[str, int], Encoded] = field(default_factory=dict)
    _sessions: dict[str, ort.InferenceSession] = field(default_factory=dict)

    @cached_property
    def cache(self) -> TeacherCache:
        return TeacherCache(self.registry.root / "cache")

    @property
    def max_length(self) -> int:
        return self.recipe.preprocessing.max_length

    def rng(self, *salt: str) -> np.random.Generator:
        """A generator seeded from the recipe's seed and a stage name: stages are reproducible
        on their own, whichever ran before them."""
        return np.random.default_rng(
            [self.recipe.seed, *(int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) for s in salt)]
        )

    def split(self, name: str) -> Split:
        if name == "distill":  # labelled train text plus unlabelled transfer text
            train, transfer = self.corpus.train, self.corpus.transfer
            return Split(train.texts + transfer.texts, np.concatenate([train.labels, transfer.labels]))
        split: Split = getattr(self.corpus, name)
        return split

    def encoded(self, name: str, max_length: int | None = None) -> Encoded:
        key = (name, max_length or self.max_length)
        if key not in self._encoded:
            self._encoded[key] = encode(self.tokenizer, self.split(name).texts, key[1])
        return self._encoded[key]

    def with_tokenizer(self, tokenizer: PreTrainedTokenizerBase, vocabulary: np.ndarray | None = None) -> Context:
        """This run's context for a student with a tokenizer of its own (or the teacher's, trimmed
        to `vocabulary`): the same registry, cache and counters; its splits encoded in its own tokens."""
        return replace(self, tokenizer=tokenizer, vocabulary=vocabulary, _encoded={}, _sessions={})

    def logits(self, bundle: Bundle, split: str) -> np.ndarray:
        """A bundle's logits on a split, in its own tokens at its own max length, through the cache."""
        max_length = bundle.manifest.preprocessing.max_length

        def compute(rows: np.ndarray) -> np.ndarray:
            return self._run(bundle, self._encoded_for(bundle, split, max_length).subset(rows), split)

        return self.cache.rows(bundle.id, max_length, "logits", self.split(split).texts, compute)

    def pooled_hidden(self, teacher: Bundle, split: str) -> np.ndarray:
        """Mean-pooled output of every teacher layer (float16, rows x layers+1 x width), in the
        teacher's own tokens whatever the student reads."""
        max_length = teacher.manifest.preprocessing.max_length

        def compute(rows: np.ndarray) -> np.ndarray:
            return self._hidden(teacher, self._encoded_for(teacher, split, max_length).subset(rows))

        return self.cache.rows(teacher.id, max_length, "pooled_hidden", self.split(split).texts, compute)

    def session(self, bundle: Bundle) -> ort.InferenceSession:
        if bundle.id not in self._sessions:
            self._sessions[bundle.id] = session(bundle.model_path, threads=2)
        return self._sessions[bundle.id]

    def _run(self, bundle: Bundle, encoded: Encoded, split: str) -> np.ndarray:
        self.forward_batches[bundle.id] += -(-len(encoded) // PREDICT_BATCH)
        if self.shard_predict is not None:
            return self.shard_predict(bundle.model_path, encoded, PREDICT_BATCH)
        return predict(self.session(bundle), encoded, PREDICT_BATCH, progress=f"{bundle.manifest.name} on {split}")

    def _encoded_for(self, bundle: Bundle, split: str, max_length: int) -> Encoded:
        """`split` as `bundle` reads it: through the tokenizer saved in it (the teacher's and a
        student's may differ), as serving will."""
        tokenizer = bundle.manifest.files.get(f"{bundle.manifest.preprocessing.tokenizer}/{TOKENIZER_FILE}")
        key = (f"{split}@{tokenizer}", max_length)
        if key not in self._encoded:
            encoder = TextEncoder.from_dir(bundle.path / bundle.manifest.preprocessing.tokenizer, max_length)
            self._encoded[key] = encode_with(encoder, self.split(split).texts)
        return self._encoded[key]

    def _hidden(self, teacher: Bundle, encoded: Encoded) -> np.ndarray:
        model = self.torch_model(teacher)
        if not isinstance(model, EncoderClassifier):
            raise StudentSpecError(f"hidden_loss_weight: teacher {teacher.id} is not a transformer encoder")
        out: np.ndarray | None = None
        for index, ids, mask in batches(encoded, 64):
            self.forward_batches[teacher.id] += 1
            with torch.inference_mode():
                layers = model.forward_with_hidden(ids, mask, hidden=True)[1]
            pooled = np.stack([p.numpy() for p in layers], axis=1)
            if out is None:
                out = np.zeros((len(encoded), *pooled.shape[1:]), dtype=np.float16)
            out[index] = pooled
        assert out is not None
        return out

    def torch_model(self, bundle: Bundle) -> Classifier:
        if bundle.torch_path is None:
            raise StudentSpecError(f"bundle {bundle.id} ({bundle.manifest.name}) has no torch weights to train from")
        return load_model(bundle.torch_path)
