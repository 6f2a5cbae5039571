"""The input contract of a FLix model: where feature ids go, and what they are.

A FLix model takes a dict: the base model's dict inputs plus
`"feature_ids"`, or `{"inputs": <the base model's inputs>, "feature_ids":
ids}` when the base model's inputs are not a dict. The ids are an integer
tensor of shape `[batch, n_feature_types]` (see `FeatureSchema`), `ABSENT`
(-1) where a feature is absent. `keras_flix.data` writes this structure, the
model and the exported SavedModel read it; all of them take it from here.
"""

import keras
from keras import ops

from keras_flix.src import keras_private
from keras_flix.src.backend import assert_in_range_in_graph
from keras_flix.src.backend import host_value

ABSENT = -1
"""The feature id that marks a feature as absent for an example.

`feature_scope(ABSENT)` makes every feature of every example absent.
"""

FEATURE_IDS_KEY = "feature_ids"
"""The input key that carries feature ids."""

INPUTS_KEY = "inputs"
"""The input key that carries a base model's non-dict inputs."""


def split_feature_ids(inputs, owner):
    """Splits a FLix model's inputs into the base inputs and the feature ids.

    Args:
        inputs: the FLix model's inputs (see the module docstring).
        owner: who received them, for error messages.

    Returns:
        `(base_inputs, feature_ids)`.

    Example:

    >>> split_feature_ids({"inputs": "x", "feature_ids": "ids"}, "me")
    ('x', 'ids')
    >>> split_feature_ids({"token_ids": 1, "feature_ids": 2}, "me")
    ({'token_ids': 1}, 2)
    """
    if not isinstance(inputs, dict) or FEATURE_IDS_KEY not in inputs:
        received = (
            f"a dict with keys {sorted(inputs)}"
            if isinstance(inputs, dict)
            else f"a {type(inputs).__name__}"
        )
        raise ValueError(
            f"{owner} expects a dict of inputs with a '{FEATURE_IDS_KEY}' "
            "entry (int32, [batch, n_feature_types]): the base model's dict "
            f"inputs plus '{FEATURE_IDS_KEY}', or {{'{INPUTS_KEY}': x, "
            f"'{FEATURE_IDS_KEY}': ids}} for non-dict inputs. Received "
            f"{received}. `keras_flix.data.tag` adds the ids to a dataset."
        )
    base_inputs = {k: v for k, v in inputs.items() if k != FEATURE_IDS_KEY}
    if set(base_inputs) == {INPUTS_KEY}:
        base_inputs = base_inputs[INPUTS_KEY]
    return base_inputs, inputs[FEATURE_IDS_KEY]


def join_feature_ids(inputs, feature_ids):
    """The inverse of `split_feature_ids`.

    Example:

    >>> join_feature_ids("x", "ids")
    {'inputs': 'x', 'feature_ids': 'ids'}
    """
    if isinstance(inputs, dict):
        return {**inputs, FEATURE_IDS_KEY: feature_ids}
    return {INPUTS_KEY: inputs, FEATURE_IDS_KEY: feature_ids}


def is_all_absent(feature_ids):
    """Whether `feature_ids` is the scope value `ABSENT` (every feature absent)."""
    return (
        isinstance(feature_ids, int)
        and not isinstance(feature_ids, bool)
        and feature_ids == ABSENT
    )


def standardize_feature_ids(feature_ids, schema, batch_size=None, owner=None):
    """Checks `feature_ids` against `schema` and returns them as int32.

    Shape and dtype are checked always. Values are range-checked when they
    are readable on the host without a device sync (eager calls on CPU), and
    by a graph assertion inside TensorFlow graphs. Inside other compiled
    graphs (`jax.jit`, XLA) an out-of-range id cannot raise, and FLix layers
    turn the affected example's outputs into NaN instead (see
    `FLixAdapter`), so it never silently selects another value's adapter.

    Args:
        feature_ids: integer tensor or array of shape
            `[batch, len(schema.feature_types)]`.
        schema: the `FeatureSchema` the ids were encoded with.
        batch_size: the batch size of the activations the ids go with, when
            statically known.
        owner: a description of who received the ids, for error messages.

    Returns:
        The ids as an int32 tensor.
    """
    where = f" given to {owner}" if owner else ""
    if feature_ids is None:
        raise ValueError(f"No feature ids{where}.")
    if not isinstance(feature_ids, keras.KerasTensor) and not ops.is_tensor(
        feature_ids
    ):
        feature_ids = ops.convert_to_tensor(feature_ids)
    dtype = keras.backend.standardize_dtype(feature_ids.dtype)
    if keras_private.in_symbolic_scope() and dtype.startswith("float"):
        # Shape inference only: no value of these ids is ever used.
        feature_ids = ops.cast(feature_ids, "int32")
        dtype = "int32"
    if not dtype.startswith(("int", "uint")):
        raise ValueError(
            f"Feature ids{where} must be integers (int32, -1 = absent). "
            f"Received dtype {dtype}."
        )
    shape = tuple(feature_ids.shape)
    num_types = len(schema.feature_types)
    if len(shape) != 2 or shape[1] not in (None, num_types):
        raise ValueError(
            f"Feature ids{where} must have shape [batch, {num_types}]: one row "
            f"per example, one column per feature type {schema.feature_types}. "
            f"Received shape {shape}."
        )
    if batch_size is not None and shape[0] is not None and shape[0] != batch_size:
        raise ValueError(
            f"Feature ids{where} have {shape[0]} rows but the inputs have a "
            f"batch of {batch_size} examples; they must match one-to-one."
        )
    values = host_value(feature_ids)
    if values is not None:
        try:
            schema.check_ids(values)
        except ValueError as error:
            raise ValueError(f"Invalid feature ids{where}: {error}") from None
    if dtype != "int32":
        feature_ids = ops.cast(feature_ids, "int32")
    return assert_in_range_in_graph(
        feature_ids, [schema.num_values[t] for t in schema.feature_types]
    )
