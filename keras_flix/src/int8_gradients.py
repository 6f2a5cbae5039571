"""The input gradient of Keras' int8 layers, one block of float kernel at a time.

Keras' int8 `Dense` and `EinsumDense` (`quantize("int8")`, and the frozen
base of a FLix layer over one) pass the gradient on to their inputs through
the float kernel, `cast(kernel) / kernel_scale`, which their custom gradient
forms whole. It depends on the kernel alone, so a scheduler that orders
operations for concurrency (XLA's default CPU scheduler, on jax and
TensorFlow) may form it for every int8 layer as soon as the step starts and
keep them all alive together: a train step over an int8 base held 0.97 /
0.99 of the memory of one over a float32 base, its integer weights saved
nothing (benchmarks/README.md, "FLix over a quantized base").

`install()` gives Keras' int8 calls this gradient instead: the same product,
`upstream x (kernel / scale)^T`, summed over blocks of the kernel along the
axis it contracts with the upstream gradient, each block's float kernel
formed only once the gradient has reached the layer and the previous
block's product is done. A layer then holds one block of float kernel at a
time (at most `BLOCK_BYTES`, unless that would take more than `MAX_BLOCKS`
blocks), whatever the scheduler. The forward pass is Keras' own; the
gradient equals Keras' to float rounding (a one-block kernel's bit for bit;
the blocks' products are summed in float32).
"""

import functools
import math

import keras
from keras import ops

from keras_flix.src import keras_private

BLOCK_BYTES = 8 * 2**20
"""The float kernel a block holds at most (unless `MAX_BLOCKS` bounds it)."""

MAX_BLOCKS = 8
"""The most blocks one layer's gradient is split into (products stay GEMMs)."""

_ITEMSIZES = {"bfloat16": 2, "float16": 2, "float64": 8}  # Else 4 bytes.


def install():
    """Gives Keras' int8 layers the blockwise input gradient (idempotent)."""
    keras_private.wrap_custom_gradient(_dispatching)


def _dispatching(keras_custom_gradient):
    @functools.wraps(keras_custom_gradient)
    def custom_gradient(function):
        layer = keras_private.int8_product_layer(function)
        if layer is None:
            return keras_custom_gradient(function)

        def product(inputs, kernel, kernel_scale):
            outputs, _ = function(inputs, kernel, kernel_scale)

            def grad_fn(*args, upstream=None):
                if upstream is None:
                    (upstream,) = args
                return (input_gradient(layer, upstream, kernel, kernel_scale), None, None)

            return outputs, grad_fn

        return keras_custom_gradient(product)

    return custom_gradient


def input_gradient(layer, upstream, kernel, kernel_scale):
    """The gradient an int8 layer passes to its inputs, block by block.

    Args:
        layer: an int8 `Dense` or `EinsumDense`.
        upstream: the gradient of the layer's product.
        kernel: its int8 kernel.
        kernel_scale: its kernel scale, as stored.

    Returns:
        `upstream` times the dequantized kernel, contracted as Keras'
        int8 gradient contracts them, in the dtype Keras' has.

    Example:

    >>> layer = keras.layers.Dense(4)
    >>> layer.build((None, 3))
    >>> layer.quantize("int8")
    >>> upstream = keras.ops.ones((2, 4))
    >>> kernel = keras_private.kernel(layer)
    >>> gradient = input_gradient(layer, upstream, kernel, layer.kernel_scale)
    >>> tuple(gradient.shape)
    (2, 3)
    """
    if isinstance(layer, keras.layers.EinsumDense):
        equation = keras_private.input_gradient_equation(layer)
        operand_specs, input_spec = equation.split("->")
        upstream_spec, kernel_spec = operand_specs.split(",")

        def multiply(upstream_block, float_kernel_block):
            return ops.einsum(equation, upstream_block, float_kernel_block)

    else:
        upstream_spec, kernel_spec, input_spec = "...o", "io", "...i"

        def multiply(upstream_block, float_kernel_block):
            return ops.matmul(upstream_block, ops.transpose(float_kernel_block))

    scale = keras_private.int8_kernel_scale(layer, kernel_scale)
    # Blocks split the longest kernel axis that the product sums over.
    summed = [c for c in kernel_spec if c in upstream_spec and c not in input_spec]
    if not summed:  # A kernel that only scales its inputs: one block.
        return multiply(upstream, ops.divide(ops.cast(kernel, layer.compute_dtype), scale))
    lengths = [kernel.shape[kernel_spec.index(c)] for c in summed]
    kernel_axis = kernel_spec.index(summed[lengths.index(max(lengths))])
    upstream_axis = _axis_in(upstream_spec, kernel_spec[kernel_axis])
    length = kernel.shape[kernel_axis]
    float_bytes = math.prod(kernel.shape) * _ITEMSIZES.get(layer.compute_dtype, 4)
    step = math.ceil(length / min(MAX_BLOCKS, length, math.ceil(float_bytes / BLOCK_BYTES)))

    total = None
    # The first block waits for the gradient to reach the layer, each
    # next one for the previous product: a float kernel block cannot be
    # formed early, nor two of one layer's at once.
    after = upstream
    for start in range(0, length, step):
        block = slice(start, min(start + step, length))
        block_scale = _scale_block(scale, kernel.ndim, kernel_axis, block)
        float_kernel = ops.divide(
            ops.cast(_take(kernel, kernel_axis, block), layer.compute_dtype),
            ops.add(block_scale, ops.cast(_zero_after(after), block_scale.dtype)),
        )
        product = multiply(_take(upstream, upstream_axis, block), float_kernel)
        if total is None:
            dtype = keras.backend.standardize_dtype(product.dtype)
            total = ops.cast(product, "float32")
        else:
            total = total + ops.cast(product, "float32")
        after = total
    return ops.cast(total, dtype)


def _axis_in(spec, letter):
    """The axis of `letter` in an einsum operand `spec`, negative after `...`."""
    if "..." in spec and spec.index(letter) > spec.index("..."):
        return spec.index(letter) - len(spec)
    return spec.index(letter)


def _take(x, axis, block):
    """`x[..., block, ...]` along `axis` (negative: counted from the end)."""
    if axis < 0:
        return x[(Ellipsis, block) + (slice(None),) * (-axis - 1)]
    return x[(slice(None),) * axis + (block,)]


def _scale_block(scale, kernel_rank, kernel_axis, block):
    """The part of a scale (broadcast to the kernel) that divides a block."""
    axis = kernel_axis - (kernel_rank - len(scale.shape))
    if axis < 0 or scale.shape[axis] == 1:
        return scale
    return _take(scale, axis, block)


def _zero_after(x):
    """A scalar 0 that a compiler can compute only after `x` is.

    It reads one entry of `x` (none of an empty `x`). XLA does not fold
    `entry * 0` for floats (not 0 for NaN or inf), so the dependency stays;
    `where` makes the value 0 whatever the entry is.
    """
    entry = ops.sum(ops.reshape(x, (-1,))[:1])
    return ops.where(ops.isfinite(entry), entry * 0, 0)

