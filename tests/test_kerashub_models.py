"""FLix on every projection of KerasHub's BERT-like, GPT-2, Gemma, Llama, T5."""

import keras
import keras_hub
import numpy as np
import pytest
from helpers import SCHEMA
from helpers import max_relative_error
from helpers import randomize_adapters
from helpers import to_numpy

import keras_flix as kf

SMALL = dict(vocabulary_size=64, num_layers=2, hidden_dim=32, intermediate_dim=64)


def token_inputs(batch, length, *prefixes):
    rng = np.random.default_rng(0)
    inputs = {}
    for prefix in prefixes or ("",):
        inputs[f"{prefix}token_ids"] = rng.integers(1, 64, (batch, length)).astype("int32")
        inputs[f"{prefix}padding_mask"] = np.ones((batch, length), "int32")
    return inputs


MODELS = {
    "xlm_roberta": (
        lambda: keras_hub.models.XLMRobertaBackbone(num_heads=2, max_sequence_length=16, **SMALL),
        lambda b: token_inputs(b, 8),
    ),
    "gpt2": (
        lambda: keras_hub.models.GPT2Backbone(num_heads=2, max_sequence_length=16, **SMALL),
        lambda b: token_inputs(b, 8),
    ),
    "gemma": (
        lambda: keras_hub.models.GemmaBackbone(
            num_query_heads=2, num_key_value_heads=1, head_dim=16, **SMALL
        ),
        lambda b: token_inputs(b, 8),
    ),
    "llama": (
        lambda: keras_hub.models.LlamaBackbone(
            num_query_heads=2, num_key_value_heads=1, **SMALL
        ),
        lambda b: token_inputs(b, 8),
    ),
    "t5": (
        lambda: keras_hub.models.T5Backbone(num_heads=2, key_value_dim=16, **SMALL),
        lambda b: token_inputs(b, 8, "encoder_", "decoder_"),
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_projection_matches_the_merged_kernel_model(name):
    make_backbone, make_inputs = MODELS[name]
    keras.utils.set_random_seed(0)
    original = make_backbone()
    model = kf.retrofit(original, SCHEMA, rank=2, target_layers=[".*"], copy=True)
    equations = {
        getattr(layer, "equation", "dense") for layer in model.flix_layers
    }
    assert len(model.flix_layers) >= 2 * 6, [l.path for l in model.flix_layers]
    randomize_adapters(model, scale=0.1)
    combination = {"language": "sw", "task": "ner"}
    ids = np.tile(SCHEMA.encode(combination), (3, 1))
    x = make_inputs(3)
    flix_outputs = model({**x, "feature_ids": ids})
    by_path = {layer.path: layer for layer in original._flatten_layers()}
    for layer in model.flix_layers:
        by_path[layer.path]._kernel.assign(layer.merged_kernel(combination))
    merged_outputs = original(x)
    for got, expected in zip(
        keras.tree.flatten(flix_outputs), keras.tree.flatten(merged_outputs)
    ):
        assert max_relative_error(to_numpy(got), to_numpy(expected)) < 1e-4, (name, equations)
