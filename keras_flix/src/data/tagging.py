"""Tagging: adds `feature_ids` to the elements of a `tf.data.Dataset`."""

from collections.abc import Mapping

from keras_flix.src.data.elements import check_dataset
from keras_flix.src.data.elements import inputs_of
from keras_flix.src.data.elements import is_tuple_element
from keras_flix.src.data.elements import map_elements
from keras_flix.src.data.elements import with_inputs
from keras_flix.src.inputs import ABSENT
from keras_flix.src.inputs import FEATURE_IDS_KEY
from keras_flix.src.inputs import join_feature_ids
from keras_flix.src.schema import FeatureSchema

UNKNOWN = ABSENT - 1
"""What a lookup table returns for a value the schema does not know, under
`unknown="error"`: below `ABSENT`, so that one comparison finds it."""


def tag(dataset, schema, /, from_keys=None, keep_keys=False, **features):
    """Adds each example's `feature_ids` to a dataset, in the model's format.

    Every element gets an int32 `"feature_ids"` tensor of shape
    `[len(schema.feature_types)]` (`-1` = absent), placed where a retrofitted
    model (`keras_flix.FLixModel`) reads it:

    * a dict element gets a `"feature_ids"` key;
    * in `(x,)`, `(x, y)` and `(x, y, sample_weight)` elements only `x`
      changes: a dict `x` gets the key, any other `x` becomes
      `{"inputs": x, "feature_ids": ids}`;
    * any other element `x` becomes `{"inputs": x, "feature_ids": ids}`.

    Features come from constants for the whole dataset (keyword arguments),
    from a string field of each example (`from_keys`), or both, for different
    feature types; a feature type given neither way is absent. Values are
    looked up inside the `tf.data` graph (a `tf.lookup.StaticHashTable` per
    type, in a deterministic parallel `map`), so tagging runs no Python per
    example.

    Elements are single examples, or batches when the fields named in
    `from_keys` hold one string per example of a batch (shape `[batch]`);
    the ids then have shape `[batch, len(schema.feature_types)]`. A dataset
    tagged by constants only is taken as one of single examples: tag it
    before `batch`.

    Cost: `tag` adds one `map` stage, which runs a small function per
    element. Per example (`tag`, then `mix`, then `batch`) that costs a third
    or more of a tokenizing pipeline's throughput on a small CPU; per batch
    (`mix`, `batch`, then `tag`) a few percent. To pay nothing for the stage,
    call a `Tagger` inside a `map` you run anyway (the preprocessing). See
    `benchmarks/README.md`.

    An empty string in a field means the feature is absent for that example.
    A value the schema does not know follows the schema's `unknown` policy:
    with `"absent"` it becomes `-1`; with `"error"` iterating the dataset
    stops at the first element holding one with a
    `tf.errors.InvalidArgumentError` that names the feature type and the
    value. Constant values, field names and field dtypes are checked when
    `tag` is called.

    Args:
        dataset: a `tf.data.Dataset` of single examples or of batches.
        schema: the `keras_flix.FeatureSchema` to encode with.
        from_keys: optional dict from feature type to the key of the string
            field that holds each example's value. With tuple elements the
            keys are looked up in `x`, which must then be a dict.
        keep_keys: whether the fields named in `from_keys` stay in the
            element. By default they are dropped: they are encoded in
            `feature_ids` now, and string inputs a model does not expect
            would break it.
        **features: constant feature values for every example, e.g.
            `language="sw"`. A value of `None` means absent.

    Returns:
        The tagged `tf.data.Dataset`.

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix import FeatureSchema
    >>> from keras_flix.data import tag
    >>> schema = FeatureSchema(
    ...     {"language": ["en", "sw"], "task": ["qa", "ner"]})
    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     ({"text": ["a", "b"], "lang": ["sw", "en"]}, [0, 1]))
    >>> ds = tag(ds, schema, from_keys={"language": "lang"}, task="ner")
    >>> x, y = next(iter(ds))
    >>> sorted(x), x["feature_ids"].numpy().tolist()
    (['feature_ids', 'text'], [1, 1])
    """
    import tensorflow as tf

    owner = "keras_flix.data.tag"
    check_dataset(dataset, owner)
    tagger = Tagger(
        schema, from_keys=from_keys, keep_keys=keep_keys, **features
    )
    is_tuple = is_tuple_element(dataset.element_spec, owner)
    batched = tagger.check_inputs(inputs_of(dataset.element_spec, is_tuple))

    def tag_element(element, is_tuple):
        return tagger.tag_element(element, is_tuple, batched)

    return map_elements(
        dataset,
        tag_element,
        owner,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


class Tagger:
    """The function that `tag` maps, to call inside a `map` of your own.

    `tag(dataset, ...)` adds a `map` stage to a pipeline. Calling a `Tagger`
    inside a `map` the pipeline runs anyway (e.g. the one that applies a
    KerasHub preprocessor) tags at no extra stage cost. A `Tagger` takes and
    returns an element as `Dataset.map` passes it: `tagger(x, y)` returns
    `(x_tagged, y)`, `tagger(x)` returns `x_tagged`. Fields are checked when
    the `map` is traced.

    Build it once, outside the mapped function: it holds the lookup tables.

    Args:
        schema, from_keys, keep_keys, **features: as for `tag`.

    Example:

    >>> import tensorflow as tf
    >>> from keras_flix import FeatureSchema
    >>> from keras_flix.data import Tagger
    >>> schema = FeatureSchema({"language": ["en", "sw"]})
    >>> tagger = Tagger(schema, from_keys={"language": "lang"})
    >>> ds = tf.data.Dataset.from_tensor_slices(
    ...     ({"text": ["a b", "c"], "lang": ["sw", "en"]}, [0, 1])).batch(2)
    >>> def preprocess(x, y):
    ...     x, y = tagger(x, y)
    ...     return {**x, "text": tf.strings.split(x["text"]).to_tensor()}, y
    >>> x, y = next(iter(ds.map(preprocess)))
    >>> x["feature_ids"].numpy().tolist()
    [[1], [0]]
    """

    def __init__(self, schema, /, from_keys=None, keep_keys=False, **features):
        owner = "keras_flix.data.tag"
        if not isinstance(schema, FeatureSchema):
            raise TypeError(
                f"{owner} takes a keras_flix.FeatureSchema. Received: "
                f"{schema!r}"
            )
        self.schema = schema
        self.from_keys = _check_from_keys(from_keys, schema, features, owner)
        self.constant_ids = _constant_ids(features, schema, owner)
        self.drop = () if keep_keys else set(self.from_keys.values())
        self._lookups = lookup_tables(schema, self.from_keys)

    def check_inputs(self, x_spec):
        """Checks the fields that `from_keys` reads in the inputs' spec.

        Args:
            x_spec: the `tf.TypeSpec` structure of an element's inputs.

        Returns:
            Whether the fields hold batches (rank 1) rather than single
            examples (rank 0).
        """
        return _check_fields(x_spec, self.from_keys, "keras_flix.data.tag")

    def tag_element(self, element, is_tuple, batched):
        """Tags one element of known structure (see `check_inputs`)."""
        import tensorflow as tf

        x = inputs_of(element, is_tuple)
        if self._lookups:
            feature_ids = _encode(
                x,
                self.schema,
                self.constant_ids,
                self.from_keys,
                self._lookups,
                batched,
            )
        else:
            feature_ids = tf.constant(self.constant_ids, tf.int32)
        if isinstance(x, Mapping):
            x = {k: v for k, v in x.items() if k not in self.drop}
        return with_inputs(element, join_feature_ids(x, feature_ids), is_tuple)

    def __call__(self, *element):
        import tensorflow as tf

        is_tuple = len(element) > 1
        element = element if is_tuple else element[0]
        spec = tf.nest.map_structure(tf.type_spec_from_value, element)
        is_tuple = is_tuple_element(spec, "keras_flix.data.Tagger")
        batched = self.check_inputs(inputs_of(spec, is_tuple))
        return self.tag_element(element, is_tuple, batched)


def _encode(x, schema, constant_ids, from_keys, lookups, batched):
    """The ids of one example, or of a batch, from its fields."""
    import tensorflow as tf

    looked_up = {
        feature_type: table.lookup(x[from_keys[feature_type]])
        for feature_type, table in lookups.items()
    }
    columns = []
    for column, feature_type in enumerate(schema.feature_types):
        if feature_type in looked_up:
            columns.append(looked_up[feature_type])
        elif batched:
            # Constants are broadcast to the batch of the first field read.
            first_field = x[next(iter(from_keys.values()))]
            columns.append(tf.fill(tf.shape(first_field), constant_ids[column]))
        else:
            columns.append(tf.constant(constant_ids[column]))
    feature_ids = tf.stack(columns, axis=-1)
    if schema.unknown == "error":
        checks = [
            _check_known(ids, x[from_keys[t]], schema, t, from_keys, batched)
            for t, ids in looked_up.items()
        ]
        with tf.control_dependencies(checks):
            feature_ids = tf.identity(feature_ids)
    return feature_ids


def _check_known(ids, values, schema, feature_type, from_keys, batched):
    """An op that fails, naming the value, if an id is unknown.

    Without branches: a `tf.cond` per batch costs more than the lookups.
    """
    import tensorflow as tf

    if batched:
        # The smallest id is the first unknown one if there is any; the
        # sentinel keeps an empty batch valid.
        ids = tf.concat([ids, [ABSENT]], axis=0)
        first = tf.argmin(ids, output_type=tf.int32)
        ids = ids[first]
        values = tf.concat([values, [""]], axis=0)[first]
    message = _unknown_message(schema, feature_type, values, from_keys)
    return tf.debugging.Assert(ids >= ABSENT, message)


def _check_from_keys(from_keys, schema, features, owner):
    if from_keys is None:
        return {}
    if not isinstance(from_keys, Mapping):
        raise TypeError(
            f"{owner}: `from_keys` must be a dict from feature type to the key "
            f"of a string field. Received: {from_keys!r}"
        )
    for feature_type, key in from_keys.items():
        schema.index(feature_type)  # Raises for a type the schema lacks.
        if feature_type in features:
            raise ValueError(
                f"{owner}: feature type '{feature_type}' is given both as a "
                f"constant ({features[feature_type]!r}) and from the field "
                f"{key!r}. Give each feature type one way."
            )
        if not isinstance(key, str):
            raise TypeError(
                f"{owner}: `from_keys` maps feature type '{feature_type}' to "
                f"{key!r}; expected the string key of a field."
            )
    return dict(from_keys)


def _constant_ids(features, schema, owner):
    for feature_type, value in features.items():
        schema.index(feature_type)  # Raises for a type the schema lacks.
        if value is not None and not isinstance(value, str):
            raise TypeError(
                f"{owner}: the value of feature type '{feature_type}' must be "
                f"a string (or None for absent). Received: {value!r}"
            )
    return schema.encode(features).tolist()


def _check_fields(x_spec, from_keys, owner):
    import tensorflow as tf

    if isinstance(x_spec, Mapping) and FEATURE_IDS_KEY in x_spec:
        raise ValueError(
            f"{owner}: the dataset is tagged already (its inputs have a "
            f"'{FEATURE_IDS_KEY}' entry). Tag once, with every feature."
        )
    if not from_keys:
        return False
    if not isinstance(x_spec, Mapping):
        raise ValueError(
            f"{owner}: `from_keys` reads fields of dict inputs, but the "
            f"dataset's inputs are {x_spec}."
        )
    for feature_type, key in from_keys.items():
        if key not in x_spec:
            raise ValueError(
                f"{owner}: no field {key!r} (for feature type "
                f"'{feature_type}') in the dataset's inputs. Available "
                f"fields: {sorted(x_spec)}."
            )
        spec = x_spec[key]
        if (
            not isinstance(spec, tf.TensorSpec)
            or spec.dtype != tf.string
            or spec.shape.rank not in (0, 1)
        ):
            raise ValueError(
                f"{owner}: field {key!r} (for feature type '{feature_type}') "
                "must hold one string per example: a tf.string of shape [] "
                f"(single examples) or [batch]. Received {spec}. Convert "
                "numeric codes to the schema's string values first."
            )
    ranks = {key: x_spec[key].shape.rank for key in from_keys.values()}
    if len(set(ranks.values())) > 1:
        raise ValueError(
            f"{owner}: the fields in `from_keys` mix single examples (rank 0) "
            f"and batches (rank 1): ranks {ranks}. Read all from single "
            "examples or all from batches."
        )
    return set(ranks.values()) == {1}


def lookup_tables(schema, feature_types):
    """A string -> id `tf.lookup.StaticHashTable` per feature type.

    The empty string maps to `ABSENT`; a value the schema does not know maps
    to `ABSENT` under `unknown="absent"`, to `UNKNOWN` under `"error"`.

    Args:
        schema: the `FeatureSchema`.
        feature_types: the feature types to build tables for.

    Returns:
        A dict from feature type to its table.
    """
    import tensorflow as tf

    default = ABSENT if schema.unknown == "absent" else UNKNOWN
    tables = {}
    for feature_type in feature_types:
        values = list(schema.values(feature_type))
        # "" cannot be a value: it marks the feature absent.
        keys = tf.constant(values + [""], tf.string)
        ids = tf.constant(list(range(len(values))) + [ABSENT], tf.int32)
        tables[feature_type] = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, ids), default
        )
    return tables


def _unknown_message(schema, feature_type, value, from_keys):
    # Backticks: TensorFlow escapes quotes in assertion messages.
    return [
        f"Unknown value for feature type `{feature_type}` (field "
        f"`{from_keys[feature_type]}`):",
        value,
        f"Known values: [{', '.join(schema.values(feature_type))}]. Add it to "
        "the schema, or build the schema with unknown=`absent` to treat "
        "unknown values as absent.",
    ]
