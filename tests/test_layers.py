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

def test_dense_matches_numpy_reference_for_any_rank():
    layer = kf.layers.FLixDense(
        7, schema=SCHEMA, rank=RANKS, alpha=ALPHAS, activation="relu"
    )
    x3 = np.random.default_rng(2).standard_normal((6, 4, 8)).astype("float32")
    layer(x3, feature_ids=MIXED_IDS)
    randomize(layer)
    for x in (x3, x3[:, 0], x3[:, :, None, :]):
        y = to_numpy(layer(x, feature_ids=MIXED_IDS))
        for i, ids_row in enumerate(MIXED_IDS):
            kernel = reference_kernel(layer, "ab,bc->ac", ids_row)
            expected = np.maximum(x[i : i + 1] @ kernel + to_numpy(layer.bias), 0)
            assert max_relative_error(y[i : i + 1], expected) < 1e-5


def test_all_absent_is_exactly_the_base_layer():
    base = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 4), bias_axes="de")
    x = np.random.default_rng(3).standard_normal((4, 5, 8)).astype("float32")
    expected = to_numpy(base(x))
    layer = kf.layers.FLixEinsumDense.from_base(base, SCHEMA, rank=2)
    randomize(layer)
    absent = np.full((4, 2), -1, "int32")
    np.testing.assert_array_equal(to_numpy(layer(x, feature_ids=absent)), expected)


def test_from_base_shares_and_freezes_base_weights():
    base = keras.layers.Dense(5, name="proj")
    base(np.zeros((1, 3), "float32"))
    layer = kf.layers.FLixDense.from_base(base, SCHEMA, rank=2)
    assert layer._kernel is base._kernel and layer.bias is base.bias
    assert layer.name == "proj"
    assert not layer._kernel.trainable and not layer.bias.trainable
    assert [v.name for v in layer.trainable_variables] == [
        "flix_language_a",
        "flix_language_b",
        "flix_task_a",
        "flix_task_b",
    ]
    assert tuple(layer.adapter_a["language"].shape) == (3, 3, 2)
    assert tuple(layer.adapter_b["task"].shape) == (2, 2, 5)
    # Keras' `trainable = True` reaches every variable; the base stays frozen.
    layer.trainable = False
    layer.trainable = True
    assert not layer._kernel.trainable
    assert len(layer.trainable_variables) == 4


def test_b_starts_at_zero_and_a_has_lora_fan_in():
    layer = kf.layers.FLixDense(16, schema=SCHEMA, rank=4)
    layer.build((None, 600))
    for feature_type in SCHEMA.feature_types:
        assert not np.any(to_numpy(layer.adapter_b[feature_type]))
        a = to_numpy(layer.adapter_a[feature_type])
        limit = np.sqrt(6.0 / 600)  # he_uniform of one [600, 4] matrix
        assert np.abs(a).max() <= limit
        assert np.abs(a).max() > 0.8 * limit


def test_scope_and_explicit_ids_agree_and_nest():
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2)
    x = np.ones((6, 8), "float32")
    layer(x, feature_ids=MIXED_IDS)
    randomize(layer)
    explicit = to_numpy(layer(x, feature_ids=MIXED_IDS))
    with kf.feature_scope(np.zeros((6, 2), "int32")):
        with kf.feature_scope(MIXED_IDS):
            np.testing.assert_array_equal(to_numpy(layer(x)), explicit)
        assert kf.current_feature_ids().tolist() == [[0, 0]] * 6
    assert kf.current_feature_ids() is None


def test_called_without_ids_is_an_error():
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2, name="proj")
    with pytest.raises(ValueError, match="'proj' was called without feature ids"):
        layer(np.ones((2, 8), "float32"))


@pytest.mark.parametrize(
    "ids, message",
    [
        (np.zeros((3, 2), "int32"), "3 rows but the inputs have a batch of 2"),
        (np.zeros((2,), "int32"), r"shape \[batch, 2\]"),
        (np.zeros((2, 3), "int32"), r"shape \[batch, 2\]"),
        (np.zeros((2, 2), "float32"), "must be integers"),
        (np.array([[3, 0], [0, 0]], "int32"), "out of range for feature type 'language'"),
        (np.array([[0, 0], [0, -2]], "int32"), "out of range for feature type 'task'"),
    ],
)
def test_bad_feature_ids(ids, message):
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2)
    with pytest.raises(ValueError, match=message):
        layer(np.ones((2, 8), "float32"), feature_ids=ids)


def test_int64_ids_are_accepted():
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2)
    x = np.ones((6, 8), "float32")
    a = to_numpy(layer(x, feature_ids=MIXED_IDS))
    b = to_numpy(layer(x, feature_ids=MIXED_IDS.astype("int64")))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("equation, output_shape, bias_axes, input_shape", EQUATIONS[:3])
def test_compiled_calls_match_eager(equation, output_shape, bias_axes, input_shape):
    layer = make_layer(equation, output_shape, bias_axes)
    x = np.random.default_rng(4).standard_normal(input_shape).astype("float32")
    layer(x, feature_ids=MIXED_IDS)
    randomize(layer)
    eager = to_numpy(layer(x, feature_ids=MIXED_IDS))
    for run in compiled_versions(lambda x, ids: layer(x, feature_ids=ids)):
        np.testing.assert_allclose(to_numpy(run(x, MIXED_IDS)), eager, rtol=1e-5, atol=1e-5)
    for run in compiled_versions(lambda x, ids: _scoped_call(layer, x, ids)):
        np.testing.assert_allclose(to_numpy(run(x, MIXED_IDS)), eager, rtol=1e-5, atol=1e-5)


