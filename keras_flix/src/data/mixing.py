"""`mix`: samples a mixture of datasets, by weights or by temperature."""

import math
from collections.abc import Sequence
from numbers import Integral
from numbers import Real

import numpy as np

from keras_flix.src.data.elements import check_dataset


def mixture_probabilities(datasets, weights=None, temperature=None, sizes=None):
    """The probability with which `mix` draws each dataset.

    With `weights`, the weights normalised to sum to 1. Otherwise
    temperature sampling: `p_i ∝ n_i ** (1 / temperature)`, `n_i` the number
    of examples of dataset `i`. `temperature=1` (the default) samples in
    proportion to dataset sizes, larger temperatures flatten the mixture
    towards uniform, which up-samples small datasets.

    Sizes come from `sizes` when given, else from `dataset.cardinality()`
    when TensorFlow knows it (`from_tensor_slices`, TFDS, `map`, `batch`,
    `take`, ...), else by counting: one full pass over that dataset (after a
    `filter`, say). Pass `sizes` to avoid the pass.

    Args:
        datasets: a sequence of `tf.data.Dataset`s.
        weights: optional non-negative weights, one per dataset, not all 0.
        temperature: optional positive sampling temperature; `1.0` when
            neither `weights` nor `temperature` is given. Not with `weights`.
        sizes: optional number of examples of each dataset, for temperature
            sampling.

    Returns:
        A float64 NumPy array of probabilities, one per dataset, summing
        to 1.

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix.data import mixture_probabilities
    >>> datasets = [tf.data.Dataset.range(10), tf.data.Dataset.range(1000)]
    >>> mixture_probabilities(datasets, temperature=2.0).round(3).tolist()
    [0.091, 0.909]
    >>> mixture_probabilities(datasets, weights=[1, 3]).tolist()
    [0.25, 0.75]
    """
    owner = "keras_flix.data.mixture_probabilities"
    datasets = _check_datasets(datasets, owner)
    return _probabilities(datasets, weights, temperature, sizes, owner)


def _probabilities(datasets, weights, temperature, sizes, owner):
    if weights is not None:
        if temperature is not None:
            raise ValueError(
                f"{owner}: pass either `weights` or `temperature`, not both. "
                f"Received weights={weights!r}, temperature={temperature!r}."
            )
        if sizes is not None:
            raise ValueError(
                f"{owner}: `sizes` are only used for temperature sampling; "
                "with `weights` the sizes do not matter. Received "
                f"sizes={sizes!r}."
            )
        weights = _check_numbers(weights, len(datasets), "weights", owner)
        if any(w < 0 for w in weights) or not sum(weights) > 0:
            raise ValueError(
                f"{owner}: `weights` must be non-negative and not all 0. "
                f"Received weights={weights!r}."
            )
        for i, dataset in enumerate(datasets):
            _check_not_empty(dataset, i, owner)
        weights = np.asarray(weights, dtype="float64")
        return weights / weights.sum()
    temperature = 1.0 if temperature is None else temperature
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, Real)
        or not temperature > 0
    ):
        raise ValueError(
            f"{owner}: `temperature` must be a number > 0 (1 = proportional "
            f"to dataset sizes, larger = flatter). Received "
            f"temperature={temperature!r}."
        )
    if sizes is None:
        sizes = [_size(dataset, i, owner) for i, dataset in enumerate(datasets)]
    else:
        sizes = _check_numbers(sizes, len(datasets), "sizes", owner)
        if any(not isinstance(n, Integral) or n <= 0 for n in sizes):
            raise ValueError(
                f"{owner}: `sizes` must be positive integers, one per "
                f"dataset. Received sizes={sizes!r}."
            )
        for i, dataset in enumerate(datasets):
            _check_not_empty(dataset, i, owner)
    # In log space: n ** (1 / T) overflows for large n and small T.
    logits = np.log(np.asarray(sizes, dtype="float64")) / float(temperature)
    probabilities = np.exp(logits - logits.max())
    return probabilities / probabilities.sum()


