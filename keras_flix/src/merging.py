"""`merge`: collapse a FLix model to a plain model for one feature combination."""

import keras
import numpy as np

from keras_flix.src import keras_private
from keras_flix.src.adapters import require_flix_layers
from keras_flix.src.config import base_layer_config
from keras_flix.src.layers.flix_adapter import FLixAdapter
from keras_flix.src.layers.quantized_base import requantized
from keras_flix.src.surgery import all_layers

_FLIX_CLASSES = {
    keras.saving.get_registered_name(cls): cls.base_layer_class
    for cls in FLixAdapter.__subclasses__()
}


def merge(model, features, as_lora=False):
    """A plain copy of the base model with one feature combination built in.

    Args:
        model: a model returned by `keras_flix.retrofit`.
        features: the combination, as a dict of feature values (missing or
            `None` = absent, e.g. an unseen language) or a sequence of ids.
        as_lora: return the combination as ordinary Keras LoRA instead: the
            base kernels stay as they are and each adapted layer gets
            `enable_lora` with the active features' adapters concatenated
            along the rank axis (exact; see below).

    Returns:
        A new model of the base model's own architecture (a KerasHub
        backbone or task, or the original Keras model), independent of
        keras-flix: it saves and loads without keras-flix installed. Its
        kernels are `W0 + sum_t s_t * reshape(A_t[f_t] @ B_t[f_t])`, so it
        computes what the FLix model computes for that combination, at the
        base model's cost. A KerasHub task shares the FLix model's
        preprocessor.

        With `as_lora=True`, a `Dense` layer gets a LoRA of rank
        `sum_t r_t` over the active features. Keras' `EinsumDense` LoRA
        factors a kernel as [all axes but the last, last axis], while FLix
        factors it as [contracted axes, output axes]; where the two differ
        (e.g. the query projection `abc,cde->abde`, whose output axes are
        heads and head size) the same update needs rank
        `n_heads * sum_t r_t`, and that is the rank used.

        A model retrofitted on a quantized base (or quantized afterwards)
        merges into the base architecture quantized as its base is. Its
        int8 / int4 kernels are the merged kernels quantized again by Keras
        (`quantize(dequantize(W0) + update)`, with each layer's own mode and
        quantization config; with every feature absent the quantized
        kernels are kept as they are), which rounds the update to the
        quantization grid: the merged model's outputs differ from the FLix
        model's by the rounding of the update to that grid, not by float
        rounding (`tests/test_quantized.py` measures it). A float8 kernel is kept in
        float, `W0 + update`, but the float8 call rounds it to float8 in
        every call, the update with it (the FLix model adds its update in
        float). `layer.merged_kernel(features)` is a FLix layer's merged
        kernel before re-quantization, in float32. With
        `as_lora=True` the quantized base kernels stay as they are and carry
        Keras LoRA, which Keras adds inside its int8 and int4 calls: exact,
        as for a float base (Keras' float8 call refuses LoRA, so a float8
        model cannot merge so).

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_flix as kf
    >>> inputs = keras.Input((8,))
    >>> base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"])
    >>> merged = kf.merge(model, {"language": "sw"})
    >>> type(merged.get_layer("proj")).__name__
    'Dense'
    """
    layers = require_flix_layers(model)
    base_model = getattr(model, "base_model", model)
    ids = layers[0].schema.encode_checked(features)
    merged = keras.saving.deserialize_keras_object(
        _without_flix(keras.saving.serialize_keras_object(base_model))
    )
    keras_private.resolve_dtype_policy_maps(merged)
    if getattr(base_model, "preprocessor", None) is not None:
        merged.preprocessor = base_model.preprocessor
    values = {v.path: v for v in base_model.weights}
    merged_layers = {layer.path: layer for layer in all_layers(merged)}
    # With every feature absent each base layer stays exactly as it is (a
    # quantized kernel is not re-quantized).
    active = any(value >= 0 for value in ids)
    for layer in layers if active else ():
        if as_lora:
            _enable_lora(merged_layers[layer.path], layer, ids)
        elif layer.quantization_mode in ("int8", "int4"):
            values.update(requantized(layer, layer.merged_kernel(ids)))
        else:
            values[layer.base_kernel.path] = layer.merged_kernel(ids)
    for variable in merged.weights:
        if as_lora and variable.name.startswith("lora_kernel_"):
            continue
        if variable.path not in values:
            raise ValueError(
                f"Cannot merge: variable '{variable.path}' of the rebuilt base "
                "model has no counterpart in the FLix model."
            )
        variable.assign(keras.ops.convert_to_numpy(values[variable.path]))
    return merged


