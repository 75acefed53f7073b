"""The torch models kdcanary trains, and how a student is made from a teacher.

Every classifier maps ``(input_ids, attention_mask) -> logits`` so that export, serving and
validation treat teacher and students alike. A model travels as an ``architecture.json``
(the pydantic spec below) plus ``weights.safetensors``: the spec alone rebuilds the shapes,
including those left by structured pruning.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

from compression.errors import StudentSpecError, TeacherLoadError
from compression.recipe import BagOfEmbeddingsArchitecture, LayersArchitecture, TransformerArchitecture

ARCHITECTURE_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"


class LayerShape(BaseModel):
    heads: int
    ffn: int


class EncoderSpec(BaseModel):
    kind: Literal["encoder"] = "encoder"
    hf_config: dict[str, Any]
    num_labels: int
    layer_shapes: list[LayerShape] | None = None  # set once structured pruning changed shapes


class BagSpec(BaseModel):
    kind: Literal["bag_of_embeddings"] = "bag_of_embeddings"
    vocab_size: int
    dim: int
    hidden_size: int
    num_labels: int


ModelSpec = Annotated[EncoderSpec | BagSpec, Field(discriminator="kind")]


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class EncoderClassifier(nn.Module):
    """A Hugging Face encoder, mean pooling (as all-MiniLM-L6-v2 was trained), a linear head."""

    encoder: Any  # a transformers PreTrainedModel; its submodules are untyped

    def __init__(self, encoder: Any, num_labels: int) -> None:
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # mean pooling replaces it: fewer params, smaller ONNX
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(input_ids, attention_mask)[0]

    def forward_with_hidden(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and, if asked, the mean-pooled output of every layer (embeddings first)."""
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        logits = self.head(mean_pool(out.last_hidden_state, attention_mask))
        pooled = [mean_pool(h, attention_mask) for h in out.hidden_states] if hidden else []
        return logits, pooled

    @property
    def layers(self) -> list[Any]:
        """The encoder's layers (BERT-style: attention.self, intermediate.dense, output.dense)."""
        return list(self.encoder.encoder.layer)

    def spec(self) -> EncoderSpec:
        shapes = [LayerShape(heads=h, ffn=f) for h, f in layer_shapes(self)]
        config = self.encoder.config
        full = all(h == config.num_attention_heads and f == config.intermediate_size for h, f in layer_shapes(self))
        return EncoderSpec(
            # without the folder it was loaded from: a path on this machine would change the bundle id elsewhere
            hf_config={k: v for k, v in config.to_dict().items() if k != "_name_or_path"},
            num_labels=self.head.out_features,
            layer_shapes=None if full else shapes,
        )


class BagOfEmbeddingsClassifier(nn.Module):
    """Non-transformer baseline: masked mean of word embeddings, then a two-layer MLP."""

    def __init__(self, spec: BagSpec) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(spec.vocab_size, spec.dim)
        self.mlp = nn.Sequential(nn.Linear(spec.dim, spec.hidden_size), nn.GELU(), nn.Dropout(0.1))
        self.head = nn.Linear(spec.hidden_size, spec.num_labels)
        self._spec = spec

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(mean_pool(self.embeddings(input_ids), attention_mask)))

    def spec(self) -> BagSpec:
        return self._spec


Classifier = EncoderClassifier | BagOfEmbeddingsClassifier


@dataclass(frozen=True)
class AttentionParts:
    """Where a layer keeps its attention projections: BERT-style layers (BERT, MiniLM) as
    attention.self.{query,key,value} + attention.output.dense, MPNet's as attention.attn.{q,k,v,o}."""

    module: Any  # holds num_attention_heads, attention_head_size, all_head_size
    projections: tuple[str, str, str]  # query, key, value attribute names on `module`
    output_owner: Any
    output: str  # attribute name of the output projection on `output_owner`


def attention_parts(layer: Any) -> AttentionParts:
    if hasattr(layer.attention, "self"):
        return AttentionParts(layer.attention.self, ("query", "key", "value"), layer.attention.output, "dense")
    attention = layer.attention.attn
    return AttentionParts(attention, ("q", "k", "v"), attention, "o")


