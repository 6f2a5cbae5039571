"""Cells: combinations of feature values, e.g. (language, task) pairs."""

import itertools

from keras_flix.src.data.elements import feature_ids_of
from keras_flix.src.data.elements import feature_ids_spec
from keras_flix.src.data.elements import is_tuple_element
from keras_flix.src.inputs import ABSENT

ABSENT_VALUE = "<absent>"
"""How counts and cells name an absent feature."""


def resolve_feature_types(schema, feature_types, owner):
    """The feature types of a cell and whether a cell is one bare value.

    Args:
        schema: the `FeatureSchema`.
        feature_types: `None` (all the schema's types), one type name, or a
            sequence of type names.
        owner: who asks, for error messages.

    Returns:
        `(types, single)`: a tuple of type names, and True when
        `feature_types` was one name (cells are then plain values rather
        than tuples).
    """
    if feature_types is None:
        return schema.feature_types, False
    single = isinstance(feature_types, str)
    types = (feature_types,) if single else tuple(feature_types)
    if not types:
        raise ValueError(f"{owner}: `feature_types` is empty.")
    for feature_type in types:
        schema.index(feature_type)  # Raises for a type the schema lacks.
    if len(set(types)) != len(types):
        raise ValueError(
            f"{owner}: `feature_types` lists a type twice: {types}."
        )
    return types, single


def value_name(schema, feature_type, feature_id):
    """A feature id as its value, or `ABSENT_VALUE`."""
    if feature_id == ABSENT:
        return ABSENT_VALUE
    return schema.values(feature_type)[feature_id]


def by_cell(dataset, schema, feature_types=None, cells=None):
    """Splits a tagged dataset by cell, for per-cell evaluation.

    A cell is a combination of values of some feature types, e.g.
    `("sw", "qa")` for `("language", "task")`. Each cell's dataset keeps the
    examples of that cell (a `filter` on their feature ids), so a
    language x task grid of metrics is one `evaluate` per cell. Each cell
    dataset reads the whole input: evaluating `k` cells costs `k` passes.
    The size of a filtered dataset is unknown to TensorFlow, so Keras warns
    that the input "ran out of data" when one ends; that is expected.

    Args:
        dataset: a tagged, unbatched `tf.data.Dataset` (see
            `keras_flix.data.tag`); batch each cell's dataset afterwards.
        schema: the `keras_flix.FeatureSchema` of the ids.
        feature_types: the feature types that make a cell: one type name, a
            sequence of names, or `None` for all the schema's types.
        cells: optional cells to return, each a tuple of values in the order
            of `feature_types` (a plain value for one type name), with
            `ABSENT_VALUE` (`"<absent>"`) for an absent feature. By default
            every combination of the schema's values (no absent ones).

    Returns:
        A dict from cell to its `tf.data.Dataset`, in the order of `cells`
        (by default in schema order).

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix import FeatureSchema
    >>> from keras_flix.data import by_cell, tag
    >>> schema = FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> ds = tag(tf.data.Dataset.from_tensor_slices(
    ...     {"x": [1, 2, 3], "lang": ["en", "sw", "en"]}), schema,
    ...     from_keys={"language": "lang"}, task="qa")
    >>> cells = by_cell(ds, schema, ("language", "task"))
    >>> list(cells)
    [('en', 'qa'), ('sw', 'qa')]
    >>> [int(e["x"]) for e in cells["en", "qa"]]
    [1, 3]
    """
    import tensorflow as tf

    owner = "keras_flix.data.by_cell"
    spec = feature_ids_spec(dataset, schema, owner)
    if spec.shape.rank != 1:
        raise ValueError(
            f"{owner} filters single examples, but the dataset's feature ids "
            f"have shape {spec.shape} (batched). Split before `batch`, or "
            "`unbatch()` first."
        )
    types, single = resolve_feature_types(schema, feature_types, owner)
    if cells is None:
        cells = itertools.product(*(schema.values(t) for t in types))
        cells = [cell[0] if single else cell for cell in cells]
    columns = tf.constant([schema.index(t) for t in types], tf.int32)
    is_tuple = is_tuple_element(dataset.element_spec, owner)
    split = {}
    for cell in cells:
        target = _cell_ids(schema, types, single, cell, owner)
        target = tf.constant(target, tf.int32)

        @tf.autograph.experimental.do_not_convert
        def in_cell(*element, target=target):
            ids = feature_ids_of(element if is_tuple else element[0], is_tuple)
            return tf.reduce_all(tf.gather(ids, columns) == target)

        split[cell] = dataset.filter(in_cell)
    return split


def _cell_ids(schema, types, single, cell, owner):
    values = (cell,) if single else cell
    if not isinstance(values, tuple) or len(values) != len(types):
        expected = "a value" if single else f"a tuple of {len(types)} values"
        raise ValueError(
            f"{owner}: cell {cell!r} does not match feature types {types}; "
            f"expected {expected}."
        )
    ids = []
    for feature_type, value in zip(types, values):
        if value == ABSENT_VALUE:
            ids.append(ABSENT)
        elif value in schema.values(feature_type):
            ids.append(schema.values(feature_type).index(value))
        else:
            raise ValueError(
                f"{owner}: unknown value {value!r} for feature type "
                f"'{feature_type}' in cell {cell!r}. Known values: "
                f"{list(schema.values(feature_type))} (or "
                f"'{ABSENT_VALUE}')."
            )
    return ids
