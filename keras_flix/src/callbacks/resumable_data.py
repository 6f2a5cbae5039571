"""Which training data a fit can resume on exactly, and where it resumes.

Keras' `fit` draws batches from the data in one of two ways:

* without `steps_per_epoch` (or with one that covers the whole dataset) it
  starts a fresh pass over the data every epoch, so a fit resumed at epoch
  `e` sees epoch `e`'s batches only if every pass yields the same batches in
  the same order;
* with `steps_per_epoch` and endless data (`dataset.repeat()`,
  `keras_flix.data.mix`) it keeps one iterator for the whole fit, so epoch
  `e` starts `e * steps_per_epoch` batches into the stream, which a fresh
  process reproduces from the same pipeline (seeded shuffles, or
  `keras.utils.set_random_seed` before building it).

Data whose order depends on the process's random state (arrays with Keras'
default `shuffle=True`, a `tf.data` shuffle that reshuffles every pass) or
that cannot be repositioned (Python generators, `PyDataset`s, finite
datasets only partly consumed per epoch) is refused with an error saying
what to pass instead.
"""

import keras
import numpy as np


def at_epoch(x, epoch, steps_per_epoch=None, shuffle=True):
    """`x` as a fresh process must feed it to `fit` to resume at `epoch`.

    Args:
        x: the `x` given to `fit` (after any preprocessing pipeline).
        epoch: the epoch the fit resumes at (0 for a fit from the start,
            which is checked the same way).
        steps_per_epoch, shuffle: as given to `fit`.

    Returns:
        `x` itself, or, for endless data with `steps_per_epoch`, the
        dataset with the batches of the epochs before `epoch` skipped.

    Raises:
        ValueError: if a resumed fit could not see the same batches.

    Example:

    >>> import tensorflow as tf
    >>> stream = tf.data.Dataset.range(100).repeat().batch(10)
    >>> int(next(iter(at_epoch(stream, epoch=2, steps_per_epoch=3)))[0])
    60
    """
    import tensorflow as tf

    if isinstance(x, tf.data.Dataset):
        cardinality = int(x.cardinality())
        if steps_per_epoch is not None and not 0 <= cardinality <= steps_per_epoch:
            if cardinality >= 0:
                raise ValueError(
                    f"A fit with steps_per_epoch={steps_per_epoch} over a "
                    f"dataset of {cardinality} batches continues each epoch "
                    "where the previous one stopped, which a resumed fit "
                    "cannot reproduce. Make the dataset endless "
                    "(`dataset.repeat()`) or leave out steps_per_epoch."
                )
            # Endless (or of unknown length, taken to be endless): one
            # iterator for the whole fit.
            return x.skip(epoch * steps_per_epoch)
        _check_passes_repeat(x)
        return x
    if steps_per_epoch is None and _is_arrays(x):
        if shuffle:
            raise ValueError(
                "Arrays with shuffle=True (Keras' default) are shuffled from "
                "the process's random state, so a resumed fit would see "
                "other batches. Pass shuffle=False, or a tf.data.Dataset "
                "shuffled with a seed, e.g. "
                "`dataset.shuffle(n, seed=0, reshuffle_each_iteration=False)`, "
                "or endless with steps_per_epoch."
            )
        return x
    raise ValueError(
        "An exactly resumable fit needs a tf.data.Dataset (or arrays with "
        f"shuffle=False and no steps_per_epoch); received {type(x).__name__}"
        + (f" with steps_per_epoch={steps_per_epoch}" if steps_per_epoch else "")
        + "."
    )


def _is_arrays(x):
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or keras.ops.is_tensor(leaf) for leaf in leaves
    )


def _check_passes_repeat(dataset):
    """Raises if two passes over `dataset` start with different batches.

    A resumed fit starts its epoch with a fresh pass, which must yield what
    that epoch's pass yielded before: a check of the first batch catches
    `shuffle(...)` with `reshuffle_each_iteration=True` (its default) and
    unseeded random maps.
    """
    first, second = (next(iter(dataset), None) for _ in range(2))
    same = keras.tree.map_structure(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), first, second
    )
    if not all(keras.tree.flatten(same)):
        raise ValueError(
            "Two passes over the dataset start with different batches, so "
            "a fit resumed at a later epoch would not see that epoch's "
            "batches. Shuffle with a seed and reshuffle_each_iteration=False "
            "(`dataset.shuffle(n, seed=0, reshuffle_each_iteration=False)`), "
            "or make the dataset endless (`.repeat()` after a seeded "
            "shuffle) and pass steps_per_epoch."
        )
