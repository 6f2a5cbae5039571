"""`FLixModel`: a retrofitted model that takes feature ids with its inputs.

A FLix model wraps the model it was retrofitted from (`base_model`) rather
than subclassing KerasHub's `Task` or `PipelineModel`. Why delegation:

* one class serves every base model: a KerasHub task of any kind, a
  backbone, a Functional or subclassed Keras model. A subclass of `Task`
  would need a class per task class (`GPT2CausalLM`, `BertTextClassifier`,
  ...) to inherit each task's `generate_step`, `score` and `compile`.
* the task's own methods run on the task object they were written for
  (its layers, its compiled `generate_function`, its sampler); the FLix
  model adds only what ids need: it splits them off the inputs, carries
  them past the preprocessor and into the compiled functions.
* `isinstance(model, keras_hub.models.CausalLM)` would be a false promise:
  every call of a FLix model needs feature ids, which the task's callers
  (KerasHub utilities, `keras_hub.models.CausalLM.from_preset`) never pass.

So the task's interface is re-exposed, each method with feature ids where
it needs them: `compile` (the task's own arguments and `"auto"` defaults,
`sampler=` included), `fit` / `evaluate` / `predict` on raw inputs,
`generate`, `score`, `preprocessor`, `backbone`, and `save_to_preset` with
`FLixModel.from_preset` (see `keras_flix.src.presets`). Any other public
attribute of the base model is reachable on the FLix model too.
"""

import os
import re

import keras

from keras_flix.src import generation
from keras_flix.src import keras_private
from keras_flix.src import presets
from keras_flix.src.adapter_files import load_adapters
from keras_flix.src.adapters import check_train_also
from keras_flix.src.adapters import flix_layers
from keras_flix.src.adapters import inject
from keras_flix.src.atomic_files import replaced_atomically
from keras_flix.src.callbacks.backup_and_restore import positioned_for_resume
from keras_flix.src.config import FLixConfig
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.hub import Task
from keras_flix.src.inputs import join_feature_ids
from keras_flix.src.inputs import split_feature_ids
from keras_flix.src.inputs import standardize_feature_ids
from keras_flix.src.layers.feature_dropout import FeatureDropout
from keras_flix.src.layers.quantized_base import check_quantization_mode
from keras_flix.src.preprocessing import preprocessed_dataset
from keras_flix.src.preprocessing import unpack
from keras_flix.src.surgery import refresh_parameter_registries


