import keras
import keras_hub
import numpy as np
import pytest
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import bert_inputs
from helpers import randomize_adapters
from helpers import tiny_bert
from helpers import tiny_classifier
from helpers import to_numpy

import keras_flix as kf


def assert_outputs_equal(a, b):
    a, b = keras.tree.flatten(a), keras.tree.flatten(b)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(to_numpy(x), to_numpy(y))


def test_retrofit_backbone_is_exact_for_any_ids_and_in_place():
    backbone = tiny_bert()
    x = bert_inputs(len(MIXED_IDS))
    expected = backbone(x)
    model = kf.retrofit(backbone, SCHEMA, rank=4)
    assert isinstance(model, kf.FLixModel)
    assert model.base_model is backbone
    assert_outputs_equal(model({**x, "feature_ids": MIXED_IDS}), expected)
    assert sorted(layer.path for layer in model.flix_layers) == [
        f"transformer_layer_{i}/self_attention_layer/{name}"
        for i in range(2)
        for name in ("query", "value")
    ]
    # In place: the original object now needs feature ids, loudly.
    with pytest.raises(ValueError, match="called without feature ids"):
        backbone(x)
    with kf.feature_scope(MIXED_IDS):
        assert_outputs_equal(backbone(x), expected)


def test_retrofit_copy_leaves_the_original_untouched():
    backbone = tiny_bert()
    x = bert_inputs(len(MIXED_IDS))
    expected = backbone(x)
    model = kf.retrofit(backbone, SCHEMA, rank=4, copy=True)
    assert model.base_model is not backbone
    assert_outputs_equal(backbone(x), expected)
    assert not any(isinstance(l, kf.layers.FLixDense) for l in backbone._flatten_layers())
    assert_outputs_equal(model({**x, "feature_ids": MIXED_IDS}), expected)
    randomize_adapters(model)
    assert_outputs_equal(backbone(x), expected)


def test_only_adapters_and_train_also_layers_train():
    backbone = tiny_bert()
    backbone.trainable = False  # a common state before fine-tuning
    model = kf.retrofit(
        backbone, SCHEMA, rank=2, target_layers=[r".*/(query|value)"],
        train_also=["pooled_dense"],
    )
    names = sorted(v.path for v in model.trainable_variables)
    adapters = [
        f"transformer_layer_{i}/self_attention_layer/{p}/flix_{t}_{m}"
        for i in range(2)
        for p in ("query", "value")
        for t in ("language", "task")
        for m in ("a", "b")
    ]
    assert names == sorted(adapters + ["pooled_dense/bias", "pooled_dense/kernel"])
    # Keras' trainable=True cascade would unfreeze everything; not here.
    model.trainable = True
    assert sorted(v.path for v in model.trainable_variables) == names


def test_variable_paths_are_unique_and_under_their_layer():
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=2, target_layers=[".*"])
    paths = [v.path for v in model.variables]
    assert len(paths) == len(set(paths))
    for layer in model.flix_layers:
        for variable in layer.adapter_variables:
            assert variable.path.startswith(layer.path + "/flix_")
    assert "pooled_dense/flix_language_a" in paths
    assert (
        "transformer_layer_1/feedforward_intermediate_dense/flix_task_b" in paths
    )


def test_old_layers_leave_the_model():
    backbone = tiny_bert()
    n_before = len(backbone.weights)
    model = kf.retrofit(backbone, SCHEMA, rank=2, target_layers=[".*"])
    layers = backbone._flatten_layers()
    assert not any(type(l) in (keras.layers.Dense, keras.layers.EinsumDense) for l in layers)
    n_adapters = 4 * len(model.flix_layers)
    assert len(backbone.weights) == n_before + n_adapters
    assert len({id(v) for v in backbone.weights}) == len(backbone.weights)
    if keras.backend.backend() == "torch":
        params = {id(p) for p in backbone.parameters()}
        assert {id(v.value) for v in backbone.variables} == params


def test_retrofit_plain_functional_and_sequential_models():
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="head")(hidden)
    functional = keras.Model(inputs, outputs)
    sequential = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, name="hidden"), keras.layers.Dense(3, name="head")]
    )
    x = np.random.default_rng(0).standard_normal((6, 6)).astype("float32")
    for base in (functional, sequential):
        expected = to_numpy(base(x))
        model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["hidden", "head"])
        np.testing.assert_array_equal(
            to_numpy(model({"inputs": x, "feature_ids": MIXED_IDS})), expected
        )
        randomize_adapters(model)
        y = to_numpy(model({"inputs": x, "feature_ids": MIXED_IDS}))
        assert not np.allclose(y[:-1], expected[:-1])
        # The all-absent example is the base model's.
        np.testing.assert_allclose(y[-1], expected[-1], rtol=1e-6)
        assert [type(l).__name__ for l in base.layers][-2:] == ["FLixDense", "FLixDense"]


