"""Students built from a small random BERT, exported and run in real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from compression.distill import TrainingSet, train
from compression.errors import StudentSpecError
from compression.models import (
    EncoderClassifier,
    bag_of_embeddings,
    count_parameters,
    cut_layers,
    fresh_transformer,
    layer_shapes,
    load_model,
    resize_layer,
    save_model,
)
from compression.onnx_runtime import export_onnx, predict
from compression.prune import prune
from compression.qat import export_qdq, wrap_linears
from compression.quantize import quantize
from compression.recipe import (
    BagOfEmbeddingsArchitecture,
    DistillConfig,
    ExportConfig,
    LayersArchitecture,
    PruneConfig,
    TransformerArchitecture,
)
from compression.runtime import session
from compression.text import Encoded, pad

RNG = np.random.default_rng(0)


@pytest.fixture(scope="module")
def teacher() -> EncoderClassifier:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64
    )
    return EncoderClassifier(BertModel(config), num_labels=2).eval()


def sample(n: int = 24) -> Encoded:
    return Encoded(
        [np.concatenate([[101], RNG.integers(1000, 1200, RNG.integers(3, 12)) % 200, [102]]) for _ in range(n)]
    )


def torch_logits(model: torch.nn.Module, encoded: Encoded) -> np.ndarray:
    ids, mask = pad(encoded.ids)
    with torch.inference_mode():
        return model.eval()(ids, mask).numpy()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
@pytest.mark.parametrize(
    "arch",
    [
        LayersArchitecture(layers=[0, 2]),
        TransformerArchitecture(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32),
        BagOfEmbeddingsArchitecture(hidden_size=16),
    ],
    ids=["layers", "transformer", "bag"],
)
def test_students_export_and_match_torch(
    teacher: EncoderClassifier, arch: object, exporter: str, tmp_path: Path
) -> None:
    build = {LayersArchitecture: cut_layers, TransformerArchitecture: fresh_transformer}.get(
        type(arch), bag_of_embeddings
    )
    student = build(teacher, arch)  # type: ignore[operator]
    data = sample()
    export_onnx(student, tmp_path / "m.onnx", ExportConfig(exporter=exporter), data)  # type: ignore[arg-type]
    assert not list(tmp_path.glob("*.data"))  # one self-contained file
    np.testing.assert_allclose(predict(session(tmp_path / "m.onnx", 1), data), torch_logits(student, data), atol=1e-4)


def test_cut_layers_validates_indices(teacher: EncoderClassifier) -> None:
    assert len(cut_layers(teacher, LayersArchitecture(layers=[2])).layers) == 1
    with pytest.raises(StudentSpecError, match=r"0\.\.2"):
        cut_layers(teacher, LayersArchitecture(layers=[0, 3]))


def test_pruning_shrinks_tensors_and_round_trips(teacher: EncoderClassifier, tmp_path: Path) -> None:
    student = cut_layers(teacher, LayersArchitecture(layers=[0, 1, 2]))
    data = sample(64)
    labels = RNG.integers(0, 2, len(data))
    training = TrainingSet(data, labels, torch_logits(teacher, data))
    before = count_parameters(student)
    config = PruneConfig(head_keep=0.5, ffn_keep=0.25, steps=2, finetune_epochs=1)
    result = prune(student, training, (data, labels), config, DistillConfig(batch_size=16), RNG)
    assert result.shapes_after == [(2, 16)] * 3 and layer_shapes(student) == [(2, 16)] * 3
    removed = before - count_parameters(student)
    assert removed > 0
    save_model(student, tmp_path / "torch")
    reloaded = load_model(tmp_path / "torch")
    np.testing.assert_allclose(torch_logits(reloaded, data), torch_logits(student, data), atol=1e-5)
    export_onnx(student, tmp_path / "pruned.onnx", ExportConfig(), data)
    export_onnx(cut_layers(teacher, LayersArchitecture(layers=[0, 1, 2])), tmp_path / "full.onnx", ExportConfig(), data)
    # the removed weights are gone from the exported file, not zeroed inside it
    # (the exporter folds identical constants, e.g. fresh LayerNorm weights, so allow 10 %)
    assert onnx_weights(tmp_path / "full.onnx") - onnx_weights(tmp_path / "pruned.onnx") >= 0.9 * removed
    assert (tmp_path / "pruned.onnx").stat().st_size < (tmp_path / "full.onnx").stat().st_size


def mpnet_student() -> EncoderClassifier:
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    student = EncoderClassifier(MPNetModel(config), num_labels=2).eval()
    with torch.no_grad():  # a bias that differs per head, as a trained one does (a fresh one is all zeros)
        student.encoder.encoder.relative_attention_bias.weight.normal_(0.0, 1.0)
    return student


def silence_heads(model: EncoderClassifier, kept: list[list[int]]) -> EncoderClassifier:
    """The model with every head not in its layer's `kept` adding nothing through the output projection."""
    for layer, keep in zip(model.layers, kept, strict=True):
        attention = layer.attention.attn
        size = attention.attention_head_size
        with torch.no_grad():
            for head in set(range(attention.num_attention_heads)) - set(keep):
                attention.o.weight[:, head * size : (head + 1) * size] = 0.0
    return model


