"""Post-training INT8 with ONNX Runtime's own quantizer: the path to the serving runtime.

- dynamic: weights stored INT8, activations quantized on the fly per batch. Suits transformers,
  whose activation ranges vary with the input; needs no calibration data. Embedding tables
  (Gather) are quantized too, which is most of a small student's bytes.
- static (QDQ): activation scales fixed from a calibration pass over validation batches.
  Suits models with stable activation ranges (the bag-of-embeddings baseline).

`torch.ao.quantization` is deprecated and its graphs do not map onto ONNX Runtime's INT8
kernels, so it is not used. When post-training INT8 breaches its tolerance the pipeline falls
back to quantization-aware distillation (compression/qat.py), exported as QDQ.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from compression.text import Encoded, batches

QUANTIZED_OPS = ["MatMul", "Gemm", "Gather"]


def quantize(
    source: Path, target: Path, mode: str, calibration: Encoded, optimize: bool = False, reduce_range: bool = False
) -> dict[str, int]:
    """INT8 `target` from FP32 `source`; with `optimize`, ONNX Runtime's transformer optimizer
    fuses what it recognises first; with `reduce_range`, weights use 7 bits (for CPUs without
    VNNI). Returns the fused operators it made (none without `optimize`)."""
    fused: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        stripped, prepared = Path(tmp) / "stripped.onnx", Path(tmp) / "prepared.onnx"
        # The dynamo exporter records value_info shapes that ONNX's strict shape inference
        # rejects after re-inference (a (384) vs (2) mismatch at the head); drop them and let
        # ONNX Runtime's pre-processing infer shapes afresh, as it recommends before quantizing.
        model = onnx.load(str(source))
        del model.graph.value_info[:]
        onnx.save(model, str(stripped))
        if optimize:
            fused = _fuse(stripped)
        quant_pre_process(str(stripped), str(prepared), skip_symbolic_shape=True)
        # Fused operators (com.microsoft) have no ONNX shape inference, and symbolic inference does
        # not complete on exported graphs: their outputs are float, as the quantizer is told.
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT} if fused else {}
        if mode == "dynamic":
            quantize_dynamic(
                str(prepared), str(target), weight_type=QuantType.QInt8, per_channel=True,
                reduce_range=reduce_range, op_types_to_quantize=QUANTIZED_OPS, extra_options=extra,
            )  # fmt: skip
        else:
            quantize_static(
                str(prepared), str(target), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8, op_types_to_quantize=QUANTIZED_OPS, extra_options=extra,
            )  # fmt: skip
    return fused


def _fuse(path: Path) -> dict[str, int]:
    """Layer norms (with their residual adds), GELUs with their bias and, where the exported graph
    matches its patterns, attention and the embeddings, fused in place. Whether a fusion is valid
    for this model is what the stage's check against its parent then says."""
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    optimized.save_model_to_file(str(path))
    return {op: n for op, n in optimized.get_fused_operator_statistics().items() if n}


class _Calibration(CalibrationDataReader):
    """Feeds validation batches (never test) to the static quantizer's range observers."""

    def __init__(self, encoded: Encoded, max_batches: int = 16) -> None:
        self._feeds = iter(
            [{"input_ids": ids.numpy(), "attention_mask": mask.numpy()} for _, ids, mask in batches(encoded, 32)][
                :max_batches
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
