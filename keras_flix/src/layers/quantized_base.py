"""The quantized base of a FLix layer: the modes it takes and its kernel in float.

A FLix layer adapts a frozen `Dense` / `EinsumDense` kernel that Keras may
hold quantized (`layer.quantize(mode)`, `model.quantize(mode)`). The FLix
layer keeps Keras' own quantized variables and call paths for the base and
adds its float32 adapters' update to whichever runs (see
`FLixAdapter.call`). The modes taken are Keras' modes that quantize a
kernel by itself (int8, int4) or in every call (float8). Keras adds its own
LoRA term inside the int8 and int4 calls; its float8 call refuses LoRA, and
FLix's update is added outside it. GPTQ and AWQ calibrate each kernel on the
inputs its layer sees; Keras refuses LoRA with GPTQ, its AWQ call leaves
LoRA out, and FLix refuses both.
"""

from keras import ops
from keras import quantizers

from keras_flix.src import keras_private
from keras_flix.src.config import base_layer_config

SUPPORTED_MODES = ("int8", "int4", "float8")
"""The Keras quantization modes a FLix layer's base may have (or `None`)."""


def check_quantization_mode(mode, owner):
    """Returns `mode` if a FLix layer's base may be quantized so, else raises.

    Args:
        mode: a Keras quantization mode, or `None` (a float base).
        owner: what is quantized, for the message (e.g. `"Layer 'query'"`).

    Returns:
        `mode`.

    Raises:
        NotImplementedError: for the modes Keras runs no LoRA with
            (`"gptq"`, `"awq"`) or any other mode, naming the supported ones.

    Example:

    >>> check_quantization_mode("int4", "Layer 'query'")
    'int4'
    >>> check_quantization_mode("gptq", "Layer 'query'")
    Traceback (most recent call last):
    ...
    NotImplementedError: Layer 'query': FLix adapters are not supported with 'gptq' quantization (Keras runs no LoRA with it either). Supported quantization modes: ('int8', 'int4', 'float8').
    """
    if mode is not None and mode not in SUPPORTED_MODES:
        raise NotImplementedError(
            f"{owner}: FLix adapters are not supported with {mode!r} "
            "quantization (Keras runs no LoRA with it either). Supported "
            f"quantization modes: {SUPPORTED_MODES}."
        )
    return mode


def base_variables(layer):
    """The variables of a `Dense` / `EinsumDense` that Keras saves, in order.

    For a float layer its kernel and bias; for a quantized one also the
    scales (and the int4 zero points and group indices, the float8 scaling
    statistics) of its mode. The order is the one of Keras' own
    `save_own_variables`, so the keys `"0"`, `"1"`, ... of a FLix layer's
    saved base variables are those of its base layer.

    Args:
        layer: a built `Dense` / `EinsumDense`, FLix or not, quantized in a
            supported mode or not.

    Returns:
        A list of variables.
    """
    variables = []
    for name in keras_private.saved_variable_names(layer):
        variable = (
            keras_private.kernel(layer)
            if name == "kernel"
            else getattr(layer, name, None)
        )
        if variable is not None:
            variables.append(variable)
    return variables


def dequantized_kernel(layer, kernel_shape):
    """The base kernel of `layer` in float32, as its quantized call sees it.

    int8 and int4 kernels are divided by their scales (int4: unpacked, and
    shifted by their zero points when quantized in groups), exactly as
    Keras' quantized calls dequantize them for their gradients. A float or
    float8 layer keeps its kernel in float (float8 quantizes it per call).

    Args:
        layer: a built `Dense` / `EinsumDense`, quantized in a supported mode
            or not.
        kernel_shape: the shape of the float kernel (int4 stores the kernel
            packed, as a matrix).

    Returns:
        A float tensor of shape `kernel_shape`.
    """
    mode = layer.quantization_mode
    kernel = ops.convert_to_tensor(keras_private.kernel(layer))
    if mode in (None, "float8"):
        return kernel
    if mode == "int8":
        return ops.divide(
            ops.cast(kernel, "float32"), keras_private.int8_kernel_scale(layer)
        )
    # int4: a [rows, columns] matrix, two 4-bit values per byte along columns.
    scale = ops.convert_to_tensor(layer.kernel_scale)
    values = ops.cast(
        quantizers.unpack_int4(kernel, scale.shape[-1], axis=-1), "float32"
    )
    if getattr(layer, "kernel_zero", None) is None:
        flat = ops.divide(values, scale)
    else:
        flat = keras_private.dequantize_grouped(
            values, scale, layer.kernel_zero, layer.g_idx
        )
    return ops.reshape(flat, kernel_shape)


def requantized(layer, kernel):
    """`layer`'s base variables with `kernel` quantized in the layer's place.

    The kernel is quantized by Keras itself: a float layer of the base
    layer class and configuration takes `kernel` (and the layer's bias) and
    `quantize`s in the layer's mode with its quantization config.

    Args:
        layer: a built FLix layer whose base is int8 or int4.
        kernel: a float kernel of shape `layer.base_kernel_shape`.

    Returns:
        A dict from the path of each of `layer`'s base variables to its new
        value.
    """
    config = base_layer_config(layer.get_config())
    config.update(dtype=layer.variable_dtype, quantization_config=None)
    plain = layer.base_layer_class.from_config(config)
    plain.build(layer.get_build_config()["input_shape"])
    keras_private.kernel(plain).assign(kernel)
    if layer.bias is not None:
        plain.bias.assign(layer.bias)
    plain.quantize(layer.quantization_mode, config=layer.quantization_config)
    return {
        own.path: ops.convert_to_numpy(value)
        for own, value in zip(base_variables(layer), base_variables(plain))
    }
