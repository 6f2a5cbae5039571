"""`FLixEinsumDense`: a frozen `EinsumDense` plus per-feature low-rank updates."""

import math

import keras

from keras_flix.src.layers.adapter_equations import adapter_equations
from keras_flix.src.layers.adapter_equations import kernel_shape
from keras_flix.src.layers.flix_adapter import FLixAdapter
from keras_flix.src.layers.flix_adapter import default_name
from keras_flix.src.layers.flix_adapter import reject_base_options


@keras.saving.register_keras_serializable(package="keras_flix")
class FLixEinsumDense(FLixAdapter, keras.layers.EinsumDense):
    """An `EinsumDense` whose frozen kernel each example adapts by its features.

    The adapters treat the kernel as the matrix `[d_in, d_out]`: `d_in` is the
    product of the kernel axes contracted with the input, `d_out` the product
    of the kernel axes that reach the output, each flattened in kernel order.
    An example with feature ids `f` computes the base equation with the kernel

        W0 + sum_t s_t * reshape(A_t[f_t] @ B_t[f_t])

    where `reshape` views `[d_in, d_out]` as `[*contracted, *outputs]` and
    moves the axes to the kernel's order. The first input axis must be the
    batch axis and reach the output; every equation of the attention and
    feed-forward projections of KerasHub's BERT, XLM-RoBERTa, GPT-2, Gemma,
    Llama and T5 qualifies. An equation that cannot carry a per-example
    adapter (a kernel broadcast over input axes, an axis summed away, the
    batch axis contracted) raises a `ValueError` when the layer is built.

    Args:
        equation, output_shape: as for `keras.layers.EinsumDense`.
        schema: the `keras_flix.FeatureSchema` of the features.
        rank: adapter rank, an int or a dict from feature type to int.
        alpha: scale numerator, `None` (equal to the rank), a number, or a
            dict from feature type to number.
        a_initializer: initializer of one value's `A` matrix (`[d_in, r]`).
        b_initializer: initializer of `B` (zeros by default).
        compute_path: how each example's adapters are selected: `"gather"`,
            `"one_hot"` (same results; no gather or scatter, work grows with
            the number of values) or `"auto"` (picks per feature type; see
            `keras_flix.src.layers.selection.COMPUTE_PATHS`).
        **kwargs: every other argument of `keras.layers.EinsumDense`
            (`quantization_config` included), except `lora_rank`.

    Call arguments:
        inputs: the input tensor; its first axis is the batch.
        feature_ids: int32 tensor `[batch, len(schema.feature_types)]`; when
            omitted, the ids of the enclosing `keras_flix.feature_scope`.

    Example:

    >>> import numpy as np
    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
    >>> query = kf.layers.FLixEinsumDense(
    ...     "abc,cde->abde", output_shape=(None, 2, 4), schema=schema, rank=2)
    >>> ids = schema.encode([{"language": "en"}, {"language": "sw"}])
    >>> tuple(query(np.ones((2, 5, 8), "float32"), feature_ids=ids).shape)
    (2, 5, 2, 4)
    """

    base_layer_class = keras.layers.EinsumDense

    def __init__(
        self,
        equation,
        output_shape,
        schema,
        rank=8,
        alpha=None,
        a_initializer="he_uniform",
        b_initializer="zeros",
        compute_path="auto",
        **kwargs,
    ):
        reject_base_options(type(self).__name__, kwargs)
        default_name(kwargs, "flix_einsum_dense")
        super().__init__(equation, output_shape, **kwargs)
        self._init_adapter(
            schema, rank, alpha, a_initializer, b_initializer, compute_path
        )

    def build(self, input_shape):
        # Validate the equation before creating any variable.
        self._equations = adapter_equations(self.equation, len(input_shape))
        if self._build_base(input_shape):
            self.input_spec = keras.InputSpec(ndim=len(input_shape))
        self._base_kernel_shape = kernel_shape(
            self.equation, input_shape, self.compute_output_shape(input_shape)
        )
        shape = self._base_kernel_shape
        self._build_adapters(
            math.prod(shape[a] for a in self._equations.contracted_axes),
            math.prod(shape[a] for a in self._equations.output_axes),
        )

    @property
    def kernel_axes(self):
        """`(contracted_axes, output_axes)`: kernel axes flattened to d_in / d_out."""
        return self._equations.contracted_axes, self._equations.output_axes

    def _adapter_equations(self, inputs):
        return self._equations
