"""`FLixDense`: a frozen `Dense` layer plus per-feature low-rank updates."""

import functools

import keras

from keras_flix.src.layers.adapter_equations import adapter_equations
from keras_flix.src.layers.adapter_equations import dense_equation
from keras_flix.src.layers.flix_adapter import FLixAdapter
from keras_flix.src.layers.flix_adapter import default_name
from keras_flix.src.layers.flix_adapter import reject_base_options


@keras.saving.register_keras_serializable(package="keras_flix")
class FLixDense(FLixAdapter, keras.layers.Dense):
    """A `Dense` layer whose frozen kernel each example adapts by its features.

    For an example whose feature ids are `f` (one per feature type `t` of the
    schema, or `-1` when absent) the layer computes

        activation(x @ (W0 + sum_t s_t * A_t[f_t] @ B_t[f_t]) + bias)

    with `s_t = alpha_t / rank_t`, without forming the per-example kernel.
    `W0` and `bias` are frozen; `A_t` (`[n_values_t, input_dim, rank_t]`,
    random) and `B_t` (`[n_values_t, rank_t, units]`, zeros) train.

    Args:
        units: as for `keras.layers.Dense`.
        schema: the `keras_flix.FeatureSchema` of the features.
        rank: adapter rank, an int for every feature type or a dict from
            feature type to int.
        alpha: scale numerator, `None` (equal to the rank, i.e. scale 1), a
            number, or a dict from feature type to number.
        a_initializer: initializer of one value's `A` matrix (`[d_in, r]`).
        b_initializer: initializer of `B`; zeros keep the layer equal to its
            base layer until trained.
        compute_path: how each example's adapters are selected: `"gather"`,
            `"one_hot"` (same results; no gather or scatter, work grows with
            the number of values) or `"auto"` (picks per feature type; see
            `keras_flix.src.layers.selection.COMPUTE_PATHS`).
        **kwargs: every other argument of `keras.layers.Dense` (activation,
            use_bias, initializers, regularizers, constraints, name, dtype,
            `quantization_config`, ...), except `lora_rank`.

    Call arguments:
        inputs: tensor of shape `[batch, ..., input_dim]`.
        feature_ids: int32 tensor `[batch, len(schema.feature_types)]`; when
            omitted, the ids of the enclosing `keras_flix.feature_scope`.

    Example:

    >>> import numpy as np
    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> layer = kf.layers.FLixDense(4, schema=schema, rank={"language": 2, "task": 1})
    >>> ids = schema.encode([{"language": "sw", "task": "qa"}, {}])
    >>> y = layer(np.ones((2, 8), "float32"), feature_ids=ids)
    >>> tuple(y.shape)
    (2, 4)
    """

    base_layer_class = keras.layers.Dense

    def __init__(
        self,
        units,
        schema,
        rank=8,
        alpha=None,
        a_initializer="he_uniform",
        b_initializer="zeros",
        compute_path="auto",
        **kwargs,
    ):
        reject_base_options(type(self).__name__, kwargs)
        default_name(kwargs, "flix_dense")
        super().__init__(units, **kwargs)
        self._init_adapter(
            schema, rank, alpha, a_initializer, b_initializer, compute_path
        )

    def build(self, input_shape):
        if self._build_base(input_shape):
            self.input_spec = keras.InputSpec(min_ndim=2, axes={-1: input_shape[-1]})
        self._base_kernel_shape = (input_shape[-1], self.units)
        self._build_adapters(input_shape[-1], self.units)

    @property
    def kernel_axes(self):
        """`(contracted_axes, output_axes)` of the kernel: `((0,), (1,))`."""
        return (0,), (1,)

    def _adapter_equations(self, inputs):
        return _dense_adapter_equations(len(inputs.shape))


@functools.lru_cache(maxsize=None)
def _dense_adapter_equations(input_rank):
    return adapter_equations(dense_equation(input_rank), input_rank)