def mix(datasets, weights=None, temperature=None, sizes=None, seed=None):
    """An endless mixture of datasets, each example drawn from one of them.

    Each element comes from dataset `i` with probability
    `mixture_probabilities(datasets, weights, temperature, sizes)[i]`
    (weights normalised, or `n_i ** (1 / temperature)` normalised; by
    default in proportion to dataset sizes). Every dataset is repeated, so
    small datasets recur as often as their probability says and the mixture
    never ends: give `fit` a `steps_per_epoch`, or `take` what you need.

    The order is deterministic under `seed` (together with TensorFlow's
    global seed, which `keras.utils.set_random_seed` sets): iterating the
    mixture twice, or building it again, gives the same elements. Shuffle
    each dataset before mixing if its order should change between
    repetitions. The datasets' elements must share one structure and dtypes
    (tag them first with `keras_flix.data.tag`: the ids tell the examples'
    features apart after mixing); datasets with weight 0 are left out.

    Sizes for temperature sampling cost nothing when TensorFlow knows a
    dataset's cardinality, and one full pass over the dataset otherwise (see
    `mixture_probabilities`). The realised proportions of the first `n`
    examples are `count_cells(mixed, schema, ..., max_elements=n,
    normalize=True)` (or `count_features`).

    Args:
        datasets: a sequence of `tf.data.Dataset`s of single examples (or of
            batches, then batches are drawn).
        weights: optional non-negative weights, one per dataset, not all 0.
        temperature: optional sampling temperature `> 0`, not with
            `weights`; `1.0` when neither is given.
        sizes: optional dataset sizes for temperature sampling, to skip the
            counting of datasets whose cardinality TensorFlow does not know
            (see `mixture_probabilities`).
        seed: optional int seed of the sampling.

    Returns:
        An infinite `tf.data.Dataset`.

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix.data import mix
    >>> a = tf.data.Dataset.from_tensor_slices(["a"] * 10)
    >>> b = tf.data.Dataset.from_tensor_slices(["b"] * 1000)
    >>> mixed = mix([a, b], temperature=1e9, seed=0)  # ~uniform over datasets
    >>> sample = [s.decode() for s in mixed.take(1000).as_numpy_iterator()]
    >>> 400 < sample.count("a") < 600
    True
    """
    import tensorflow as tf

    owner = "keras_flix.data.mix"
    datasets = _check_datasets(datasets, owner)
    _check_structures(datasets, owner)
    probabilities = _probabilities(datasets, weights, temperature, sizes, owner)
    used = [i for i, p in enumerate(probabilities) if p > 0]
    return tf.data.Dataset.sample_from_datasets(
        [datasets[i].repeat() for i in used],
        weights=[float(probabilities[i]) for i in used],
        seed=seed,
        # The inputs are endless unless one turns out empty; stop then
        # rather than silently mixing without it.
        stop_on_empty_dataset=True,
    )


def _check_datasets(datasets, owner):
    if isinstance(datasets, (str, bytes)) or not isinstance(datasets, Sequence):
        raise TypeError(
            f"{owner} takes a list of tf.data.Datasets. Received: {datasets!r}"
        )
    if not datasets:
        raise ValueError(f"{owner}: the list of datasets is empty.")
    for i, dataset in enumerate(datasets):
        check_dataset(dataset, f"{owner} (dataset {i})")
    return list(datasets)


def _check_numbers(numbers, count, name, owner):
    if isinstance(numbers, (str, bytes)) or not isinstance(
        numbers, (Sequence, np.ndarray)
    ):
        raise TypeError(
            f"{owner}: `{name}` must be a list of numbers, one per dataset. "
            f"Received {name}={numbers!r}."
        )
    if isinstance(numbers, np.ndarray):
        numbers = numbers.tolist()
    numbers = list(numbers)
    if len(numbers) != count:
        raise ValueError(
            f"{owner}: {len(numbers)} {name} for {count} datasets; expected "
            f"one per dataset. Received {name}={numbers!r}."
        )
    for number in numbers:
        if (
            isinstance(number, bool)
            or not isinstance(number, Real)
            or not math.isfinite(number)
        ):
            raise ValueError(
                f"{owner}: `{name}` must be finite numbers. Received "
                f"{name}={numbers!r}."
            )
    return numbers


def _size(dataset, index, owner):
    """The number of examples of `dataset`: its cardinality, or counted."""
    import tensorflow as tf

    size = int(dataset.cardinality())
    if size == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"{owner}: dataset {index} is infinite, so temperature sampling "
            "cannot size it. Pass `sizes`, or `weights`, or mix the finite "
            "dataset (before `repeat`)."
        )
    if size == tf.data.UNKNOWN_CARDINALITY:
        size = int(dataset.reduce(np.int64(0), _count_one))
    if size == 0:
        raise ValueError(_empty_message(index, owner))
    return size


def _count_one(count, *_):
    return count + 1


def _check_not_empty(dataset, index, owner):
    import tensorflow as tf

    size = int(dataset.cardinality())
    # An unknown cardinality costs one element to check.
    if size == 0 or (
        size == tf.data.UNKNOWN_CARDINALITY
        and not any(True for _ in dataset.take(1))
    ):
        raise ValueError(_empty_message(index, owner))


def _empty_message(index, owner):
    return (
        f"{owner}: dataset {index} is empty; every dataset of a mixture "
        "needs at least one example."
    )


def _check_structures(datasets, owner):
    import tensorflow as tf

    def dtypes(dataset):
        return tf.nest.map_structure(lambda s: s.dtype, dataset.element_spec)

    first = dtypes(datasets[0])
    for i, dataset in enumerate(datasets[1:], start=1):
        try:
            tf.nest.assert_same_structure(first, dtypes(dataset))
            same = tf.nest.flatten(first) == tf.nest.flatten(dtypes(dataset))
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ValueError(
                f"{owner}: dataset {i} has elements {dataset.element_spec}, "
                f"but dataset 0 has {datasets[0].element_spec}. Datasets of "
                "a mixture need the same structure and dtypes (tag every "
                "dataset the same way)."
            )
