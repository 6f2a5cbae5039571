"""keras-flix: Featurized Low-rank Mixtures (FLix) for Keras 3 and KerasHub."""

from keras_flix import callbacks
from keras_flix import data
from keras_flix import layers
from keras_flix import optimizers
from keras_flix import pretrained
from keras_flix.src.adapter_files import load_adapters
from keras_flix.src.adapter_files import save_adapters
from keras_flix.src.config import FLixConfig
from keras_flix.src.distribution import FLixLayoutMap
from keras_flix.src.distribution import layout_map
from keras_flix.src.export import export_saved_model
from keras_flix.src.feature_scope import current_feature_ids
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.flix_model import FLixModel
from keras_flix.src.inputs import ABSENT
from keras_flix.src.inputs import FEATURE_IDS_KEY
from keras_flix.src.inputs import INPUTS_KEY
from keras_flix.src.merging import merge
from keras_flix.src.peft.export import export_peft
from keras_flix.src.peft.export import export_peft_features
from keras_flix.src.peft.importing import import_peft
from keras_flix.src.retrofit import retrofit
from keras_flix.src.schema import FeatureSchema
from keras_flix.src.summary import summary
from keras_flix.src import int8_gradients
from keras_flix.src import integer_products
from keras_flix.src import row_sparse_step

# Every Keras model on jax and torch trains with row-sparse adapter-table
# gradients where that applies (see keras_flix/src/row_sparse_step.py).
row_sparse_step.install()
# int8 products of quantized layers run on torch's integer GEMM on the CPU
# too, bit-identical to Keras' own (see keras_flix/src/integer_products.py).
integer_products.install()
# Keras' int8 layers pass their gradient on one block of float kernel at a
# time, so no compiler keeps them all (see keras_flix/src/int8_gradients.py).
int8_gradients.install()
del int8_gradients, integer_products, row_sparse_step

__version__ = "0.1.0"

__all__ = [
    "ABSENT",
    "FEATURE_IDS_KEY",
    "FLixConfig",
    "FLixLayoutMap",
    "FLixModel",
    "FeatureSchema",
    "INPUTS_KEY",
    "callbacks",
    "current_feature_ids",
    "data",
    "export_peft",
    "export_peft_features",
    "export_saved_model",
    "feature_scope",
    "import_peft",
    "layers",
    "layout_map",
    "load_adapters",
    "merge",
    "optimizers",
    "pretrained",
    "retrofit",
    "save_adapters",
    "summary",
]
