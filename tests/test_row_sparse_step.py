"""Row-sparse table gradients: FLix layers reading gathered rows, and the jax
and torch training steps that differentiate with respect to them."""

import math

import keras
import numpy as np
import pytest
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import bert_inputs
from helpers import tiny_bert
from helpers import to_numpy

import keras_flix as kf
from keras_flix.optimizers import LazyAdam
from keras_flix.src.layers.selection import adapter_rows
from keras_flix.src.layers.gathered_rows import GatheredRows
from keras_flix.src.layers.gathered_rows import gathered_rows_scope

row_sparse_step = pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's table gradients are row-sparse by themselves "
    "(IndexedSlices); the row-sparse steps are jax's and torch's",
)


def step_module():
    from keras_flix.src import backend

    return backend


def layer_and_inputs():
    layer = kf.layers.FLixDense(3, schema=SCHEMA, rank=2)
    layer.build((None, 4))
    rng = np.random.default_rng(0)
    for variable in layer.adapter_variables:
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    x = rng.standard_normal((len(MIXED_IDS), 4)).astype("float32")
    return layer, x


def gathered_scope(layer, ids, rows_override=None):
    """The scope the jax step opens, built with NumPy for `layer`'s tables.

    `rows_override`: optional dict feature type -> rows to record instead.
    """
    num_values = np.array([SCHEMA.num_values[t] for t in SCHEMA.feature_types])
    rows = to_numpy(adapter_rows(ids, num_values)[0])
    gathered = {}
    for column, feature_type in enumerate(SCHEMA.feature_types):
        unique, slots = np.unique(rows[:, column], return_inverse=True)
        expected = (rows_override or {}).get(feature_type, rows[:, column])
        for table in (layer.adapter_a[feature_type], layer.adapter_b[feature_type]):
            gathered[id(table)] = GatheredRows(
                to_numpy(table)[unique], slots.astype("int32"), expected
            )
    return gathered_rows_scope(gathered)


def test_layer_reads_gathered_rows_exactly():
    layer, x = layer_and_inputs()
    expected = to_numpy(layer(x, feature_ids=MIXED_IDS))
    with gathered_scope(layer, MIXED_IDS):
        got = to_numpy(layer(x, feature_ids=MIXED_IDS))
    np.testing.assert_array_equal(got, expected)


def test_layer_rows_that_disagree_with_the_gathered_ones_give_nan():
    layer, x = layer_and_inputs()
    # The rows were gathered for other ids than the layer sees: examples whose
    # active language differs must not take another value's adapter.
    other = np.array([[1, 0], [1, 1], [2, 0], [0, -1], [-1, 1], [-1, -1]], "int32")
    language_rows = np.where(other[:, 0] >= 0, other[:, 0], 0).astype("int32")
    with gathered_scope(layer, MIXED_IDS, rows_override={"language": language_rows}):
        got = to_numpy(layer(x, feature_ids=MIXED_IDS))
    expected = to_numpy(layer(x, feature_ids=MIXED_IDS))
    disagree = [0, 3]  # language 0 vs 1, 2 vs 0
    assert np.isnan(got[disagree]).all()
    # Examples 4 and 5 have no language: they agree whatever was gathered.
    agree = [1, 2, 4, 5]
    np.testing.assert_array_equal(got[agree], expected[agree])


def fit_weights(sparse_gradients, train_also=(), feature_dropout=0.0, **optimizer):
    """Weights and losses of a tiny BERT after a few LazyAdam steps."""
    backbone = tiny_bert(seed=3)
    base = keras.Model(backbone.input, backbone.output["sequence_output"])
    model = kf.retrofit(
        base, SCHEMA, rank={"language": 2, "task": 1}, target_layers=["query", "value"],
        feature_dropout=feature_dropout, train_also=list(train_also), seed=5,
    )
    model.compile(
        optimizer=LazyAdam(
            0.01, sparse_gradients=sparse_gradients, max_sparse_rows=2, **optimizer
        ),
        loss="mse",
    )
    rng = np.random.default_rng(0)
    x = bert_inputs(12)
    x["feature_ids"] = np.concatenate([MIXED_IDS, MIXED_IDS[::-1]])
    y = rng.standard_normal((12, 12, 32)).astype("float32")
    history = model.fit(x, y, batch_size=6, epochs=3, shuffle=False, verbose=0)
    return [to_numpy(v) for v in model.trainable_variables], history.history["loss"]


