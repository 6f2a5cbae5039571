"""What the row-sparse training steps need to know about a FLix model."""

import numpy as np

from keras_flix.src.inputs import standardize_feature_ids
from keras_flix.src.layers.selection import adapter_rows


def used_rows(model, feature_ids, unique):
    """The rows of each feature type's tables that a batch uses.

    Args:
        model: the `FLixModel`.
        feature_ids: the batch's feature ids.
        unique: the backend's function from `[batch]` rows to `(distinct
            rows, each example's index into them)`.

    Returns:
        dict feature type -> `(distinct rows, slots, rows)`: `rows` is each
        example's row as FLix layers select it (0 for absent and
        out-of-range ids), `slots` its index into the distinct rows.
    """
    schema = model.schema
    feature_ids = standardize_feature_ids(feature_ids, schema)
    num_values = np.array([schema.num_values[t] for t in schema.feature_types])
    rows = adapter_rows(feature_ids, num_values)[0]
    return {
        feature_type: (*unique(rows[:, column]), rows[:, column])
        for column, feature_type in enumerate(schema.feature_types)
    }


def adapter_tables(model):
    """Index in `model.trainable_variables` -> feature type, for its tables."""
    feature_types = {
        id(table): feature_type
        for layer in model.flix_layers
        for feature_type in layer.schema.feature_types
        for table in (layer.adapter_a[feature_type], layer.adapter_b[feature_type])
    }
    return {
        index: feature_types[id(variable)]
        for index, variable in enumerate(model.trainable_variables)
        if id(variable) in feature_types
    }
