"""Vocabulary trimming: a student that reads the teacher's tokenizer keeps only the tokens its
corpus uses (`vocabulary: corpus` in a recipe).

A BERT-base teacher's 30k x 768 token embeddings are almost half of what a six-layer INT8 cut
of it weighs; a corpus of film reviews uses only part of them. The student keeps the
tokens that its training and validation text use, every special token, and the single-character
tokens (with and without the continuation prefix) of every character that text shows and of
printable ASCII: WordPiece still segments a word it has not seen into smaller pieces; only a
word with a character the corpus never showed becomes unknown, as one outside the teacher's
vocabulary already does. Ids are renumbered in the teacher's order, so the student's tokenizer
(saved in its bundle, as serving reads it) and its embedding rows agree.
"""

from __future__ import annotations

import json
import string
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from torch import nn
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from compression.errors import StudentSpecError
from compression.models import Classifier, EncoderClassifier
from compression.text import Encoded

CONFIG_TOKEN_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id")


def check_trimmable(tokenizer: PreTrainedTokenizerBase, field: str) -> None:
    """Refuse, before anything trains, a tokenizer whose vocabulary cannot be trimmed safely."""
    kind = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["type"]
    if kind != "WordPiece":
        raise StudentSpecError(f"{field}: corpus needs a WordPiece tokenizer (the teacher's is {kind})")


def kept_ids(tokenizer: PreTrainedTokenizerBase, texts: list[Encoded]) -> np.ndarray:
    """The teacher's token ids a trimmed vocabulary keeps, ascending: those `texts` use, the
    special and added tokens, and each single-character token of a character `texts` show or of
    printable ASCII."""
    prefix = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["continuing_subword_prefix"]
    used = {int(i) for encoded in texts for row in encoded.ids for i in row}
    shown = set(string.printable).union(
        *(t.removeprefix(prefix) for t in tokenizer.convert_ids_to_tokens(sorted(used)))
    )
    characters = {i for token, i in tokenizer.get_vocab().items() if token.removeprefix(prefix) in shown}
    added = set(tokenizer.added_tokens_decoder)
    return np.asarray(sorted(used | characters | added | set(tokenizer.all_special_ids)), dtype=np.int64)


def trimmed_tokenizer(tokenizer: PreTrainedTokenizerBase, kept: np.ndarray) -> PreTrainedTokenizerFast:
    """The teacher's tokenizer over the `kept` tokens only, renumbered 0..len(kept)-1."""
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    new_id = renumbering(kept)
    token_of = {i: token for token, i in state["model"]["vocab"].items()}
    state["model"]["vocab"] = {token_of[old]: new for old, new in new_id.items()}
    for added in state["added_tokens"]:
        added["id"] = new_id[added["id"]]
    if state.get("padding"):
        state["padding"]["pad_id"] = new_id[state["padding"]["pad_id"]]
    _renumber_special_tokens(state.get("post_processor"), new_id)
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(state)),
        model_max_length=tokenizer.model_max_length,
        **tokenizer.special_tokens_map,
    )


def trim_embeddings(model: Classifier, kept: np.ndarray) -> EncoderClassifier:
    """The teacher, in place, reading the trimmed ids: its embedding rows of `kept` only (the
    students made from it then start from those)."""
    if not isinstance(model, EncoderClassifier):
        raise StudentSpecError("vocabulary: corpus needs a Hugging Face teacher to copy embeddings from")
    config, new_id = model.encoder.config, renumbering(kept)
    for name in CONFIG_TOKEN_IDS:
        if (old := getattr(config, name, None)) is not None and old in new_id:
            setattr(config, name, new_id[old])
    words = model.encoder.get_input_embeddings()
    trimmed = nn.Embedding(len(kept), words.embedding_dim, padding_idx=config.pad_token_id)
    with torch.no_grad():
        trimmed.weight.copy_(words.weight.index_select(0, torch.from_numpy(kept)))
    model.encoder.set_input_embeddings(trimmed)
    if hasattr(model.encoder.embeddings, "padding_idx"):  # MPNet/RoBERTa number positions after it
        model.encoder.embeddings.padding_idx = config.pad_token_id
    config.vocab_size = len(kept)
    return model


def renumbering(kept: np.ndarray) -> dict[int, int]:
    return {int(old): new for new, old in enumerate(kept)}


def _renumber_special_tokens(node: Any, new_id: dict[int, int]) -> None:
    """Post-processors name their special tokens' ids: TemplateProcessing as `ids` lists,
    BERT/RoBERTa processing as `cls`/`sep` [token, id] pairs; Sequence nests them."""
    if isinstance(node, list):
        for item in node:
            _renumber_special_tokens(item, new_id)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "ids":
                node[key] = [new_id[i] for i in value]
            elif key in ("cls", "sep") and isinstance(value, list):
                node[key] = [value[0], new_id[value[1]]]
            else:
                _renumber_special_tokens(value, new_id)
