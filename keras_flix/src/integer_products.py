"""int8 products of quantized layers by the backend's integer GEMM.

Keras' int8 `Dense` and `EinsumDense` (`quantize("int8")`, and the frozen
base of a FLix layer over one) multiply int8 inputs by int8 kernels with
`ops.matmul` / `ops.einsum`, accumulating in int32. On torch, Keras runs that
product with torch's integer GEMM on CUDA only; on the CPU it copies both
operands to int32 and multiplies them with `torch.matmul`, which has no
optimized integer kernel: a train step over an int8 base took 2.2 times as
long as over a float32 one, where XLA's backends take less (see
benchmarks/README.md, "FLix over a quantized base").

`install()` routes those products to the backend's integer GEMM where Keras
does not (`integer_matmul` / `integer_einsum` of `keras_flix.src.backend`;
None elsewhere). The accumulation is the same int32 one, so every result
is bit-identical to Keras' own; every other product is Keras' own.
"""

import functools

from keras_flix.src import backend
from keras_flix.src import keras_private


def install():
    """Routes int8 `matmul` / `einsum` to the integer GEMM (idempotent)."""
    if backend.integer_matmul is None:
        return
    keras_private.wrap_backend_op("matmul", _preferring(backend.integer_matmul))
    keras_private.wrap_backend_op("einsum", _preferring(backend.integer_einsum))


def _preferring(integer_op):
    """Wraps Keras' op to try `integer_op` first; None from it means Keras'."""

    def wrap(keras_op):
        @functools.wraps(keras_op)
        def op(*args, **kwargs):
            result = None if kwargs else integer_op(*args)
            return keras_op(*args, **kwargs) if result is None else result

        return op

    return wrap
