"""`LazyAdam`: row-sparse Adam updates of the FLix adapter tables."""

import keras
import numpy as np
import pytest
from helpers import SCHEMA
from helpers import to_numpy

import keras_flix as kf
from keras_flix.optimizers import LazyAdam

LR, BETA_1, BETA_2, EPSILON = 0.1, 0.9, 0.999, 1e-7


def table_layer(num_values=5):
    schema = kf.FeatureSchema(
        {"language": [f"l{i}" for i in range(num_values)], "task": ["qa"]}
    )
    layer = kf.layers.FLixDense(3, schema=schema, rank=2)
    layer.build((None, 4))
    rng = np.random.default_rng(0)
    for variable in layer.adapter_variables:
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))
    return layer


def gradient(shape, rows, seed):
    g = np.zeros(shape, "float32")
    g[list(rows)] = np.random.default_rng(seed).standard_normal(
        (len(rows),) + tuple(shape[1:])
    )
    return g


def lazy_adam_reference(p, grads, weight_decay=None):
    """Lazy Adam in NumPy: only rows with a nonzero gradient move."""
    p = p.astype("float64").copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        used = np.any(g != 0, axis=tuple(range(1, g.ndim)))
        alpha = LR * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
        if weight_decay:
            p[used] -= p[used] * LR * weight_decay
        m[used] += (g[used] - m[used]) * (1 - BETA_1)
        v[used] += (g[used] ** 2 - v[used]) * (1 - BETA_2)
        p[used] -= alpha * m[used] / (np.sqrt(v[used]) + EPSILON)
    return p


# Rows used at each of three steps of a 5-row table.
STEPS = [(0, 3), (1,), (0, 1, 3)]


@pytest.mark.parametrize(
    "max_sparse_rows",
    [
        3,  # every step gathers and scatters rows
        2,  # the third step uses 3 rows: two rounds of gather and scatter
        256,  # more than the table's rows: always masked
    ],
)
def test_matches_numpy_lazy_adam(max_sparse_rows):
    layer = table_layer()
    table = layer.adapter_a["language"]
    other = layer.adapter_b["language"]
    start = to_numpy(table).copy()
    optimizer = LazyAdam(LR, BETA_1, BETA_2, EPSILON, max_sparse_rows=max_sparse_rows)
    optimizer.build([table, other])
    grads = [gradient(table.shape, rows, seed) for seed, rows in enumerate(STEPS)]
    for g in grads:
        optimizer.apply([g, np.zeros(other.shape, "float32")], [table, other])
    np.testing.assert_allclose(
        to_numpy(table), lazy_adam_reference(start, grads), rtol=1e-5, atol=1e-6
    )
    # Row 2 and 4 were never used: untouched, bit for bit, moments zero.
    np.testing.assert_array_equal(to_numpy(table)[[2, 4]], start[[2, 4]])
    for moments in (optimizer._momentums, optimizer._velocities):
        assert not np.any(to_numpy(moments[0])[[2, 4]])


def test_every_row_used_is_plain_adam_and_other_variables_too():
    layers = [table_layer(), table_layer()]
    layers[1]._kernel.assign(layers[0]._kernel)
    optimizers = [LazyAdam(LR, max_sparse_rows=2), keras.optimizers.Adam(LR)]
    kernel_grads = [
        np.random.default_rng(s).standard_normal((4, 3)).astype("float32")
        for s in range(3)
    ]
    table_grads = [gradient((5, 4, 2), range(5), seed) for seed in range(3)]
    for layer, optimizer in zip(layers, optimizers):
        variables = [layer.adapter_a["language"], layer._kernel]
        layer._kernel.trainable = True
        optimizer.build(variables)
        for g_table, g_kernel in zip(table_grads, kernel_grads):
            optimizer.apply(
                [keras.ops.convert_to_tensor(g) for g in (g_table, g_kernel)],
                variables,
            )
    for lazy, dense in zip(
        (layers[0].adapter_a["language"], layers[0]._kernel),
        (layers[1].adapter_a["language"], layers[1]._kernel),
    ):
        np.testing.assert_allclose(to_numpy(lazy), to_numpy(dense), rtol=1e-5, atol=1e-6)


