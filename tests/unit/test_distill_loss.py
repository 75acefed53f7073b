from __future__ import annotations

import math

import pytest
import torch

from compression.data import UNLABELLED
from compression.distill import kd_loss


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
