"""keras-flix: Featurized Low-rank Mixtures (FLix) for Keras 3 and KerasHub."""

from keras_flix import layers
from keras_flix.src.feature_scope import current_feature_ids
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.schema import ABSENT
from keras_flix.src.schema import FeatureSchema

__version__ = "0.1.0"

__all__ = [
    "ABSENT",
    "FeatureSchema",
    "current_feature_ids",
    "feature_scope",
    "layers",
]