def test_an_mpnet_layer_without_some_heads_answers_as_if_they_were_silenced() -> None:
    """MPNet's encoder computes one relative position bias over all its heads for every layer: a
    layer that lost heads must add its kept heads' slices of it, each to its own head."""
    pruned, kept = mpnet_student(), [[1, 3], [0, 2]]
    for layer, keep in zip(pruned.layers, kept, strict=True):
        resize_layer(layer, keep, list(range(64)))
    data = sample(16)
    np.testing.assert_allclose(
        torch_logits(pruned, data), torch_logits(silence_heads(mpnet_student(), kept), data), atol=1e-5
    )


def test_an_mpnet_student_prunes_heads_in_rounds_and_round_trips(tmp_path: Path) -> None:
    """Two rounds (4 -> 3 -> 2 heads) compose the kept indices; they survive saving and export."""
    student = mpnet_student()
    data = sample(32)
    labels = RNG.integers(0, 2, len(data))
    training = TrainingSet(data, labels, torch_logits(student, data))
    config = PruneConfig(head_keep=0.5, ffn_keep=1.0, steps=2, finetune_epochs=0)
    result = prune(student, training, (data, labels), config, DistillConfig(batch_size=16), RNG)
    assert result.shapes_after == [(2, 64)] * 2
    kept = [layer.attention.attn.kept_heads.tolist() for layer in student.layers]
    expected = torch_logits(silence_heads(mpnet_student(), kept), data)  # no fine-tuning: only heads went
    np.testing.assert_allclose(torch_logits(student, data), expected, atol=1e-5)
    save_model(student, tmp_path / "torch")
    reloaded = load_model(tmp_path / "torch")
    assert [layer.attention.attn.kept_heads.tolist() for layer in reloaded.layers] == kept
    np.testing.assert_allclose(torch_logits(reloaded, data), expected, atol=1e-5)
    export_onnx(student, tmp_path / "pruned.onnx", ExportConfig(), data)
    np.testing.assert_allclose(predict(session(tmp_path / "pruned.onnx", 1), data), expected, atol=1e-4)


def onnx_weights(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def int8_weights(path: Path) -> np.ndarray:
    int8 = [t for t in onnx.load(str(path)).graph.initializer if t.data_type == onnx.TensorProto.INT8]
    return np.concatenate([numpy_helper.to_array(t).ravel() for t in int8])


VNNI = any(flag in Path("/proc/cpuinfo").read_text() for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


@pytest.mark.parametrize(("mode", "reduce_range"), [("dynamic", False), ("static", False), ("dynamic", True)])
def test_int8_is_smaller_and_close(teacher: EncoderClassifier, mode: str, reduce_range: bool, tmp_path: Path) -> None:
    data = sample(64)
    export_onnx(teacher, tmp_path / "fp32.onnx", ExportConfig(), data)
    quantize(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", mode, data, reduce_range=reduce_range)
    assert (tmp_path / "int8.onnx").stat().st_size < 0.5 * (tmp_path / "fp32.onnx").stat().st_size
    fp32, int8 = predict(session(tmp_path / "fp32.onnx", 1), data), predict(session(tmp_path / "int8.onnx", 1), data)
    assert np.abs(fp32 - int8).max() < 0.2
    widest = np.abs(int8_weights(tmp_path / "int8.onnx")).max()
    assert widest <= 64 if reduce_range else widest > 64  # 7 bits, or the full 8


@pytest.mark.parametrize("reduce_range", [False, True])
def test_quantization_aware_export_holds_int8_weights_and_matches_torch(
    teacher: EncoderClassifier, reduce_range: bool, tmp_path: Path
) -> None:
    student = wrap_linears(cut_layers(teacher, LayersArchitecture(layers=[0, 1])), reduce_range)
    data = sample(64)
    labels = RNG.integers(0, 2, len(data))
    training = TrainingSet(data, labels, torch_logits(teacher, data))
    train(student, training, (data, labels), DistillConfig(epochs=1, batch_size=16), RNG, "qat")
    export_qdq(student, tmp_path / "qdq.onnx", data, opset=18)
    graph = onnx.load(str(tmp_path / "qdq.onnx")).graph
    int8 = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 2 * 6 + 1  # every Linear's weight: 6 per layer, plus the head
    assert {n.op_type for n in graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    widest = np.abs(int8_weights(tmp_path / "qdq.onnx")).max()
    assert widest <= 64 if reduce_range else widest > 64
    # Without VNNI, ONNX Runtime's u8s8 kernels sum pairs of products in saturating int16 (its
    # documented AVX2 caveat): full-range weights then drift from torch by a few thousandths;
    # 7-bit ones cannot overflow it, and match on every CPU.
    atol = 1e-4 if VNNI or reduce_range else 1e-2
    np.testing.assert_allclose(predict(session(tmp_path / "qdq.onnx", 1), data), torch_logits(student, data), atol=atol)
