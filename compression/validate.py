"""Every stage is checked against its parent on the validation split before it is registered
(the pattern of optimum's `validate_model_outputs`, with tolerances declared in the recipe)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel

from compression.errors import ToleranceError
from compression.recipe import Tolerance


class ParentCheck(BaseModel):
    parent_id: str
    stage: str
    n: int
    agreement: float  # top-1 agreement with the parent
    parent_accuracy: float
    accuracy: float
    min_agreement: float
    max_accuracy_drop: float


def check_against_parent(
    stage: str,
    parent_id: str,
    child_logits: np.ndarray,
    parent_logits: np.ndarray,
    labels: np.ndarray,
    tolerance: Tolerance,
) -> ParentCheck:
    """Return the numbers, or raise ToleranceError naming them when a tolerance is breached."""
    child, parent = child_logits.argmax(1), parent_logits.argmax(1)
    result = ParentCheck(
        parent_id=parent_id,
        stage=stage,
        n=len(labels),
        agreement=float((child == parent).mean()),
        parent_accuracy=float((parent == labels).mean()),
        accuracy=float((child == labels).mean()),
        min_agreement=tolerance.min_agreement,
        max_accuracy_drop=tolerance.max_accuracy_drop,
    )
    drop = result.parent_accuracy - result.accuracy
    if result.agreement < tolerance.min_agreement:
        raise ToleranceError(
            f"{stage}: agreement {result.agreement:.3f} < {tolerance.min_agreement:.3f} "
            f"with parent {parent_id} on n={result.n} validation examples"
        )
    if drop > tolerance.max_accuracy_drop:
        raise ToleranceError(
            f"{stage}: accuracy {result.accuracy:.3f} is {drop:.3f} below parent {parent_id}'s "
            f"{result.parent_accuracy:.3f} (tolerance {tolerance.max_accuracy_drop:.3f}, n={result.n})"
        )
    return result