@pytest.mark.slow
@row_sparse_step
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"feature_dropout": 0.5, "train_also": ["embeddings_layer_norm"], "weight_decay": 0.1},
    ],
    ids=["plain", "dropout_train_also_weight_decay"],
)
def test_row_sparse_step_trains_like_dense_gradients(options, monkeypatch):
    module = step_module()
    traced = []
    step = module.row_sparse_train_step
    monkeypatch.setattr(
        module,
        "row_sparse_train_step",
        lambda *args, **kwargs: traced.append(1) or step(*args, **kwargs),
    )
    sparse_weights, sparse_losses = fit_weights(True, **options)
    assert traced, "the row-sparse step was not used"
    traced.clear()
    dense_weights, dense_losses = fit_weights(False, **options)
    assert not traced
    np.testing.assert_allclose(sparse_losses, dense_losses, rtol=1e-6)
    assert len(sparse_weights) == len(dense_weights)
    for sparse, dense in zip(sparse_weights, dense_weights):
        np.testing.assert_allclose(sparse, dense, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@row_sparse_step
def test_row_sparse_step_out_of_range_ids_give_nan_loss():
    backbone = tiny_bert(seed=3)
    base = keras.Model(backbone.input, backbone.output["pooled_output"])
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["query", "value"])
    model.compile(optimizer=LazyAdam(0.01), loss="mse")
    x = bert_inputs(2)
    x["feature_ids"] = keras.ops.convert_to_tensor(np.array([[0, 0], [7, 0]], "int32"))
    y = np.zeros((2, 32), "float32")
    if keras.backend.backend() == "torch":
        # Eager: the ids are read and checked before anything is selected.
        with pytest.raises(ValueError, match="Invalid feature ids"):
            model.train_on_batch(x, y)
        return
    # Compiled (jax), the bad id cannot raise: the step's loss is NaN, never
    # a loss computed with another value's adapter.
    assert math.isnan(model.train_on_batch(x, y))


def test_a_model_without_trainable_tables_trains_with_keras_step():
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(3, name="proj")(inputs))
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["proj"])
    model.trainable = False
    model.compile(optimizer=LazyAdam(0.01), loss="mse")
    before = [to_numpy(v).copy() for v in model.weights]
    x = {"inputs": np.ones((len(MIXED_IDS), 4), "float32"), "feature_ids": MIXED_IDS}
    loss = model.train_on_batch(x, np.ones((len(MIXED_IDS), 3), "float32"))
    assert np.isfinite(loss)
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(to_numpy(new), old)


def test_options_that_need_dense_gradients_turn_row_sparse_off():
    assert LazyAdam().takes_row_sparse_gradients
    assert not LazyAdam(sparse_gradients=False).takes_row_sparse_gradients
    for option in (
        {"clipnorm": 1.0},
        {"global_clipnorm": 1.0},
        {"clipvalue": 1.0},
        {"gradient_accumulation_steps": 2},
        {"loss_scale_factor": 128.0},
    ):
        assert not LazyAdam(**option).takes_row_sparse_gradients, option
    config = LazyAdam(sparse_gradients=False).get_config()
    assert LazyAdam.from_config(config).sparse_gradients is False
    for bad in ("no", 0, None):
        with pytest.raises(ValueError, match="`sparse_gradients` must be True or False"):
            LazyAdam(sparse_gradients=bad)
