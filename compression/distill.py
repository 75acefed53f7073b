"""Knowledge distillation: the loss, a training loop with early stopping, and the T x alpha sweep.

The teacher's raw logits come from the cache (compression/cache.py); temperature is applied
here, at loss time, so one cached pass serves every temperature.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from compression import progress
from compression.data import UNLABELLED
from compression.models import Classifier, EncoderClassifier
from compression.recipe import DistillConfig, SweepConfig
from compression.text import Encoded, batches


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation loss:

        L = alpha * T^2 * KL(softmax(t / T) || softmax(s / T)) + (1 - alpha) * CE(s, y)

    KL is averaged over the batch; T^2 keeps the soft term's gradient scale independent of T.
    Rows labelled UNLABELLED (transfer text) contribute to the KL term only; with no teacher
    logits (fine-tuning the teacher itself) the loss is plain cross-entropy.
    """
    labelled = labels != UNLABELLED
    ce = F.cross_entropy(student_logits[labelled], labels[labelled]) if labelled.any() else student_logits.sum() * 0
    if teacher_logits is None:
        return ce
    soft_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    soft_student = F.log_softmax(student_logits / temperature, dim=-1)
    kl = F.kl_div(soft_student, soft_teacher, log_target=True, reduction="batchmean")
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def hidden_loss(
    student_pooled: list[torch.Tensor],
    teacher_pooled: torch.Tensor,
    layer_map: list[int],
    projections: nn.ModuleList | None = None,
) -> torch.Tensor:
    """Mean squared error between each student layer's mean-pooled output and its teacher layer
    (teacher_pooled: batch x teacher layers+1 x width, embeddings first). A student of another
    width reaches the teacher's through one learned projection per layer (TinyBERT's W_h)."""
    pairs = [(student_pooled[i + 1], teacher_pooled[:, t + 1]) for i, t in enumerate(layer_map)]
    if projections is not None:
        pairs = [(project(s), t) for project, (s, t) in zip(projections, pairs, strict=True)]
    return torch.stack([F.mse_loss(s, t.to(s.dtype)) for s, t in pairs]).mean()


def uniform_layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Student layer i learns from teacher layer floor((i+1)*T/S) - 1: the top layers always meet."""
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def hidden_projections(model: Classifier, data: TrainingSet) -> nn.ModuleList | None:
    """Projections into the teacher's width, or None when the widths already agree; trained with
    the student and dropped with the loss."""
    if data.teacher_hidden is None or not isinstance(model, EncoderClassifier):
        return None
    student_width, teacher_width = model.encoder.config.hidden_size, data.teacher_hidden.shape[-1]
    if student_width == teacher_width:
        return None
    return nn.ModuleList(nn.Linear(student_width, teacher_width) for _ in data.layer_map)


def with_hidden_term(
    model: Classifier, data: TrainingSet, config: DistillConfig
) -> tuple[TrainingSet, nn.ModuleList | None]:
    """`data` with the layer map the hidden-state term needs (evenly spread when the student was
    not cut from the teacher) and that term's projections; `data` as it is without the term."""
    if config.hidden_loss_weight <= 0 or data.teacher_hidden is None or not isinstance(model, EncoderClassifier):
        return data, None
    if not data.layer_map:
        data = replace(data, layer_map=uniform_layer_map(len(model.layers), data.teacher_hidden.shape[1] - 1))
    return data, hidden_projections(model, data)


@dataclass
class TrainingSet:
    encoded: Encoded
    labels: np.ndarray
    teacher_logits: np.ndarray | None = None
    teacher_hidden: np.ndarray | None = None  # pooled, per teacher layer; only for hidden loss
    layer_map: list[int] = field(default_factory=list)  # student layer i learns from this teacher layer; [] evenly

    def subset(self, fraction: float, rng: np.random.Generator) -> TrainingSet:
        index = np.sort(rng.choice(len(self.labels), size=max(1, int(fraction * len(self.labels))), replace=False))
        return TrainingSet(
            self.encoded.subset(index),
            self.labels[index],
            None if self.teacher_logits is None else self.teacher_logits[index],
            None if self.teacher_hidden is None else self.teacher_hidden[index],
            self.layer_map,
        )


@dataclass
class TrainResult:
    best_validation_accuracy: float
    epochs_run: int
    history: list[float]  # validation accuracy after each epoch


