"""Feature-tagged `tf.data` pipelines: tagging, mixtures, per-cell splits.

`tag` adds each example's `feature_ids` to a dataset (a `Tagger` does the
same inside a `map` of your own), `mix` samples a mixture of tagged datasets
by weights or temperature, and `count_features`, `count_cells` and `by_cell`
count and split a tagged dataset by feature value. TensorFlow is imported when these functions are called: `tf.data`
feeds `fit` on every Keras backend.
"""

from keras_flix.src.data.cells import ABSENT_VALUE
from keras_flix.src.data.cells import by_cell
from keras_flix.src.data.counting import count_cells
from keras_flix.src.data.counting import count_features
from keras_flix.src.data.mixing import mix
from keras_flix.src.data.mixing import mixture_probabilities
from keras_flix.src.data.tagging import Tagger
from keras_flix.src.data.tagging import tag

__all__ = [
    "ABSENT_VALUE",
    "Tagger",
    "by_cell",
    "count_cells",
    "count_features",
    "mix",
    "mixture_probabilities",
    "tag",
]
