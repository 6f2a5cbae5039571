"""Counting the examples of a tagged dataset per feature value and cell."""

from numbers import Integral

import numpy as np

from keras_flix.src.data.cells import ABSENT_VALUE
from keras_flix.src.data.cells import resolve_feature_types
from keras_flix.src.data.cells import value_name
from keras_flix.src.data.elements import feature_ids_of
from keras_flix.src.data.elements import feature_ids_spec
from keras_flix.src.data.elements import map_elements
from keras_flix.src.inputs import ABSENT

# Ids are read back in chunks of this many examples.
_CHUNK = 4096


def count_features(dataset, schema, max_elements=None, normalize=False):
    """Counts the examples of a tagged dataset per feature value.

    Reads the first `max_elements` elements (all of a finite dataset by
    default); batched elements count every example in them. With
    `normalize=True` the counts become fractions of the examples read, e.g.
    the realised proportions of a `mix`.

    Args:
        dataset: a tagged `tf.data.Dataset` (see `keras_flix.data.tag`).
        schema: the `keras_flix.FeatureSchema` of the ids.
        max_elements: optional number of dataset elements to read; required
            for an infinite dataset such as a `mix`.
        normalize: whether to return fractions instead of counts.

    Returns:
        A dict `{feature_type: {value: count, ..., "<absent>": count}}` with
        every value of the schema (zero counts included), in schema order.

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix import FeatureSchema
    >>> from keras_flix.data import count_features, tag
    >>> schema = FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> ds = tf.data.Dataset.from_tensor_slices({"lang": ["en", "sw", "en"]})
    >>> ds = tag(ds, schema, from_keys={"language": "lang"})
    >>> counts = count_features(ds, schema)
    >>> counts["language"]
    {'en': 2, 'sw': 1, '<absent>': 0}
    >>> counts["task"]
    {'qa': 0, '<absent>': 3}
    """
    owner = "keras_flix.data.count_features"
    num_values = schema.num_values
    counts = {t: np.zeros(n + 1, "int64") for t, n in num_values.items()}
    total = 0
    for ids in _feature_id_chunks(dataset, schema, max_elements, owner):
        total += len(ids)
        for column, feature_type in enumerate(schema.feature_types):
            # Absent (-1) goes last.
            counts[feature_type] += np.bincount(
                ids[:, column] % (num_values[feature_type] + 1),
                minlength=num_values[feature_type] + 1,
            )
    return {
        feature_type: {
            name: _scaled(int(n), total, normalize)
            for name, n in zip(
                (*schema.values(feature_type), ABSENT_VALUE),
                counts[feature_type],
            )
        }
        for feature_type in schema.feature_types
    }


def count_cells(
    dataset, schema, feature_types=None, max_elements=None, normalize=False
):
    """Counts the examples of a tagged dataset per cell.

    A cell is a combination of values of `feature_types`, e.g.
    `("sw", "qa")` for `("language", "task")`. Reads like
    `count_features`.

    Args:
        dataset: a tagged `tf.data.Dataset` (see `keras_flix.data.tag`).
        schema: the `keras_flix.FeatureSchema` of the ids.
        feature_types: one type name, a sequence of names, or `None` for all
            the schema's types.
        max_elements: optional number of dataset elements to read; required
            for an infinite dataset such as a `mix`.
        normalize: whether to return fractions instead of counts.

    Returns:
        A dict from cell (a tuple of values, `"<absent>"` for an absent
        feature; a plain value for one type name) to its count, for the
        cells that occur, in schema order (absent last).

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix import FeatureSchema
    >>> from keras_flix.data import count_cells, tag
    >>> schema = FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> ds = tf.data.Dataset.from_tensor_slices({"lang": ["en", "sw", "en"]})
    >>> ds = tag(ds, schema, from_keys={"language": "lang"})
    >>> count_cells(ds, schema, ("language", "task"))
    {('en', '<absent>'): 2, ('sw', '<absent>'): 1}
    >>> count_cells(ds, schema, "language", normalize=True)
    {'en': 0.6666666666666666, 'sw': 0.3333333333333333}
    """
    owner = "keras_flix.data.count_cells"
    types, single = resolve_feature_types(schema, feature_types, owner)
    columns = [schema.index(t) for t in types]
    # Each cell as one mixed-radix code; absent (-1) is the last digit.
    radices = np.array([schema.num_values[t] + 1 for t in types], "int64")
    shape = tuple(radices.tolist())
    counts = np.zeros(int(np.prod(radices)), "int64")
    total = 0
    for ids in _feature_id_chunks(dataset, schema, max_elements, owner):
        total += len(ids)
        digits = ids[:, columns].astype("int64") % radices
        codes = np.ravel_multi_index(tuple(digits.T), shape)
        counts += np.bincount(codes, minlength=counts.size)
    result = {}
    for code in np.flatnonzero(counts):
        digits = np.unravel_index(code, shape)
        cell = tuple(
            value_name(schema, t, ABSENT if d == radix - 1 else int(d))
            for t, d, radix in zip(types, digits, shape)
        )
        result[cell[0] if single else cell] = _scaled(
            int(counts[code]), total, normalize
        )
    return result


def _scaled(count, total, normalize):
    if not normalize:
        return count
    return count / total if total else 0.0


def _feature_id_chunks(dataset, schema, max_elements, owner):
    """Yields the feature ids of a dataset as checked `[n, n_types]` arrays."""
    import tensorflow as tf

    spec = feature_ids_spec(dataset, schema, owner)
    if max_elements is not None:
        if (
            isinstance(max_elements, bool)
            or not isinstance(max_elements, Integral)
            or max_elements < 0
        ):
            raise ValueError(
                f"{owner}: `max_elements` must be a non-negative int or None. "
                f"Received max_elements={max_elements!r}."
            )
        dataset = dataset.take(max_elements)
    elif dataset.cardinality() == tf.data.INFINITE_CARDINALITY:
        raise ValueError(
            f"{owner}: the dataset is infinite (a `mix`, or a `repeat`); pass "
            "`max_elements`."
        )
    ids = map_elements(
        dataset, feature_ids_of, owner, num_parallel_calls=tf.data.AUTOTUNE
    )
    if spec.shape.rank == 2:
        ids = ids.unbatch()
    for chunk in ids.batch(_CHUNK).as_numpy_iterator():
        schema.check_ids(chunk)
        yield chunk
