"""Structured pruning: remove whole attention heads and FFN channels, distilling between rounds.

Unstructured (magnitude) sparsity is deliberately not offered: zeros inside dense tensors give
no speed and no smaller file in ONNX Runtime on CPU. Here tensors are sliced (models.resize_layer),
so parameters, the ONNX file and latency all shrink.

Importance is first-order Taylor (Molchanov et al., 2019, "Importance Estimation for Neural
Network Pruning"): |sum over a group's weights of w * dL/dw|, accumulated over a few
distillation batches. Each layer keeps its most important heads and channels, so every layer
keeps at least one head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from compression.distill import TrainingSet, batch_loss, train
from compression.errors import StudentSpecError
from compression.models import Classifier, EncoderClassifier, attention_parts, layer_shapes, resize_layer
from compression.recipe import DistillConfig, PruneConfig
from compression.text import Encoded, batches

IMPORTANCE_BATCHES = 8


@dataclass
class PruneResult:
    shapes_before: list[tuple[int, int]]
    shapes_after: list[tuple[int, int]]
    validation_accuracy_per_step: list[float]


def prune(
    model: Classifier,
    data: TrainingSet,
    validation: tuple[Encoded, np.ndarray],
    config: PruneConfig,
    distill: DistillConfig,
    rng: np.random.Generator,
) -> PruneResult:
    """Prune in `config.steps` rounds toward the kept fractions, fine-tuning after each round."""
    if not isinstance(model, EncoderClassifier):
        raise StudentSpecError("prune: structured pruning needs a transformer student, not a bag-of-embeddings one")
    before = layer_shapes(model)
    accuracies = []
    for step in range(1, config.steps + 1):
        head_fraction = 1 - (1 - config.head_keep) * step / config.steps
        ffn_fraction = 1 - (1 - config.ffn_keep) * step / config.steps
        scores = importance(model, data, distill, rng)
        for layer, (heads, ffn), (head_scores, channel_scores) in zip(model.layers, before, scores, strict=True):
            keep_heads = _top(head_scores, max(1, round(heads * head_fraction)))
            keep_channels = _top(channel_scores, max(1, round(ffn * ffn_fraction)))
            resize_layer(layer, keep_heads, keep_channels)
        if config.finetune_epochs:
            tune = distill.model_copy(update={"epochs": config.finetune_epochs})
            result = train(model, data, validation, tune, rng, f"prune step {step}/{config.steps}")
            accuracies.append(result.best_validation_accuracy)
    return PruneResult(before, layer_shapes(model), accuracies)


def _top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in their original order (keeps weights aligned)."""
    return sorted(torch.topk(scores, k).indices.tolist())


def importance(
    model: EncoderClassifier, data: TrainingSet, distill: DistillConfig, rng: np.random.Generator
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer: (score per current head, score per current FFN channel)."""
    model.train()
    model.zero_grad()
    for n, (index, ids, mask) in enumerate(batches(data.encoded, distill.batch_size, rng)):
        if n == IMPORTANCE_BATCHES:
            break
        batch_loss(model, data, distill, index, ids, mask).backward()
    scores = [_layer_importance(layer) for layer in model.layers]
    model.zero_grad()
    return scores


def _layer_importance(layer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    parts = attention_parts(layer)
    size = parts.module.attention_head_size

    def taylor(linear: nn.Linear, dim: int) -> torch.Tensor:
        assert linear.weight.grad is not None
        product = (linear.weight * linear.weight.grad).detach()
        return product.sum(dim=1 - dim)  # one value per output row (dim 0) or input column (dim 1)

    per_row = sum(taylor(getattr(parts.module, n), 0) for n in parts.projections)
    per_row = per_row + taylor(getattr(parts.output_owner, parts.output), 1)
    heads = per_row.reshape(-1, size).sum(1).abs()
    channels = (taylor(layer.intermediate.dense, 0) + taylor(layer.output.dense, 1)).abs()
    return heads, channels
