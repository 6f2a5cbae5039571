"""Property-based tests of the FLix layer contract over random schemas and ids.

Every supported equation (each of `helpers.EQUATIONS`, and `FLixDense`) is
run on random schemas (1-4 feature types of 1-50 values, ranks 1-8, per-type
alphas) and random batches of ids with absent and out-of-range values, eagerly
and compiled, against the NumPy reference. Hypothesis runs derandomized and
without an example database, so every run tries the same examples.
"""

import threading

import numpy as np
import pytest
from helpers import EQUATIONS
from helpers import compiled_versions
from helpers import max_relative_error
from helpers import randomize
from helpers import reference_kernel
from helpers import to_numpy
from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import keras_flix as kf

PROPERTIES = settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

DENSE = ("ab,bc->ac", 7, "c", (6, 5, 8))  # FLixDense on a [batch, 5, 8] input
LAYERS = [*EQUATIONS, DENSE]


@st.composite
def schemas(draw):
    """`(schema, ranks, alphas)`: 1-4 types of 1-50 values, ranks 1-8."""
    sizes = draw(st.lists(st.integers(1, 50), min_size=1, max_size=4))
    schema = kf.FeatureSchema(
        {f"type{t}": [f"v{i}" for i in range(n)] for t, n in enumerate(sizes)}
    )
    ranks = {t: draw(st.integers(1, 8)) for t in schema.feature_types}
    alphas = {t: draw(st.floats(0.25, 16.0)) for t in schema.feature_types}
    return schema, ranks, alphas


def feature_ids(draw, schema, batch):
    """Ids of `batch` examples: each a value or -1 (absent)."""
    columns = [
        draw(st.lists(st.integers(-1, len(schema.values(t)) - 1),
                      min_size=batch, max_size=batch))
        for t in schema.feature_types
    ]
    return np.array(columns, "int32").T


def with_out_of_range_rows(draw, schema, ids):
    """`ids` with some rows given an id outside the schema, and which rows."""
    bad = np.array(draw(st.lists(st.booleans(), min_size=len(ids), max_size=len(ids))
                        .filter(any)))
    ids = ids.copy()
    for row in np.flatnonzero(bad):
        column = draw(st.integers(0, len(schema.feature_types) - 1))
        n = len(schema.values(schema.feature_types[column]))
        ids[row, column] = draw(st.integers(-4, -2) | st.integers(n, n + 3))
    return ids, bad


def build(spec, schema, ranks, alphas, batch, seed):
    equation, output_shape, bias_axes, input_shape = spec
    settings_ = dict(schema=schema, rank=ranks, alpha=alphas)
    if spec is DENSE:
        layer = kf.layers.FLixDense(output_shape, **settings_)
    else:
        layer = kf.layers.FLixEinsumDense(
            equation, output_shape=output_shape, bias_axes=bias_axes, **settings_
        )
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *input_shape[1:])).astype("float32")
    layer(x, feature_ids=np.full((batch, len(schema.feature_types)), -1, "int32"))
    randomize(layer, seed)
    return layer, x


def reference(layer, spec, x, ids, ranks, alphas):
    """The layer's output for each valid row of `ids`, from NumPy."""
    equation = spec[0]
    rows = []
    for i, ids_row in enumerate(ids):
        kernel = reference_kernel(layer, equation, ids_row, ranks, alphas)
        if spec is DENSE:
            y = x[i : i + 1] @ kernel
        else:
            y = np.einsum(equation, x[i : i + 1], kernel)
        rows.append(y + (to_numpy(layer.bias) if layer.bias is not None else 0))
    return np.concatenate(rows)


@pytest.mark.parametrize("spec", LAYERS, ids=[spec[0] for spec in LAYERS])
@PROPERTIES
@given(data=st.data(), drawn=schemas(), batch=st.integers(1, 6))
def test_outputs_equal_the_reference_and_no_id_selects_another_value(
    spec, data, drawn, batch
):
    """Valid ids give the NumPy reference; an id outside the schema never
    gives another value's output: an error eagerly, and in compiled graphs
    (which cannot raise in Python) NaN throughout the example's output or,
    in TensorFlow graphs, a failed call; the other examples stay exact.

    Both properties use one layer and one compiled function per example
    (compiling dominates the cost).
    """
    schema, ranks, alphas = drawn
    layer, x = build(spec, schema, ranks, alphas, batch, seed=batch)
    ids = feature_ids(data.draw, schema, batch)
    expected = reference(layer, spec, x, ids, ranks, alphas)
    mixed, bad = with_out_of_range_rows(data.draw, schema, ids)
    versions = compiled_versions(lambda x, ids: layer(x, feature_ids=ids))
    for run in versions:
        assert max_relative_error(to_numpy(run(x, ids)), expected) < 1e-5
    with pytest.raises(ValueError, match="out of range for feature type"):
        layer(x, feature_ids=mixed)
    for run in versions[1:]:
        try:
            y = to_numpy(run(x, mixed))
        except Exception as error:  # TensorFlow's graph assertion
            assert "out of range" in str(error), error
            continue
        assert np.all(np.isnan(y[bad]))
        if (~bad).any():
            assert max_relative_error(y[~bad], expected[~bad]) < 1e-5


@PROPERTIES
@given(data=st.data(), drawn=schemas(), batch=st.integers(1, 6))
def test_threads_in_their_own_scopes_each_get_their_own_result(data, drawn, batch):
    schema, ranks, alphas = drawn
    spec = EQUATIONS[0]
    layer, x = build(spec, schema, ranks, alphas, batch, seed=batch)
    ids = [feature_ids(data.draw, schema, batch) for _ in range(2)]
    expected = [reference(layer, spec, x, i, ranks, alphas) for i in ids]

    def scoped(x, ids):
        with kf.feature_scope(ids):
            return layer(x)

    for run in compiled_versions(scoped):
        run(x, ids[0])  # traced and compiled before the threads race
        start = threading.Barrier(2)
        results = [[], []]

        def work(which):
            start.wait()
            for _ in range(10):
                results[which].append(to_numpy(run(x, ids[which])))

        threads = [threading.Thread(target=work, args=(w,)) for w in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for which in (0, 1):
            assert len(results[which]) == 10
            for y in results[which]:
                assert max_relative_error(y, expected[which]) < 1e-5
