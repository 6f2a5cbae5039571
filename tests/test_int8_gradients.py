"""The input gradient of Keras' int8 layers, formed block by block.

Importing keras_flix gives Keras' int8 `Dense` / `EinsumDense` an input
gradient that forms the float kernel one block at a time
(`keras_flix/src/int8_gradients.py`). The reference is Keras' own: the same
model trained with `keras.src.ops.custom_gradient` as Keras defines it.
"""

import contextlib
import importlib

import keras
import numpy as np
import pytest
from helpers import EQUATIONS
from helpers import max_relative_error
from helpers import to_numpy

import keras_flix as kf
from keras_flix.src import int8_gradients
from keras_flix.src import keras_private

# (equation, output_shape, bias_axes, input_shape); "dense" builds a Dense.
# Keras' `quantize` cannot lay out an `EinsumDense` with `...` in its equation.
SPECS = [("dense", 7, None, (6, 5, 8)), *(e for e in EQUATIONS if "..." not in e[0])]
SPEC_IDS = [spec[0] for spec in SPECS]


@contextlib.contextmanager
def keras_own_gradient():
    """Keras' own `custom_gradient` for its layers, as without keras_flix."""
    ops_module = importlib.import_module("keras.src.ops")
    routed = ops_module.custom_gradient
    ops_module.custom_gradient = keras_private.keras_original(ops_module, "custom_gradient")
    try:
        yield
    finally:
        ops_module.custom_gradient = routed


def int8_layer(spec):
    equation, output_shape, bias_axes, _ = spec
    if equation == "dense":
        return keras.layers.Dense(output_shape, activation="tanh", name="int8")
    return keras.layers.EinsumDense(
        equation, output_shape, bias_axes=bias_axes, activation="tanh", name="int8"
    )


def trained(spec, steps=2):
    """Losses and weights of SGD steps of `float Dense -> int8 layer`.

    The float layer trains through the int8 layer's input gradient.
    """
    input_shape = spec[3]
    keras.utils.set_random_seed(0)
    inputs = keras.Input(input_shape[1:])
    hidden = keras.layers.Dense(input_shape[-1], name="float")(inputs)
    quantized = int8_layer(spec)
    model = keras.Model(inputs, quantized(hidden))
    quantized.quantize("int8")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(input_shape).astype("float32")
    y = rng.standard_normal(tuple(model(x).shape)).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    return losses, [to_numpy(v) for v in model.trainable_variables]


def assert_same_training(spec, tolerance):
    """The same steps as with Keras' gradient, to `tolerance` of each update."""
    with keras_own_gradient():
        keras_losses, keras_weights = trained(spec)
    losses, weights = trained(spec)
    assert losses[0] == keras_losses[0]  # The forward pass is Keras' own.
    np.testing.assert_allclose(losses, keras_losses, rtol=tolerance)
    start = trained(spec, steps=0)[1]
    for before, own, reference in zip(start, weights, keras_weights):
        assert not np.array_equal(own, before)
        assert max_relative_error(own - before, reference - before) <= tolerance


@pytest.mark.parametrize("blocks", ["one", "many"])
@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
def test_training_takes_the_steps_of_keras_own_int8_gradient(spec, blocks, monkeypatch):
    if blocks == "one":
        assert_same_training(spec, tolerance=0)  # Keras' own product, bit for bit.
        return
    # Tiny kernels split as large ones do: into MAX_BLOCKS, or one per entry.
    monkeypatch.setattr(int8_gradients, "BLOCK_BYTES", 1)
    assert_same_training(spec, tolerance=1e-5)


def test_mixed_bfloat16_gradients_in_many_blocks(monkeypatch):
    monkeypatch.setattr(int8_gradients, "BLOCK_BYTES", 1)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        # bfloat16 (8 bits of mantissa) products: Keras' is rounded once,
        # the blocks' once each; the float32 tests above check the values.
        assert_same_training(EQUATIONS[0], tolerance=5e-2)
    finally:
        keras.config.set_dtype_policy(previous)


