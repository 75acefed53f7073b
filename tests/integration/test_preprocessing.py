"""One preprocessing (compression/preprocessing.py): for every bundle of the tiny registry, the
logits a serving replica's Classifier computes are the ones compression validated the bundle
with, on the recipe's validation texts.

Batch for batch they are equal. Across different batchings (requests of 8 here) FP32 logits stay
equal to float precision; a dynamically quantized (INT8) model scales its activations by each
batch's range, so its logits move slightly with the company a text keeps and a borderline answer
may flip: within the smoke test's default 2 % tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.data import load_corpus
from compression.onnx_runtime import predict
from compression.recipe import load_recipe
from compression.registry import Registry
from compression.runtime import session
from compression.text import batches, encode, load_tokenizer
from serving.classifier import Classifier

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validation_texts() -> list[str]:
    recipe = load_recipe(ROOT / "recipes" / "tiny.yaml")
    return load_corpus(recipe.data, recipe.seed).validation.texts


def test_served_logits_are_the_validated_ones_for_every_bundle(
    tiny_run: tuple[Registry, object], validation_texts: list[str]
) -> None:
    registry, _ = tiny_run
    bundles = registry.bundles()
    assert {b.manifest.precision for b in bundles} == {"fp32", "int8"} and len(bundles) >= 6
    for bundle in bundles:
        tokenizer = load_tokenizer(bundle.path / bundle.manifest.preprocessing.tokenizer)
        encoded = encode(tokenizer, validation_texts, bundle.manifest.preprocessing.max_length)
        validated = predict(session(bundle.model_path, threads=1), encoded)  # as the stage's check ran it
        served = Classifier(bundle, threads=1)
        for index, _, _ in batches(encoded, 64):  # the same batches
            np.testing.assert_allclose(served.logits([validation_texts[i] for i in index]), validated[index], atol=1e-6)
        in_requests = np.concatenate(
            [served.logits(validation_texts[i : i + 8]) for i in range(0, len(validation_texts), 8)]
        )
        recorded = bundle.recorded_answers()
        assert recorded is not None and list(recorded.texts) == validation_texts[: len(recorded.texts)]
        matched = np.mean(in_requests.argmax(1)[: len(recorded.texts)] == recorded.predictions)
        if bundle.manifest.precision == "fp32":
            np.testing.assert_allclose(in_requests, validated, atol=1e-5)
            assert matched == 1.0, bundle.manifest.name
        else:  # within the smoke test's default tolerance
            assert matched >= 0.98, (bundle.manifest.name, matched)
