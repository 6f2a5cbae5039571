"""Where a training step can take over the adapter rows FLix layers select.

A FLix layer selects each example's adapter from its tables (`table[rows]`),
so the gradient with respect to a table is a dense tensor of the table's
shape: zeros, plus the rows the batch used. The row-sparse training steps
(`keras_flix.src.row_sparse_step`) want gradients of the selected rows only.
Inside a `selection_route`, every selection a FLix layer makes goes through
the step's `route(table, rows, selected)`, which records which rows were
selected and returns the tensor the layer computes with, e.g. the selection
plus a zero the step differentiates (jax), or the selection as a leaf tensor
of its own (torch). The route sees the rows the layer really uses (after
feature dropout, wherever the ids came from), in whatever model the layer
sits.
"""

import contextlib
import threading

_state = threading.local()


@contextlib.contextmanager
def selection_route(route):
    """Sends every adapter selection of FLix layers through `route`.

    Args:
        route: `route(table, rows, selected) -> tensor`: `table` the
            adapter table variable, `rows` int32 `[batch]` the selected
            rows, `selected` `table[rows]`; returns what the layer uses in
            place of `selected` (same shape and dtype).
    """
    previous = getattr(_state, "route", None)
    _state.route = route
    try:
        yield
    finally:
        _state.route = previous


def routed(table, rows, selected):
    """`selected` (`table[rows]`), or what the route in scope makes of it."""
    route = getattr(_state, "route", None)
    return selected if route is None else route(table, rows, selected)
