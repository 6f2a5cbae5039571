"""The Hugging Face module of each adaptable KerasHub layer, per model family.

KerasHub converts Hugging Face checkpoints of these families
(`keras_hub/src/utils/transformers/convert_*.py`). Every converter stores a
Hugging Face `Linear` weight `[out, in]` (GPT-2's `Conv1D`: `[in, out]`) as a
Keras kernel whose contracted axes, flattened in kernel order, are `in` and
whose output axes, flattened in kernel order, are `out` (query kernels
`(hidden, heads, head_dim)` are `out = heads * head_dim` rows in head-major
order). Those are exactly the `d_in` / `d_out` axes of a FLix layer's
adapters, so a FLix `A` `[d_in, r]` is a PEFT `lora_A.weight` transposed and
a FLix `B` `[r, d_out]` a `lora_B.weight` transposed, without reordering.

GPT-2 fuses query, key and value into one `c_attn` module whose outputs are
the three projections side by side; each of the three KerasHub layers is one
slice of it (`HFTarget.part`).
"""

import dataclasses
import re

from keras_flix.src.hub import Backbone
from keras_flix.src.hub import Task
from keras_flix.src.hub import hub


@dataclasses.dataclass(frozen=True)
class HFTarget:
    """Where a KerasHub layer sits in the Hugging Face model.

    Attributes:
        module: the Hugging Face module's name, e.g.
            `"encoder.layer.0.attention.self.query"`.
        part: the layer's slice of the module's outputs (0 unless fused).
        num_parts: how many equal output slices the module has (1 unless
            fused, 3 for GPT-2's `c_attn`).
    """

    module: str
    part: int = 0
    num_parts: int = 1


class HFModuleNames:
    """How one model family's KerasHub layers are named in Hugging Face.

    Args:
        family: the Hugging Face `model_type`, e.g. `"bert"`.
        backbone_class: the name of the KerasHub backbone class in
            `keras_hub.models` (subclasses match too).
        task_prefix: what Hugging Face's task models (`*ForCausalLM`,
            `*ForSequenceClassification`) put before the base model's module
            names, e.g. `"bert."`.
        modules: a dict from a KerasHub layer path (relative to the backbone;
            `{layer}` stands for the block index) to the Hugging Face module
            name (with the same `{layer}`), or to `(module, part, num_parts)`
            for a slice of a fused module.
        fan_in_fan_out: whether the Hugging Face modules store their weights
            `[in, out]` (GPT-2's `Conv1D`), which PEFT must be told.
    """

    def __init__(self, family, backbone_class, task_prefix, modules, fan_in_fan_out=False):
        self.family = family
        self.backbone_class = backbone_class
        self.task_prefix = task_prefix
        self.fan_in_fan_out = fan_in_fan_out
        self._patterns = []
        for keras_path, target in modules.items():
            module, part, num_parts = (target, 0, 1) if isinstance(target, str) else target
            regex = re.escape(keras_path).replace(re.escape("{layer}"), r"(?P<layer>\d+)")
            self._patterns.append(
                (re.compile(rf"(?:^|.*/){regex}"), module, part, num_parts)
            )

    def target(self, layer_path):
        """The `HFTarget` of the layer at `layer_path`, or `None` if it has none."""
        for pattern, module, part, num_parts in self._patterns:
            match = pattern.fullmatch(layer_path)
            if match:
                return HFTarget(module.format(**match.groupdict()), part, num_parts)
        return None

    def modules(self):
        """The Hugging Face module names this family maps (with `{layer}`)."""
        return sorted({module for _, module, _, _ in self._patterns})

    def __repr__(self):
        return f"{self.backbone_class} ({self.family})"


def _llama_like(family, backbone_class):
    """Llama, Mistral and Qwen 2: the same KerasHub layers and Hugging Face names."""
    return HFModuleNames(
        family,
        backbone_class,
        "model.",
        {
            "transformer_layer_{layer}/self_attention/query": "layers.{layer}.self_attn.q_proj",
            "transformer_layer_{layer}/self_attention/key": "layers.{layer}.self_attn.k_proj",
            "transformer_layer_{layer}/self_attention/value": "layers.{layer}.self_attn.v_proj",
            "transformer_layer_{layer}/self_attention/attention_output": "layers.{layer}.self_attn.o_proj",
            "transformer_layer_{layer}/feedforward_gate_dense": "layers.{layer}.mlp.gate_proj",
            "transformer_layer_{layer}/feedforward_intermediate_dense": "layers.{layer}.mlp.up_proj",
            "transformer_layer_{layer}/feedforward_output_dense": "layers.{layer}.mlp.down_proj",
        },
    )


