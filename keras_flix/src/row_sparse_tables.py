"""What the row-sparse training steps need to know about a FLix model."""

import numpy as np

from keras_flix.src.feature_ids import standardize_feature_ids
from keras_flix.src.layers.flix_adapter import adapter_rows


def batch_rows(model, x, feature_ids_of):
    """Each example's table row per feature type, as FLix layers select it.

    Args:
        model: the `FLixModel`.
        x: the batch's inputs.
        feature_ids_of: a function from `x` to the batch's feature ids.

    Returns:
        int32 `[batch, n_types]` rows (0 for absent and out-of-range ids).
    """
    schema = model.schema
    feature_ids = standardize_feature_ids(feature_ids_of(x), schema)
    num_values = np.array([schema.num_values[t] for t in schema.feature_types])
    return adapter_rows(feature_ids, num_values)[0]


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
