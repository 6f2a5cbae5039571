"""`FLixConfig`: one checked, serializable description of a FLix model's settings."""

import json

import keras
import pytest
from helpers import SCHEMA

import keras_flix as kf
from keras_flix.src.config import LAYER_KEYS


def test_defaults_and_normalized_settings():
    config = kf.FLixConfig(SCHEMA)
    assert config.rank == 8 and config.alpha is None
    assert config.target_layers is None
    assert config.feature_dropout == {"language": 0.0, "task": 0.0}
    assert config.train_also == [] and config.seed is None
    assert config.compute_path == "auto"
    assert config.a_initializer["class_name"] == "HeUniform"
    assert config.b_initializer["class_name"] == "Zeros"
    config = kf.FLixConfig(SCHEMA, target_layers="query", train_also="logits",
                           feature_dropout={"task": 0.5})
    assert config.target_layers == ["query"] and config.train_also == ["logits"]
    assert config.feature_dropout == {"language": 0.0, "task": 0.5}


def test_round_trip_through_json():
    config = kf.FLixConfig(
        SCHEMA, rank={"language": 4, "task": 2}, alpha=16, target_layers=["q", "v"],
        feature_dropout=0.1, train_also=["head"], seed=3,
        a_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=1),
        compute_path="one_hot",
    )
    text = json.dumps(config.get_config())
    restored = kf.FLixConfig.from_config(json.loads(text))
    assert restored == config
    assert restored.schema == SCHEMA
    assert restored.replace(rank=2).rank == 2
    assert restored.replace(rank=2) != config


def test_layer_arguments_are_the_layer_keys():
    config = kf.FLixConfig(SCHEMA, compute_path="gather")
    assert tuple(config.layer_arguments()) == LAYER_KEYS
    layer = kf.layers.FLixDense(3, **config.layer_arguments())
    layer.build((None, 4))
    base_keys = set(keras.layers.Dense(3).get_config())
    assert set(layer.get_config()) - base_keys == set(LAYER_KEYS)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"schema": {"language": ["en"]}}, TypeError, "`schema` must be a keras_flix.FeatureSchema"),
        ({"rank": 0}, ValueError, "`rank` for feature type 'language' must be a positive int. Received: 0"),
        ({"rank": {"language": 2}}, ValueError, r"missing: \['task'\]"),
        ({"alpha": -1.0}, ValueError, "`alpha` for feature type 'language' must be a positive float"),
        ({"feature_dropout": 1.0}, ValueError, r"must be in \[0, 1\)"),
        ({"feature_dropout": "x"}, ValueError, "must be a float in"),
        ({"feature_dropout": {"domain": 0.1}}, ValueError, "unknown feature types"),
        ({"target_layers": [3]}, ValueError, "`target_layers` entries must be .* Received: 3"),
        ({"train_also": 5}, ValueError, "`train_also` must be a string or a sequence"),
        ({"seed": "7"}, ValueError, "`seed` must be an int or None. Received: '7'"),
        ({"seed": True}, ValueError, "`seed` must be an int or None"),
        ({"a_initializer": "nope"}, ValueError, "`a_initializer` must be a Keras initializer.*'nope'"),
        ({"compute_path": "scatter"}, ValueError, "`compute_path` must be one of .* Received: 'scatter'"),
    ],
)
def test_bad_settings_name_the_value_and_the_expectation(kwargs, error, message):
    kwargs = {"schema": SCHEMA, **kwargs}
    with pytest.raises(error, match=message):
        kf.FLixConfig(**kwargs)


def test_keras_object_sharing_marks_never_enter_the_settings(monkeypatch):
    # Inside a saving or loading scope Keras may mark an initializer's config
    # with `shared_object_id` (an id() a new object can reuse); the settings
    # of a saved and a loaded model must compare equal all the same.
    serialize = keras.initializers.serialize

    def marked(initializer):
        return {**serialize(initializer), "shared_object_id": id(initializer)}

    monkeypatch.setattr(keras.initializers, "serialize", marked)
    config = kf.FLixConfig(SCHEMA, a_initializer={**serialize(keras.initializers.HeUniform()),
                                                  "shared_object_id": 1})
    assert "shared_object_id" not in config.a_initializer
    assert "shared_object_id" not in config.b_initializer
    monkeypatch.undo()
    assert config == kf.FLixConfig(SCHEMA)


def test_the_model_keeps_its_config_and_saves_it(tmp_path):
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(3, name="proj")(inputs))
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=[".*oj"], seed=4,
                        compute_path="one_hot")
    # `target_layers` becomes the adapted layers' paths.
    assert model.flix_config.target_layers == ["proj"]
    assert model.schema is model.flix_config.schema
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.flix_config == model.flix_config
    assert loaded.flix_layers[0].compute_path == "one_hot"
