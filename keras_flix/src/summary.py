"""`summary`: where a FLix model's trainable parameters are."""

import math

from keras_flix.src.adapters import require_flix_layers


def summary(model, print_fn=print):
    """Prints the trainable parameters per feature type and per FLix layer.

    Args:
        model: a model returned by `keras_flix.retrofit`, or any model that
            holds FLix layers.
        print_fn: the function each line is printed with; `None` prints
            nothing.

    Returns:
        A dict with `"per_feature_type"` (feature type -> adapter
        parameters), `"per_layer"` (layer path -> feature type -> adapter
        parameters), `"trainable"` and `"total"` parameter counts.

    Example:

    >>> import keras
    >>> import keras_flix as kf
    >>> inputs = keras.Input((8,))
    >>> base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
    >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"])
    >>> kf.summary(model, print_fn=None)["per_feature_type"]
    {'language': 48}
    """
    layers = require_flix_layers(model)
    per_layer = {}
    per_type = {}
    for layer in layers:
        counts = {
            t: math.prod(layer.adapter_a[t].shape) + math.prod(layer.adapter_b[t].shape)
            for t in layer.schema.feature_types
        }
        per_layer[layer.path] = counts
        for feature_type, count in counts.items():
            per_type[feature_type] = per_type.get(feature_type, 0) + count
    # float8's scaling statistics are trainable only for Keras to overwrite.
    trainable = sum(
        math.prod(v.shape)
        for v in model.trainable_variables
        if not v.overwrite_with_gradient
    )
    total = sum(math.prod(v.shape) for v in model.weights)
    if print_fn is not None:
        types = list(per_type)
        width = max(len(path) for path in per_layer) + 2
        print_fn("FLix adapters (trainable parameters)")
        print_fn("layer".ljust(width) + "".join(t.rjust(14) for t in types))
        for path, counts in per_layer.items():
            print_fn(path.ljust(width) + "".join(f"{counts[t]:>14,}" for t in types))
        print_fn("total".ljust(width) + "".join(f"{per_type[t]:>14,}" for t in types))
        print_fn(
            f"Trainable parameters: {trainable:,} of {total:,} "
            f"({100 * trainable / max(total, 1):.2f}%)"
        )
    return {
        "per_feature_type": per_type,
        "per_layer": per_layer,
        "trainable": trainable,
        "total": total,
    }