def layer_shapes(model: EncoderClassifier) -> list[tuple[int, int]]:
    """(attention heads, FFN channels) of every layer, read off the tensors themselves."""
    shapes = []
    for layer in model.layers:
        parts = attention_parts(layer)
        query = getattr(parts.module, parts.projections[0])
        shapes.append((query.out_features // parts.module.attention_head_size, layer.intermediate.dense.out_features))
    return shapes


def load_hf_teacher(path: Path, num_labels: int) -> EncoderClassifier:
    return _load_encoder(path, num_labels, "teacher.path", TeacherLoadError)


def load_pretrained(path: Path, num_labels: int, field: str) -> EncoderClassifier:
    """A student's own pretrained encoder (the DistilBERT/MiniLM pattern: start small, then distil)."""
    return _load_encoder(path, num_labels, field, StudentSpecError)


def _load_encoder(path: Path, num_labels: int, field: str, error: type[Exception]) -> EncoderClassifier:
    try:
        encoder = AutoModel.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise error(f"{field} {path} does not load as a Hugging Face model: {exc}") from exc
    return EncoderClassifier(encoder, num_labels)


def cut_layers(teacher: EncoderClassifier, arch: LayersArchitecture) -> EncoderClassifier:
    """Keep some of the teacher's layers, with its embeddings and fine-tuned head."""
    check_layer_cut(arch, len(teacher.layers), "architecture.layers")
    student = copy.deepcopy(teacher)
    student.encoder.encoder.layer = nn.ModuleList([student.layers[i] for i in arch.layers])
    student.encoder.config.num_hidden_layers = len(arch.layers)
    return student


def check_layer_cut(arch: LayersArchitecture, depth: int, field: str) -> None:
    """The layers to keep must be distinct layers of a `depth`-layer teacher."""
    bad = [i for i in arch.layers if not 0 <= i < depth]
    if bad or len(set(arch.layers)) != len(arch.layers):
        raise StudentSpecError(f"{field} {arch.layers}: need distinct indices in 0..{depth - 1}")


def teacher_depth(directory: Path) -> int:
    """Encoder layers of the Hugging Face teacher in `directory`, from its config alone."""
    try:
        return int(AutoConfig.from_pretrained(str(directory)).num_hidden_layers)
    except (OSError, ValueError, AttributeError) as exc:
        raise TeacherLoadError(f"teacher.path {directory}: no encoder config with num_hidden_layers ({exc})") from exc


def fresh_transformer(teacher: EncoderClassifier, arch: TransformerArchitecture) -> EncoderClassifier:
    """A narrower/shallower encoder; word embeddings start as the teacher's top principal directions."""
    base = teacher.encoder.config
    config = AutoConfig.for_model(
        base.model_type,
        **{k: v for k, v in base.to_dict().items() if k not in ("model_type", "architectures")},
    )
    config.hidden_size, config.num_hidden_layers = arch.hidden_size, arch.num_layers
    config.num_attention_heads, config.intermediate_size = arch.num_heads, arch.intermediate_size
    student = EncoderClassifier(AutoModel.from_config(config), teacher.head.out_features)
    with torch.no_grad():
        words = teacher.encoder.get_input_embeddings().weight
        student.encoder.get_input_embeddings().weight.copy_(_project(words, arch.hidden_size))
    return student


def bag_of_embeddings(teacher: EncoderClassifier, arch: BagOfEmbeddingsArchitecture) -> BagOfEmbeddingsClassifier:
    words: torch.Tensor = teacher.encoder.get_input_embeddings().weight
    spec = BagSpec(
        vocab_size=words.shape[0],
        dim=words.shape[1],
        hidden_size=arch.hidden_size,
        num_labels=teacher.head.out_features,
    )
    model = BagOfEmbeddingsClassifier(spec)
    with torch.no_grad():
        model.embeddings.weight.copy_(words)
    return model


def _project(weights: torch.Tensor, width: int) -> torch.Tensor:
    if width == weights.shape[1]:
        return weights.detach().clone()
    if width > weights.shape[1]:
        raise StudentSpecError(f"architecture.hidden_size {width} is wider than the teacher's {weights.shape[1]}")
    centred = weights.detach() - weights.detach().mean(0)
    _, _, v = torch.pca_lowrank(centred, q=width, center=False)
    return centred @ v[:, :width]


def save_model(model: Classifier, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / ARCHITECTURE_FILE).write_text(model.spec().model_dump_json(indent=1))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))


