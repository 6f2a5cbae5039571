"""Row-sparse table gradients: the selection route of FLix layers, and the
jax and torch training steps that every model holding FLix layers gets."""

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
from keras_flix.src.layers.selection_route import selection_route

row_sparse_step = pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's table gradients are row-sparse by themselves "
    "(IndexedSlices); the row-sparse steps are jax's and torch's",
)


def layer_and_inputs():
    layer = kf.layers.FLixDense(3, schema=SCHEMA, rank=2)
    layer.build((None, 4))
    rng = np.random.default_rng(0)
    for variable in layer.adapter_variables:
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    x = rng.standard_normal((len(MIXED_IDS), 4)).astype("float32")
    return layer, x


def test_the_route_sees_every_selection_and_its_rows():
    layer, x = layer_and_inputs()
    expected = to_numpy(layer(x, feature_ids=MIXED_IDS))
    seen = []

    def route(table, rows, selected):
        seen.append((table, to_numpy(rows), to_numpy(selected)))
        return selected

    with selection_route(route):
        got = to_numpy(layer(x, feature_ids=MIXED_IDS))
    np.testing.assert_array_equal(got, expected)
    tables = [layer.adapter_a[t] for t in SCHEMA.feature_types]
    tables += [layer.adapter_b[t] for t in SCHEMA.feature_types]
    assert {id(t) for t, _, _ in seen} == {id(t) for t in tables}
    num_values = np.array([SCHEMA.num_values[t] for t in SCHEMA.feature_types])
    rows = to_numpy(adapter_rows(MIXED_IDS, num_values)[0])
    for table, table_rows, selected in seen:
        column = next(
            i for i, t in enumerate(SCHEMA.feature_types)
            if table is layer.adapter_a[t] or table is layer.adapter_b[t]
        )
        np.testing.assert_array_equal(table_rows, rows[:, column])
        np.testing.assert_array_equal(selected, to_numpy(table)[rows[:, column]])


def test_what_the_route_returns_is_what_the_layer_computes_with():
    layer, x = layer_and_inputs()
    # Zero adapters everywhere: every example gets the base layer's output.
    with selection_route(lambda table, rows, selected: selected * 0.0):
        got = to_numpy(layer(x, feature_ids=MIXED_IDS))
    no_features = np.full_like(MIXED_IDS, kf.ABSENT)
    np.testing.assert_allclose(got, to_numpy(layer(x, feature_ids=no_features)), atol=1e-6)


def retrofitted_backbone_model(feature_dropout, train_also, quantization_mode=None):
    """The FLixModel itself is trained (its base quantized, if a mode is given)."""
    backbone = tiny_bert(seed=3)
    if quantization_mode is not None:
        backbone.quantize(quantization_mode, filters="^(query|value)$")
    base = keras.Model(backbone.input, backbone.output["sequence_output"])
    return kf.retrofit(
        base, SCHEMA, rank={"language": 2, "task": 1}, target_layers=["query", "value"],
        feature_dropout=feature_dropout, train_also=list(train_also), seed=5,
    )


def head_around_retrofitted_backbone(feature_dropout, train_also, quantization_mode=None):
    """A user's Functional model: a retrofitted backbone, then a head."""
    flix_backbone = retrofitted_backbone_model(feature_dropout, train_also, quantization_mode)
    inputs = {
        **{
            name: keras.Input((12,), dtype="int32", name=name)
            for name in ("token_ids", "segment_ids", "padding_mask")
        },
        "feature_ids": keras.Input((len(SCHEMA.feature_types),), dtype="int32", name="feature_ids"),
    }
    sequence = flix_backbone(inputs)
    outputs = keras.layers.Dense(32, name="head")(sequence)
    return keras.Model(inputs, outputs)


