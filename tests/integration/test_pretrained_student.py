"""A pretrained student with a tokenizer and width of its own (the DistilBERT/MiniLM pattern),
end to end on the tiny recipe's teacher: distilled from the teacher's cached logits (keyed by
text, so each model reads the texts in its own tokens) and from its hidden states (through
projections: 64 wide against the teacher's 384), pruned, quantized, validated against each
parent, and served with the logits it was validated with.

The "pretrained" encoder is made here: a small BERT with its own WordPiece vocabulary of 600
tokens, trained on the corpus's snippets, saved as a Hugging Face directory as a team's own
model would be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

from compression.data import load_corpus
from compression.pipeline import compress
from compression.recipe import Recipe, load_recipe
from compression.registry import Registry
from serving.classifier import Classifier

ROOT = Path(__file__).resolve().parents[2]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LAX = {"min_agreement": 0.0, "max_accuracy_drop": 1.0}


def own_encoder(directory: Path, texts: list[str]) -> Path:
    """A small BERT and its own WordPiece tokenizer, saved with save_pretrained."""
    wordpiece = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    wordpiece.normalizer = normalizers.BertNormalizer(lowercase=True)
    wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    wordpiece.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=600, special_tokens=SPECIAL))
    cls, sep = wordpiece.token_to_id("[CLS]"), wordpiece.token_to_id("[SEP]")
    wordpiece.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    )  # fmt: skip
    tokenizer.save_pretrained(str(directory))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128
    )
    BertModel(config).save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Recipe:
    """The tiny recipe (so its teacher is the tiny registry's) with one pretrained student."""
    tiny = load_recipe(ROOT / "recipes" / "tiny.yaml")
    corpus = load_corpus(tiny.data, tiny.seed)
    encoder = own_encoder(tmp_path_factory.mktemp("own-encoder"), corpus.train.texts)
    student: dict[str, Any] = {
        "name": "own",
        "architecture": {"kind": "pretrained", "path": str(encoder)},
        "distill": {"epochs": 1, "learning_rate": 1.0e-3, "hidden_loss_weight": 1.0},
        "prune": {"head_keep": 0.5, "ffn_keep": 0.5, "steps": 1, "finetune_epochs": 0},
        "quantize": {"mode": "dynamic", "optimize": True},
        "tolerances": {"distill": LAX, "prune": LAX, "quantize": LAX},
    }
    return Recipe.model_validate(tiny.model_dump(mode="json") | {"students": [student]})


def test_a_student_with_its_own_tokenizer_end_to_end(teacher_registry: Registry, recipe: Recipe) -> None:
    registry = teacher_registry
    teacher = registry.get("teacher")
    summary = compress(recipe, registry)
    corpus = load_corpus(recipe.data, recipe.seed)
    hidden_pass = -(-(len(corpus.train) + len(corpus.transfer)) // 64)  # its hidden states, in its tokens
    assert summary.teacher.id == teacher.id and summary.teacher_forward_batches == hidden_pass  # logits reused
    chain = summary.students["own"]
    assert [b.manifest.stage for b in chain] == ["distill", "prune", "quantize"]
    assert chain[-1].manifest.training["fused"]  # the transformer optimizer fused something first
    texts = corpus.validation.texts
    for bundle in chain:
        vocabulary = Tokenizer.from_file(str(bundle.path / "tokenizer" / "tokenizer.json")).get_vocab_size()
        assert vocabulary == 600  # its own tokens, not the teacher's 30,522
        recorded = bundle.recorded_answers()
        assert recorded is not None and bundle.manifest.parent_check is not None
        served = Classifier(bundle, threads=1).logits(list(recorded.texts)).argmax(1)
        assert np.mean(served == recorded.predictions) >= 0.98  # served as validated (INT8: its batches)
    check = chain[0].manifest.parent_check
    assert check is not None and check.parent_id == teacher.id and check.n == len(texts)
