"""On torch: a FLix training step whose adapter-table gradients are row-sparse.

The torch counterpart of `keras_flix.src.jax_row_sparse_step`: autograd
would give every adapter table a dense gradient of the table's shape (zeros
plus the rows the batch used). This step gathers the rows each table's
feature type uses in the batch once, as leaf tensors that FLix layers select
from inside a `gathered_rows_scope`, so backpropagation reaches those rows
only, and hands the optimizer each table's gradient as a sparse COO tensor
of them. Used by `FLixModel.train_step` when the optimizer asks for it
(`LazyAdam(sparse_gradients=True)`, the default); this module imports torch
and is imported only on the torch backend.
"""

import keras
import torch

from keras_flix.src.layers.gathered_rows import gathered_rows_scope
from keras_flix.src.row_sparse_tables import adapter_tables
from keras_flix.src.row_sparse_tables import gathered_rows_by_table
from keras_flix.src.row_sparse_tables import used_rows


def row_sparse_train_step(model, data, feature_ids_of):
    """`keras.Model.train_step` (torch) with row-sparse table gradients.

    Args:
        model: the `FLixModel`.
        data: the batch, `(x, y, sample_weight)` or a prefix of it.
        feature_ids_of: a function from `x` to the batch's feature ids.

    Returns:
        The metrics' results, as Keras' torch `train_step` returns them.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    used = used_rows(
        model, x, feature_ids_of, lambda rows: torch.unique(rows, return_inverse=True)
    )
    tables = adapter_tables(model)
    variables = model.trainable_variables
    gathered_rows = {
        index: variables[index].value.detach()[used[feature_type][0]].requires_grad_()
        for index, feature_type in tables.items()
    }
    gathered = gathered_rows_by_table(variables, tables, gathered_rows, used)
    with gathered_rows_scope(gathered):
        y_pred = model(x, training=True)
    model.zero_grad()
    loss = model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    model._loss_tracker.update_state(
        loss,
        sample_weight=next(i for i in keras.tree.flatten(x) if i is not None).shape[0],
    )
    model.optimizer.scale_loss(loss).backward()
    grads = []
    for index, variable in enumerate(variables):
        if index not in tables:
            grads.append(variable.value.grad)
            continue
        grad = gathered_rows[index].grad
        grads.append(
            None
            if grad is None
            else torch.sparse_coo_tensor(
                used[tables[index]][0][None],
                grad,
                tuple(variable.shape),
                is_coalesced=True,  # `torch.unique`'s rows: sorted, distinct
                check_invariants=False,
            )
        )
    with torch.no_grad():
        model.optimizer.apply(grads, variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
