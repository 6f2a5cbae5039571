"""Optimizers for FLix adapters.

`LazyAdam` updates only the adapter-table rows (feature values) that a batch
used, so an optimizer step over a schema of 1,024 values per type costs what
one over 8 does. See its docstring for how that changes Adam's semantics.
"""

from keras_flix.src.optimizers import LazyAdam

__all__ = ["LazyAdam"]
