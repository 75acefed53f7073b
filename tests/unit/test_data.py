from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from compression.data import UNLABELLED, load_corpus, read_labelled_file
from compression.errors import DataError
from compression.recipe import AugmentConfig, DataConfig, TransferConfig


def test_rotten_tomatoes_split_is_stratified_disjoint_and_fixed() -> None:
    config = DataConfig(max_examples=1000, transfer=TransferConfig(plot_sentences=True, max_examples=50))
    corpus = load_corpus(config, seed=13)
    splits = [corpus.train, corpus.validation, corpus.test]
    texts = [set(s.texts) for s in splits]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(len(s) for s in splits) == pytest.approx(1000, abs=2)
    rates = [s.labels.mean() for s in splits]
    assert max(rates) - min(rates) < 0.03  # each split keeps the fresh/rotten ratio
    assert len(corpus.transfer) == 50 and (corpus.transfer.labels == UNLABELLED).all()
    assert not set(corpus.transfer.texts) & texts[0]
    assert corpus.label_names == ["negative", "positive"]
    assert load_corpus(config, seed=13).data_hash == corpus.data_hash
    assert load_corpus(config, seed=14).data_hash != corpus.data_hash


def test_augmented_copies_of_training_snippets_join_the_transfer_text() -> None:
    plain = DataConfig(max_examples=400, transfer=TransferConfig(plot_sentences=True, max_examples=30))
    augment = AugmentConfig(copies=2, word_dropout=0.2, word_swap=0.1)
    config = plain.model_copy(update={"transfer": plain.transfer.model_copy(update={"augment": augment})})
    before, after = load_corpus(plain, seed=13), load_corpus(config, seed=13)
    assert after.transfer.texts[:30] == before.transfer.texts  # on top of max_examples
    copies = after.transfer.texts[30:]
    # at most `copies` per snippet by construction; the lower bound is the check: near-duplicates
    # dropped against the labelled splits and each other must not eat the augmentation
    assert 1.5 * len(before.train) < len(copies) <= 2 * len(before.train)
    labelled = set(before.train.texts) | set(before.validation.texts) | set(before.test.texts)
    assert not set(copies) & labelled and (after.transfer.labels == UNLABELLED).all()
    assert all(len(c.split()) <= max(len(t.split()) for t in before.train.texts) for c in copies)
    assert load_corpus(config, seed=13).transfer.texts == after.transfer.texts  # seeded
    assert after.labelled_hash == before.labelled_hash  # the teacher is not retrained
    assert after.data_hash != before.data_hash  # but every student is


def test_csv_and_jsonl_with_named_labels(tmp_path: Path) -> None:
    rows = [{"review": f"text {i}", "sentiment": "pos" if i % 2 else "neg"} for i in range(40)]
    rows.append({"review": "text 1", "sentiment": "pos"})  # duplicate text: dropped
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows))
    csv = tmp_path / "d.csv"
    csv.write_text("review,sentiment\n" + "\n".join(f"{r['review']},{r['sentiment']}" for r in rows))
    for path in (jsonl, csv):
        texts, labels, names = read_labelled_file(path, "review", "sentiment")
        assert names == ["neg", "pos"] and len(texts) == 41 and set(np.unique(labels)) == {0, 1}
        corpus = load_corpus(
            DataConfig(source="file", path=path, text_column="review", label_column="sentiment"),
            seed=1,
        )
        assert len(corpus.train) + len(corpus.validation) + len(corpus.test) == 40


def test_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "\n".join(f"t{i},{[2, 10, 1][i % 3]}" for i in range(30)))
    assert read_labelled_file(path, "text", "label")[2] == ["1", "2", "10"]


def test_bad_data_files_name_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,0\n")
    with pytest.raises(DataError, match="no column 'stars'"):
        read_labelled_file(path, "text", "stars")
    with pytest.raises(DataError, match="cannot read data file"):
        read_labelled_file(tmp_path / "missing.csv", "text", "label")
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "a", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match="not JSON"):
        read_labelled_file(bad, "text", "label")
    with pytest.raises(DataError, match="unsupported"):
        read_labelled_file(tmp_path / "d.parquet", "text", "label")
    one = tmp_path / "one.csv"
    one.write_text("text,label\na,1\nb,1\n")
    with pytest.raises(DataError, match="1 distinct label"):
        read_labelled_file(one, "text", "label")
