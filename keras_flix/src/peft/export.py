"""`export_peft` / `export_peft_features`: FLix adapters as Hugging Face PEFT LoRA."""

import collections
import json
import os
import re

from keras_flix.src.adapters import require_flix_layers
from keras_flix.src.hub import hub
from keras_flix.src.inputs import ABSENT
from keras_flix.src.peft.factors import hf_targets
from keras_flix.src.peft.factors import peft_weights
from keras_flix.src.peft.files import lora_config
from keras_flix.src.peft.files import new_directory
from keras_flix.src.peft.files import write_adapter
from keras_flix.src.peft.names import hf_names_of

MANIFEST_FILE = "flix_manifest.json"
MANIFEST_FORMAT = "keras-flix-peft-features"
MANIFEST_VERSION = 1
_FOLDER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def export_peft(model, combination, directory, base_model_name_or_path=None):
    """Writes one feature combination as an ordinary PEFT LoRA adapter.

    The folder holds `adapter_config.json` and `adapter_model.safetensors`,
    as PEFT's `save_pretrained` writes them, for the Hugging Face model the
    KerasHub model was converted from: `PeftModel.from_pretrained` loads it,
    and so do multi-LoRA servers (vLLM, LoRAX, TGI). Each adapted module's
    LoRA is the active features' `A`s and `B`s concatenated along the rank
    axis (rank `sum_t r_t`, exact), with each `s_t` folded into `B` and
    `lora_alpha = r` (PEFT's scaling is then 1).

    Module names are the Hugging Face model's own: those of `AutoModel`
    for a backbone (`encoder.layer.0.attention.self.query` for BERT), those
    of the task model (`AutoModelForCausalLM`: `model.layers.0.self_attn.
    q_proj`, `transformer.h.0.attn.c_attn`) for a KerasHub task. GPT-2 fuses
    query, key and value into `c_attn`: its LoRA holds each adapted
    projection in its own rank block and output slice (zeros for a
    projection FLix does not adapt), so it is exact at rank (adapted
    projections) x `sum_t r_t`; the other modules are padded with zero
    ranks to that one rank.

    Only the FLix adapters are exported; layers trained with `train_also`
    (a task head) are not part of the LoRA.

    Args:
        model: a model returned by `keras_flix.retrofit` on a KerasHub BERT,
            GPT-2, Gemma, Llama, Mistral or Qwen 2 backbone, or a task on
            one.
        combination: a dict of feature values (a feature left out or `None`
            is absent). An unknown value is an error whatever the schema's
            `unknown` setting, so that a typo never exports the wrong
            adapter.
        directory: the folder to write; it must not exist or be empty. It
            is written in full or not at all.
        base_model_name_or_path: recorded in `adapter_config.json`: the Hub
            id or folder of the Hugging Face checkpoint (servers may check
            it against the model they serve).

    Raises:
        ValueError: for an unknown feature type or value, a combination with
            every feature absent, a model family or a target layer without
            Hugging Face names, or an existing non-empty `directory`.

    Example:

    >>> import os, tempfile
    >>> import keras_hub
    >>> import keras_flix as kf
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> model = kf.retrofit(backbone, schema, rank={"language": 4, "task": 2})
    >>> folder = os.path.join(tempfile.mkdtemp(), "sw_qa")
    >>> kf.export_peft(model, {"language": "sw", "task": "qa"}, folder)
    >>> sorted(os.listdir(folder))
    ['adapter_config.json', 'adapter_model.safetensors']
    """
    layers = require_flix_layers(model)
    names, prefix = hf_names_of(model)
    targets = hf_targets(layers, names, prefix)
    ids = known_combination(layers[0].schema, combination)
    if all(value == ABSENT for value in ids):
        raise ValueError(
            f"Every feature of the combination {combination!r} is absent: "
            "its update is zero and there is no adapter to export (serve "
            "the base model)."
        )
    weights, rank = peft_weights(layers, targets, ids)
    config = lora_config(
        rank, weights, names.fan_in_fan_out, base_model_name_or_path, _task_type(model)
    )
    with new_directory(directory) as folder:
        write_adapter(folder, config, weights)


