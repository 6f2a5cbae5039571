"""Adapter rows gathered once per batch, for row-sparse table gradients.

A FLix layer normally selects each example's adapter from its tables with a
gather, so the gradient with respect to a table is a dense tensor of the
table's shape (zeros, plus the rows the batch used). A training step that
wants gradients with respect to the used rows only (the row-sparse steps
in `keras_flix.src.backend.jax` and `.torch`) gathers those rows itself,
once per table, and opens a `gathered_rows_scope`; inside it a FLix layer selects
each example's adapter from the gathered rows instead of the table, so the
gathered rows, not the table, are what the step differentiates.
"""

import contextlib
import threading

_state = threading.local()


class GatheredRows:
    """The rows of one adapter table that a batch uses.

    Args:
        values: `[n_gathered, ...]`, rows of the table.
        slots: int32 `[batch]`, each example's index into `values`.
        rows: int32 `[batch]`, each example's row of the table (as a FLix
            layer computes it from the ids it sees: absent and invalid ids
            give row 0). A layer checks its own rows against these.
    """

    def __init__(self, values, slots, rows):
        self.values = values
        self.slots = slots
        self.rows = rows


@contextlib.contextmanager
def gathered_rows_scope(gathered):
    """Makes FLix layers select their adapters from gathered rows.

    Args:
        gathered: dict from `id(table variable)` to `GatheredRows`. Tables
            not in it are read as usual.
    """
    previous = getattr(_state, "gathered", None)
    _state.gathered = gathered
    try:
        yield
    finally:
        _state.gathered = previous


def gathered_rows_of(table):
    """The `GatheredRows` of the table variable `table` in scope, or `None`."""
    gathered = getattr(_state, "gathered", None)
    return gathered.get(id(table)) if gathered else None


def gathered_rows_by_table(variables, tables, values, used):
    """The mapping a `gathered_rows_scope` takes.

    Args:
        variables: the model's trainable variables.
        tables: `adapter_tables(model)`.
        values: dict index -> the gathered rows of that table.
        used: `used_rows(...)`.
    """
    return {
        id(variables[index]): GatheredRows(
            values[index], used[feature_type][1], used[feature_type][2]
        )
        for index, feature_type in tables.items()
    }