@keras.saving.register_keras_serializable(package="keras_flix")
class FLixModel(keras.Model):
    """A model whose FLix layers take each example's features as input.

    Built by `keras_flix.retrofit`; it wraps the adapted base model, reads
    the feature ids from its inputs, applies feature dropout in training and
    runs the base model inside a `feature_scope`. With a KerasHub `Task` as
    base model, `fit`, `evaluate` and `predict` run the task's preprocessor
    in a `tf.data` pipeline on the base inputs and carry the ids past it, so
    raw inputs go in as `{"inputs": raw, "feature_ids": ids}` (or the raw
    dict plus `"feature_ids"`). A task's FLix model is compiled as the task
    was (a copy of its optimizer, loss and metrics), so it trains without a
    `compile` call, like the task.

    Public attributes of the base model (e.g. `backbone`, `preprocessor`)
    are reachable on the FLix model. Generation lives in
    `keras_flix.src.generation`, the preprocessing pipeline in
    `keras_flix.src.preprocessing`, presets in `keras_flix.src.presets`.

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
        if isinstance(base_model, Task) and base_model.compiled:
            # A copy: the task's own optimizer may be built for its variables.
            super().compile(
                **keras.saving.deserialize_keras_object(
                    base_model.get_compile_config()
                )
            )

    @property
    def schema(self):
        """The `FeatureSchema` of the model's feature ids."""
        return self.flix_config.schema

    @property
    def preprocessor(self):
        """The base model's preprocessor, or `None`.

        Set it to `None` to feed preprocessed inputs, as on a KerasHub task.
        """
        return getattr(self.base_model, "preprocessor", None)

    @preprocessor.setter
    def preprocessor(self, value):
        self.base_model.preprocessor = value

    @property
    def backbone(self):
        """The base task's backbone (with its FLix layers), or `None`."""
        return getattr(self.base_model, "backbone", None)

    def __setattr__(self, name, value):
        # As KerasHub's `Task`: torch's `Module.__setattr__` would register a
        # preprocessor layer as a submodule instead of calling the setter.
        if isinstance(getattr(type(self), name, None), property):
            return object.__setattr__(self, name, value)
        return super().__setattr__(name, value)

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
        container would hide the trainable adapters inside it. float8's
        scaling statistics are not weights (Keras overwrites them with their
        "gradients" in training) and keep updating.
        """
        self.base_model.trainable = True
        keep = {
            id(v) for layer in self.flix_layers for v in layer.adapter_variables
        }
        for layer in check_train_also(self.base_model, self.flix_config.train_also):
            keep.update(id(v) for v in layer.trainable_variables)
        for variable in self.base_model.trainable_variables:
            if id(variable) not in keep and not variable.overwrite_with_gradient:
                variable.trainable = False

    def quantize(self, mode=None, config=None, filters=None, **kwargs):
        """Quantizes the base model's kernels; the adapters stay float32.

        The base model's own `quantize` runs (a KerasHub task resets its
        generation function), FLix layers included: each keeps Keras'
        quantized base call and adds its adapters' update to it. Afterwards
        only the adapters (and `train_also` layers) train, as before.
        Compile again before training: the compiled functions are reset.

        Args:
            mode: `"int8"`, `"int4"` or `"float8"` (see
                `keras_flix.src.layers.quantized_base.SUPPORTED_MODES`).
            config, filters, **kwargs: as for `keras.Model.quantize`.

        Raises:
            NotImplementedError: for another mode (GPTQ, AWQ), before
                anything is quantized.

        Example:

        >>> import keras
        >>> import keras_flix as kf
        >>> inputs = keras.Input((8,))
        >>> base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
        >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
        >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"])
        >>> model.quantize("int4")
        >>> layer = model.flix_layers[0]
        >>> layer.quantization_mode, [v.name for v in model.trainable_variables]
        ('int4', ['flix_language_a', 'flix_language_b'])
        """
        resolved = config if isinstance(config, str) else getattr(config, "mode", None)
        check_quantization_mode(mode or resolved, f"FLix model '{self.name}'")
        self.base_model.quantize(mode, config=config, filters=filters, **kwargs)
        self.train_function = self.test_function = self.predict_function = None
        self._apply_trainability()
        refresh_parameter_registries(self)

    def compile(self, *args, **kwargs):
        """Configures training (and, for a KerasHub task, generation).

        For a KerasHub task this takes what the task's `compile` takes,
        with its defaults: `optimizer="auto"`, `loss="auto"`,
        `metrics="auto"` / `weighted_metrics="auto"` resolve as the task
        resolves them, and a `CausalLM` / `Seq2SeqLM` takes `sampler=` for
        `generate`. The task is compiled with them, and the FLix model with
        the same optimizer, loss and metrics objects. For other base models
        it is `keras.Model.compile`.

        Example:

        >>> import keras_hub
        >>> import keras_flix as kf
        >>> backbone = keras_hub.models.GPT2Backbone(
        ...     vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16,
        ...     intermediate_dim=32, max_sequence_length=8)
        >>> causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
        >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
        >>> model = kf.retrofit(causal_lm, schema, rank=2)
        >>> model.compile(sampler="greedy")
        >>> type(model.optimizer).__name__, type(model.base_model.sampler).__name__
        ('Adam', 'GreedySampler')
        """
        if not isinstance(self.base_model, Task):
            return super().compile(*args, **kwargs)
        self.base_model.compile(*args, **kwargs)
        super().compile(**keras_private.compile_arguments(self.base_model))

    def compile_from_config(self, config):
        """Compiles as a saved model's compile config says (when it loads)."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            # Before the weights load: the optimizer's variables load too.
            self.optimizer.build(self.trainable_variables)

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
            y=y,
            sample_weight=sample_weight,
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

    def score(self, token_ids, padding_mask=None, *, feature_ids, **kwargs):
        """Scores token sequences with a retrofitted KerasHub `CausalLM`.

        Args:
            token_ids, padding_mask: as for the base task's `score`.
            feature_ids: int32 `[batch, n_feature_types]`, one row per
                sequence.
            **kwargs: the base task's other `score` arguments
                (`scoring_mode`, `layer_intercept_fn`, `target_ids`).

        Returns:
            What the base task's `score` returns, each sequence scored with
            its own features.
        """
        if not hasattr(self.base_model, "score"):
            raise AttributeError(
                f"'{self.base_model.name}' ({type(self.base_model).__name__}) "
                "does not score; `score` needs a KerasHub CausalLM."
            )
        owner = f"FLix model '{self.name}'"
        feature_ids = standardize_feature_ids(
            feature_ids, self.schema, batch_size=token_ids.shape[0], owner=owner
        )
        with feature_scope(feature_ids):
            return self.base_model.score(token_ids, padding_mask, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10):
        """Saves a retrofitted KerasHub task as a preset directory.

        See `keras_flix.src.presets`: the task's own preset (its weights
        without the adapters, loadable by KerasHub alone) plus the FLix
        settings and adapters. `FLixModel.from_preset` loads it back.

        Args:
            preset_dir: the local directory to write.
            max_shard_size: as for the task's `save_to_preset`.
        """
        presets.save_preset(self, preset_dir, max_shard_size)

    @classmethod
    def from_preset(cls, preset_dir, **kwargs):
        """Loads a FLix model written by `FLixModel.save_to_preset`.

        Args:
            preset_dir: the local preset directory.
            **kwargs: passed to the task class's `from_preset` (e.g.
                `dtype`); the adapters are loaded after it.

        Returns:
            The `FLixModel`: the task, retrofitted with the saved settings
            and schema, and the saved adapter weights.

        Example:

        >>> import os, tempfile
        >>> import keras_hub
        >>> import keras_flix as kf
        >>> backbone = keras_hub.models.GPT2Backbone(
        ...     vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16,
        ...     intermediate_dim=32, max_sequence_length=8)
        >>> causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
        >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
        >>> model = kf.retrofit(causal_lm, schema, rank=2)
        >>> preset = os.path.join(tempfile.mkdtemp(), "flix_gpt2")
        >>> model.save_to_preset(preset)
        >>> loaded = kf.FLixModel.from_preset(preset)
        >>> loaded.schema == schema, type(loaded.base_model).__name__
        (True, 'GPT2CausalLM')
        """
        task_class, config, name, adapters = presets.read_preset(preset_dir)
        base_model = task_class.from_preset(preset_dir, **kwargs)
        model = cls(base_model, _inject_saved(base_model, config), name=name)
        load_adapters(model, adapters)
        return model

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
        flix_config = _inject_saved(
            base_model,
            {key: config.pop(key) for key in FLixConfig.KEYS if key in config},
        )
        return cls(base_model, flix_config, **config)


def _inject_saved(base_model, config):
    """Injects FLix layers into `base_model` as a saved `FLixConfig` says.

    Returns:
        The injected `FLixConfig`.
    """
    flix_config = FLixConfig.from_config(config)
    # The saved paths are exact paths, not patterns.
    return inject(
        base_model,
        flix_config.replace(
            target_layers=[re.escape(path) for path in flix_config.target_layers]
        ),
    )