def test_retrofit_text_classifier_with_its_preprocessor():
    classifier = tiny_classifier()
    texts = np.array(["the cat sat", "a dog ran", "the dog sat", "a cat ran"])
    expected = classifier.predict(texts, verbose=0)
    model = kf.retrofit(classifier, SCHEMA, rank=2)
    assert model.preprocessor is classifier.preprocessor
    assert model.backbone is classifier.backbone
    ids = MIXED_IDS[:4]
    got = model.predict({"inputs": texts, "feature_ids": ids}, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_summary_counts():
    model = kf.retrofit(tiny_bert(), SCHEMA, rank={"language": 2, "task": 4})
    lines = []
    report = kf.summary(model, print_fn=lines.append)
    # query/value: d_in=32, d_out=2*16=32; values: language 3, task 2.
    per_layer_language = 3 * (32 * 2 + 2 * 32)
    per_layer_task = 2 * (32 * 4 + 4 * 32)
    assert report["per_feature_type"] == {
        "language": 4 * per_layer_language,
        "task": 4 * per_layer_task,
    }
    assert report["trainable"] == 4 * (per_layer_language + per_layer_task)
    assert report["total"] == report["trainable"] + tiny_bert().count_params()
    assert any("transformer_layer_0/self_attention_layer/query" in l for l in lines)
    assert lines[-1].startswith("Trainable parameters:")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"target_layers": ["nope"]}, ValueError, "'nope' matches no Dense or EinsumDense"),
        ({"target_layers": ["embeddings_layer_norm"]}, ValueError, "matches no Dense"),
        ({"target_layers": ["("]}, ValueError, "not a valid regular expression"),
        ({"train_also": ["nope"]}, ValueError, "`train_also` pattern 'nope' matches no layer"),
        ({"rank": 0}, ValueError, "positive int"),
        ({"feature_dropout": 1.0}, ValueError, r"must be in \[0, 1\)"),
        ({"feature_dropout": {"domain": 0.1}}, ValueError, "unknown feature types"),
    ],
)
def test_bad_retrofit_arguments_leave_the_model_untouched(kwargs, error, message):
    backbone = tiny_bert()
    with pytest.raises(error, match=message):
        kf.retrofit(backbone, SCHEMA, **kwargs)
    assert not any(isinstance(l, kf.layers.FLixEinsumDense) for l in backbone._flatten_layers())
    backbone(bert_inputs(2))


def test_retrofit_refuses_bad_models():
    backbone = tiny_bert()
    model = kf.retrofit(backbone, SCHEMA)
    with pytest.raises(ValueError, match="is a FLix model already"):
        kf.retrofit(model, SCHEMA)
    with pytest.raises(ValueError, match="already holds FLix layers"):
        kf.retrofit(backbone, SCHEMA)
    with pytest.raises(TypeError, match="must be a Keras model"):
        kf.retrofit(keras.layers.Dense(3), SCHEMA)
    with pytest.raises(TypeError, match="FeatureSchema"):
        kf.retrofit(tiny_bert(), {"language": ["en"]})
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="pass `target_layers`"):
        kf.retrofit(plain, SCHEMA)
    with pytest.raises(ValueError, match="not built"):
        kf.retrofit(keras.Sequential([keras.layers.Dense(2)]), SCHEMA, target_layers=[".*"])


def test_missing_or_bad_feature_ids_input():
    model = kf.retrofit(tiny_bert(), SCHEMA)
    x = bert_inputs(2)
    with pytest.raises(ValueError, match="with a 'feature_ids' entry"):
        model(x)
    with pytest.raises(ValueError, match="3 rows but the inputs have a batch of 2"):
        model({**x, "feature_ids": np.zeros((3, 2), "int32")})
    with pytest.raises(ValueError, match="out of range for feature type 'task'"):
        model({**x, "feature_ids": np.array([[0, 2], [0, 0]], "int32")})
    with pytest.raises(ValueError, match="must be integers"):
        model({**x, "feature_ids": np.zeros((2, 2), "float32")})


def test_retrofit_causal_lm_task():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=16,
    )
    causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    x = {
        "token_ids": np.random.default_rng(0).integers(1, 64, (6, 8)).astype("int32"),
        "padding_mask": np.ones((6, 8), "int32"),
    }
    expected = to_numpy(causal_lm(x))
    model = kf.retrofit(causal_lm, SCHEMA, rank=2)
    assert {layer.path.rsplit("/", 1)[-1] for layer in model.flix_layers} == {"query", "value"}
    np.testing.assert_array_equal(to_numpy(model({**x, "feature_ids": MIXED_IDS})), expected)
    randomize_adapters(model)
    logits = to_numpy(model({**x, "feature_ids": MIXED_IDS}))
    assert logits.shape == (6, 8, 64)
    np.testing.assert_allclose(logits[-1], expected[-1], rtol=1e-5, atol=1e-5)
    assert not np.allclose(logits[0], expected[0])
