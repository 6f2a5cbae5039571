"""What keras-flix does differently on each Keras backend.

Library code uses `keras.ops`. What `keras.ops` cannot express lives in one
module per backend (`jax.py`, `tensorflow.py`, `torch.py`, and `other.py`
for the rest), each defining the same names; this package exposes those of
the backend Keras runs on:

* `host_value(x)`: a tensor's values as NumPy, when they can be read now
  without a device sync (else `None`);
* `assert_in_range_in_graph(feature_ids, num_values)`: a runtime range
  check of ids inside compiled graphs, where the backend has one;
* `row_sparse_train_step`: the training step whose adapter-table gradients
  are row-sparse (`None` where the backend's own gradients already are),
  and `keras_trainer`, the Keras trainer class whose `train_step` it
  takes the place of (`None` there too), and
  `row_sparse_step_traceable_here()`, whether the step being traced now
  may be the row-sparse one (not under `torch.compile`);
* `row_sparse_parts(gradient)`: `(row indices, row values)` of a
  row-sparse gradient, else `None`;
* `assign_rows(variable, rows, values)`: writes rows of a variable in
  place, where the backend runs eagerly (torch); `None` where updates are
  functional and XLA makes them in place;
* `refresh_parameter_registry(layer)`: re-registers a layer's variables
  with its framework module after model surgery;
* `sublayer_attributes(layer)`: the attributes a framework keeps
  sublayers in besides `__dict__`;
* `check_saved_model_export()`: raises if the backend cannot export a
  SavedModel here; `saved_model_endpoint_options(shapes, constraints)`:
  what an export endpoint needs to keep the unknown sizes of its inputs
  unknown, and `DYNAMIC_SHAPE_ERRORS`, what tracing raises where it cannot;
* `integer_matmul(x1, x2)` / `integer_einsum(subscripts, *operands)`:
  int8 products in int32 by an integer GEMM that Keras does not use here
  (None from a call where it does not apply; None as a whole on backends
  whose Keras products are already the fast ones);
* `on_tpu()`: whether the model runs on TPU;
* `framework_random_state()` / `set_framework_random_state(state)`: the
  framework's global random state that Keras draws from outside its seed
  generators (torch's), as NumPy arrays by name;
* `skip_train_function(logs, steps_per_execution)`: a stand-in for
  `model.train_function` that consumes one step's batches without
  training (resuming a fit mid-epoch).

No other module imports jax or torch or asks which backend runs.
"""

import importlib

import keras
import numpy as np

_MODULES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}

_backend = importlib.import_module(
    f"{__name__}.{_MODULES.get(keras.backend.backend(), 'other')}"
)

DYNAMIC_SHAPE_ERRORS = _backend.DYNAMIC_SHAPE_ERRORS
assert_in_range_in_graph = _backend.assert_in_range_in_graph
assign_rows = _backend.assign_rows
check_saved_model_export = _backend.check_saved_model_export
keras_trainer = _backend.keras_trainer
framework_random_state = _backend.framework_random_state
integer_einsum = _backend.integer_einsum
integer_matmul = _backend.integer_matmul
on_tpu = _backend.on_tpu
refresh_parameter_registry = _backend.refresh_parameter_registry
row_sparse_parts = _backend.row_sparse_parts
row_sparse_train_step = _backend.row_sparse_train_step
row_sparse_step_traceable_here = _backend.row_sparse_step_traceable_here
saved_model_endpoint_options = _backend.saved_model_endpoint_options
set_framework_random_state = _backend.set_framework_random_state
skip_train_function = _backend.skip_train_function
sublayer_attributes = _backend.sublayer_attributes


def host_value(x):
    """Returns `x` as a NumPy array if its values are on the host now.

    Args:
        x: a tensor, NumPy array or nested Python list.

    Returns:
        A NumPy array, or `None` when `x` is symbolic (traced by `jax.jit`,
        `tf.function` or torch's compiler, or a `KerasTensor`) or lives on an
        accelerator, where reading it would force a host-device sync.

    Example:

    >>> host_value([[0, -1]]).tolist()
    [[0, -1]]
    """
    if isinstance(x, (np.ndarray, list, tuple, int)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    return _backend.host_value(x)
