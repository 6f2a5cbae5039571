"""Every compute path of the FLix layers matches a NumPy reference, and each other bit for bit."""

import keras
import numpy as np
import pytest
from helpers import ALPHAS
from helpers import EQUATIONS
from helpers import MIXED_IDS
from helpers import RANKS
from helpers import SCHEMA
from helpers import compiled_versions
from helpers import make_layer
from helpers import max_relative_error
from helpers import randomize
from helpers import reference_kernel
from helpers import to_numpy

import keras_flix as kf
from keras_flix.src import backend
from keras_flix.src.layers.selection import COMPUTE_PATHS
from keras_flix.src.layers.selection import resolve_compute_path


def outputs_by_path(layer, x, ids, paths=COMPUTE_PATHS):
    results = {}
    for path in paths:
        layer.compute_path = path
        results[path] = to_numpy(layer(x, feature_ids=ids))
    return results


@pytest.mark.parametrize("equation, output_shape, bias_axes, input_shape", EQUATIONS)
def test_every_path_matches_numpy_reference_and_the_others_bit_for_bit(
    equation, output_shape, bias_axes, input_shape
):
    layer = make_layer(equation, output_shape, bias_axes, activation="tanh")
    x = np.random.default_rng(1).standard_normal(input_shape).astype("float32")
    layer(x, feature_ids=MIXED_IDS)
    randomize(layer)
    results = outputs_by_path(layer, x, MIXED_IDS)
    for path, y in results.items():
        for i, ids_row in enumerate(MIXED_IDS):
            kernel = reference_kernel(layer, equation, ids_row)
            expected = np.einsum(equation, x[i : i + 1], kernel)
            if layer.bias is not None:
                expected = expected + to_numpy(layer.bias)
            expected = np.tanh(expected)
            assert max_relative_error(y[i : i + 1], expected) < 1e-5, (path, i)
        np.testing.assert_array_equal(y, results["gather"], err_msg=path)
    for ids_row in MIXED_IDS:
        np.testing.assert_allclose(
            to_numpy(layer.merged_kernel(ids_row)),
            reference_kernel(layer, equation, ids_row),
            rtol=1e-5,
            atol=1e-5,
        )


def test_dense_paths_match_numpy_reference_for_any_input_rank():
    layer = kf.layers.FLixDense(7, schema=SCHEMA, rank=RANKS, alpha=ALPHAS)
    x3 = np.random.default_rng(2).standard_normal((6, 4, 8)).astype("float32")
    layer(x3, feature_ids=MIXED_IDS)
    randomize(layer)
    for x in (x3, x3[:, 0], x3[:, :, None, :]):
        results = outputs_by_path(layer, x, MIXED_IDS)
        for path, y in results.items():
            for i, ids_row in enumerate(MIXED_IDS):
                kernel = reference_kernel(layer, "ab,bc->ac", ids_row)
                expected = x[i : i + 1] @ kernel + to_numpy(layer.bias)
                assert max_relative_error(y[i : i + 1], expected) < 1e-5, path
            np.testing.assert_array_equal(y, results["gather"], err_msg=path)


def compiled_outputs(layer, path, x, ids):
    """The layer's outputs with `path`, eagerly and under each compiler."""
    layer.compute_path = path
    return [
        to_numpy(run(x, ids))
        for run in compiled_versions(lambda x, ids: layer(x, feature_ids=ids))
    ]


@pytest.mark.parametrize("path", COMPUTE_PATHS)
def test_every_path_compiles_to_the_same_outputs(path):
    layer = make_layer("abc,cde->abde", (None, 2, 4), "de")
    x = np.random.default_rng(3).standard_normal((6, 5, 8)).astype("float32")
    layer(x, feature_ids=MIXED_IDS)
    randomize(layer)
    expected = compiled_outputs(layer, "gather", x, MIXED_IDS)
    for got, want in zip(compiled_outputs(layer, path, x, MIXED_IDS), expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("path", COMPUTE_PATHS)
def test_every_path_gives_nan_for_out_of_range_ids_in_compiled_graphs(path):
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2, compute_path=path)
    x = np.ones((3, 8), "float32")
    layer(x, feature_ids=np.zeros((3, 2), "int32"))
    randomize(layer)
    bad = np.array([[0, 0], [3, 0], [0, -5]], "int32")
    # `call` is what a compiled graph runs: no Python-side check there, and
    # never another value's adapter.
    for run in compiled_versions(lambda x, ids: layer.call(x, feature_ids=ids)):
        y = to_numpy(run(x, bad))
        assert np.all(np.isfinite(y[0]))
        assert np.all(np.isnan(y[1])) and np.all(np.isnan(y[2]))


