"""The initializer of FLix adapter tables."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_flix")
class AdapterAInitializer(keras.initializers.Initializer):
    """Initializes `[n_values, d_in, rank]` as `n_values` LoRA `A` matrices.

    Keras' fan-based initializers read a 3-D shape as a convolution kernel;
    this one draws from `base` as if for one `[d_in, n_values * rank]` matrix,
    so each value's `A` gets the fan-in (`d_in`) a single LoRA `A` would.

    Args:
        base: the initializer of a single `[d_in, rank]` LoRA `A` matrix.

    Example:

    >>> init = AdapterAInitializer(keras.initializers.Constant(1.0))
    >>> tuple(init((3, 8, 2)).shape)
    (3, 8, 2)
    """

    def __init__(self, base="he_uniform"):
        self.base = keras.initializers.get(base)

    def __call__(self, shape, dtype=None):
        num_values, d_in, rank = shape
        matrix = self.base(shape=(d_in, num_values * rank), dtype=dtype)
        return ops.transpose(
            ops.reshape(matrix, (d_in, num_values, rank)), (1, 0, 2)
        )

    def get_config(self):
        return {"base": keras.initializers.serialize(self.base)}

    @classmethod
    def from_config(cls, config):
        return cls(base=keras.initializers.deserialize(config["base"]))
