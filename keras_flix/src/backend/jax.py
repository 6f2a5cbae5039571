"""jax: the row-sparse training step, `BCOO` gradients, host values.

The training step's adapter-table gradients are row-sparse.

Keras' jax trainer differentiates the loss with respect to every trainable
variable, so the gradient of an adapter table of `n_values` rows is a dense
tensor of the table's shape, written in full at every step although a batch
uses at most `batch_size` of its rows (TensorFlow avoids this by itself: the
gradient of a gather is an `IndexedSlices`). This step gathers the rows each
table's feature type uses in the batch once, differentiates with respect to
those rows (FLix layers select from them inside a `gathered_rows_scope`),
and hands the optimizer each table's gradient as a `BCOO` of those rows.
Nothing of size `n_values` is written except the rows the optimizer updates.

Used by `FLixModel.train_step` when the optimizer asks for it
(`LazyAdam(sparse_gradients=True)`, the default).
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.experimental import sparse as jax_sparse

from keras_flix.src import keras_private
from keras_flix.src.backend.common import assert_in_range_in_graph  # noqa: F401
from keras_flix.src.backend.common import check_saved_model_export  # noqa: F401
from keras_flix.src.backend.common import on_tpu  # noqa: F401
from keras_flix.src.backend.common import refresh_parameter_registry  # noqa: F401
from keras_flix.src.backend.common import framework_random_state  # noqa: F401
from keras_flix.src.backend.common import set_framework_random_state  # noqa: F401
from keras_flix.src.backend.common import sublayer_attributes  # noqa: F401
from keras_flix.src.layers.gathered_rows import gathered_rows_by_table
from keras_flix.src.layers.gathered_rows import gathered_rows_scope


def row_sparse_train_step(model, state, data, tables, used):
    """`keras.Model.train_step` (jax) with row-sparse table gradients.

    Args:
        model: the `FLixModel`.
        state: `(trainable, non_trainable, optimizer, metrics)` variable
            values, as Keras' jax trainer passes them.
        data: the batch, `(x, y, sample_weight)` or a prefix of it.
        tables: `adapter_tables(model)`, index in
            `model.trainable_variables` -> feature type.
        used: `used_rows(...)` of the batch, computed with `unique_rows`.

    Returns:
        `(logs, state)`, as Keras' jax `train_step` returns them.
    """
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    variables = model.trainable_variables
    differentiated = [
        jnp.take(value, used[tables[index]][0], axis=0) if index in tables else value
        for index, value in enumerate(trainable)
    ]

    def loss_and_updates(differentiated):
        values = [
            trainable[index] if index in tables else value
            for index, value in enumerate(differentiated)
        ]
        gathered = gathered_rows_by_table(
            variables, tables, dict(enumerate(differentiated)), used
        )
        with gathered_rows_scope(gathered):
            return model.compute_loss_and_updates(
                values,
                non_trainable,
                metrics_values,
                x,
                y,
                sample_weight,
                training=True,
                optimizer_variables=optimizer_values,
            )

    (_, aux), grads = jax.value_and_grad(loss_and_updates, has_aux=True)(
        differentiated
    )
    unscaled_loss, y_pred, non_trainable, metrics_values = aux
    grads = [
        jax_sparse.BCOO(
            (grad, used[tables[index]][0][:, None]), shape=trainable[index].shape
        )
        if index in tables
        else grad
        for index, grad in enumerate(grads)
    ]
    trainable, optimizer_values = model.optimizer.stateless_apply(
        optimizer_values, grads, trainable
    )
    logs, metrics_values = keras_private.update_metrics_variables(
        model, metrics_values, unscaled_loss, x, y, y_pred, sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


def unique_rows(rows):
    """The distinct rows of `[batch]` rows, and each example's slot in them."""
    # A static size keeps shapes fixed under jit: the distinct rows are padded
    # with copies of the first, which no example's slot points to.
    unique, slots = jnp.unique(rows, size=rows.shape[0], return_inverse=True)
    return unique, jnp.reshape(slots, (-1,))


def host_value(x):
    if isinstance(x, jax.core.Tracer):
        return None
    if all(d.platform == "cpu" for d in x.devices()):
        return np.asarray(x)
    return None


def row_sparse_parts(gradient):
    """`(indices, values)` of a `BCOO` of rows (what the step above makes)."""
    if (
        isinstance(gradient, jax_sparse.BCOO)
        and gradient.n_sparse == 1
        and gradient.n_batch == 0
    ):
        return gradient.indices[:, 0], gradient.data
    return None


def skip_train_function(logs, steps_per_execution):
    """A train function that pulls its batches, drops them: state unchanged.

    Keras' JAX train function takes `(state, iterator)` and pulls
    `steps_per_execution` batches itself.
    """

    def skip(state, iterator):
        for _ in range(steps_per_execution):
            next(iterator)
        return logs, state

    return skip