def predict_logits(model: nn.Module, encoded: Encoded, batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = np.zeros((len(encoded), 0), dtype=np.float32)
    with torch.inference_mode():
        for index, ids, mask in batches(encoded, batch_size):
            logits = model(ids, mask).numpy()
            if out.shape[1] == 0:
                out = np.zeros((len(encoded), logits.shape[1]), dtype=np.float32)
            out[index] = logits
    return out


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def train(
    model: Classifier,
    data: TrainingSet,
    validation: tuple[Encoded, np.ndarray],
    config: DistillConfig,
    rng: np.random.Generator,
    desc: str,
) -> TrainResult:
    """AdamW with linear decay; keeps the weights of the best validation epoch (early stopping)."""
    steps = config.epochs * -(-len(data.labels) // config.batch_size)
    data, projections = with_hidden_term(model, data, config)
    parameters = [*model.parameters(), *(projections.parameters() if projections is not None else [])]
    # fused: one kernel for every tensor; on CPU about 5x faster a step than the default
    # per-tensor loop, which spent a quarter of a tiny-recipe run in the optimizer
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=0.01, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(0.0, 1 - step / max(1, steps)))
    best, best_state, history, stale = -1.0, copy.deepcopy(model.state_dict()), [], 0
    done = 0  # steps taken
    with tqdm(total=steps, desc=desc, unit="batch", leave=False, disable=None, mininterval=1) as bar:
        for _ in range(config.epochs):
            model.train()
            for index, ids, mask in batches(data.encoded, config.batch_size, rng):
                loss = batch_loss(model, data, config, index, ids, mask, projections)
                optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                done += 1  # not bar.n: tqdm counts nothing where it draws nothing (not a terminal)
                progress.report(desc, done, steps)
            history.append(accuracy(predict_logits(model, validation[0]), validation[1]))
            if history[-1] > best:
                best, best_state, stale = history[-1], copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    return TrainResult(best, len(history), history)


def batch_loss(
    model: Classifier,
    data: TrainingSet,
    config: DistillConfig,
    index: np.ndarray,
    ids: torch.Tensor,
    mask: torch.Tensor,
    projections: nn.ModuleList | None = None,
) -> torch.Tensor:
    labels = torch.from_numpy(data.labels[index])
    teacher = None if data.teacher_logits is None else torch.from_numpy(data.teacher_logits[index])
    # without a layer map (a pruning importance pass over a student not cut from the teacher) the
    # hidden term is left out: train() draws the map and the projections the term needs
    use_hidden = config.hidden_loss_weight > 0 and data.teacher_hidden is not None and bool(data.layer_map)
    if use_hidden and isinstance(model, EncoderClassifier):
        logits, pooled = model.forward_with_hidden(ids, mask, hidden=True)
        assert data.teacher_hidden is not None
        extra = hidden_loss(pooled, torch.from_numpy(data.teacher_hidden[index]), data.layer_map, projections)
        return kd_loss(logits, teacher, labels, config.temperature, config.alpha) + config.hidden_loss_weight * extra
    return kd_loss(model(ids, mask), teacher, labels, config.temperature, config.alpha)


@dataclass
class SweepResult:
    temperature: float
    alpha: float
    grid: list[dict[str, float]]  # every (temperature, alpha, validation_accuracy) tried


def sweep(
    make_student: Callable[[], Classifier],
    data: TrainingSet,
    validation: tuple[Encoded, np.ndarray],
    base: DistillConfig,
    config: SweepConfig,
    rng: np.random.Generator,
) -> SweepResult:
    """Train a fresh student per (T, alpha) on a subset; the best validation accuracy wins
    (ties: the earlier grid point). No teacher pass: all points share the cached logits."""
    subset = data.subset(config.subset, rng)
    grid = []
    for temperature in config.temperatures:
        for alpha in config.alphas:
            trial = base.model_copy(update={"temperature": temperature, "alpha": alpha, "epochs": config.epochs})
            result = train(make_student(), subset, validation, trial, rng, f"sweep T={temperature} a={alpha}")
            grid.append(
                {"temperature": temperature, "alpha": alpha, "validation_accuracy": result.best_validation_accuracy}
            )
    best = max(grid, key=lambda g: g["validation_accuracy"])
    return SweepResult(best["temperature"], best["alpha"], grid)