def test_the_gradient_is_split_into_blocks_of_at_most_block_bytes(monkeypatch):
    layer = keras.layers.Dense(16)
    layer.build((None, 8))
    layer.quantize("int8")
    products = []
    original = keras.ops.matmul
    monkeypatch.setattr(
        int8_gradients.ops, "matmul", lambda *a: products.append(a[1].shape) or original(*a)
    )
    monkeypatch.setattr(int8_gradients, "BLOCK_BYTES", 8 * 4 * 4)  # 4 of 16 columns.
    upstream = keras.ops.ones((3, 16))
    gradient = int8_gradients.input_gradient(
        layer, upstream, keras_private.kernel(layer), layer.kernel_scale
    )
    assert products == [(4, 8)] * 4
    with keras_own_gradient():
        scale = keras_private.int8_kernel_scale(layer)
        kernel = keras.ops.cast(keras_private.kernel(layer), "float32") / scale
    np.testing.assert_allclose(
        to_numpy(gradient), to_numpy(upstream) @ to_numpy(kernel).T, rtol=1e-6
    )


def layers_taking_the_blockwise_gradient(monkeypatch):
    """The paths of the layers whose input gradient is formed from now on, in order."""
    paths = []
    original = int8_gradients.input_gradient

    def recorded(layer, *args):
        paths.append(layer.path)
        return original(layer, *args)

    monkeypatch.setattr(int8_gradients, "input_gradient", recorded)
    return paths


def test_every_int8_call_takes_it_and_nothing_else_does(monkeypatch):
    calls = layers_taking_the_blockwise_gradient(monkeypatch)
    for spec in SPECS[:2]:
        trained(spec, steps=1)
    assert calls == ["int8", "int8"]

    @keras.ops.custom_gradient
    def doubled(x):
        return 2 * x, lambda *args, upstream=None: 3 * (args[0] if upstream is None else upstream)

    assert keras_private.int8_product_layer(doubled) is None
    assert keras_private.int8_product_layer(lambda x: x) is None
    float_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    float_model.compile(optimizer="sgd", loss="mse")
    float_model.train_on_batch(np.ones((2, 4)), np.ones((2, 2)))
    assert calls == ["int8", "int8"]


def fit_flix_over_int8(monkeypatch, jit_compile="auto"):
    """Paths of the layers that took the blockwise gradient, losses and weights
    of a fit of `int8 Dense -> int8 Dense`, both retrofitted."""
    calls = layers_taking_the_blockwise_gradient(monkeypatch)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5, 8))
    hidden = keras.layers.Dense(8, name="first")(inputs)
    outputs = keras.layers.Dense(8, name="second")(hidden)
    base = keras.Model(inputs, outputs)
    base.quantize("int8")
    model = kf.retrofit(
        base, kf.FeatureSchema({"language": ["en", "sw"]}), rank=2, target_layers=["first", "second"]
    )
    model.compile(optimizer=kf.optimizers.LazyAdam(1e-2), loss="mse", jit_compile=jit_compile)
    x = {"inputs": np.ones((4, 5, 8), "float32"), "feature_ids": np.array([[0], [1], [-1], [0]], "int32")}
    history = model.fit(x, np.zeros((4, 5, 8), "float32"), epochs=2, verbose=0)
    return calls, history.history["loss"], [to_numpy(v) for v in model.trainable_variables]


def test_a_flix_layer_over_an_int8_base_passes_its_gradient_on_blockwise(monkeypatch):
    calls, losses, _ = fit_flix_over_int8(monkeypatch)
    # The second layer passes the gradient on to the first one's adapters.
    assert "second" in calls and losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="torch.compile is what jit_compile=True means on the torch backend",
)
def test_torch_compiled_fit_over_an_int8_base_trains_like_eager(monkeypatch):
    calls, compiled_losses, compiled = fit_flix_over_int8(monkeypatch, jit_compile=True)
    assert "second" in calls
    _, eager_losses, eager = fit_flix_over_int8(monkeypatch, jit_compile=False)
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