def export_peft_features(model, directory, base_model_name_or_path=None):
    """Writes every feature value as its own PEFT LoRA adapter.

    `directory` gets one adapter folder per feature value, named
    `<feature type>_<value>` (`language_sw`, `task_qa`), each written as
    `export_peft` writes the combination of that value alone (rank `r_t`,
    its scale folded in), and `flix_manifest.json`: the schema, each type's
    rank, alpha and scale, each value's folder, and how to combine them.

    A combination is the sum of its active features' adapters with weight
    1.0 each: PEFT's `add_weighted_adapter(["language_sw", "task_qa"],
    [1.0, 1.0], combination_type="cat")` builds exactly the adapter
    `export_peft` writes for `{"language": "sw", "task": "qa"}`, and a
    server that applies several LoRAs to one request and sums their outputs
    computes the FLix model's output for it.

    Args:
        model: as for `export_peft`.
        directory: the folder to write; it must not exist or be empty.
        base_model_name_or_path: as for `export_peft`.

    Returns:
        The manifest, as written.

    Raises:
        ValueError: as `export_peft`, and if two values would get the same
            folder name or a value is not usable as one (letters, digits,
            `.`, `_`, `+`, `-`).

    Example:

    >>> import os, tempfile
    >>> import keras_hub
    >>> import keras_flix as kf
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> model = kf.retrofit(backbone, schema, rank=2)
    >>> manifest = kf.export_peft_features(model, tempfile.mkdtemp())
    >>> manifest["feature_types"]["language"]["adapters"]
    {'en': 'language_en', 'sw': 'language_sw'}
    """
    layers = require_flix_layers(model)
    names, prefix = hf_names_of(model)
    targets = hf_targets(layers, names, prefix)
    schema = layers[0].schema
    folders = _feature_folders(schema)
    layer = layers[0]
    manifest = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "base_model_name_or_path": base_model_name_or_path,
        "schema": schema.get_config(),
        "feature_types": {
            feature_type: {
                "rank": layer.rank[feature_type],
                "alpha": layer.alpha[feature_type],
                "scale": layer.scales[feature_type],
                "adapters": {
                    value: folders[feature_type, value]
                    for value in schema.values(feature_type)
                },
            }
            for feature_type in schema.feature_types
        },
        "combine": (
            "An example's adapter is the sum of the adapters of its active "
            "features (one value per feature type; an absent feature adds "
            "nothing), each with weight 1.0: the scales are folded into "
            "lora_B. In PEFT: add_weighted_adapter([...], [1.0, ...], "
            "combination_type='cat')."
        ),
    }
    task_type = _task_type(model)
    with new_directory(directory) as root:
        for column, feature_type in enumerate(schema.feature_types):
            for index, value in enumerate(schema.values(feature_type)):
                ids = [ABSENT] * len(schema.feature_types)
                ids[column] = index
                weights, rank = peft_weights(layers, targets, ids)
                folder = os.path.join(root, folders[feature_type, value])
                os.mkdir(folder)
                config = lora_config(
                    rank, weights, names.fan_in_fan_out, base_model_name_or_path, task_type
                )
                write_adapter(folder, config, weights)
        with open(os.path.join(root, MANIFEST_FILE), "w") as file:
            json.dump(manifest, file, indent=2)
    return manifest


def known_combination(schema, combination):
    """The ids of a combination of known feature values.

    Args:
        schema: the `FeatureSchema`.
        combination: a dict from feature type to value (or `None`).

    Returns:
        A tuple of ids, one per feature type (`-1` = absent).

    Raises:
        ValueError: for an unknown feature type or value, whatever the
            schema's `unknown` setting.
    """
    if not isinstance(combination, dict):
        raise TypeError(
            "The combination must be a dict from feature type to value, e.g. "
            f"{{'language': 'sw'}}. Received: {combination!r}"
        )
    for feature_type, value in combination.items():
        if feature_type in schema.feature_types and value is not None and (
            value not in schema.values(feature_type)
        ):
            raise ValueError(
                f"Unknown value {value!r} for feature type '{feature_type}'. "
                f"Known values: {list(schema.values(feature_type))}. Leave "
                "the feature out (or set it to None) to export it absent."
            )
    return schema.encode_checked(combination)


def _feature_folders(schema):
    """Each `(feature type, value)`'s folder name, checked to be usable and unique."""
    folders = {}
    for feature_type in schema.feature_types:
        for value in schema.values(feature_type):
            name = f"{feature_type}_{value}"
            if not _FOLDER_NAME.fullmatch(name):
                raise ValueError(
                    f"Feature value {value!r} of '{feature_type}' makes the "
                    f"folder name {name!r}; folder names may hold letters, "
                    "digits, '.', '_', '+' and '-' only."
                )
            folders[feature_type, value] = name
    clashes = sorted(
        name for name, count in collections.Counter(folders.values()).items() if count > 1
    )
    if clashes:
        raise ValueError(f"Several feature values get the same folder names {clashes}.")
    return folders


def _task_type(model):
    """PEFT's `task_type`: `"CAUSAL_LM"` for a causal LM, else none."""
    base = getattr(model, "base_model", model)
    return "CAUSAL_LM" if isinstance(base, hub.models.CausalLM) else None
