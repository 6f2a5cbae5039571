"""How a FLix layer selects each example's adapter rows from its tables."""

from keras import ops

from keras_flix.src import backend
from keras_flix.src.inputs import ABSENT

COMPUTE_PATHS = ("auto", "gather", "one_hot")
"""How a FLix layer selects each example's adapters from its tables.

* `"gather"`: `take` of each example's row. Work per example does not
  depend on the number of values; the gradient with respect to a table is
  a scatter-add of the rows the batch used.
* `"one_hot"`: the sum of every row weighted by the example's one-hot ids,
  written as an elementwise product and a sum (not a matmul, whose
  precision some platforms lower), so it selects exactly the same numbers
  as `"gather"` for finite weights. Its work grows with the number of
  values, but neither direction needs a gather or a scatter, which XLA on
  TPU runs slowly.
* `"auto"`: `"one_hot"` on TPU for the feature types whose one-hot
  selection costs no more than the adapter's own products (see
  `resolve_compute_path`), `"gather"` everywhere else.
"""


def check_compute_path(value):
    """Returns `value` if it is one of `COMPUTE_PATHS`, else raises.

    Example:

    >>> check_compute_path("one_hot")
    'one_hot'
    """
    if value not in COMPUTE_PATHS:
        raise ValueError(
            f"`compute_path` must be one of {COMPUTE_PATHS}. Received: "
            f"{value!r}"
        )
    return value


def resolve_compute_path(compute_path, num_values, positions):
    """The path (`"gather"` or `"one_hot"`) a feature type's selection takes.

    For `"auto"`: selecting by one-hot ids costs `num_values` multiply-adds
    per adapter weight and example, the adapter's own two products cost
    `positions` (the activations per example, e.g. the sequence length) per
    weight and example. On CPU and GPU a gather and its scatter-add gradient
    are cheap, so `"gather"` always wins there; on TPU gathers and scatters
    are slow and `"one_hot"` is chosen when it costs no more than the
    adapter itself (`num_values <= positions`), which bounds its overhead by
    that of the adapter.

    Args:
        compute_path: the layer's `compute_path` setting.
        num_values: the feature type's number of values.
        positions: activations per example, or `None` when not static.

    Returns:
        `"gather"` or `"one_hot"`.
    """
    if compute_path != "auto":
        return compute_path
    if positions is not None and num_values <= positions and backend.on_tpu():
        return "one_hot"
    return "gather"


def adapter_rows(feature_ids, num_values):
    """Each example's table row per feature type, and which ids are usable.

    Args:
        feature_ids: int32 `[batch, n_types]`, -1 = absent.
        num_values: int32 `[n_types]`, the number of values of each type.

    Returns:
        `(rows, present, valid)`, each `[batch, n_types]`: the row to select
        (0 where the id is absent or out of range, which the layer then
        scales by 0 or NaN), whether the id names a value (>= 0), and whether
        it is in range (-1 included).
    """
    present = ops.greater_equal(feature_ids, 0)
    valid = ops.logical_and(
        ops.greater_equal(feature_ids, ABSENT), ops.less(feature_ids, num_values)
    )
    rows = ops.where(ops.logical_and(present, valid), feature_ids, 0)
    return rows, present, valid


def select_rows(table, rows, compute_path):
    """Each example's row of `table`: `[n_values, ...]` -> `[batch, ...]`.

    Args:
        table: an adapter table, `[n_values, ...]`.
        rows: int32 `[batch]` row indices, each in `[0, n_values)`.
        compute_path: `"gather"` or `"one_hot"` (bit-identical results for
            finite `table`).

    Returns:
        `table[rows]`.
    """
    if compute_path == "gather":
        return ops.take(table, rows, axis=0)
    num_values = table.shape[0]
    one_hot = ops.one_hot(rows, num_values, dtype=table.dtype)
    one_hot = ops.reshape(one_hot, (-1, num_values) + (1,) * (len(table.shape) - 1))
    # Adding exact zeros to the one selected row changes no bit of it.
    return ops.sum(ops.multiply(one_hot, ops.expand_dims(table, 0)), axis=1)


def positions_per_example(inputs, equations):
    """The static number of low-rank activations per example, or `None`.

    `None` also for symbolic sizes (e.g. a sequence length that is a
    symbolic dimension while exporting from jax), which are not ints.
    """
    input_term, rest = equations.down.split(",")
    activations = rest.split("->")[1][:-1]
    positions = 1
    for letter in activations[1:]:
        size = inputs.shape[input_term.index(letter)]
        if not isinstance(size, int):
            return None
        positions *= size
    return positions

