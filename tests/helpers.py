"""Small models and data shared by the tests."""

import keras
import keras_hub
import numpy as np

import keras_flix as kf

SCHEMA = kf.FeatureSchema(
    {"language": ["en", "de", "sw"], "task": ["qa", "ner"]}
)

# Every combination of values and absences of SCHEMA, one example each.
MIXED_IDS = np.array(
    [[0, 0], [1, 1], [2, 0], [2, -1], [-1, 1], [-1, -1]], dtype="int32"
)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def tiny_bert(seed=0, num_layers=2):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=12,
    )


def bert_inputs(batch, length=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, 64, (batch, length)).astype("int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }


def randomize_adapters(model, seed=0, scale=0.2):
    """Gives every adapter random values (B starts at zero otherwise)."""
    rng = np.random.default_rng(seed)
    for layer in model.flix_layers:
        for variable in layer.adapter_variables:
            variable.assign(
                (scale * rng.standard_normal(variable.shape)).astype("float32")
            )


def max_relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-12))
