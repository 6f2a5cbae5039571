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


def retrofit(
    model,
    schema,
    rank=8,
    alpha=None,
    target_layers=None,
    feature_dropout=0.0,
    train_also=(),
    *,
    copy=False,
    seed=None,
    a_initializer="he_uniform",
    b_initializer="zeros",
    compute_path="auto",
):
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
        rank: adapter rank, an int or a dict from feature type to int.
        alpha: scale numerator (`None`: equal to the rank), a number or a
            dict from feature type to number. The scale is `alpha / rank`.
        target_layers: names, paths or regular expressions (full match) of the
            layers to adapt. Default: the backbone's
            `default_lora_layer_names()` (query and value projections).
            Each given pattern must match a layer.
        feature_dropout: probability of dropping each feature of each
            example in training, a float or a dict from feature type to
            float.
        train_also: names, paths or regexes of further layers to keep
            trainable (e.g. a task head); everything else is frozen.
        copy: adapt a copy instead of `model` itself.
        seed: seed of the feature dropout.
        a_initializer: initializer of each value's `A` matrix.
        b_initializer: initializer of each value's `B` matrix.
        compute_path: how the FLix layers select each example's adapters:
            `"auto"` (default), `"gather"` or `"one_hot"` (see
            `keras_flix.src.layers.selection.COMPUTE_PATHS`).

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
    config = FLixConfig(
        schema,
        rank=rank,
        alpha=alpha,
        target_layers=target_layers,
        feature_dropout=feature_dropout,
        train_also=train_also,
        seed=seed,
        a_initializer=a_initializer,
        b_initializer=b_initializer,
        compute_path=compute_path,
    )
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
