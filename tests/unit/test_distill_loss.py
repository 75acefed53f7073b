from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from compression.data import UNLABELLED
from compression.distill import (
    TrainingSet,
    hidden_projections,
    kd_loss,
    train,
    uniform_layer_map,
    with_hidden_term,
)
from compression.models import EncoderClassifier
from compression.recipe import DistillConfig
from compression.text import Encoded


def test_kd_loss_golden_value() -> None:
    # s = [1, 0], t = [0, 1], y = 0, T = 2, alpha = 0.5, worked by hand:
    # KL(softmax(t/T) || softmax(s/T)) = (0.6224593 - 0.3775407) * 0.5 = 0.12245933
    # CE(s, 0) = ln(1 + e^-1) = 0.31326169
    # L = 0.5 * 4 * 0.12245933 + 0.5 * 0.31326169 = 0.40154951
    loss = kd_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]), 2.0, 0.5)
    assert loss.item() == pytest.approx(0.40154951, abs=1e-6)


def test_alpha_zero_is_cross_entropy_and_alpha_one_is_scaled_kl() -> None:
    s, t, y = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    assert kd_loss(s, t, y, 2.0, 0.0).item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert kd_loss(s, t, y, 2.0, 1.0).item() == pytest.approx(4 * 0.12245933, abs=1e-6)


def test_identical_logits_leave_only_cross_entropy() -> None:
    s = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    ce_only = kd_loss(s, None, torch.tensor([0, 1]), 3.0, 0.7)
    assert kd_loss(s, s.clone(), torch.tensor([0, 1]), 3.0, 0.7).item() == pytest.approx(0.3 * ce_only.item(), abs=1e-6)


def test_unlabelled_rows_count_in_the_kl_term_only() -> None:
    s, t = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    mixed = kd_loss(s, t, torch.tensor([0, UNLABELLED]), 2.0, 0.5)
    kl_both = kd_loss(s, t, torch.tensor([0, UNLABELLED]), 2.0, 1.0)  # batchmean over 2 rows
    ce_first = math.log(1 + math.exp(-1))
    assert mixed.item() == pytest.approx(0.5 * kl_both.item() + 0.5 * ce_first, abs=1e-6)
    all_unlabelled = kd_loss(s, t, torch.tensor([UNLABELLED, UNLABELLED]), 2.0, 0.5)
    assert all_unlabelled.item() == pytest.approx(0.5 * kl_both.item(), abs=1e-6)


def test_uniform_layer_map_spreads_student_layers_and_meets_at_the_top() -> None:
    assert uniform_layer_map(6, 12) == [1, 3, 5, 7, 9, 11]
    assert uniform_layer_map(4, 6) == [0, 2, 3, 5]
    assert uniform_layer_map(3, 3) == [0, 1, 2]


def tiny_encoder(width: int) -> EncoderClassifier:
    config = BertConfig(
        vocab_size=30, hidden_size=width, num_hidden_layers=2, num_attention_heads=2, intermediate_size=2 * width
    )
    return EncoderClassifier(BertModel(config), num_labels=2)


def test_a_narrower_student_learns_the_teachers_hidden_states_through_projections() -> None:
    rng = np.random.default_rng(0)
    ids = [rng.integers(1, 30, size=int(n)) for n in rng.integers(3, 9, size=16)]
    labels = np.array([i % 2 for i in range(16)])
    teacher_hidden = rng.normal(size=(16, 5, 32)).astype(np.float16)  # 4 teacher layers + embeddings, width 32
    data = TrainingSet(Encoded(ids), labels, rng.normal(size=(16, 2)).astype(np.float32), teacher_hidden)
    student = tiny_encoder(16)
    config = DistillConfig(epochs=2, hidden_loss_weight=1.0, batch_size=8)
    spread, projections = with_hidden_term(student, data, config)
    assert spread.layer_map == uniform_layer_map(2, 4) and not data.layer_map  # a copy: train() spreads its own
    assert projections is not None and len(projections) == 2
    assert all(isinstance(p, torch.nn.Linear) and (p.in_features, p.out_features) == (16, 32) for p in projections)
    assert hidden_projections(tiny_encoder(32), spread) is None  # same width: compared as they are
    unchanged, none = with_hidden_term(student, data, config.model_copy(update={"hidden_loss_weight": 0.0}))
    assert unchanged is data and none is None  # no term: nothing spread, nothing to train

    before = sum(p.numel() for p in student.parameters())
    result = train(student, data, (Encoded(ids), labels), config, rng, "hidden")
    assert result.epochs_run >= 1 and sum(p.numel() for p in student.parameters()) == before  # projections dropped