def test_every_path_trains_the_same():
    """Gradients agree (up to summation order where examples share a row)."""
    results = {}
    x = np.random.default_rng(4).standard_normal((6, 5, 8)).astype("float32")
    target = np.random.default_rng(5).standard_normal((6, 5, 2, 4)).astype("float32")
    for path in ("gather", "one_hot"):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((5, 8))
        ids = keras.Input((2,), dtype="int32")
        layer = make_layer("abc,cde->abde", (None, 2, 4), "de", compute_path=path)
        model = keras.Model([inputs, ids], layer(inputs, feature_ids=ids))
        randomize(layer)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.fit([x, MIXED_IDS], target, batch_size=6, epochs=3, verbose=0)
        results[path] = [to_numpy(v) for v in layer.adapter_variables]
    for a, b in zip(results["gather"], results["one_hot"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_one_hot_path_in_mixed_precision():
    layer = make_layer(
        "abc,cde->abde", (None, 2, 4), None, compute_path="one_hot",
        dtype="mixed_bfloat16",
    )
    x = np.random.default_rng(6).standard_normal((6, 5, 8)).astype("float32")
    layer(x, feature_ids=MIXED_IDS)
    randomize(layer)
    assert all(v.dtype == "float32" for v in layer.weights)
    y = layer(x, feature_ids=MIXED_IDS)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    results = outputs_by_path(layer, x, MIXED_IDS, ("gather", "one_hot"))
    np.testing.assert_array_equal(results["one_hot"], results["gather"])


def test_compute_path_is_serialized_and_checked():
    layer = kf.layers.FLixDense(3, schema=SCHEMA, rank=2, compute_path="one_hot")
    config = layer.get_config()
    assert config["compute_path"] == "one_hot"
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert clone.compute_path == "one_hot"
    # The default stays out of configs, as Keras leaves out `lora_rank`.
    default = kf.layers.FLixEinsumDense("ab,bc->ac", 3, schema=SCHEMA, rank=2)
    assert default.compute_path == "auto"
    assert "compute_path" not in default.get_config()
    assert kf.layers.FLixEinsumDense.from_config(default.get_config()).compute_path == "auto"
    with pytest.raises(ValueError, match="`compute_path` must be one of"):
        kf.layers.FLixDense(3, schema=SCHEMA, compute_path="scatter")
    with pytest.raises(ValueError, match="Received: 'dense'"):
        layer.compute_path = "dense"


def test_from_base_takes_compute_path():
    base = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 4))
    base.build((None, 5, 8))
    layer = kf.layers.FLixEinsumDense.from_base(base, SCHEMA, compute_path="one_hot")
    assert layer.compute_path == "one_hot"


def test_auto_path_rule(monkeypatch):
    assert resolve_compute_path("gather", 2, 64) == "gather"
    assert resolve_compute_path("one_hot", 4096, 1) == "one_hot"
    on_tpu = backend.on_tpu()
    assert resolve_compute_path("auto", 8, 64) == ("one_hot" if on_tpu else "gather")
    monkeypatch.setattr(backend, "on_tpu", lambda: True)
    assert resolve_compute_path("auto", 64, 64) == "one_hot"
    assert resolve_compute_path("auto", 65, 64) == "gather"
    assert resolve_compute_path("auto", 8, None) == "gather"
    monkeypatch.setattr(backend, "on_tpu", lambda: False)
    assert resolve_compute_path("auto", 2, 64) == "gather"


@pytest.mark.parametrize("path", COMPUTE_PATHS)
def test_retrofit_takes_compute_path_and_merge_works_after_it(path):
    # `merge` used to pass `compute_path` on to the rebuilt Dense layers.
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(6, name="hidden")(inputs)
    outputs = keras.layers.EinsumDense("ab,bc->ac", 3, name="proj")(hidden)
    base = keras.Model(inputs, outputs)
    model = kf.retrofit(
        base, SCHEMA, rank=2, target_layers=["hidden", "proj"], compute_path=path
    )
    assert model.flix_config.compute_path == path
    assert [layer.compute_path for layer in model.flix_layers] == [path, path]
    for layer in model.flix_layers:
        randomize(layer)
    x = np.random.default_rng(2).standard_normal((1, 4)).astype("float32")
    for as_lora in (False, True):
        merged = kf.merge(model, {"language": "sw", "task": "qa"}, as_lora=as_lora)
        assert type(merged.get_layer("hidden")) is keras.layers.Dense
        assert type(merged.get_layer("proj")) is keras.layers.EinsumDense
        ids = np.array([[2, 0]], "int32")
        expected = to_numpy(model({"inputs": x, "feature_ids": ids}))
        assert max_relative_error(to_numpy(merged(x)), expected) < 1e-5
