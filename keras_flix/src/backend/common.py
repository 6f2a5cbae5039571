"""Behaviour shared by several backends (see `keras_flix.src.backend`)."""

import functools

import keras


def assert_in_range_in_graph(feature_ids, num_values):
    """No graph-level check: FLix layers output NaN for out-of-range ids."""
    return feature_ids


def check_saved_model_export():
    """Keras exports SavedModels from this backend."""


DYNAMIC_SHAPE_ERRORS = ()
"""What tracing raises for a size it cannot keep unknown: nothing here."""


def saved_model_endpoint_options(shapes, constraints):
    """Nothing to add: the endpoint traces unknown sizes as unknown.

    Args:
        shapes: the symbolic shape of each input (see
            `keras_flix.src.symbolic_shapes`).
        constraints: bounds on their sizes.

    Returns:
        Keyword arguments for `keras.export.ExportArchive.add_endpoint`.
    """
    return {}


def refresh_parameter_registry(layer):
    """Keras layers keep no framework-level parameter registry here."""


assign_rows = None
"""No in-place row writes: updates are functional, compiled in place by XLA."""

integer_matmul = None
integer_einsum = None
"""Keras' own int8 products are the fast ones here: nothing to route."""


def row_sparse_parts(gradient):
    """This backend makes no row-sparse gradients."""
    return None


def sublayer_attributes(layer):
    """Sublayers are plain attributes (in `__dict__`) here."""
    return {}


@functools.lru_cache(maxsize=None)
def on_tpu():
    """Whether Keras' distribution API lists a TPU device."""
    try:
        devices = keras.distribution.list_devices()
    except (AttributeError, NotImplementedError):
        return False
    return any(device.lower().startswith("tpu") for device in devices)


def skip_train_function(logs, steps_per_execution):
    """A train function that drops its batches and returns `logs`.

    Keras' torch loop pulls each step's batches before calling the train
    function with them, so dropping them is not training on them.
    """
    del steps_per_execution

    def skip(data):
        return logs

    return skip


def framework_random_state():
    """Keras draws every random number here from its seed generators."""
    return {}


def set_framework_random_state(state):
    """Nothing to restore: see `framework_random_state`."""
