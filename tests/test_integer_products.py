"""int8 products of quantized layers by the backend's integer GEMM.

On torch, importing keras_flix routes `ops.matmul` / `ops.einsum` of int8
tensors on the CPU to `torch._int_mm` (Keras uses it on CUDA only). The
reference is exact: NumPy's int64 product, and the quantized layers' outputs
computed with Keras' own ops.
"""

import contextlib

import keras
import numpy as np
import pytest
from keras.src import backend as keras_backend
from helpers import EQUATIONS
from helpers import to_numpy

import keras_flix as kf
from keras_flix.src import backend
from keras_flix.src import keras_private

ON_TORCH = keras.backend.backend() == "torch"
RNG = np.random.default_rng(0)

# (subscripts, shape of x1, shape of x2): batch-free contractions, which take
# the integer GEMM, and others, which stay Keras' own.
CONTRACTIONS = [
    ("ab,bc->ac", (5, 7), (7, 3)),
    ("ab,cb->ca", (4, 6), (3, 6)),
    ("btd,dnh->btnh", (2, 3, 8), (8, 4, 5)),
    ("btnh,nhd->btd", (2, 3, 4, 5), (4, 5, 6)),
    ("bquh,uhm->bqm", (2, 1, 4, 5), (4, 5, 3)),
]
NOT_CONTRACTIONS = [
    ("bij,bjk->bik", (2, 3, 4), (2, 4, 5)),  # a batch axis
    ("...b,bc->...c", (2, 3, 4), (4, 5)),  # an ellipsis
]


def int8(shape):
    """A random int8 tensor of the backend (what quantized layers multiply)."""
    return keras.ops.convert_to_tensor(RNG.integers(-128, 128, shape).astype("int8"))


@contextlib.contextmanager
def keras_own_products():
    """Keras' own `matmul` / `einsum`, as without keras_flix."""
    numpy_ops = keras_backend.numpy
    routed = {name: getattr(numpy_ops, name) for name in ("matmul", "einsum")}
    for name in routed:
        setattr(numpy_ops, name, keras_private.keras_backend_op(name))
    try:
        yield
    finally:
        for name, op in routed.items():
            setattr(numpy_ops, name, op)


@pytest.mark.parametrize("x1_shape", [(4, 64), (2, 3, 64), (1, 1, 64)])
def test_matmul_of_int8_is_the_exact_int32_product(x1_shape):
    x1, x2 = int8(x1_shape), int8((64, 9))
    result = keras.ops.matmul(x1, x2)
    assert keras.backend.standardize_dtype(result.dtype) == "int32"
    np.testing.assert_array_equal(
        to_numpy(result), to_numpy(x1).astype("int64") @ to_numpy(x2).astype("int64")
    )


@pytest.mark.parametrize(
    "subscripts, x1_shape, x2_shape",
    CONTRACTIONS + NOT_CONTRACTIONS,
    ids=[c[0] for c in CONTRACTIONS + NOT_CONTRACTIONS],
)
def test_einsum_of_int8_is_the_exact_int32_product(subscripts, x1_shape, x2_shape):
    x1, x2 = int8(x1_shape), int8(x2_shape)
    result = keras.ops.einsum(subscripts, x1, x2)
    assert keras.backend.standardize_dtype(result.dtype) == "int32"
    np.testing.assert_array_equal(
        to_numpy(result),
        np.einsum(
            subscripts, to_numpy(x1).astype("int64"), to_numpy(x2).astype("int64")
        ),
    )


def test_other_dtypes_are_keras_own_products():
    x1 = RNG.normal(size=(3, 4)).astype("float32")
    x2 = RNG.normal(size=(4, 2)).astype("float32")
    np.testing.assert_allclose(to_numpy(keras.ops.matmul(x1, x2)), x1 @ x2, rtol=1e-6)
    mixed = keras.ops.matmul(int8((3, 4)), x2)
    assert keras.backend.standardize_dtype(mixed.dtype) == "float32"


def quantized_layer(spec):
    equation, output_shape, bias_axes, input_shape = spec
    if equation == "dense":
        layer = keras.layers.Dense(output_shape)
    else:
        layer = keras.layers.EinsumDense(equation, output_shape, bias_axes=bias_axes)
    layer.build((None, *input_shape[1:]))
    layer.quantize("int8")
    return layer, RNG.normal(size=input_shape).astype("float32")


# Keras 3.15's `quantize` fails on an EinsumDense whose equation has an ellipsis.
LAYER_SPECS = [("dense", 7, None, (6, 5, 8))] + [s for s in EQUATIONS if "." not in s[0]]


@pytest.mark.skipif(not ON_TORCH, reason="Keras' own int8 products are XLA's here")
def test_torch_routes_int8_products_on_the_cpu_to_the_integer_gemm():
    import torch

    calls = []
    int_mm = torch._int_mm

    def spy(a, b):
        calls.append((tuple(a.shape), tuple(b.shape)))
        return int_mm(a, b)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "_int_mm", spy)
        keras.ops.matmul(int8((2, 3, 64)), int8((64, 9)))
        assert calls == [((6, 64), (64, 9))]
        keras.ops.einsum("btd,dnh->btnh", int8((2, 3, 8)), int8((8, 4, 5)))
        assert calls[1] == ((6, 8), (8, 20))
        for subscripts, x1_shape, x2_shape in NOT_CONTRACTIONS:
            keras.ops.einsum(subscripts, int8(x1_shape), int8(x2_shape))
        keras.ops.matmul(RNG.normal(size=(3, 4)), RNG.normal(size=(4, 2)))
        assert len(calls) == 2
        # What quantized layers pass: their int8 inputs and kernels.
        for spec in LAYER_SPECS[:2]:
            layer, x = quantized_layer(spec)
            layer(x)
    assert calls[2:] == [((30, 8), (8, 7)), ((30, 8), (8, 8))]


@pytest.mark.skipif(ON_TORCH, reason="torch has an integer GEMM to route to")
def test_xla_backends_keep_keras_own_products():
    assert backend.integer_matmul is None
    assert keras_backend.numpy.matmul is keras_private.keras_backend_op("matmul")


@pytest.mark.parametrize("spec", LAYER_SPECS, ids=[spec[0] for spec in LAYER_SPECS])
def test_int8_layers_compute_what_keras_own_products_compute(spec):
    layer, x = quantized_layer(spec)
    routed = to_numpy(layer(x))
    with keras_own_products():
        own = to_numpy(layer(x))
    np.testing.assert_array_equal(routed, own)


def test_flix_over_an_int8_base_trains_as_with_keras_own_products():
    schema = kf.FeatureSchema({"task": ["a", "b"]})
    x = RNG.normal(size=(8, 16)).astype("float32")
    y = RNG.normal(size=(8, 4)).astype("float32")
    ids = np.array([[0], [1]] * 4, "int32")

    def train():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((16,))
        base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
        base.quantize("int8")
        model = kf.retrofit(base, schema, rank=2, target_layers=["proj"], seed=0)
        model.compile(optimizer=kf.optimizers.LazyAdam(1e-2), loss="mse")
        losses = model.fit(
            {"inputs": x, "feature_ids": ids}, y, epochs=3, batch_size=4, verbose=0
        ).history["loss"]
        return losses, [to_numpy(v) for v in model.trainable_weights]

    routed_losses, routed_weights = train()
    with keras_own_products():
        own_losses, own_weights = train()
    np.testing.assert_array_equal(routed_losses, own_losses)
    for routed, own in zip(routed_weights, own_weights):
        np.testing.assert_array_equal(routed, own)
