"""Row-sparse adapter-table gradients, whatever model holds the FLix layers.

A FLix layer's adapter table has a row per feature value, and a batch uses
at most a batch's worth of them; Keras' jax and torch trainers still
differentiate with respect to whole tables, so every step writes a dense
gradient of each table's shape, and the cost of a step grows with the
number of values (TensorFlow avoids this by itself: the gradient of a
gather is an `IndexedSlices`). The backends' row-sparse steps
(`keras_flix.src.backend.jax` and `.torch`) differentiate with respect to
the rows the FLix layers select instead (see `selection_route`) and give
the optimizer each table's gradient as sparse rows.

`install()` (run when `keras_flix` is imported) puts a dispatching step in
place of the `train_step` of Keras' jax and torch trainers, which every
Keras model inherits: a model whose optimizer takes row-sparse gradients
(`kf.optimizers.LazyAdam`) and whose trainable variables include FLix
adapter tables trains with the row-sparse step; every other model runs
Keras' own step, unchanged. So a `FLixModel`, a Functional model with a
head around a retrofitted backbone, a Sequential model or a subclassed one
calling FLix layers all get it, without asking; a model that overrides
`train_step` keeps its own. A torch step compiled by `torch.compile`
(`jit_compile=True`) runs Keras' own step too: its compiler cannot trace
sparse COO tensors.
"""

import functools

from keras_flix.src import backend
from keras_flix.src import keras_private
from keras_flix.src.layers.flix_adapter import is_adapter_table


def row_sparse_tables(model):
    """The tables whose gradients the row-sparse step makes row-sparse.

    Args:
        model: a compiled Keras model.

    Returns:
        dict index in `model.trainable_variables` -> FLix adapter table;
        empty when the step does not apply (an optimizer that does not take
        row-sparse gradients, or no trainable table).
    """
    optimizer = getattr(model, "optimizer", None)
    if not getattr(optimizer, "takes_row_sparse_gradients", False):
        return {}
    return {
        index: variable
        for index, variable in enumerate(model.trainable_variables)
        if is_adapter_table(variable)
    }


def _dispatching(keras_train_step):
    @functools.wraps(keras_train_step)
    def train_step(model, *args):
        tables = row_sparse_tables(model)
        if not tables or not backend.row_sparse_step_traceable_here():
            return keras_train_step(model, *args)
        # Looked up per call, so that the backend's step can be observed.
        return backend.row_sparse_train_step(model, *args, tables=tables)

    return train_step


def install():
    """Makes Keras' trainers dispatch to the row-sparse step (idempotent)."""
    if backend.keras_trainer is not None:
        keras_private.wrap_train_step(backend.keras_trainer, _dispatching)
