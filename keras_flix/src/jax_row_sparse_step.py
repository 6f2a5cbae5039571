"""On jax: a FLix training step whose adapter-table gradients are row-sparse.

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
(`LazyAdam(sparse_gradients=True)`, the default); this module imports jax
and is imported only on the jax backend.
"""

import jax
import jax.numpy as jnp
import keras
from jax.experimental import sparse as jax_sparse

from keras_flix.src.layers.gathered_rows import gathered_rows_scope
from keras_flix.src.row_sparse_tables import adapter_tables
from keras_flix.src.row_sparse_tables import gathered_rows_by_table
from keras_flix.src.row_sparse_tables import used_rows


def row_sparse_train_step(model, state, data, feature_ids_of):
    """`keras.Model.train_step` (jax) with row-sparse table gradients.

    Args:
        model: the `FLixModel`.
        state: `(trainable, non_trainable, optimizer, metrics)` variable
            values, as Keras' jax trainer passes them.
        data: the batch, `(x, y, sample_weight)` or a prefix of it.
        feature_ids_of: a function from `x` to the batch's feature ids.

    Returns:
        `(logs, state)`, as Keras' jax `train_step` returns them.
    """
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    used = used_rows(model, x, feature_ids_of, _unique_with_slots)
    tables = adapter_tables(model)
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
    logs, metrics_values = model._update_metrics_variables(
        metrics_values, unscaled_loss, x, y, y_pred, sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_values, metrics_values)


def _unique_with_slots(rows):
    # A static size keeps shapes fixed under jit: the distinct rows are padded
    # with copies of the first, which no example's slot points to.
    unique, slots = jnp.unique(rows, size=rows.shape[0], return_inverse=True)
    return unique, jnp.reshape(slots, (-1,))
