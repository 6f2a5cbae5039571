import json

import numpy as np
import pytest

import keras_flix as kf


@pytest.fixture
def schema():
    return kf.FeatureSchema({"language": ["en", "de", "sw"], "task": ["qa", "ner"]})


def test_encode_decode_round_trip(schema):
    assert schema.feature_types == ("language", "task")
    one = schema.encode({"language": "sw", "task": "qa"})
    assert one.dtype == np.int32 and one.tolist() == [2, 0]
    many = schema.encode([{"language": "sw"}, {"task": "ner"}, {}])
    assert many.dtype == np.int32
    assert many.tolist() == [[2, -1], [-1, 1], [-1, -1]]
    assert schema.decode(many) == [{"language": "sw"}, {"task": "ner"}, {}]
    assert schema.decode(one) == {"language": "sw", "task": "qa"}
    assert schema.encode([]).shape == (0, 2)
    assert schema.encode({"language": None}).tolist() == [-1, -1]


def test_unknown_value_policy(schema):
    with pytest.raises(ValueError, match=r"'xx'.*'language'.*\['en', 'de', 'sw'\]"):
        schema.encode({"language": "xx"})
    lenient = kf.FeatureSchema(schema.get_config()["features"], unknown="absent")
    assert lenient.encode({"language": "xx", "task": "qa"}).tolist() == [-1, 0]


def test_unknown_feature_type_is_an_error(schema):
    with pytest.raises(ValueError, match="Unknown feature type 'domain'"):
        schema.encode({"domain": "news"})
    with pytest.raises(ValueError, match="Unknown feature type 'domain'"):
        schema.values("domain")


def test_config_json_equality_and_repr(schema):
    config = schema.get_config()
    json.dumps(config)
    assert kf.FeatureSchema.from_config(config) == schema
    assert kf.FeatureSchema.from_json(schema.to_json()) == schema
    assert hash(kf.FeatureSchema.from_config(config)) == hash(schema)
    assert schema != kf.FeatureSchema({"language": ["en", "de", "sw"]})
    assert repr(schema) == (
        "FeatureSchema({'language': ['en', 'de', 'sw'], 'task': ['qa', 'ner']}, "
        "unknown='error')"
    )
    assert schema.num_values == {"language": 3, "task": 2}
    assert schema.index("task") == 1


@pytest.mark.parametrize(
    "features, message",
    [
        ({}, "non-empty mapping"),
        ({"language": []}, "has no values"),
        ({"language": "en"}, "must be a list of strings"),
        ({"language": ["en", "en"]}, r"more than once: \['en'\]"),
        ({"language": ["en", 3]}, "non-empty strings"),
        ({"lang uage": ["en"]}, "identifiers"),
        ({"feature_ids": ["en"]}, "reserved"),
    ],
)
def test_bad_schemas(features, message):
    with pytest.raises(ValueError, match=message):
        kf.FeatureSchema(features)


def test_bad_unknown_policy():
    with pytest.raises(ValueError, match="unknown"):
        kf.FeatureSchema({"language": ["en"]}, unknown="ignore")


@pytest.mark.parametrize(
    "ids, message",
    [
        ([[3, 0]], "out of range for feature type 'language'"),
        ([[0, -2]], "out of range for feature type 'task'"),
        ([[0, 0, 0]], r"shape \[..., 2\]"),
        ([[0.0, 1.0]], "must be integers"),
    ],
)
def test_check_ids(schema, ids, message):
    with pytest.raises(ValueError, match=message):
        schema.check_ids(np.asarray(ids))


def test_encode_rejects_non_dicts(schema):
    with pytest.raises(TypeError):
        schema.encode("en")
    with pytest.raises(TypeError):
        schema.encode(["en"])
