"""ONNX export of any kdcanary classifier, and running/timing it in ONNX Runtime on CPU."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from tqdm import tqdm

from compression.models import Classifier
from compression.preprocessing import run_logits
from compression.recipe import ExportConfig
from compression.registry import Latency
from compression.text import Encoded, batches, pad

INPUT_NAMES = ["input_ids", "attention_mask"]


def export_onnx(model: Classifier, path: Path, config: ExportConfig, sample: Encoded) -> None:
    """Export with the exporter the recipe names; batch and sequence axes stay dynamic.

    The dynamo exporter writes weights to a side `.data` file for large models; the result is
    folded back into one file (under ONNX's 2 GB limit) so a bundle is a single model file.
    """
    ids, mask = pad(sample.ids[:2], sample.pad_id)  # >1 row and >1 token, so neither axis is specialised
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if config.exporter == "dynamo":
            batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
            axes = {0: batch, 1: sequence}
            torch.onnx.export(
                model, (ids, mask), str(path), dynamo=True, external_data=False, verbose=False,
                input_names=INPUT_NAMES, output_names=["logits"], opset_version=config.opset,
                dynamic_shapes={"input_ids": axes, "attention_mask": axes},
            )  # fmt: skip
        else:
            names = {0: "batch", 1: "sequence"}
            legacy_axes: dict[str, dict[int, str]] = {
                "input_ids": names,
                "attention_mask": names,
                "logits": {0: "batch"},
            }
            torch.onnx.export(
                model, (ids, mask), str(path), dynamo=False, input_names=INPUT_NAMES, output_names=["logits"],
                opset_version=config.opset, dynamic_axes=legacy_axes,
            )  # fmt: skip
    inline_external_data(path)


def inline_external_data(path: Path) -> None:
    """Fold any external-data files next to `path` into the model file itself, and drop the
    exporter's per-node metadata: the dynamo exporter records each node's Python stack trace,
    with this checkout's path and line numbers, so the same weights exported from another
    checkout (or after an edit to models.py) would hash to another bundle id."""
    proto = onnx.load(str(path), load_external_data=True)
    external = {
        entry.value for tensor in proto.graph.initializer for entry in tensor.external_data if entry.key == "location"
    }
    for node in [*proto.graph.node, *(n for function in proto.functions for n in function.node)]:
        del node.metadata_props[:]
    onnx.save_model(proto, str(path), save_as_external_data=False)
    for name in external:
        (path.parent / name).unlink(missing_ok=True)


def predict(
    sess: ort.InferenceSession, encoded: Encoded, batch_size: int = 64, progress: str | None = None
) -> np.ndarray:
    """Logits for every row, in row order; `progress` names a progress bar (shown on a terminal)."""
    out: np.ndarray | None = None
    total = -(-len(encoded) // batch_size)
    rows = batches(encoded, batch_size)
    for index, ids, mask in tqdm(rows, total=total, desc=progress, disable=None if progress else True, leave=False):
        logits = run_logits(sess, ids.numpy(), mask.numpy())
        if out is None:
            out = np.zeros((len(encoded), logits.shape[1]), dtype=np.float32)
        out[index] = logits
    assert out is not None, "predict() needs at least one row"
    return out


def measure_latency(sess: ort.InferenceSession, encoded: Encoded, threads: int, runs: int) -> Latency:
    """Wall time of single requests (batch 1) and of full batches (32) of real examples,
    each padded to its own longest row, after a short warm-up."""
    rows, pad_id = encoded.ids, encoded.pad_id
    singles = [pad([rows[i % len(rows)]], pad_id) for i in range(runs)]
    groups = [pad([rows[(i * 32 + j) % len(rows)] for j in range(32)], pad_id) for i in range(max(3, runs // 3))]
    b1, b32 = _time_all(sess, singles), _time_all(sess, groups)
    return Latency(
        threads=threads,
        b1_p50=float(np.percentile(b1, 50)),
        b1_p99=float(np.percentile(b1, 99)),
        b32_p50=float(np.percentile(b32, 50)),
        b32_p99=float(np.percentile(b32, 99)),
    )


def _time_all(sess: ort.InferenceSession, inputs: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    for ids, mask in inputs[:3]:
        run_logits(sess, ids.numpy(), mask.numpy())
    times = []
    for ids, mask in inputs:
        a, b = ids.numpy(), mask.numpy()
        start = time.perf_counter()
        run_logits(sess, a, b)
        times.append((time.perf_counter() - start) * 1000)
    return np.asarray(times)
