"""`import_peft`: start one feature value's adapters from a PEFT LoRA adapter."""

import math
import re

import keras
import numpy as np

from keras_flix.src.adapters import require_flix_layers
from keras_flix.src.peft.factors import flix_factors
from keras_flix.src.peft.factors import hf_targets
from keras_flix.src.peft.factors import untargeted_rows
from keras_flix.src.peft.files import read_adapter
from keras_flix.src.peft.names import hf_names_of


def import_peft(model, directory, feature):
    """Initialises one feature value's adapters from a PEFT LoRA adapter.

    E.g. to start a language from a community LoRA of the same base model.
    The adapter's modules must be FLix target layers of the model (by their
    Hugging Face names, with or without the task model's prefix such as
    `model.`), and its rank at most the feature type's rank. Afterwards the
    value's update equals the adapter's (`scaling * lora_B @ lora_A`, scale
    conversion included) on every module it adapts, and is zero on the FLix
    target layers it does not adapt. Of the value's rank `r_t`, the first
    `r` columns of `A` and rows of `B` hold the adapter; the rest of `B` is
    zero, so the update is exactly the adapter's, and the rest of `A` keeps
    its values, so those ranks can still be trained (with both zero they
    would get no gradient). Everything is checked before anything is
    assigned: on any error the model is unchanged.

    Args:
        model: a model returned by `keras_flix.retrofit` on a backbone or
            task with Hugging Face names (see `keras_flix.export_peft`).
        directory: a PEFT LoRA folder (`adapter_config.json` and
            `adapter_model.safetensors`).
        feature: `(feature type, value)`, e.g. `("language", "sw")`.

    Raises:
        ValueError: for an unknown feature type or value; an adapter that
            is not a plain LoRA (DoRA, bias or `modules_to_save` training);
            a module that is not a FLix target layer; a rank above the
            feature type's; weights whose shapes do not fit the layer; or,
            for GPT-2's fused `c_attn`, an update of a projection FLix does
            not adapt.

    Example:

    >>> import os, tempfile
    >>> import numpy as np
    >>> import keras
    >>> import keras_hub
    >>> import keras_flix as kf
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=10, num_layers=1, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
    >>> model = kf.retrofit(backbone, schema, rank=2)
    >>> layer = model.flix_layers[0]
    >>> _ = layer.adapter_b["language"].assign(np.ones(layer.adapter_b["language"].shape))
    >>> folder = os.path.join(tempfile.mkdtemp(), "sw")
    >>> kf.export_peft(model, {"language": "sw"}, folder)
    >>> kf.import_peft(model, folder, feature=("language", "en"))
    >>> en = keras.ops.convert_to_numpy(layer.merged_kernel({"language": "en"}))
    >>> sw = keras.ops.convert_to_numpy(layer.merged_kernel({"language": "sw"}))
    >>> bool(np.allclose(en, sw, atol=1e-6))
    True
    """
    layers = require_flix_layers(model)
    feature_type, index = _checked_feature(layers[0].schema, feature)
    names, _ = hf_names_of(model)
    targets = hf_targets(layers, names, "")
    config, weights = read_adapter(directory)
    _check_plain_lora(config, directory)
    by_module = {}
    for layer in layers:
        by_module.setdefault(targets[layer.path].module, []).append(layer)
    modules = {module.removeprefix(names.task_prefix): module for module in weights}
    unknown = sorted(name for base, name in modules.items() if base not in by_module)
    if unknown:
        raise ValueError(
            f"Modules {unknown} of the adapter in '{directory}' are not FLix "
            f"target layers of '{model.name}'; its targets are "
            f"{sorted(by_module)}."
        )
    updates = {layer.path: (None, None) for layer in layers}  # Not adapted: B = 0.
    for base_name, name in modules.items():
        lora_a, lora_b = weights[name]
        scaling = _scaling(config, name, lora_a.shape[0])
        for layer in by_module[base_name]:
            d_in = layer.adapter_a[feature_type].shape[1]
            d_out = layer.adapter_b[feature_type].shape[2]
            a, b = flix_factors(lora_a, lora_b, targets[layer.path], d_in, d_out)
            if a.shape[1] > layer.rank[feature_type]:
                raise ValueError(
                    f"The adapter in '{directory}' has rank {a.shape[1]} on "
                    f"module '{name}'; feature type '{feature_type}' has rank "
                    f"{layer.rank[feature_type]}. Retrofit with a rank of at "
                    "least the adapter's."
                )
            updates[layer.path] = (a, b * (scaling / layer.scales[feature_type]))
        rest = untargeted_rows(
            lora_b, [targets[layer.path] for layer in by_module[base_name]], d_out
        )
        if np.any(rest):
            raise ValueError(
                f"The adapter in '{directory}' updates outputs of module "
                f"'{name}' that no FLix target layer of '{model.name}' "
                "holds (a projection of the fused module that was not "
                "retrofitted); retrofit it too."
            )
    for layer in layers:
        a, b = updates[layer.path]
        _set_leading_ranks(layer.adapter_b[feature_type], index, b, rank_axis=0, fill=0.0)
        if a is not None:
            _set_leading_ranks(layer.adapter_a[feature_type], index, a.T, rank_axis=1, fill=None)


def _checked_feature(schema, feature):
    """`(feature type, id)` of a `(feature type, value)` pair."""
    if not (isinstance(feature, (tuple, list)) and len(feature) == 2):
        raise ValueError(
            "`feature` must be a (feature type, value) pair, e.g. "
            f"('language', 'sw'). Received: {feature!r}"
        )
    feature_type, value = feature
    values = schema.values(feature_type)
    if value not in values:
        raise ValueError(
            f"Unknown value {value!r} for feature type '{feature_type}'. "
            f"Known values: {list(values)}."
        )
    return feature_type, values.index(value)


def _check_plain_lora(config, directory):
    """Raises unless the adapter's update is only `scaling * lora_B @ lora_A`."""
    unsupported = {
        "use_dora": bool(config.get("use_dora")),
        "bias": config.get("bias", "none") != "none",
        "lora_bias": bool(config.get("lora_bias")),
        "modules_to_save": bool(config.get("modules_to_save")),
    }
    found = {key: config.get(key) for key, bad in unsupported.items() if bad}
    if found:
        raise ValueError(
            f"The adapter in '{directory}' is not a plain LoRA ({found}); a "
            "FLix adapter holds only the low-rank update."
        )


def _scaling(config, module, rank):
    """PEFT's scaling of `module`: `alpha / r`, or `alpha / sqrt(r)` (rsLoRA)."""
    alpha = config.get("lora_alpha", 8)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        # PEFT's own rule (peft.utils.other.get_pattern_key).
        if re.match(rf"(.*\.)?({pattern})$", module):
            alpha = value
            break
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def _set_leading_ranks(table, index, value, rank_axis, fill):
    """Sets the leading ranks of row `index` of an adapter table.

    Args:
        table: an `A` (`[n, d_in, r]`, `rank_axis=1`) or `B` (`[n, r, d_out]`,
            `rank_axis=0`) table.
        index: the value's row.
        value: `[k, d]` with `k <= r`: the first `k` ranks, or `None` (none).
        fill: what the other ranks become; `None` keeps them.
    """
    rows = np.array(keras.ops.convert_to_numpy(table))
    ranks = np.moveaxis(rows[index], rank_axis, 0)  # A view into `rows`.
    count = 0 if value is None else value.shape[0]
    if value is not None:
        ranks[:count] = value
    if fill is not None:
        ranks[count:] = fill
    table.assign(rows)
