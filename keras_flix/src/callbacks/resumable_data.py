"""Which training data a fit can resume on exactly, and where it resumes.

Keras' `fit` draws batches from the data in one of two ways:

* without `steps_per_epoch` (or with one that covers the whole dataset) it
  starts a fresh pass over the data every epoch, so a fit resumed at epoch
  `e` sees epoch `e`'s batches only if every pass yields the same batches in
  the same order;
* with `steps_per_epoch` and endless data (`dataset.repeat()`,
  `keras_flix.data.mix`) it keeps one iterator for the whole fit, so epoch
  `e` starts `e * steps_per_epoch` batches into the stream, which a resumed
  fit skips to.

Either way a fresh iterator must yield what the first one did: a `tf.data`
shuffle with `reshuffle_each_iteration=True` (its default) shares one seed
generator between all iterators of the dataset, and each pass any iterator
starts, including the passes that the prefetch of the iterator Keras opens
to build the model runs ahead into, moves it on, so not even two
uninterrupted fits need to see the same batches. Such data, arrays with
Keras' default `shuffle=True` (shuffled from the process's random state),
and data that cannot be repositioned (Python generators, `PyDataset`s,
finite datasets only partly consumed per epoch) are refused with an error
saying what to pass instead.
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
        _check_iterators_repeat(x)
        if keeps_one_iterator(x, steps_per_epoch):
            return x.skip(epoch * steps_per_epoch)
        return x
    if steps_per_epoch is None and _is_arrays(x):
        if shuffle:
            raise ValueError(
                "Arrays with shuffle=True (Keras' default) are shuffled from "
                "the process's random state, so a resumed fit would see "
                "other batches. Pass shuffle=False, or a tf.data.Dataset "
                "shuffled with a seed, e.g. "
                "`dataset.shuffle(n, seed=0, reshuffle_each_iteration=False)`."
            )
        return x
    raise ValueError(
        "An exactly resumable fit needs a tf.data.Dataset (or arrays with "
        f"shuffle=False and no steps_per_epoch); received {type(x).__name__}"
        + (f" with steps_per_epoch={steps_per_epoch}" if steps_per_epoch else "")
        + "."
    )


def batch_spec(x, y=None, sample_weight=None):
    """What one batch that `fit` draws from the data looks like.

    Args:
        x, y, sample_weight: as given to `fit` (a `tf.data.Dataset` carries
            its targets in `x`).

    Returns:
        The nested `keras.KerasTensor`s of one `(x, y, sample_weight)` batch
        (of a dataset's elements), batch size unknown.

    Example:

    >>> import numpy as np
    >>> inputs, targets, weights = batch_spec(np.zeros((10, 3)), np.zeros(10))
    >>> inputs.shape, targets.shape, weights
    ((None, 3), (None,), None)
    """
    import tensorflow as tf

    def symbolic(leaf, batched):
        # A dataset's elements are batches already; arrays hold all samples.
        shape = tuple(leaf.shape)
        return keras.KerasTensor(
            (None,) + shape[1:] if batched else shape,
            keras.backend.standardize_dtype(leaf.dtype),
        )

    if isinstance(x, tf.data.Dataset):
        return keras.tree.map_structure(
            lambda spec: symbolic(spec, batched=False), x.element_spec
        )
    return tuple(
        None if part is None
        else keras.tree.map_structure(lambda leaf: symbolic(leaf, batched=True), part)
        for part in (x, y, sample_weight)
    )


def keeps_one_iterator(x, steps_per_epoch):
    """Whether `fit` draws every epoch from one iterator of `x`.

    True for a `tf.data.Dataset` that is endless (or of unknown length,
    taken to be endless) with `steps_per_epoch`; false where each epoch is
    a fresh pass.

    Raises:
        ValueError: for a finite dataset with a smaller `steps_per_epoch`,
            whose epochs continue where the previous one stopped until the
            data runs out.
    """
    import tensorflow as tf

    if steps_per_epoch is None or not isinstance(x, tf.data.Dataset):
        return False
    cardinality = int(x.cardinality())
    if 0 <= cardinality <= steps_per_epoch:
        return False
    if cardinality >= 0:
        raise ValueError(
            f"A fit with steps_per_epoch={steps_per_epoch} over a dataset of "
            f"{cardinality} batches continues each epoch where the previous "
            "one stopped, which a resumed fit cannot reproduce. Make the "
            "dataset endless (`dataset.repeat()`) or leave out "
            "steps_per_epoch."
        )
    return True


def _is_arrays(x):
    leaves = keras.tree.flatten(x)
    return bool(leaves) and all(
        isinstance(leaf, np.ndarray) or keras.ops.is_tensor(leaf) for leaf in leaves
    )


def _check_iterators_repeat(dataset):
    """Raises if two fresh iterators of `dataset` start with different batches.

    A resumed fit reads its data from a fresh iterator, which must yield
    what the interrupted fit's did: a check of the first batch catches
    `shuffle(...)` with `reshuffle_each_iteration=True` and unseeded random
    maps.
    """
    first, second = (next(iter(dataset), None) for _ in range(2))
    same = keras.tree.map_structure(
        lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), first, second
    )
    if not all(keras.tree.flatten(same)):
        raise ValueError(
            "Two iterators of the dataset start with different batches, so a "
            "resumed fit would not see the batches the interrupted one would "
            "have. Shuffle with a seed and reshuffle_each_iteration=False "
            "(`dataset.shuffle(n, seed=0, reshuffle_each_iteration=False)`), "
            "and seed every random map."
        )