class SharedFLixLayerModel(keras.Model):
    """A subclassed model that calls one FLix layer twice (shared weights)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(64, 32)
        self.shared = kf.layers.FLixDense(32, schema=SCHEMA, rank=2, name="shared")
        self.head = keras.layers.Dense(32, name="head")

    def call(self, inputs):
        hidden = self.embedding(inputs["token_ids"])
        ids = inputs["feature_ids"]
        hidden = keras.ops.tanh(self.shared(hidden, feature_ids=ids))
        return self.head(self.shared(hidden, feature_ids=ids))


def shared_flix_layer_model(feature_dropout, train_also):
    keras.utils.set_random_seed(3)
    model = SharedFLixLayerModel()
    model(bert_inputs(2) | {"feature_ids": MIXED_IDS[:2]})
    # B starts at zero: give every table a gradient from the first step.
    rng = np.random.default_rng(1)
    for variable in model.shared.adapter_variables:
        variable.assign(0.1 * rng.standard_normal(variable.shape).astype("float32"))
    model.shared.base_kernel.trainable = False
    return model


MODELS = {
    "flix_model": retrofitted_backbone_model,
    "head_around_backbone": head_around_retrofitted_backbone,
    "subclassed_shared_layer": shared_flix_layer_model,
}


def fit_weights(make_model, sparse_gradients, train_also=(), feature_dropout=0.0, **optimizer):
    """Weights and losses of a small model after a few LazyAdam steps."""
    model = make_model(feature_dropout, train_also)
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


DROPOUT_TRAIN_ALSO_DECAY = {
    "feature_dropout": 0.5, "train_also": ["embeddings_layer_norm"], "weight_decay": 0.1,
}


@pytest.mark.slow
@row_sparse_step
@pytest.mark.parametrize(
    "model, options",
    [(name, {}) for name in MODELS]
    + [
        ("flix_model", DROPOUT_TRAIN_ALSO_DECAY),
        ("head_around_backbone", DROPOUT_TRAIN_ALSO_DECAY),
    ],
    ids=[f"{name}-plain" for name in MODELS]
    + ["flix_model-dropout_train_also_weight_decay", "head_around_backbone-dropout_train_also_weight_decay"],
)
def test_row_sparse_step_trains_like_dense_gradients(model, options, monkeypatch):
    assert_row_sparse_trains_like_dense(monkeypatch, MODELS[model], **options)


def assert_row_sparse_trains_like_dense(monkeypatch, make_model, rtol=1e-6, **options):
    """The row-sparse step runs, and trains as LazyAdam with dense gradients."""
    from keras_flix.src import backend

    traced = []
    step = backend.row_sparse_train_step
    monkeypatch.setattr(
        backend,
        "row_sparse_train_step",
        lambda *args, **kwargs: traced.append(1) or step(*args, **kwargs),
    )
    sparse_weights, sparse_losses = fit_weights(make_model, True, **options)
    assert traced, "the row-sparse step was not used"
    traced.clear()
    dense_weights, dense_losses = fit_weights(make_model, False, **options)
    assert not traced
    np.testing.assert_allclose(sparse_losses, dense_losses, rtol=rtol)
    assert len(sparse_weights) == len(dense_weights)
    for sparse, dense in zip(sparse_weights, dense_weights):
        np.testing.assert_allclose(sparse, dense, rtol=10 * rtol, atol=rtol)


@pytest.mark.slow
@row_sparse_step
@pytest.mark.parametrize("mode", ["int8", "int4", "float8"])
def test_row_sparse_step_over_a_quantized_backbone_with_a_head(mode, monkeypatch):
    # QLoRA as users set it up: quantize the backbone, retrofit it, add a head.
    def make_model(feature_dropout, train_also):
        return head_around_retrofitted_backbone(feature_dropout, train_also, mode)

    assert_row_sparse_trains_like_dense(monkeypatch, make_model, rtol=1e-5, feature_dropout=0.5)


@row_sparse_step
def test_models_without_flix_tables_or_lazy_adam_run_keras_step(monkeypatch):
    from keras_flix.src import backend

    monkeypatch.setattr(
        backend, "row_sparse_train_step", lambda *a, **k: pytest.fail("row-sparse step used")
    )
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    plain.compile(optimizer=LazyAdam(0.01), loss="mse")
    assert np.isfinite(plain.train_on_batch(np.ones((2, 4), "float32"), np.ones((2, 3), "float32")))
    flix = retrofitted_backbone_model(0.0, ())
    flix.compile(optimizer="adam", loss="mse")
    x = bert_inputs(6)
    x["feature_ids"] = MIXED_IDS
    assert np.isfinite(flix.train_on_batch(x, np.zeros((6, 12, 32), "float32")))


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


@pytest.mark.slow
@row_sparse_step
def test_a_step_traced_where_sparse_rows_cannot_be_runs_keras_step(monkeypatch):
    """Under `torch.compile` the dispatcher keeps Keras' own (dense) step."""
    from keras_flix.src import backend

    expected_weights, expected_losses = fit_weights(retrofitted_backbone_model, False)
    monkeypatch.setattr(backend, "row_sparse_step_traceable_here", lambda: False)
    monkeypatch.setattr(
        backend, "row_sparse_train_step", lambda *a, **k: pytest.fail("row-sparse step used")
    )
    weights, losses = fit_weights(retrofitted_backbone_model, True)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-6)
    for got, expected in zip(weights, expected_weights):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="torch.compile is what jit_compile=True means on the torch backend",
)
def test_torch_compiled_lazy_adam_fit_trains_like_eager():
    def fit(jit_compile):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        base = keras.Model(inputs, keras.layers.Dense(3, name="proj")(inputs))
        model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["proj"])
        model.compile(optimizer=LazyAdam(0.01), loss="mse", jit_compile=jit_compile)
        x = {"inputs": np.arange(24, dtype="float32").reshape(6, 4) / 24,
             "feature_ids": MIXED_IDS}
        history = model.fit(x, np.ones((6, 3), "float32"), batch_size=3, epochs=2,
                            shuffle=False, verbose=0)
        return [to_numpy(v) for v in model.trainable_variables], history.history["loss"]

    (compiled, compiled_losses), (eager, eager_losses) = fit(True), fit(False)
    np.testing.assert_allclose(compiled_losses, eager_losses, rtol=1e-5)
    for a, b in zip(compiled, eager):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
