"""Backends without anything FLix-specific (numpy, openvino): the defaults."""

import numpy as np

from keras_flix.src.backend.common import assign_rows  # noqa: F401
from keras_flix.src.backend.common import assert_in_range_in_graph  # noqa: F401
from keras_flix.src.backend.common import check_saved_model_export  # noqa: F401
from keras_flix.src.backend.common import integer_einsum  # noqa: F401
from keras_flix.src.backend.common import integer_matmul  # noqa: F401
from keras_flix.src.backend.common import DYNAMIC_SHAPE_ERRORS  # noqa: F401
from keras_flix.src.backend.common import on_tpu  # noqa: F401
from keras_flix.src.backend.common import skip_train_function  # noqa: F401
from keras_flix.src.backend.common import refresh_parameter_registry  # noqa: F401
from keras_flix.src.backend.common import row_sparse_parts  # noqa: F401
from keras_flix.src.backend.common import saved_model_endpoint_options  # noqa: F401
from keras_flix.src.backend.common import framework_random_state  # noqa: F401
from keras_flix.src.backend.common import set_framework_random_state  # noqa: F401
from keras_flix.src.backend.common import sublayer_attributes  # noqa: F401

row_sparse_train_step = None
row_sparse_step_traceable_here = None
keras_trainer = None


def host_value(x):
    return np.asarray(x)
