"""`export_saved_model`: a TensorFlow SavedModel of a FLix model for serving."""

import keras

from keras_flix.src import backend
from keras_flix.src.data.tagging import UNKNOWN
from keras_flix.src.data.tagging import lookup_tables
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.flix_model import FLixModel
from keras_flix.src.inputs import ABSENT
from keras_flix.src.inputs import FEATURE_IDS_KEY
from keras_flix.src.inputs import INPUTS_KEY
from keras_flix.src.symbolic_shapes import BATCH
from keras_flix.src.symbolic_shapes import symbolic_shapes


def export_saved_model(model, path, input_signature=None, verbose=False):
    """Exports a FLix model as a SavedModel with two serving signatures.

    * `serving_default` takes the model's inputs plus one `tf.string` tensor
      of shape `[batch]` per feature type, named after it (e.g. `language`,
      `task`), and maps values to ids inside the graph. The empty string
      means "absent". A value the schema does not know is absent when the
      schema was built with `unknown="absent"`; with `unknown="error"` the
      request fails with an `InvalidArgumentError` that names the feature
      type and the value.
    * `serve_ids` takes the model's inputs plus `feature_ids` (int32
      `[batch, n_types]`, `-1` = absent).

    Batches may mix feature combinations, and sizes the input signature
    leaves unknown (`None`) stay unknown: one SavedModel serves any batch
    size and, for a KerasHub model, any sequence length up to the
    backbone's `max_sequence_length`. The SavedModel needs neither Keras
    nor keras-flix to run: `tf.saved_model.load(path).signatures[...]`, or
    TF Serving. On the TensorFlow backend an out-of-range id in `serve_ids`
    fails the request; from the JAX backend it yields NaN outputs for that
    example.

    Args:
        model: a model returned by `keras_flix.retrofit` (jax or tensorflow
            backend).
        path: the SavedModel directory to write.
        input_signature: the base model's inputs as a dict of name to
            `keras.InputSpec` / `tf.TensorSpec`; by default read from the
            base model's symbolic inputs (a KerasHub backbone or task, or a
            Functional model). For a KerasHub task these are its
            preprocessed inputs (token ids, masks): run the preprocessor
            before calling the SavedModel. Fix a size here (e.g.
            `keras.InputSpec(shape=(None, 128), dtype="int32")`) only for a
            model that cannot be traced with it unknown; the export says
            so.
        verbose: print the exported endpoints.

    Example:

    >>> import os, tempfile
    >>> import keras
    >>> import keras_flix as kf
    >>> inputs = keras.Input((8,), name="x")
    >>> base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]}, unknown="absent")
    >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"])
    >>> try:
    ...     kf.export_saved_model(model, os.path.join(tempfile.mkdtemp(), "m"))
    ... except NotImplementedError:  # torch, without torch_xla
    ...     pass
    """
    if not isinstance(model, FLixModel):
        raise TypeError(
            "export_saved_model takes the model returned by "
            f"keras_flix.retrofit. Received: {type(model).__name__}"
        )
    backend.check_saved_model_export()
    base_specs = _base_input_specs(model, input_signature)
    shapes, constraints = symbolic_shapes(base_specs, model.base_model)
    shapes[FEATURE_IDS_KEY] = f"({BATCH}, {len(model.schema.feature_types)})"
    try:
        archive = _archive(
            model, base_specs, backend.saved_model_endpoint_options(shapes, constraints)
        )
        # TensorFlow traces a default signature for every nested Keras model
        # it saves, without feature ids; those functions are never served.
        with feature_scope(ABSENT):
            archive.write_out(str(path), verbose=verbose)
    except backend.DYNAMIC_SHAPE_ERRORS as error:
        raise ValueError(
            f"Cannot export '{model.base_model.name}' with inputs of unknown "
            f"size {shapes} (bounds: {constraints or 'none'}); pass "
            "`input_signature=` with those sizes fixed: "
            f"{_fixed_sizes_hint(base_specs)}."
        ) from error


def _archive(model, base_specs, endpoint_options):
    """The `ExportArchive` with both serving signatures."""
    import tensorflow as tf

    schema = model.schema
    ids_spec = tf.TensorSpec(
        (None, len(schema.feature_types)), tf.int32, name=FEATURE_IDS_KEY
    )
    archive = keras.export.ExportArchive()
    serve_ids = archive.track_and_add_endpoint(
        "serve_ids",
        model,
        input_signature=[{**base_specs, FEATURE_IDS_KEY: ids_spec}],
        **endpoint_options,
    )
    # The same string -> id lookup as `keras_flix.data.tag`.
    tables = lookup_tables(schema, schema.feature_types)
    for table in tables.values():
        archive.track(table)
    string_specs = {
        feature_type: tf.TensorSpec((None,), tf.string, name=feature_type)
        for feature_type in schema.feature_types
    }

    @tf.function(input_signature=[{**base_specs, **string_specs}], autograph=False)
    def serving_default(inputs):
        columns = []
        for feature_type in schema.feature_types:
            names = inputs[feature_type]
            ids = tables[feature_type].lookup(names)
            unknown = tf.equal(ids, UNKNOWN)
            if schema.unknown == "error":
                tf.debugging.Assert(
                    tf.logical_not(tf.reduce_any(unknown)),
                    [
                        f"Unknown value for feature type '{feature_type}' "
                        f"(known: {list(schema.values(feature_type))}):",
                        tf.boolean_mask(names, unknown),
                    ],
                )
            # So that this assertion, which names the values, is the one that
            # fails, not the model's range check of the ids.
            columns.append(tf.where(unknown, ABSENT, ids))
        base_inputs = {name: inputs[name] for name in base_specs}
        return serve_ids({**base_inputs, FEATURE_IDS_KEY: tf.stack(columns, axis=1)})

    archive.add_endpoint("serving_default", serving_default)
    return archive


def _fixed_sizes_hint(specs):
    """`specs` spelled as an `input_signature`, unknown sizes but the batch to fix."""
    hints = []
    for name, spec in specs.items():
        sizes = ["None"] + [
            "<size>" if size is None else str(size) for size in spec.shape[1:]
        ]
        hints.append(
            f"'{name}': keras.InputSpec(shape=({', '.join(sizes)}), "
            f"dtype='{spec.dtype.name}')"
        )
    return "{" + ", ".join(hints) + "}"


def _base_input_specs(model, input_signature):
    import tensorflow as tf

    if input_signature is None:
        try:
            inputs = model.base_model.input
        except (AttributeError, ValueError):
            raise ValueError(
                f"Cannot read the inputs of '{model.base_model.name}'; pass "
                "`input_signature` (a dict of name to keras.InputSpec)."
            ) from None
        if not isinstance(inputs, dict):
            inputs = {INPUTS_KEY: inputs}
        input_signature = inputs
    if not isinstance(input_signature, dict):
        raise ValueError(
            "`input_signature` must be a dict from input name to "
            f"keras.InputSpec or tf.TensorSpec. Received: {input_signature!r}"
        )
    clashes = sorted(
        set(input_signature) & ({FEATURE_IDS_KEY} | set(model.schema.feature_types))
    )
    if clashes:
        raise ValueError(
            f"Input names {clashes} clash with the serving signature's feature "
            "inputs; rename the inputs or the feature types."
        )
    return {
        name: tf.TensorSpec(tuple(spec.shape), spec.dtype, name=name)
        for name, spec in input_signature.items()
    }
