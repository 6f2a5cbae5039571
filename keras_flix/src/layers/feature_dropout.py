"""`FeatureDropout`: drops features of examples at random during training."""

import keras
from keras import ops

from keras_flix.src.config import dropout_rates
from keras_flix.src.inputs import ABSENT
from keras_flix.src.schema import FeatureSchema


@keras.saving.register_keras_serializable(package="keras_flix")
class FeatureDropout(keras.layers.Layer):
    """Makes each feature of each example absent with a given probability.

    Training with features dropped teaches every adapter to work without the
    others, which is what lets a FLix model handle an unseen language (only
    the task adapter active) or an unseen language-task combination. Applied
    in training only; at inference the ids pass through unchanged.

    Args:
        schema: the `keras_flix.FeatureSchema` of the ids.
        rate: probability of dropping a feature, one float for every type or
            a dict from feature type to float, each in `[0, 1)`.
        seed: optional int seed for reproducible dropout.

    Call arguments:
        feature_ids: int32 tensor `[batch, len(schema.feature_types)]`.
        training: whether to drop features.

    Example:

    >>> import numpy as np
    >>> import keras_flix as kf
    >>> from keras_flix.src.layers.feature_dropout import FeatureDropout
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> dropout = FeatureDropout(schema, rate={"language": 0.5, "task": 0.0})
    >>> ids = np.zeros((4, 2), "int32")
    >>> np.asarray(dropout(ids, training=False)).tolist()
    [[0, 0], [0, 0], [0, 0], [0, 0]]
    """

    def __init__(self, schema, rate=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(schema, dict):
            schema = FeatureSchema.from_config(schema)
        self.schema = schema
        self.rate = dropout_rates(rate, schema)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.built = True

    def call(self, feature_ids, training=None):
        if not training or not any(self.rate.values()):
            return feature_ids
        rates = ops.convert_to_tensor(
            [self.rate[t] for t in self.schema.feature_types], "float32"
        )
        draws = keras.random.uniform(
            ops.shape(feature_ids), seed=self.seed_generator
        )
        return ops.cast(ops.where(draws < rates, ABSENT, feature_ids), "int32")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "schema": self.schema.get_config(),
            "rate": dict(self.rate),
            "seed": self.seed,
        }
