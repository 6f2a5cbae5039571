"""`LazyAdam`: Adam that updates only the adapter rows a batch used."""

import keras
from keras import ops

from keras_flix.src import backend
from keras_flix.src import keras_private
from keras_flix.src.layers.flix_adapter import is_adapter_table


@keras.saving.register_keras_serializable(package="keras_flix")
class LazyAdam(keras.optimizers.Adam):
    """Adam with row-sparse ("lazy") updates of FLix adapter tables.

    A FLix layer keeps one adapter per feature value in tables of shape
    `[n_values, ...]`, and a batch uses only the rows of its examples'
    values. Plain Adam updates every row of every table at every step (an
    unused row still gets a zero gradient, and its moments decay and keep
    moving it), so its cost grows with the number of values. `LazyAdam`
    updates, in each table, only the rows whose gradient is not all zero —
    exactly the rows of the values present in the batch (an absent or
    dropped feature gives its row no gradient) — and leaves the other rows,
    and their moments, as they are. Every other variable (a task head
    trained with `train_also`, ...) gets the ordinary Adam update.

    How this changes Adam (the semantics of TensorFlow Addons' `LazyAdam`):

    * the first and second moments of an unused row are not decayed, so
      when the value appears again its moments are those of its last use;
    * an unused row does not keep moving on its momentum;
    * bias correction uses the global step count, not the number of steps
      in which the row was used;
    * `weight_decay` (decoupled, as in Keras) is applied to the used rows
      only.

    With every row used at every step it computes exactly what Adam does.

    Cost: the used rows of a table are gathered, updated and written back
    in place, so the update costs in proportion to the rows used, not to
    `n_values`. On torch (eager) that is one gather and one in-place
    `index_copy_` per table and moment. On jax and TensorFlow the rows go
    `max_sparse_rows` at a time (one round when a batch uses no more rows
    than that), as a loop on the device that XLA compiles to in-place
    updates of the donated buffers; a table with at most `max_sparse_rows`
    rows gets a masked update of the whole table instead. Finding the used
    rows of a dense gradient reads it once.

    Gradients: a dense table gradient is read once to find the used rows.
    Row-sparse gradients skip even that: TensorFlow makes them itself (the
    gradient of a gather is an `IndexedSlices`), and on jax and torch any
    model compiled with this optimizer whose trainable variables include
    FLix adapter tables (the `FLixModel` itself, a model with a head around
    a retrofitted backbone, a subclassed model calling FLix layers) trains
    with a step that differentiates with respect to the rows the FLix layers
    select and passes each table's gradient as a jax `BCOO` or torch sparse
    COO tensor of them (`sparse_gradients=True`, the default; see
    `keras_flix/src/row_sparse_step.py`), so nothing of the table's size is
    written but the updated rows. Same numbers as with dense gradients
    (tested). It is not used, and dense gradients are, when an option needs
    every gradient dense: `clipnorm`, `global_clipnorm`, `clipvalue`,
    `gradient_accumulation_steps`, `loss_scale_factor`; nor by a model that
    overrides `train_step`.

    Args:
        learning_rate, beta_1, beta_2, epsilon: as for
            `keras.optimizers.Adam` (no `amsgrad`).
        max_sparse_rows: on jax and TensorFlow, how many rows per table one
            round of the update gathers and scatters. Each round moves this
            many rows whether used or not, so about the number of distinct
            values a batch uses (at most the batch size) is best; fewer
            means more rounds. (torch updates exactly the used rows.)
        sparse_gradients: on jax and torch, let `fit` compute row-sparse
            table gradients (see above). `False` gives Keras' own step.
        **kwargs: the base optimizer's arguments (`weight_decay`,
            `clipnorm`, `name`, ...).

    Example:

    >>> import numpy as np
    >>> import keras
    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en", "de", "sw"]})
    >>> inputs = keras.Input((4,))
    >>> base = keras.Model(inputs, keras.layers.Dense(2, name="proj")(inputs))
    >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"])
    >>> model.compile(optimizer=kf.optimizers.LazyAdam(0.01), loss="mse")
    >>> a = model.flix_layers[0].adapter_a["language"]
    >>> before = keras.ops.convert_to_numpy(a).copy()
    >>> x = {"inputs": np.ones((2, 4), "float32"),
    ...      "feature_ids": schema.encode([{"language": "en"}, {"language": "sw"}])}
    >>> _ = model.fit(x, np.ones((2, 2), "float32"), epochs=3, verbose=0)
    >>> moved = np.abs(keras.ops.convert_to_numpy(a) - before).max(axis=(1, 2)) > 0
    >>> moved.tolist()  # "de" was never used
    [True, False, True]
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        max_sparse_rows=32,
        sparse_gradients=True,
        name="lazy_adam",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=False,
            name=name,
            **kwargs,
        )
        if (
            isinstance(max_sparse_rows, bool)
            or not isinstance(max_sparse_rows, int)
            or max_sparse_rows < 1
        ):
            raise ValueError(
                "`max_sparse_rows` must be a positive int. Received: "
                f"{max_sparse_rows!r}"
            )
        self.max_sparse_rows = max_sparse_rows
        if not isinstance(sparse_gradients, bool):
            raise ValueError(
                "`sparse_gradients` must be True or False. Received: "
                f"{sparse_gradients!r}"
            )
        self.sparse_gradients = sparse_gradients

    @property
    def takes_row_sparse_gradients(self):
        """Whether a training step may pass table gradients as sparse rows.

        True when `sparse_gradients` is on and no option transforms every
        gradient as a dense tensor (clipping, gradient accumulation, a loss
        scale factor).
        """
        return self.sparse_gradients and not any(
            (
                self.clipnorm,
                self.global_clipnorm,
                self.clipvalue,
                self.gradient_accumulation_steps,
                self.loss_scale_factor,
            )
        )

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        # `update_step` receives the backend's variable on TensorFlow, which
        # does not carry the FLix tag: keep the tag by variable index.
        self._lazy_tables = [is_adapter_table(v) for v in var_list]

    def _apply_weight_decay(self, variables):
        # Tables decay lazily, in `update_step`, only where they are used.
        variables = [
            v for v in variables
            if not self._lazy_tables[keras_private.variable_index(self, v)]
        ]
        if variables:
            super()._apply_weight_decay(variables)

    def update_step(self, gradient, variable, learning_rate):
        index = keras_private.variable_index(self, variable)
        if not self._lazy_tables[index]:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        local_step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        decay = None
        if self.weight_decay is not None:
            decay = lr * ops.cast(self.weight_decay, dtype)
        m_variable, v_variable = keras_private.adam_moments(self, index)
        p, m, v = (
            ops.convert_to_tensor(t) for t in (variable, m_variable, v_variable)
        )
        num_rows = variable.shape[0]
        row_shape = (num_rows,) + (1,) * (len(variable.shape) - 1)
        k = min(self.max_sparse_rows, num_rows)

        def adam(g, p, m, v):
            if decay is not None:
                p = p - p * decay
            m = m + (g - m) * (1 - self.beta_1)
            v = v + (ops.square(g) - v) * (1 - self.beta_2)
            return p - m * alpha / (ops.sqrt(v) + self.epsilon), m, v

        sparse = backend.row_sparse_parts(gradient)
        if backend.assign_rows is not None:
            # Eager: gather the used rows, update them, write them back in
            # place; nothing of the table's size is computed or copied.
            if sparse is not None:
                rows, g = sparse  # each row once, its repeats summed
                g = ops.cast(g, dtype)
            else:
                gradient = ops.cast(ops.convert_to_tensor(gradient), dtype)
                rows = ops.nonzero(_nonzero_rows(gradient))[0]
                g = ops.take(gradient, rows, axis=0)
            keep = ops.reshape(_nonzero_rows(g), (-1,) + row_shape[1:])
            old = [ops.take(t, rows, axis=0) for t in (p, m, v)]
            for target, n, o in zip((variable, m_variable, v_variable), adam(g, *old), old):
                backend.assign_rows(target, rows, ops.where(keep, n, o))
            return
        if sparse is not None:
            # A row-sparse gradient: the rows it names, repeats included, and
            # their values. It is never made dense; each round sums the
            # repeats of its rows.
            indices, values = sparse
            indices = ops.cast(indices, "int32")
            values = ops.cast(values, dtype)
            named = ops.segment_sum(
                ops.ones_like(indices, dtype="float32"), indices, num_rows
            )
            pending = ops.greater(named, 0)

            def gradient_rows(rows, count):
                slots = ops.scatter_update(
                    ops.full((num_rows,), count, "int32"),
                    ops.expand_dims(rows, -1),
                    ops.arange(count, dtype="int32"),
                )
                # Rows outside this round go to the extra slot `count`.
                return ops.segment_sum(
                    values, ops.take(slots, indices), count + 1
                )[:count]

        else:
            gradient = ops.cast(ops.convert_to_tensor(gradient), dtype)
            pending = _nonzero_rows(gradient)

            def gradient_rows(rows, count):
                return ops.take(gradient, rows, axis=0)

        if k == num_rows:
            g = gradient_rows(ops.arange(num_rows, dtype="int32"), num_rows)
            mask = ops.reshape(_nonzero_rows(g), row_shape)
            p, m, v = (
                ops.where(mask, new, old)
                for new, old in zip(adam(g, p, m, v), (p, m, v))
            )
        else:

            def update_rows(p, m, v, pending):
                # The k largest of a 0/1 mask: pending rows first, then rows
                # written back unchanged. The indices are distinct.
                _, rows = ops.top_k(ops.cast(pending, "float32"), k, sorted=False)
                g = gradient_rows(rows, k)
                keep = ops.logical_and(ops.take(pending, rows), _nonzero_rows(g))
                keep = ops.reshape(keep, (k,) + row_shape[1:])
                old = [ops.take(t, rows, axis=0) for t in (p, m, v)]
                new = adam(g, *old)
                indices = ops.expand_dims(rows, -1)
                p, m, v = (
                    ops.scatter_update(full, indices, ops.where(keep, n, o))
                    for full, n, o in zip((p, m, v), new, old)
                )
                pending = ops.scatter_update(
                    pending, indices, ops.zeros((k,), "bool")
                )
                return p, m, v, pending

            # One iteration per `k` used rows: usually one. A loop (not a
            # conditional) keeps XLA updating the donated buffers in place.
            p, m, v, _ = ops.while_loop(
                lambda p, m, v, pending: ops.any(pending),
                update_rows,
                (p, m, v, pending),
            )
        self.assign(m_variable, m)
        self.assign(v_variable, v)
        self.assign(variable, p)

    def get_config(self):
        config = super().get_config()
        config.pop("amsgrad")
        config["max_sparse_rows"] = self.max_sparse_rows
        config["sparse_gradients"] = self.sparse_gradients
        return config


def _nonzero_rows(x):
    """Whether each row (first axis) of `x` holds a nonzero (or NaN) value."""
    # A sum of magnitudes is zero only for an all-zero row; NaN and inf
    # count, so they reach the weights as they would with Adam.
    return ops.not_equal(ops.sum(ops.abs(x), axis=tuple(range(1, len(x.shape)))), 0)