def _scoped_call(layer, x, ids):
    with kf.feature_scope(ids):
        return layer(x)


def test_mixed_precision():
    layer = kf.layers.FLixEinsumDense(
        "abc,cde->abde",
        (None, 2, 4),
        schema=SCHEMA,
        rank=2,
        dtype="mixed_bfloat16",
    )
    x = np.random.default_rng(5).standard_normal((6, 5, 8)).astype("float32")
    y = layer(x, feature_ids=MIXED_IDS)
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert all(v.dtype == "float32" for v in layer.weights)
    randomize(layer)
    low = to_numpy(keras.ops.cast(layer(x, feature_ids=MIXED_IDS), "float32"))
    full = kf.layers.FLixEinsumDense(
        "abc,cde->abde", (None, 2, 4), schema=SCHEMA, rank=2
    )
    full(x, feature_ids=MIXED_IDS)
    full.set_weights(layer.get_weights())
    high = to_numpy(full(x, feature_ids=MIXED_IDS))
    assert max_relative_error(low, high) < 3e-2


def test_config_round_trip():
    layer = kf.layers.FLixEinsumDense(
        "abc,cde->abde",
        (None, 2, 4),
        bias_axes="e",
        activation="gelu",
        schema=SCHEMA,
        rank=RANKS,
        alpha=ALPHAS,
        name="query",
    )
    clone = kf.layers.FLixEinsumDense.from_config(layer.get_config())
    assert clone.schema == SCHEMA
    assert clone.rank == RANKS and clone.alpha == ALPHAS
    assert clone.equation == "abc,cde->abde" and clone.name == "query"
    dense = kf.layers.FLixDense(3, schema=SCHEMA, rank=4, use_bias=False)
    dense_clone = keras.layers.deserialize(keras.layers.serialize(dense))
    assert isinstance(dense_clone, kf.layers.FLixDense)
    assert dense_clone.rank == {"language": 4, "task": 4}
    assert dense_clone.get_config() == dense.get_config()


def test_compute_output_shape_and_symbolic_call():
    layer = make_layer("abc,cde->abde", (None, 2, 4), None)
    base = keras.layers.EinsumDense("abc,cde->abde", (None, 2, 4))
    assert layer.compute_output_shape((7, 5, 8)) == base.compute_output_shape(
        (7, 5, 8)
    )
    inputs = keras.Input((5, 8))
    ids = keras.Input((2,), dtype="int32")
    outputs = layer(inputs, feature_ids=ids)
    assert tuple(outputs.shape) == tuple(base(inputs).shape)
    model = keras.Model([inputs, ids], outputs)
    x = np.ones((6, 5, 8), "float32")
    np.testing.assert_allclose(
        to_numpy(model([x, MIXED_IDS])),
        to_numpy(layer(x, feature_ids=MIXED_IDS)),
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "equation, message",
    [
        ("abc,acd->abd", "appear in the input, the kernel and the output"),
        ("abc,cd->ad", "input axis 'b' is summed away"),
        ("abc,cde->abd", "kernel axis 'e' is summed away"),
        ("ab,ac->bc", "must be the batch axis"),
        ("abc,cd", "input,kernel->output"),
        ("aab,bc->ac", "repeats an axis"),
    ],
)
def test_unsupported_equations_fail_at_build(equation, message):
    layer = kf.layers.FLixEinsumDense(equation, (None, 4), schema=SCHEMA, rank=2)
    input_rank = len(equation.split(",")[0])
    with pytest.raises(ValueError, match=message):
        layer.build((2,) * input_rank)
    assert not layer.weights


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rank": 0}, "`rank` for feature type 'language' must be a positive int"),
        ({"rank": 2.5}, "positive int"),
        ({"rank": {"language": 2}}, r"missing: \['task'\]"),
        ({"rank": {"language": 2, "task": 2, "domain": 1}}, r"Unknown: \['domain'\]"),
        ({"alpha": -1.0}, "`alpha` for feature type 'language' must be a positive float"),
        ({"lora_rank": 4}, "does not take `lora_rank`"),
    ],
)
def test_bad_layer_arguments(kwargs, message):
    kwargs = {"rank": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        kf.layers.FLixDense(4, schema=SCHEMA, **kwargs)


def test_schema_must_be_a_feature_schema():
    with pytest.raises(TypeError, match="FeatureSchema"):
        kf.layers.FLixDense(4, schema=["en"], rank=2)


def test_keras_lora_is_refused():
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2)
    layer.build((None, 8))
    with pytest.raises(NotImplementedError, match="already carries FLix adapters"):
        layer.enable_lora(2)
    lora = keras.layers.Dense(4)
    lora.build((None, 8))
    lora.enable_lora(2)
    with pytest.raises(ValueError, match="already has Keras LoRA"):
        kf.layers.FLixDense.from_base(lora, SCHEMA)
    with pytest.raises(TypeError, match="takes a Dense layer"):
        kf.layers.FLixDense.from_base(keras.layers.EinsumDense("ab,bc->ac", 4), SCHEMA)
    with pytest.raises(ValueError, match="not built"):
        kf.layers.FLixDense.from_base(keras.layers.Dense(4), SCHEMA)
