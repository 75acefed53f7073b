"""Quantization-aware distillation: the fallback when post-training INT8 breaches tolerance.

Every Linear layer is wrapped so that, during a short distillation pass, its weights go
through per-output-channel symmetric INT8 fake quantization and its inputs through per-tensor
UINT8 fake quantization with ranges tracked by a moving average. The network learns weights
that survive rounding. The trained model is exported (TorchScript exporter: it maps
`fake_quantize_*` onto ONNX QuantizeLinear/DequantizeLinear) and its weight QuantizeLinear
nodes are folded into INT8 initializers, so the file holds INT8 weights in QDQ form, which
ONNX Runtime fuses into integer kernels.

Not `torch.ao.quantization`: it is deprecated, and its converted modules do not export to the
QDQ form ONNX Runtime consumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from compression.models import Classifier
from compression.recipe import ExportConfig
from compression.text import Encoded

M = TypeVar("M", bound=nn.Module)


class FakeQuantLinear(nn.Module):
    low: torch.Tensor  # running input range (buffers)
    high: torch.Tensor
    seen: torch.Tensor
    frozen_scales: tuple[torch.Tensor, ...]

    def __init__(self, linear: nn.Linear, momentum: float = 0.1, weight_max: int = 127) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.momentum, self.weight_max = momentum, weight_max
        self.register_buffer("low", torch.tensor(0.0))
        self.register_buffer("high", torch.tensor(0.0))
        self.register_buffer("seen", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._track(x.detach())
        scale, zero, w_scale = self.scales()
        x = torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255)
        w_zero = torch.zeros_like(w_scale, dtype=torch.int32)
        # The scale alone narrows 7-bit weights (to +-63): ONNX's quantizers take only 8-bit ranges.
        weight = torch.fake_quantize_per_channel_affine(self.weight, w_scale, w_zero, 0, -128, 127)
        return F.linear(x, weight, self.bias)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input scale, input zero point, per-channel weight scales); frozen ones once exported."""
        if hasattr(self, "frozen_scales"):
            scale, zero, w_scale = self.frozen_scales
            return scale, zero, w_scale
        scale = (torch.clamp(self.high - self.low, min=1e-8) / 255).detach()
        zero = torch.clamp(torch.round(-self.low / scale), 0, 255).to(torch.int32).detach()
        w_scale = (self.weight.detach().abs().amax(dim=1).clamp(min=1e-8) / self.weight_max).float()
        return scale, zero, w_scale

    def freeze(self) -> None:
        """Fix every scale as a constant, so the exported quantizers have constant inputs."""
        self.frozen_scales = tuple(t.clone() for t in self.scales())

    def _track(self, x: torch.Tensor) -> None:
        low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)  # range includes 0
        if not bool(self.seen):
            self.low.copy_(low), self.high.copy_(high), self.seen.fill_(True)
        else:
            self.low.lerp_(low, self.momentum), self.high.lerp_(high, self.momentum)


def wrap_linears(model: M, reduce_range: bool = False) -> M:
    """Replace every nn.Linear in place by its fake-quantized twin (7-bit weights with
    `reduce_range`, as compression/quantize.py makes them); returns the model."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, FakeQuantLinear(child, weight_max=63 if reduce_range else 127))
        else:
            wrap_linears(child, reduce_range)
    return model


def export_qdq(model: Classifier, path: Path, sample: Encoded, opset: int) -> None:
    from compression.onnx_runtime import export_onnx

    for module in model.modules():
        if isinstance(module, FakeQuantLinear):
            module.freeze()
    export_onnx(model, path, ExportConfig(exporter="torchscript", opset=max(opset, 13)), sample)
    fold_weight_quantizers(path)


def fold_weight_quantizers(path: Path) -> None:
    """Turn QuantizeLinear(constant weight) into an INT8 initializer feeding its DequantizeLinear."""
    model = onnx.load(str(path))
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = node.attribute[0].t
    folded = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(i in constants for i in node.input):
            continue
        value, scale, zero = (numpy_helper.to_array(constants[i]) for i in node.input)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        shape = [1] * value.ndim
        if scale.ndim:
            shape[axis] = -1
        q = np.round(value / scale.reshape(shape)) + zero.reshape(shape)
        info = np.iinfo(zero.dtype)
        graph.initializer.append(
            numpy_helper.from_array(np.clip(q, info.min, info.max).astype(zero.dtype), node.output[0])
        )
        folded.append(node)
    for node in folded:
        graph.node.remove(node)
    onnx.save(model, str(path))