def test_weight_decay_reaches_used_rows_only():
    layer = table_layer()
    table = layer.adapter_a["language"]
    start = to_numpy(table).copy()
    optimizer = LazyAdam(LR, weight_decay=0.01, max_sparse_rows=3)
    optimizer.build([table])
    grads = [gradient(table.shape, rows, seed) for seed, rows in enumerate(STEPS)]
    for g in grads:
        optimizer.apply([g], [table])
    np.testing.assert_allclose(
        to_numpy(table),
        lazy_adam_reference(start, grads, weight_decay=0.01),
        rtol=1e-5,
        atol=1e-6,
    )


def test_compiled_fit_moves_only_the_values_in_the_data():
    inputs = keras.Input((8,))
    base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["proj"])
    model.compile(optimizer=LazyAdam(0.01, max_sparse_rows=2), loss="mse")
    layer = model.flix_layers[0]
    before = [to_numpy(v).copy() for v in layer.adapter_variables]
    rng = np.random.default_rng(0)
    # Language "sw" (2) never occurs; task "ner" (1) only without a language.
    ids = np.array([[0, 0], [1, 0], [-1, 1], [1, -1]] * 4, "int32")
    x = {"inputs": rng.standard_normal((16, 8)).astype("float32"), "feature_ids": ids}
    history = model.fit(
        x, rng.standard_normal((16, 4)).astype("float32"),
        batch_size=4, epochs=4, verbose=0,
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    after = {v.name: to_numpy(v) for v in layer.adapter_variables}
    start = {v.name: b for v, b in zip(layer.adapter_variables, before)}
    np.testing.assert_array_equal(after["flix_language_b"][2], start["flix_language_b"][2])
    np.testing.assert_array_equal(after["flix_language_a"][2], start["flix_language_a"][2])
    for name in ("flix_language_b", "flix_task_b"):
        assert np.all(np.any(after[name][:2] != start[name][:2], axis=(1, 2)))


def test_config_round_trip_and_bad_arguments():
    optimizer = LazyAdam(0.01, beta_1=0.8, max_sparse_rows=64, weight_decay=0.1)
    config = optimizer.get_config()
    assert "amsgrad" not in config
    clone = LazyAdam.from_config(config)
    assert clone.max_sparse_rows == 64 and clone.beta_1 == 0.8
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, LazyAdam)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="`max_sparse_rows` must be a positive int"):
            LazyAdam(max_sparse_rows=bad)


def row_sparse_gradient(values, indices, shape):
    """The backend's row-sparse gradient: `IndexedSlices`, `BCOO` or torch COO."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.IndexedSlices(
            tf.constant(values), tf.constant(indices), tf.constant(shape)
        )
    if keras.backend.backend() == "torch":
        import torch

        return torch.sparse_coo_tensor(
            torch.from_numpy(indices)[None], torch.from_numpy(values), shape
        )
    from jax.experimental import sparse as jax_sparse

    return jax_sparse.BCOO((values, indices[:, None]), shape=shape)


@pytest.mark.parametrize("max_sparse_rows", [1, 2, 256])
def test_row_sparse_gradients_update_like_their_dense_sum(max_sparse_rows):
    layers = [table_layer(), table_layer()]
    layers[1].adapter_a["language"].assign(layers[0].adapter_a["language"])
    tables = [layer.adapter_a["language"] for layer in layers]
    optimizers = [LazyAdam(LR, max_sparse_rows=max_sparse_rows) for _ in layers]
    for optimizer, table in zip(optimizers, tables):
        optimizer.build([table])
    rng = np.random.default_rng(0)
    for step in range(3):
        # Row 0 twice, row 3 once, row 4 named with a zero value.
        indices = np.array([0, 3, 0, 4], "int32")
        values = rng.standard_normal((4, 4, 2)).astype("float32")
        values[3] = 0.0
        dense = np.zeros((5, 4, 2), "float32")
        np.add.at(dense, indices, values)
        sparse = row_sparse_gradient(values, indices, (5, 4, 2))
        optimizers[0].apply([sparse], [tables[0]])
        optimizers[1].apply([keras.ops.convert_to_tensor(dense)], [tables[1]])
    np.testing.assert_allclose(
        to_numpy(tables[0]), to_numpy(tables[1]), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_array_equal(
        to_numpy(optimizers[0]._momentums[0])[[1, 2, 4]], 0
    )
