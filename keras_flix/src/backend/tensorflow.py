"""TensorFlow: graph-level id checks, `IndexedSlices` gradients, host values."""

import tensorflow as tf

from keras_flix.src.backend.common import assign_rows  # noqa: F401
from keras_flix.src.backend.common import check_saved_model_export  # noqa: F401
from keras_flix.src.backend.common import integer_einsum  # noqa: F401
from keras_flix.src.backend.common import integer_matmul  # noqa: F401
from keras_flix.src.backend.common import DYNAMIC_SHAPE_ERRORS  # noqa: F401
from keras_flix.src.backend.common import on_tpu  # noqa: F401
from keras_flix.src.backend.common import refresh_parameter_registry  # noqa: F401
from keras_flix.src.backend.common import saved_model_endpoint_options  # noqa: F401
from keras_flix.src.backend.common import framework_random_state  # noqa: F401
from keras_flix.src.backend.common import set_framework_random_state  # noqa: F401
from keras_flix.src.backend.common import sublayer_attributes  # noqa: F401

# The gradient of a gather is an `IndexedSlices` already: Keras' own step
# gives row-sparse table gradients.
row_sparse_train_step = None
row_sparse_step_traceable_here = None
keras_trainer = None


def host_value(x):
    if tf.executing_eagerly() and hasattr(x, "numpy"):
        if "GPU" in x.device or "TPU" in x.device:
            return None
        return x.numpy()
    return None


def assert_in_range_in_graph(feature_ids, num_values):
    """Adds a runtime range check to `feature_ids` inside TensorFlow graphs.

    Python cannot raise inside a compiled graph; a graph-level assertion
    can, so a `tf.function` or an exported SavedModel fails with an
    `InvalidArgumentError` on an out-of-range id.

    Args:
        feature_ids: int32 tensor `[batch, n_types]`.
        num_values: the number of values of each type, in column order.

    Returns:
        `feature_ids`, carrying the check inside a graph.
    """
    if tf.executing_eagerly() or not tf.is_tensor(feature_ids):
        return feature_ids
    upper = tf.constant(num_values, dtype=feature_ids.dtype)
    valid = tf.logical_and(feature_ids >= -1, feature_ids < upper)
    check = tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            "Feature ids out of range: expected -1 (absent) or an id below "
            f"the number of values of each type {list(num_values)}; got",
            tf.boolean_mask(feature_ids, tf.logical_not(valid)),
        ],
        summarize=16,
    )
    with tf.control_dependencies([check]):
        return tf.identity(feature_ids)


def row_sparse_parts(gradient):
    """`(indices, values)` of an `IndexedSlices` (a gather's gradient)."""
    if isinstance(gradient, tf.IndexedSlices):
        return gradient.indices, gradient.values
    return None


def skip_train_function(logs, steps_per_execution):
    """A train function that pulls its batches, drops them, returns `logs`.

    Keras' TensorFlow train function takes the iterator and pulls
    `steps_per_execution` batches itself.
    """

    def skip(iterator):
        for _ in range(steps_per_execution):
            next(iterator)
        return logs

    return skip
