"""The bundle-serving core without Ray: real bundles, real tokenizer, real ONNX Runtime."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serving.classifier import Classifier, load_bundle, threads_for
from serving.errors import BundleRejectedError


def test_classifier_scores_with_the_bundles_own_tokenizer(serving_bundles: Any) -> None:
    for ref in (serving_bundles.teacher_id, serving_bundles.student_id):
        bundle = load_bundle(serving_bundles.registry, ref)
        classifier = Classifier(bundle, threads_for(0.25))
        texts = ["a wonderful, moving film", "x", "word " * 500]  # the last is truncated to max_length
        scored = classifier.score(texts)
        assert scored.probabilities.shape == (3, len(bundle.manifest.label_names))
        assert np.allclose(scored.probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert scored.compute_s > 0
        # Batch-mates change an answer only through dynamic INT8's per-batch activation scale:
        # exactly nothing for FP32, about 1e-3 for INT8 students, never the label.
        alone = classifier.score(texts[:1]).probabilities
        tolerance = 1e-6 if bundle.manifest.precision == "fp32" else 5e-3
        assert np.allclose(alone, scored.probabilities[:1], atol=tolerance)
        assert alone.argmax() == scored.probabilities[0].argmax()


def test_torch_runtime_matches_the_onnx_export_and_int8_is_refused(serving_bundles: Any) -> None:
    teacher = load_bundle(serving_bundles.registry, serving_bundles.teacher_id, "torch")
    texts = ["a wonderful, moving film", "dull and far too long", "word " * 500]
    on_torch = Classifier(teacher, threads_for(0.25), "torch").score(texts).probabilities
    on_onnx = Classifier(teacher, threads_for(0.25)).score(texts).probabilities
    assert np.allclose(on_torch, on_onnx, atol=1e-4)
    with pytest.raises(BundleRejectedError, match=r"no torch weights .* serve it with runtime onnx"):
        load_bundle(serving_bundles.registry, serving_bundles.student_id, "torch")


def test_serve_refuses_a_runtime_the_bundle_lacks_before_starting_ray(
    serving_bundles: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from serving.cli import main

    argv = ["serve", "--registry", str(serving_bundles.registry), "--teacher", serving_bundles.teacher_id]
    assert main([*argv, "--student", serving_bundles.student_id, "--student-runtime", "torch"]) == 2
    assert "no torch weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("stages: [{weight: 0.5}, {weight: 1.5}]\n", "stages.1.weight: Input should be less than or equal to 1"),
        ("- just a list\n", "rollout spec must be a mapping, got list"),
        (None, "cannot be read (No such file or directory)"),
    ],
    ids=["bad-field", "not-a-mapping", "missing-file"],
)
def test_serve_refuses_a_bad_spec_in_one_line_before_starting_ray(
    serving_bundles: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    spec: str | None, message: str,
) -> None:  # fmt: skip
    import ray

    from serving.cli import main

    def refuse(*_: Any, **__: Any) -> None:
        raise AssertionError("Ray was started for a bad spec")

    monkeypatch.setattr(ray, "init", refuse)
    path = tmp_path / "spec.yaml"
    if spec is not None:
        path.write_text(spec)
    argv = ["serve", "--registry", str(serving_bundles.registry), "--spec", str(path)]
    assert main([*argv, "--teacher", serving_bundles.teacher_id, "--student", serving_bundles.student_id]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kdcanary: error: ") and message in err[0], err


def test_tampered_bundle_is_refused(serving_bundles: Any, tmp_path: Path) -> None:
    source = load_bundle(serving_bundles.registry, serving_bundles.student_id)
    copy = tmp_path / "models" / source.id
    shutil.copytree(source.path, copy)
    with (copy / "model.onnx").open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleRejectedError, match=r"refusing to serve .*model.onnx does not match"):
        load_bundle(tmp_path, source.id)
    (copy / "model.onnx").unlink()
    with pytest.raises(BundleRejectedError, match=r"model\.onnx is missing"):
        load_bundle(tmp_path, source.id)


def test_unknown_bundle_is_refused(serving_bundles: Any) -> None:
    with pytest.raises(BundleRejectedError, match="no such id or name"):
        load_bundle(serving_bundles.registry, "does-not-exist")


def test_threads_follow_replica_cpus() -> None:
    assert [threads_for(c) for c in (0.1, 1.0, 1.5, 4.0)] == [1, 1, 2, 4]
