"""Where feature ids sit in the elements of a `tf.data.Dataset`.

A tagged element has the structure a `FLixModel` takes: a dict of inputs with
a `"feature_ids"` entry, alone or as the `x` of an `(x,)`, `(x, y)` or
`(x, y, sample_weight)` tuple.
"""

from collections.abc import Mapping

from keras_flix.src.inputs import FEATURE_IDS_KEY


def check_dataset(dataset, owner):
    """Raises a `TypeError` unless `dataset` is a `tf.data.Dataset`."""
    import tensorflow as tf

    if not isinstance(dataset, tf.data.Dataset):
        raise TypeError(
            f"{owner} takes a tf.data.Dataset. Received: "
            f"{type(dataset).__name__} {dataset!r}"
        )


def is_tuple_element(spec, owner):
    """Whether elements with this spec are `(x, ...)` tuples.

    Args:
        spec: the dataset's `element_spec`.
        owner: who asks, for error messages.

    Returns:
        True for `(x,)`, `(x, y)` and `(x, y, sample_weight)` elements,
        False for anything else (a dict or a tensor: the element is `x`).
    """
    if not isinstance(spec, tuple):
        return False
    if not 1 <= len(spec) <= 3:
        raise ValueError(
            f"{owner} expects dataset elements of the form x, (x,), (x, y) or "
            f"(x, y, sample_weight). Received a tuple of {len(spec)} "
            f"components: {spec}"
        )
    return True


def inputs_of(element, is_tuple):
    """The `x` of an element (or of its `element_spec`)."""
    return element[0] if is_tuple else element


def with_inputs(element, x, is_tuple):
    """The element with its `x` replaced."""
    return (x, *element[1:]) if is_tuple else x


def map_elements(dataset, fn, owner, **map_kwargs):
    """`dataset.map` with the whole element as one argument.

    `Dataset.map` spreads tuple elements over positional arguments; this
    gathers them back so that `fn` sees the same structure as
    `element_spec`, a 1-tuple included.

    Args:
        dataset: a `tf.data.Dataset`.
        fn: a function from `(element, is_tuple)` to the new element.
        owner: who maps, for error messages.
        **map_kwargs: passed to `Dataset.map`.

    Returns:
        The mapped dataset.
    """
    import tensorflow as tf

    is_tuple = is_tuple_element(dataset.element_spec, owner)

    @tf.autograph.experimental.do_not_convert
    def mapped(*args):
        return fn(args if is_tuple else args[0], is_tuple)

    return dataset.map(mapped, **map_kwargs)


def feature_ids_spec(dataset, schema, owner):
    """Checks that `dataset` is tagged for `schema`; returns the ids' spec.

    Args:
        dataset: a `tf.data.Dataset` whose elements carry `"feature_ids"`.
        schema: the `FeatureSchema` the ids were encoded with.
        owner: who asks, for error messages.

    Returns:
        The `tf.TensorSpec` of the ids: shape `[n_types]` per example, or
        `[batch, n_types]` for batched elements.
    """
    import tensorflow as tf

    check_dataset(dataset, owner)
    spec = dataset.element_spec
    x = inputs_of(spec, is_tuple_element(spec, owner))
    if not isinstance(x, Mapping) or FEATURE_IDS_KEY not in x:
        raise ValueError(
            f"{owner} expects a tagged dataset: elements whose inputs are a "
            f"dict with a '{FEATURE_IDS_KEY}' entry (see "
            f"`keras_flix.data.tag`). Received elements {spec}"
        )
    ids = x[FEATURE_IDS_KEY]
    num_types = len(schema.feature_types)
    if (
        not isinstance(ids, tf.TensorSpec)
        or not ids.dtype.is_integer
        or ids.shape.rank not in (1, 2)
        or ids.shape[-1] not in (None, num_types)
    ):
        raise ValueError(
            f"{owner}: '{FEATURE_IDS_KEY}' must be an integer tensor of shape "
            f"[{num_types}] per example ([batch, {num_types}] when batched), "
            f"one column per feature type {schema.feature_types}. "
            f"Received {ids}"
        )
    return ids


def feature_ids_of(element, is_tuple):
    """The `"feature_ids"` of an element."""
    return inputs_of(element, is_tuple)[FEATURE_IDS_KEY]
