"""Perturbed copies of the labelled training snippets, as extra transfer text.

A distilled student learns the teacher's function only where it has seen the teacher answer.
On the snippets the teacher was fine-tuned on, its logits are close to the hard labels and
carry little of that function; on a perturbed copy (words dropped, neighbours swapped) the
teacher answers afresh, and that answer is what the student imitates. TinyBERT's task-specific
augmentation is the same idea. The copies carry no label: a perturbation may well flip the
sentiment, and the teacher's logits say so.
"""

from __future__ import annotations

import random

from compression.recipe import AugmentConfig


def augmented_copies(texts: list[str], config: AugmentConfig, seed: int) -> list[str]:
    """`config.copies` perturbed copies of every text, the same for the same seed; copies
    identical to an original or to each other are dropped."""
    rng = random.Random(f"augment:{seed}")
    originals = set(texts)
    copies = (perturb(text, config, rng) for _ in range(config.copies) for text in texts)
    return [t for t in dict.fromkeys(copies) if t not in originals]


def perturb(text: str, config: AugmentConfig, rng: random.Random) -> str:
    words = text.split()
    kept = [w for w in words if rng.random() >= config.word_dropout] or words
    for i in range(len(kept) - 1):
        if rng.random() < config.word_swap:
            kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)