def _without_flix(config):
    """The serialized model with every FLix layer turned into its base layer."""
    if isinstance(config, list):
        return [_without_flix(item) for item in config]
    if not isinstance(config, dict):
        return config
    base_class = _FLIX_CLASSES.get(config.get("registered_name"))
    if base_class is None:
        return {key: _without_flix(value) for key, value in config.items()}
    base = keras.saving.serialize_keras_object(
        base_class.from_config(base_layer_config(config["config"]))
    )
    # Keep what the enclosing config added (a Functional's "name" and
    # "inbound_nodes", the "build_config").
    return {**config, **{key: base[key] for key in ("module", "class_name", "config", "registered_name")}}


def _enable_lora(target, layer, ids):
    """Gives `target` the Keras LoRA that equals `layer`'s update for `ids`."""
    if layer.quantization_mode == "float8":
        raise NotImplementedError(
            f"Cannot merge '{layer.path}' as Keras LoRA: its base is float8-"
            "quantized, and Keras' float8 call does not run LoRA. Merge "
            "with as_lora=False instead."
        )
    a, b = _keras_lora_factors(*layer.combination_factors(ids), layer.base_kernel_shape, *layer.kernel_axes)
    target.enable_lora(a.shape[-1])
    target.lora_kernel_a.assign(a)
    target.lora_kernel_b.assign(b)


def _keras_lora_factors(a, b, kernel_shape, contracted_axes, output_axes):
    """Factors `reshape(a @ b)` as Keras LoRA's `[kernel[:-1], rank] @ [rank, last]`.

    Args:
        a: `[d_in, r]`, the concatenated `A`s.
        b: `[r, d_out]`, the concatenated, scaled `B`s.
        kernel_shape: the base kernel's shape.
        contracted_axes, output_axes: the kernel axes flattened to d_in and
            d_out, in kernel order.

    Returns:
        `(lora_a, lora_b)` of shapes `kernel_shape[:-1] + (rank,)` and
        `(rank, kernel_shape[-1])` whose product, reshaped, is exactly the
        update. The rank is `r` times the number of output positions outside
        the last axis.
    """
    last = len(kernel_shape) - 1
    if last not in output_axes:
        raise NotImplementedError(
            f"Cannot express the update of a kernel of shape {kernel_shape} "
            "as Keras LoRA: its last axis is contracted with the inputs."
        )
    rank = a.shape[1]
    other_outputs = [axis for axis in output_axes if axis != last]
    n_other = int(np.prod([kernel_shape[axis] for axis in other_outputs]))
    contracted_shape = [kernel_shape[axis] for axis in contracted_axes]
    other_shape = [kernel_shape[axis] for axis in other_outputs]
    # b as [r, other outputs..., last] (output axes are in kernel order).
    b = b.reshape([rank] + other_shape + [kernel_shape[last]])
    b = b.reshape(rank, n_other, kernel_shape[last])
    # One block of rank r per position of the other output axes:
    # lora_a[c, o, (o', k)] = a[c, k] * (o == o'), lora_b[(o', k), e] = b[k, o', e].
    lora_a = np.einsum("ck,op->copk", a, np.eye(n_other, dtype=a.dtype))
    lora_a = lora_a.reshape(contracted_shape + other_shape + [n_other * rank])
    lora_b = np.transpose(b, (1, 0, 2)).reshape(n_other * rank, kernel_shape[last])
    # Move the kernel axes (all but the last) from [contracted, other] order
    # into kernel order.
    layout = list(contracted_axes) + other_outputs
    lora_a = np.transpose(
        lora_a, [layout.index(axis) for axis in range(last)] + [last]
    )
    return lora_a, lora_b
