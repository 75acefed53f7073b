"""The smoke test's labelled inputs from a file the rollout spec names (`smoke.inputs`), instead
of the validation answers every bundle recorded at registration: a team's golden set.

Labels are the models' label names (or their indices); anything else is a one-line SpecError
naming the file, raised when the application is built, before anything starts.
"""

from __future__ import annotations

from pathlib import Path

from compression.data import read_labelled_file
from compression.errors import DataError
from rollout.errors import SpecError

MAX_INPUTS = 10_000  # the smoke test sends each through both served models before stage 0


def read_labelled_inputs(path: Path, label_names: tuple[str, ...]) -> tuple[list[str], list[int]]:
    """(texts, label ids in `label_names` order) of a CSV or JSONL with `text` and `label` columns."""
    try:
        texts, labels, names = read_labelled_file(path, "text", "label")
    except DataError as exc:
        raise SpecError(f"smoke.inputs: {exc}") from exc
    if len(texts) > MAX_INPUTS:
        raise SpecError(f"smoke.inputs {path}: {len(texts)} rows; at most {MAX_INPUTS} are sent before stage 0")
    index = {name: i for i, name in enumerate(label_names)}
    index |= {str(i): i for i in range(len(label_names))}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise SpecError(f"smoke.inputs {path}: labels {unknown} are not the models' ({', '.join(label_names)})")
    return texts, [index[names[label]] for label in labels]
