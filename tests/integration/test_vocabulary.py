"""Vocabulary trimming (`vocabulary: corpus`): the student's tokenizer and embeddings keep only
the tokens the recipe's text uses, and read that text exactly as the teacher did.

The first test builds an MPNet-style model (RoBERTa post-processing, positions numbered after
the padding id) over a WordPiece vocabulary whose first tokens the corpus never uses, so the
padding id itself moves; the second runs a trimmed student of the tiny recipe end to end.
"""

from __future__ import annotations

import copy
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import MPNetConfig, MPNetModel, PreTrainedTokenizerFast

from compression.data import load_corpus
from compression.errors import StudentSpecError
from compression.models import EncoderClassifier
from compression.pipeline import compress, open_context
from compression.preprocessing import TextEncoder
from compression.recipe import Recipe, load_recipe
from compression.registry import Registry
from compression.text import Encoded, encode, pad
from compression.vocabulary import check_trimmable, kept_ids, trim_embeddings, trimmed_tokenizer
from serving.classifier import Classifier

ROOT = Path(__file__).resolve().parents[2]
LAX = {"min_agreement": 0.0, "max_accuracy_drop": 1.0}
UNUSED = ["zebra", "quokka", "##yx"]  # before the special tokens: trimming renumbers those
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ["the", "film", "is", "bore", "joy", "##s", "##ly", "not", "!"]
CHARACTERS = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]


def mpnet_style() -> tuple[PreTrainedTokenizerFast, EncoderClassifier]:
    tokens = dict.fromkeys(UNUSED + SPECIAL + WORDS + CHARACTERS + ["<mask>"])  # in order, once each
    vocab = {token: i for i, token in enumerate(tokens)}
    wordpiece = Tokenizer(models.WordPiece(vocab, unk_token="<unk>"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
    )  # fmt: skip
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )  # fmt: skip
    return tokenizer, EncoderClassifier(MPNetModel(config), num_labels=2).eval()


def logits(model: EncoderClassifier, encoded: Encoded) -> np.ndarray:
    ids, mask = pad(encoded.ids, encoded.pad_id)
    with torch.inference_mode():
        return model(ids, mask).numpy()


def test_a_trimmed_model_reads_the_corpus_as_the_teacher_did() -> None:
    tokenizer, teacher = mpnet_style()
    corpus = ["The film is a joy!", "Not a bore", "the films, joyously"]  # padded rows in one batch
    kept = kept_ids(tokenizer, [encode(tokenizer, corpus, 16)])
    assert not {tokenizer.convert_tokens_to_ids(t) for t in UNUSED} & set(kept.tolist())
    trimmed = trimmed_tokenizer(tokenizer, kept)
    student = trim_embeddings(copy.deepcopy(teacher), kept)  # as the distill stage trims the teacher it loaded
    assert trimmed.pad_token_id == tokenizer.pad_token_id - len(UNUSED) == student.encoder.config.pad_token_id
    read = encode(trimmed, corpus, 16)
    np.testing.assert_allclose(logits(student, read), logits(teacher, encode(tokenizer, corpus, 16)), atol=1e-5)
    # an unseen word falls back to characters, never to <unk>
    (unseen,) = encode(trimmed, ["zebra"], 16).ids
    assert trimmed.unk_token_id not in unseen and len(unseen) == 2 + len("zebra")


def test_a_tokenizer_other_than_wordpiece_is_refused_before_anything_trains() -> None:
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()))
    with pytest.raises(StudentSpecError, match=r"students.x.vocabulary: corpus needs a WordPiece tokenizer \(.*BPE"):
        check_trimmable(tokenizer, "students.x.vocabulary")


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    """The tiny recipe (so its teacher is the tiny registry's) with one trimmed student."""
    tiny = load_recipe(ROOT / "recipes" / "tiny.yaml")
    student: dict[str, Any] = {
        "name": "trimmed",
        "architecture": {"kind": "layers", "layers": [0, 5]},
        "vocabulary": "corpus",
        "distill": {"epochs": 1, "learning_rate": 2.0e-4},
        "quantize": {"mode": "dynamic"},
        "tolerances": {"distill": LAX, "quantize": LAX},
    }
    return Recipe.model_validate(tiny.model_dump(mode="json") | {"students": [student]})


def test_a_trimmed_student_end_to_end(teacher_registry: Registry, recipe: Recipe) -> None:
    registry = teacher_registry
    teacher = registry.get("teacher")
    summary = compress(recipe, registry)
    assert summary.teacher.id == teacher.id and summary.teacher_forward_batches == 0  # logits reused
    distilled, quantized = summary.students["trimmed"]
    ctx = open_context(recipe, registry)
    corpus = load_corpus(recipe.data, recipe.seed)
    kept = kept_ids(ctx.tokenizer, [ctx.encoded("distill"), ctx.encoded("validation")])
    size = len(kept)
    assert size < 0.75 * len(ctx.tokenizer)  # the tiny corpus uses well under the teacher's 30,522
    student = ctx.torch_model(distilled)
    assert isinstance(student, EncoderClassifier)
    assert student.encoder.get_input_embeddings().num_embeddings == size
    teacher_reads = TextEncoder.from_dir(teacher.path / "tokenizer", recipe.preprocessing.max_length)
    for bundle in (distilled, quantized):
        own = TextEncoder.from_dir(bundle.path / "tokenizer", recipe.preprocessing.max_length)
        assert Tokenizer.from_file(str(bundle.path / "tokenizer" / "tokenizer.json")).get_vocab_size() == size
        renumbered = [kept[row] for row in own.encode(corpus.validation.texts)]  # back to the teacher's ids
        assert all(
            np.array_equal(a, b) for a, b in zip(renumbered, teacher_reads.encode(corpus.validation.texts), strict=True)
        )
        recorded = bundle.recorded_answers()
        assert recorded is not None and bundle.manifest.parent_check is not None
        served = Classifier(bundle, threads=1).logits(list(recorded.texts)).argmax(1)
        assert np.mean(served == recorded.predictions) >= 0.98  # served as validated (INT8: its batches)
    assert distilled.manifest.parent_check is not None and distilled.manifest.parent_check.parent_id == teacher.id
