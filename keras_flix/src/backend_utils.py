"""The few places where keras-flix has to know which backend runs.

Library code uses `keras.ops` only; what `keras.ops` cannot say (whether a
tensor's values can be read right now without a device sync, and how a layer's
framework-level parameter registry is refreshed after model surgery) lives
here.
"""

import keras
import numpy as np


def host_value(x):
    """Returns `x` as a NumPy array if its values are on the host now.

    Args:
        x: a tensor, NumPy array or nested Python list.

    Returns:
        A NumPy array, or `None` when `x` is symbolic (traced by `jax.jit`,
        `tf.function` or torch's compiler, or a `KerasTensor`) or lives on an
        accelerator, where reading it would force a host-device sync.
    """
    if isinstance(x, (np.ndarray, list, tuple, int)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
        if all(d.platform == "cpu" for d in x.devices()):
            return np.asarray(x)
        return None
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly() and hasattr(x, "numpy"):
            if "GPU" in x.device or "TPU" in x.device:
                return None
            return x.numpy()
        return None
    if backend == "torch":
        import torch

        if torch.compiler.is_compiling() or x.device.type != "cpu":
            return None
        return x.detach().numpy()
    return np.asarray(x)


def refresh_parameter_registry(layer):
    """Re-registers `layer`'s variables with its framework module, if any.

    On the torch backend every Keras layer is a `torch.nn.Module` that keeps a
    `ParameterDict` of all the variables under it, filled when it was built.
    After sublayers are swapped, that registry still lists the old variables
    and misses the new ones, so `module.parameters()` would be wrong.

    Args:
        layer: a Keras layer.
    """
    if keras.backend.backend() == "torch" and hasattr(layer, "_torch_params"):
        layer._track_variables()


def assert_in_range_in_graph(feature_ids, num_values):
    """Adds a runtime range check to `feature_ids` inside TensorFlow graphs.

    Python cannot raise inside a compiled graph; on the TensorFlow backend a
    graph-level assertion can, so a `tf.function` or an exported SavedModel
    fails with an `InvalidArgumentError` on an out-of-range id. Elsewhere
    the ids are returned unchanged (FLix layers then output NaN for the
    affected examples).

    Args:
        feature_ids: int32 tensor `[batch, n_types]`.
        num_values: the number of values of each type, in column order.

    Returns:
        `feature_ids`, carrying the check where there is one.
    """
    if keras.backend.backend() != "tensorflow":
        return feature_ids
    import tensorflow as tf

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


def in_shape_inference():
    """Whether Keras is running a call only to infer output shapes.

    Keras' `compute_output_spec` traces calls with placeholders whose values
    are never computed; under `tf.distribute`, Keras builds them from a
    cross-replica *mean* of the first batch, so integer inputs such as
    feature ids arrive as floats there.
    """
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_symbolic_scope()
