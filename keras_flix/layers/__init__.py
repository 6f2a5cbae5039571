"""FLix layers: Keras layers with per-feature low-rank adapters."""

from keras_flix.src.layers.flix_dense import FLixDense
from keras_flix.src.layers.flix_einsum_dense import FLixEinsumDense

__all__ = ["FLixDense", "FLixEinsumDense"]