FAMILIES = (
    HFModuleNames(
        "bert",
        "BertBackbone",
        "bert.",
        {
            "transformer_layer_{layer}/self_attention_layer/query": "encoder.layer.{layer}.attention.self.query",
            "transformer_layer_{layer}/self_attention_layer/key": "encoder.layer.{layer}.attention.self.key",
            "transformer_layer_{layer}/self_attention_layer/value": "encoder.layer.{layer}.attention.self.value",
            "transformer_layer_{layer}/self_attention_layer/attention_output": "encoder.layer.{layer}.attention.output.dense",
            "transformer_layer_{layer}/feedforward_intermediate_dense": "encoder.layer.{layer}.intermediate.dense",
            "transformer_layer_{layer}/feedforward_output_dense": "encoder.layer.{layer}.output.dense",
            "pooled_dense": "pooler.dense",
        },
    ),
    HFModuleNames(
        "gpt2",
        "GPT2Backbone",
        "transformer.",
        {
            "transformer_layer_{layer}/self_attention/query": ("h.{layer}.attn.c_attn", 0, 3),
            "transformer_layer_{layer}/self_attention/key": ("h.{layer}.attn.c_attn", 1, 3),
            "transformer_layer_{layer}/self_attention/value": ("h.{layer}.attn.c_attn", 2, 3),
            "transformer_layer_{layer}/self_attention/attention_output": "h.{layer}.attn.c_proj",
            "transformer_layer_{layer}/feedforward_intermediate_dense": "h.{layer}.mlp.c_fc",
            "transformer_layer_{layer}/feedforward_output_dense": "h.{layer}.mlp.c_proj",
        },
        fan_in_fan_out=True,
    ),
    HFModuleNames(
        "gemma",
        "GemmaBackbone",
        "model.",
        {
            "decoder_block_{layer}/attention/query": "layers.{layer}.self_attn.q_proj",
            "decoder_block_{layer}/attention/key": "layers.{layer}.self_attn.k_proj",
            "decoder_block_{layer}/attention/value": "layers.{layer}.self_attn.v_proj",
            "decoder_block_{layer}/attention/attention_output": "layers.{layer}.self_attn.o_proj",
            "decoder_block_{layer}/ffw_gating": "layers.{layer}.mlp.gate_proj",
            "decoder_block_{layer}/ffw_gating_2": "layers.{layer}.mlp.up_proj",
            "decoder_block_{layer}/ffw_linear": "layers.{layer}.mlp.down_proj",
        },
    ),
    _llama_like("llama", "LlamaBackbone"),
    _llama_like("mistral", "MistralBackbone"),
    _llama_like("qwen2", "QwenBackbone"),
)
"""The families with Hugging Face names, one `HFModuleNames` each."""


def hf_names_of(model):
    """The Hugging Face names of a retrofitted KerasHub model.

    Args:
        model: a model returned by `keras_flix.retrofit` (or its base model):
            a KerasHub backbone, or a task built on one.

    Returns:
        `(names, prefix)`: the family's `HFModuleNames`, and what goes before
        every module name: `""` for a backbone (the names of Hugging Face's
        `AutoModel`), the family's `task_prefix` for a task (the names of
        its `AutoModelForCausalLM`, `AutoModelForSequenceClassification`,
        ...).

    Raises:
        ValueError: if the model is not built on a backbone of a family with
            Hugging Face names; the message lists the supported ones.

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=10, num_layers=1, num_heads=1, hidden_dim=4,
    ...     intermediate_dim=8, max_sequence_length=4)
    >>> names, prefix = hf_names_of(backbone)
    >>> names.target("transformer_layer_0/self_attention_layer/query").module
    'encoder.layer.0.attention.self.query'
    """
    base = getattr(model, "base_model", model)
    backbone = base.backbone if isinstance(base, Task) else base
    for names in FAMILIES:
        backbone_class = getattr(hub.models, names.backbone_class, None)
        if backbone_class is not None and isinstance(backbone, backbone_class):
            return names, names.task_prefix if isinstance(base, Task) else ""
    described = type(backbone).__name__ if isinstance(backbone, Backbone) else (
        f"a {type(backbone).__name__} (not a KerasHub backbone or task)"
    )
    raise ValueError(
        f"No Hugging Face module names are known for {described}. "
        f"Supported backbones: {', '.join(map(repr, FAMILIES))}."
    )
