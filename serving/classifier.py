"""A registry bundle as a callable classifier: its own tokenizer plus ONNX Runtime or torch (no Ray).

Runtime "onnx" (every bundle has model.onnx) or "torch" (FP32 bundles also keep their torch
weights under torch/; INT8 bundles exist only as ONNX). Text becomes inputs, and inputs ONNX
logits, through compression/preprocessing.py, the path every stage was validated with, so served
logits are the validated ones. `max_length` may serve shorter inputs than the bundle's own (an
operator bounding the cost of long texts); the rollout's smoke test says whether it still answers
like its registered self.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression.errors import CompressionError
from compression.preprocessing import TextEncoder, run_logits
from compression.registry import Bundle, Registry
from compression.runtime import session
from serving.config import Runtime
from serving.errors import BundleRejectedError
from serving.routing import softmax


@dataclass(frozen=True)
class Scored:
    """Probabilities for a batch of texts and the wall-clock seconds the model spent on them."""

    probabilities: np.ndarray  # float32 [n, labels]
    compute_s: float


Forward = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input ids, attention mask) -> logits


def load_bundle(registry_root: Path, ref: str, runtime: Runtime = "onnx") -> Bundle:
    """The bundle `ref` (id, prefix or name), refused unless its files match its manifest and
    it has a model for `runtime`."""
    try:
        bundle = Registry(registry_root).get(ref)
        bundle.verify_files()
    except CompressionError as exc:
        raise BundleRejectedError(f"refusing to serve '{ref}' from {registry_root}: {exc}") from exc
    if runtime == "onnx" and not bundle.model_path.is_file():
        raise BundleRejectedError(f"refusing to serve bundle {bundle.id}: it has no ONNX model to serve")
    if runtime == "torch" and bundle.torch_path is None:
        raise BundleRejectedError(
            f"refusing to serve bundle {bundle.id} ({bundle.manifest.name}, {bundle.manifest.precision}) with "
            "torch: it has no torch weights (only FP32 stages keep them); serve it with runtime onnx"
        )
    return bundle


def threads_for(cpus: float) -> int:
    """Intra-op threads for a replica holding `cpus` CPUs: rounded up, at least 1."""
    return max(1, math.ceil(cpus))


class Classifier:
    def __init__(self, bundle: Bundle, threads: int, runtime: Runtime = "onnx", max_length: int | None = None) -> None:
        self.bundle = bundle
        self.runtime = runtime
        self.label_names = tuple(bundle.manifest.label_names)
        preprocessing = bundle.manifest.preprocessing
        try:
            self._encoder = TextEncoder.from_dir(
                bundle.path / preprocessing.tokenizer, max_length or preprocessing.max_length
            )
            self._forward = _onnx_forward(bundle, threads) if runtime == "onnx" else _torch_forward(bundle, threads)
        except Exception as exc:  # ORT, torch and tokenizers raise their own untyped errors
            raise BundleRejectedError(f"bundle {bundle.id}: cannot load {runtime} model or tokenizer ({exc})") from exc

    def score(self, texts: list[str]) -> Scored:
        start = time.perf_counter()
        logits = self.logits(texts)
        return Scored(softmax(logits), time.perf_counter() - start)

    def logits(self, texts: list[str]) -> np.ndarray:
        """float32 [n, labels], in the order of `texts`."""
        return self._forward(*self._encoder.batch(texts))

    def top1(self, texts: list[str], batch_size: int) -> list[int]:
        """Each text's top answer, `batch_size` texts a forward pass (bounded memory; INT8 logits
        follow the batch a text is in, so callers batch as the answers they compare with were)."""
        answers: list[int] = []
        for start in range(0, len(texts), batch_size):
            answers += self.logits(texts[start : start + batch_size]).argmax(1).tolist()
        return answers


def _onnx_forward(bundle: Bundle, threads: int) -> Forward:
    onnx = session(bundle.model_path, threads)
    return lambda ids, mask: run_logits(onnx, ids, mask)


def _torch_forward(bundle: Bundle, threads: int) -> Forward:
    import torch  # only replicas that serve torch pay for importing it

    from compression.models import load_model

    if bundle.torch_path is None:
        raise BundleRejectedError(f"bundle {bundle.id} has no torch weights")
    torch.set_num_threads(threads)
    model = load_model(bundle.torch_path)

    def forward(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = model(torch.from_numpy(ids), torch.from_numpy(mask))
        return logits.float().numpy()

    return forward
