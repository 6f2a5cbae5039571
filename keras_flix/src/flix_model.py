"""`FLixModel`: a retrofitted model that takes feature ids with its inputs."""

import os
import re

import keras

from keras_flix.src import backend
from keras_flix.src import generation
from keras_flix.src.adapters import check_train_also
from keras_flix.src.adapters import flix_layers
from keras_flix.src.adapters import inject
from keras_flix.src.atomic_files import replaced_atomically
from keras_flix.src.callbacks.backup_and_restore import positioned_for_resume
from keras_flix.src.config import FLixConfig
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.inputs import join_feature_ids
from keras_flix.src.inputs import split_feature_ids
from keras_flix.src.inputs import standardize_feature_ids
from keras_flix.src.layers.feature_dropout import FeatureDropout
from keras_flix.src.preprocessing import preprocessed_dataset
from keras_flix.src.preprocessing import unpack
from keras_flix.src.row_sparse_tables import adapter_tables
from keras_flix.src.row_sparse_tables import used_rows


@keras.saving.register_keras_serializable(package="keras_flix")
class FLixModel(keras.Model):
    """A model whose FLix layers take each example's features as input.

    Built by `keras_flix.retrofit`; it wraps the adapted base model, reads
    the feature ids from its inputs, applies feature dropout in training and
    runs the base model inside a `feature_scope`. With a KerasHub `Task` as
    base model, `fit`, `evaluate` and `predict` run the task's preprocessor
    in a `tf.data` pipeline on the base inputs and carry the ids past it, so
    raw inputs go in as `{"inputs": raw, "feature_ids": ids}` (or the raw
    dict plus `"feature_ids"`).

    Public attributes of the base model (e.g. `backbone`, `preprocessor`)
    are reachable on the FLix model. Generation lives in
    `keras_flix.src.generation`, the preprocessing pipeline in
    `keras_flix.src.preprocessing`.

    Args:
        base_model: the model whose target layers are FLix layers already
            (see `keras_flix.src.adapters.inject`).
        flix_config: the `keras_flix.FLixConfig` they were built with, its
            `target_layers` the paths of the FLix layers.
        **kwargs: `keras.Model` arguments (e.g. `name`).
    """

    def __init__(self, base_model, flix_config, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(flix_config, FLixConfig):
            raise TypeError(
                "`flix_config` must be a keras_flix.FLixConfig. Received: "
                f"{type(flix_config).__name__}"
            )
        self.base_model = base_model
        # Not Keras-tracked state: a plain description of the settings.
        object.__setattr__(self, "flix_config", flix_config)
        self.feature_dropout = FeatureDropout(
            flix_config.schema,
            flix_config.feature_dropout,
            seed=flix_config.seed,
            name="feature_dropout",
        )
        object.__setattr__(self, "_flix_ready", True)
        self._apply_trainability()
        if hasattr(base_model, "generate_step"):
            generation.take_ids_in_generate_step(base_model)
        self.built = True

    @property
    def schema(self):
        """The `FeatureSchema` of the model's feature ids."""
        return self.flix_config.schema

    @property
    def preprocessor(self):
        """The base model's preprocessor, or `None`."""
        return getattr(self.base_model, "preprocessor", None)

    @property
    def flix_layers(self):
        """The FLix layers of the model, in model order."""
        return flix_layers(self.base_model)

    @property
    def trainable(self):
        return keras.Model.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # Keras makes every variable trainable again; keep the base frozen.
        keras.Model.trainable.fset(self, value)
        if value and self.__dict__.get("_flix_ready"):
            self._apply_trainability()

    def _apply_trainability(self):
        """Freezes everything but the adapters and the `train_also` layers.

        Freezing happens at the variables, not at the layers: a frozen
        container would hide the trainable adapters inside it.
        """
        self.base_model.trainable = True
        keep = {
            id(v) for layer in self.flix_layers for v in layer.adapter_variables
        }
        for layer in check_train_also(self.base_model, self.flix_config.train_also):
            keep.update(id(v) for v in layer.trainable_variables)
        for variable in self.base_model.trainable_variables:
            if id(variable) not in keep:
                variable.trainable = False

    def call(self, inputs, training=None):
        owner = f"FLix model '{self.name}'"
        inputs, feature_ids = split_feature_ids(inputs, owner)
        batch_size = getattr(keras.tree.flatten(inputs)[0], "shape", (None,))[0]
        feature_ids = standardize_feature_ids(
            feature_ids, self.schema, batch_size=batch_size, owner=owner
        )
        feature_ids = self.feature_dropout(feature_ids, training=training)
        with feature_scope(feature_ids):
            return self.base_model(inputs, training=training)

    def train_step(self, *args, **kwargs):
        """Keras' training step, with row-sparse table gradients on jax and torch.

        With an optimizer that takes row-sparse gradients
        (`kf.optimizers.LazyAdam`), the jax and torch steps differentiate
        with respect to the adapter-table rows the batch uses rather than
        the whole tables (see `keras_flix.src.backend.jax`). Other
        optimizers run Keras' own step; TensorFlow's gradients of the
        tables are row-sparse (`IndexedSlices`) by themselves.
        """
        if (
            backend.row_sparse_train_step is not None
            and getattr(self.optimizer, "takes_row_sparse_gradients", False)
            # Without trainable tables there is nothing to make row-sparse.
            and adapter_tables(self)
        ):
            x = keras.utils.unpack_x_y_sample_weight(args[-1])[0]
            used = used_rows(
                self,
                split_feature_ids(x, f"FLix model '{self.name}'")[1],
                backend.unique_rows,
            )
            return backend.row_sparse_train_step(
                self, *args, tables=adapter_tables(self), used=used
            )
        return super().train_step(*args, **kwargs)

    def preprocess_samples(self, x, y=None, sample_weight=None):
        """Runs the base model's preprocessing, carrying the ids past it."""
        if self.preprocessor is None:
            return keras.utils.pack_x_y_sample_weight(x, y, sample_weight)
        raw, feature_ids = split_feature_ids(x, f"FLix model '{self.name}'")
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
            self.base_model.preprocess_samples(raw, y, sample_weight)
        )
        return keras.utils.pack_x_y_sample_weight(
            join_feature_ids(x, feature_ids), y, sample_weight
        )

    def fit(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        if self.preprocessor is not None:
            if kwargs.get("validation_split"):
                raise ValueError(
                    "`validation_split` cannot be used with a preprocessor; pass "
                    "`validation_data` instead."
                )
            if kwargs.get("validation_data") is not None:
                kwargs["validation_data"] = self._preprocessed(
                    *unpack(kwargs["validation_data"]), batch_size
                )
            x = self._preprocessed(x, y, sample_weight, batch_size)
            y = batch_size = sample_weight = None
        # A keras_flix.callbacks.BackupAndRestore resumes the data position.
        x = positioned_for_resume(
            x,
            kwargs.get("callbacks"),
            steps_per_epoch=kwargs.get("steps_per_epoch"),
            shuffle=kwargs.get("shuffle", True),
        )
        return super().fit(x, y, batch_size, sample_weight=sample_weight, **kwargs)

    def evaluate(self, x=None, y=None, batch_size=None, sample_weight=None, **kwargs):
        if self.preprocessor is None or kwargs.get("_use_cached_eval_dataset"):
            return super().evaluate(
                x, y, batch_size, sample_weight=sample_weight, **kwargs
            )
        return super().evaluate(
            self._preprocessed(x, y, sample_weight, batch_size), **kwargs
        )

    def predict(self, x, batch_size=None, **kwargs):
        if self.preprocessor is None:
            return super().predict(x, batch_size, **kwargs)
        return super().predict(self._preprocessed(x, None, None, batch_size), **kwargs)

    def save(self, filepath, overwrite=True, zipped=None, **kwargs):
        """Keras' `save`; a local `.keras` file is replaced atomically.

        The file is written beside `filepath` and renamed over it once
        complete, so a process killed while saving leaves the previous file
        intact and loadable (see
        `keras_flix.src.atomic_files.replaced_atomically`). Other
        destinations (file objects, folders, remote paths, or an existing
        file with `overwrite=False`, for which Keras asks first) are saved
        by Keras as they are.

        Args:
            filepath, overwrite, zipped, **kwargs: as for `keras.Model.save`.
        """
        local_file = isinstance(filepath, (str, os.PathLike)) and (
            os.fspath(filepath).endswith(".keras")
            and "://" not in os.fspath(filepath)
            and (overwrite or not os.path.exists(filepath))
        )
        if not local_file:
            return super().save(filepath, overwrite=overwrite, zipped=zipped, **kwargs)
        with replaced_atomically(filepath, suffix=".keras") as temporary:
            super().save(temporary, zipped=zipped, **kwargs)

    def generate(
        self, inputs, max_length=None, stop_token_ids="auto", strip_prompt=False
    ):
        """Generates text with a retrofitted KerasHub `CausalLM` / `Seq2SeqLM`.

        Each prompt uses its own features: the result is what each prompt
        would generate alone with its features.

        Args:
            inputs: a dict of the base task's generate inputs plus
                `"feature_ids"` (one row per prompt): e.g.
                `{"prompts": ["abc", ...], "feature_ids": ids}`,
                `{"inputs": strings, "feature_ids": ids}`, or, without a
                preprocessor, the token ids and padding mask plus the ids.
            max_length, stop_token_ids, strip_prompt: as for the base
                task's `generate`.

        Returns:
            What the base task's `generate` returns.

        `keras_flix.feature_scope` around `generate()` is refused: the
        compiled generation function would capture the ids as constants.
        """
        return generation.generate(
            self,
            inputs,
            max_length=max_length,
            stop_token_ids=stop_token_ids,
            strip_prompt=strip_prompt,
        )

    def _preprocessed(self, x, y, sample_weight, batch_size):
        return preprocessed_dataset(
            self.preprocess_samples, x, y, sample_weight, batch_size
        )

    def __getattr__(self, name):
        # torch.nn.Module keeps sublayers out of `__dict__` and finds them here.
        try:
            return super().__getattr__(name)
        except AttributeError:
            pass
        if name.startswith("_") or name == "base_model":
            raise AttributeError(name)
        return getattr(self.base_model, name)

    def get_config(self):
        config = super().get_config()
        config.update(
            base_model=keras.saving.serialize_keras_object(self.base_model),
            **self.flix_config.get_config(),
        )
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        base_model = keras.saving.deserialize_keras_object(
            config.pop("base_model"), custom_objects=custom_objects
        )
        flix_config = FLixConfig.from_config(
            {key: config.pop(key) for key in FLixConfig.KEYS if key in config}
        )
        # The saved paths are exact paths, not patterns.
        flix_config = inject(
            base_model,
            flix_config.replace(
                target_layers=[re.escape(path) for path in flix_config.target_layers]
            ),
        )
        return cls(base_model, flix_config, **config)
