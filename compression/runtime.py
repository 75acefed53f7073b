"""The ONNX Runtime session every part of kdcanary runs models with. Torch-free, so serving
replicas can import it without paying for torch."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def session(path: Path, threads: int) -> ort.InferenceSession:
    """CPU session with `threads` intra-op threads and one inter-op thread, full graph optimisation.

    Idle pool threads sleep instead of spinning: replicas, builds and tests share their cores,
    and a spinning thread burns the time slice another process was waiting for."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
