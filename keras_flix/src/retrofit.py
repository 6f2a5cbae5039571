"""`retrofit`: turn a Keras or KerasHub model into a FLix model."""

import os
import tempfile

import keras

from keras_flix.src.adapters import check_train_also
from keras_flix.src.adapters import flix_layers
from keras_flix.src.adapters import inject
from keras_flix.src.adapters import target_layers_of
from keras_flix.src.config import FLixConfig
from keras_flix.src.flix_model import FLixModel


def retrofit(model, schema, *, copy=False, **settings):
    """Adds FLix adapters to a model's projections.

    Every target `Dense` / `EinsumDense` layer is replaced by a `FLixDense` /
    `FLixEinsumDense` that shares its (now frozen) kernel and bias and owns
    one low-rank adapter per feature value. Right after `retrofit` the model
    computes exactly what it computed before, for any feature ids (the `B`
    adapters start at zero).

    By default the model is modified **in place**, like Keras'
    `enable_lora`: its target layers become FLix layers, so calling the
    original model object without feature ids raises an error instead of
    silently computing something else. Pass `copy=True` to adapt a copy
    (through a `.keras` round trip) and leave `model` untouched.

    Args:
        model: a KerasHub `Backbone`, a KerasHub `Task` (e.g.
            `TextClassifier`, `CausalLM`), or any built Keras model with
            `Dense` / `EinsumDense` layers.
        schema: the `keras_flix.FeatureSchema`.
        copy: adapt a copy instead of `model` itself.
        **settings: the FLix settings, as for `keras_flix.FLixConfig`:
            `rank` (default 8, an int or a dict from feature type to int),
            `alpha` (scale numerator; default `None`, equal to the rank),
            `target_layers` (names, paths or regular expressions of the
            layers to adapt; default: the backbone's
            `default_lora_layer_names()`, the query and value projections;
            each given pattern must match a layer), `feature_dropout`
            (default 0.0), `train_also` (layers kept trainable besides the
            adapters, e.g. a task head; everything else is frozen), `seed`
            (of the feature dropout), `a_initializer`, `b_initializer` and
            `compute_path` (`"auto"`, `"gather"` or `"one_hot"`).

    The settings are checked, as a `keras_flix.FLixConfig`, before the
    model is touched; the FLix model keeps that config (`flix_config`).

    Returns:
        A `keras_flix.FLixModel`. Its inputs are the model's inputs plus
        `"feature_ids"`: a dict of the model's dict inputs and
        `"feature_ids"`, or `{"inputs": x, "feature_ids": ids}` when the
        model's inputs are not a dict.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> import keras_flix as kf
    >>> backbone = keras_hub.models.BertBackbone(
    ...     vocabulary_size=50, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> model = kf.retrofit(backbone, schema, rank=4)
    >>> outputs = model({
    ...     "token_ids": np.ones((2, 8), "int32"),
    ...     "segment_ids": np.zeros((2, 8), "int32"),
    ...     "padding_mask": np.ones((2, 8), "int32"),
    ...     "feature_ids": schema.encode([{"language": "sw"}, {"task": "qa"}]),
    ... })
    >>> tuple(outputs["pooled_output"].shape)
    (2, 16)
    """
    if isinstance(model, FLixModel):
        raise ValueError(
            f"'{model.name}' is a FLix model already; retrofit its "
            "`base_model` only if you mean to start over."
        )
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a Keras model. Received: {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built; call it once or build it "
            "before retrofitting."
        )
    if flix_layers(model):
        raise ValueError(
            f"Model '{model.name}' already holds FLix layers (was it "
            "retrofitted in place before?). Retrofit a fresh model, or use "
            "the FLix model returned the first time."
        )
    # Check every setting before the model is touched.
    config = FLixConfig(schema, **settings)
    check_train_also(model, config.train_also)
    target_layers_of(model, config)
    if copy:
        # Same structure, same layer paths: the patterns match the same layers.
        model = _copy_model(model)
    config = inject(model, config)
    return FLixModel(model, config, name=f"flix_{model.name}")


def _copy_model(model):
    """A deep copy of `model`, weights and assets included."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        return keras.saving.load_model(path)