def load_model(directory: Path) -> Classifier:
    raw = json.loads((directory / ARCHITECTURE_FILE).read_text())
    spec: EncoderSpec | BagSpec = (
        EncoderSpec.model_validate(raw) if raw["kind"] == "encoder" else BagSpec.model_validate(raw)
    )
    model = build_model(spec)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()


def build_model(spec: EncoderSpec | BagSpec) -> Classifier:
    if isinstance(spec, BagSpec):
        return BagOfEmbeddingsClassifier(spec)
    config = AutoConfig.for_model(**{k: v for k, v in spec.hf_config.items() if k != "architectures"})
    model = EncoderClassifier(AutoModel.from_config(config), spec.num_labels)
    if spec.layer_shapes is not None:
        for layer, shape in zip(model.layers, spec.layer_shapes, strict=True):
            resize_layer(layer, list(range(shape.heads)), list(range(shape.ffn)))
    return model


def resize_layer(layer: Any, heads: list[int], channels: list[int]) -> None:
    """Keep only these attention heads and FFN channels of a layer (BERT-style or MPNet), in place.

    The tensors really shrink, so the exported ONNX file and its latency shrink with them.
    """
    parts = attention_parts(layer)
    attention = parts.module
    if isinstance(attention, MPNetSelfAttention) and len(heads) < attention.num_attention_heads:
        _keep_position_bias_of(attention, heads)
    size = attention.attention_head_size
    rows = torch.tensor([h * size + i for h in heads for i in range(size)])
    for name in parts.projections:
        setattr(attention, name, _slice_linear(getattr(attention, name), rows, dim=0))
    setattr(parts.output_owner, parts.output, _slice_linear(getattr(parts.output_owner, parts.output), rows, dim=1))
    attention.num_attention_heads, attention.all_head_size = len(heads), len(rows)
    kept = torch.tensor(channels)
    layer.intermediate.dense = _slice_linear(layer.intermediate.dense, kept, dim=0)
    layer.output.dense = _slice_linear(layer.output.dense, kept, dim=1)


class HeadPrunedMPNetAttention(MPNetSelfAttention):
    """MPNet self-attention with some heads removed. MPNet's encoder computes one relative
    position bias for all the model's heads and hands it to every layer; this layer adds only
    its kept heads' slices of it. `kept_heads` (indices into the encoder's heads) is a buffer,
    so it travels in the weights file and exports as a constant gather."""

    kept_heads: torch.Tensor

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
        output_attentions: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, ...]:
        if position_bias is not None:
            position_bias = position_bias.index_select(1, self.kept_heads)
        return super().forward(hidden_states, attention_mask, position_bias, output_attentions, **kwargs)


def _keep_position_bias_of(attention: MPNetSelfAttention, heads: list[int]) -> None:
    """Make an MPNet attention module a head-pruned one that remembers which encoder heads it keeps."""
    if isinstance(attention, HeadPrunedMPNetAttention):
        kept = attention.kept_heads
    else:
        kept = torch.arange(attention.num_attention_heads)
        attention.__class__ = HeadPrunedMPNetAttention
    attention.register_buffer("kept_heads", kept[torch.tensor(heads)].clone())


def _slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping `index` along the output (dim 0) or input (dim 1) features."""
    weight = linear.weight.detach().index_select(dim, index)
    sliced = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    with torch.no_grad():
        sliced.weight.copy_(weight)
        if linear.bias is not None:
            bias = linear.bias.detach()
            sliced.bias.copy_(bias.index_select(0, index) if dim == 0 else bias)
    return sliced


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
