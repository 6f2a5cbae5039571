"""jax: the row-sparse training step, `BCOO` gradients, host values.

The training step's adapter-table gradients are row-sparse.

Keras' jax trainer differentiates the loss with respect to every trainable
variable, so the gradient of an adapter table of `n_values` rows is a dense
tensor of the table's shape, written in full at every step although a batch
uses at most `batch_size` of its rows. This step leaves the tables out of
what it differentiates and adds, to every selection of a FLix layer, a zero
of the selection's shape (`[batch, ...]`) that it differentiates instead
(`selection_route`); the gradient of that zero is the gradient of the rows
the layer selected. The optimizer gets each table's gradient as a `BCOO` of
those rows (repeats included; it sums them). Nothing of size `n_values` is
written except the rows the optimizer updates.

Used by every model's `train_step` when the optimizer asks for it
(`LazyAdam(sparse_gradients=True)`, the default; see
`keras_flix.src.row_sparse_step`).
"""

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.experimental import sparse as jax_sparse
from keras.src.backend.jax.trainer import JAXTrainer as keras_trainer  # noqa: F401

from keras_flix.src import keras_private
from keras_flix.src.backend.common import assign_rows  # noqa: F401
from keras_flix.src.backend.common import assert_in_range_in_graph  # noqa: F401
from keras_flix.src.backend.common import check_saved_model_export  # noqa: F401
from keras_flix.src.backend.common import integer_einsum  # noqa: F401
from keras_flix.src.backend.common import integer_matmul  # noqa: F401
from keras_flix.src.backend.common import on_tpu  # noqa: F401
from keras_flix.src.backend.common import refresh_parameter_registry  # noqa: F401
from keras_flix.src.backend.common import framework_random_state  # noqa: F401
from keras_flix.src.backend.common import set_framework_random_state  # noqa: F401
from keras_flix.src.backend.common import sublayer_attributes  # noqa: F401
from keras_flix.src.layers.selection_route import selection_route


def row_sparse_train_step(model, state, data, tables):
    """`keras.Model.train_step` (jax) with row-sparse table gradients.

    Args:
        model: the model trained (any model whose trainable variables
            include FLix adapter tables).
        state: `(trainable, non_trainable, optimizer, metrics)` variable
            values, as Keras' jax trainer passes them.
        data: the batch, `(x, y, sample_weight)` or a prefix of it.
        tables: `row_sparse_tables(model)`, index in
            `model.trainable_variables` -> adapter table.

    Returns:
        `(logs, state)`, as Keras' jax `train_step` returns them.
    """
    trainable, non_trainable, optimizer_values, metrics_values = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    index_of = {id(table): index for index, table in tables.items()}
    others = [None if index in tables else value for index, value in enumerate(trainable)]

    def loss_and_updates(others, zeros):
        """The loss, Keras' aux values, and every table's selections.

        `zeros`: index -> one zero per selection of that table (in call
        order), or None to only record what the model selects.
        """
        values = [
            trainable[index] if index in tables else value
            for index, value in enumerate(others)
        ]
        selections = {index: [] for index in tables}

        def route(table, rows, selected):
            index = index_of.get(id(table))
            if index is None:  # A frozen table: not differentiated.
                return selected
            uses = selections[index]
            uses.append((rows, selected))
            if zeros is None:
                return selected
            return selected + zeros[index][len(uses) - 1]

        with selection_route(route):
            loss, aux = model.compute_loss_and_updates(
                values,
                non_trainable,
                metrics_values,
                x,
                y,
                sample_weight,
                training=True,
                optimizer_variables=optimizer_values,
            )
        return loss, (aux, selections)

    # How many selections of what shape the model makes: a trace, no compute.
    shapes = jax.eval_shape(lambda o: loss_and_updates(o, None), others)[1][1]
    zeros = {
        index: [jnp.zeros(selected.shape, selected.dtype) for _, selected in uses]
        for index, uses in shapes.items()
    }
    (_, (aux, selections)), (grads, zero_grads) = jax.value_and_grad(
        loss_and_updates, argnums=(0, 1), has_aux=True
    )(others, zeros)
    unscaled_loss, y_pred, non_trainable, metrics_values = aux
    grads = [
        _rows_gradient(selections[index], zero_grads[index], trainable[index].shape)
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


def _rows_gradient(uses, grads, shape):
    """A table's gradient as a `BCOO` of the rows its selections used."""
    if not uses:  # Not selected in this step: a zero row, which is not updated.
        return jax_sparse.BCOO(
            (jnp.zeros((1, *shape[1:])), jnp.zeros((1, 1), "int32")), shape=shape
        )
    rows = jnp.concatenate([jnp.reshape(rows, (-1,)) for rows, _ in uses])
    values = jnp.concatenate([jnp.reshape(g, (-1, *shape[1:])) for g in grads])
    return jax_sparse.BCOO((values, rows[:, None]), shape=shape)


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


DYNAMIC_SHAPE_ERRORS = (jax.errors.InconclusiveDimensionOperation,)
"""What `jax.export` raises for a size it cannot keep symbolic."""


def saved_model_endpoint_options(shapes, constraints):
    """jax2tf options that trace an endpoint with symbolic sizes.

    Keras names every unknown size on its own (two inputs' sequence lengths
    become unrelated symbols) and bounds none; these options give the sizes
    that are one size one name and add the bounds. Gradients are not
    exported: jax2tf drops the constraints when it converts them, and a
    serving signature never needs them.

    Args:
        shapes: the symbolic shape of each input of the endpoint's one
            (dict) argument (see `keras_flix.src.symbolic_shapes`).
        constraints: bounds on their sizes, e.g. `["sequence <= 512"]`.

    Returns:
        Keyword arguments for `keras.export.ExportArchive.add_endpoint`.
    """
    return {
        "jax2tf_kwargs": {
            "polymorphic_shapes": [shapes],
            "polymorphic_constraints": list(constraints),
            "with_gradient": False,
        }
    }


def row_sparse_step_traceable_here():
    """The row-sparse step traces under `jax.jit` like Keras' own."""
    return True


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
