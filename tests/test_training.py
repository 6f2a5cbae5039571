import keras
import numpy as np
import pytest
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import assert_same_training
from helpers import bert_inputs
from helpers import block_model
from helpers import randomize_adapters
from helpers import tiny_bert
from helpers import tiny_classifier
from helpers import to_numpy

import keras_flix as kf

WORDS = np.array(["the", "a", "cat", "dog", "sat", "ran", "big", "small"])


def tagged_texts(n, seed, languages=(0, 1), tasks=(0, 1)):
    """Random sentences whose label depends only on their features."""
    rng = np.random.default_rng(seed)
    texts = np.array([" ".join(rng.choice(WORDS, 4)) for _ in range(n)])
    ids = np.stack(
        [rng.choice(languages, n), rng.choice(tasks, n)], axis=1
    ).astype("int32")
    # Additive in the features, as FLix's sum of per-feature updates is.
    labels = 2 * ids[:, 0] + ids[:, 1]
    return {"inputs": texts, "feature_ids": ids}, labels


@pytest.mark.slow
def test_fit_learns_feature_dependent_labels_and_touches_only_adapters():
    classifier = tiny_classifier(num_classes=4)
    model = kf.retrofit(
        classifier,
        SCHEMA,
        rank=4,
        target_layers=["query", "value", "pooled_dense"],
        train_also=["logits"],
    )
    frozen = {v.path: to_numpy(v).copy() for v in model.weights if not v.trainable}
    # "sw" (language 2) never occurs in training: its adapters must not move.
    unseen = {
        layer.path: [to_numpy(layer.adapter_a["language"])[2].copy(),
                     to_numpy(layer.adapter_b["language"])[2].copy()]
        for layer in model.flix_layers
    }
    x, y = tagged_texts(256, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    before = model.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.3 * losses[0], losses
    x_test, y_test = tagged_texts(128, seed=1)
    after = model.evaluate(x_test, y_test, batch_size=32, verbose=0, return_dict=True)
    assert after["accuracy"] > 0.9, (before, after)
    for variable in model.weights:
        if variable.path in frozen:
            np.testing.assert_array_equal(to_numpy(variable), frozen[variable.path])
    for layer in model.flix_layers:
        a, b = unseen[layer.path]
        np.testing.assert_array_equal(to_numpy(layer.adapter_a["language"])[2], a)
        np.testing.assert_array_equal(to_numpy(layer.adapter_b["language"])[2], b)
    predictions = model.predict(x_test, batch_size=32, verbose=0)
    assert predictions.shape == (128, 4)


@pytest.mark.slow
def test_fit_on_a_tf_data_pipeline_of_preprocessed_inputs():
    import tensorflow as tf

    model = kf.retrofit(
        tiny_classifier(num_classes=4), SCHEMA, rank=2, train_also=["logits"]
    )
    x, y = tagged_texts(64, seed=2)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.slow
def test_mixed_batch_equals_examples_one_by_one():
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=3, target_layers=[".*"])
    randomize_adapters(model)
    x = bert_inputs(len(MIXED_IDS), seed=3)
    batch = model.predict({**x, "feature_ids": MIXED_IDS}, verbose=0)
    for i in range(len(MIXED_IDS)):
        one = model({**{k: v[i : i + 1] for k, v in x.items()},
                     "feature_ids": MIXED_IDS[i : i + 1]})
        for key in batch:
            np.testing.assert_allclose(
                batch[key][i : i + 1], to_numpy(one[key]), rtol=1e-5, atol=1e-5
            )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_predict_compiled_or_not(jit_compile):
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("torch's jit_compile (torch.compile) is not used in these tests")
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=2)
    randomize_adapters(model)
    x = {**bert_inputs(len(MIXED_IDS)), "feature_ids": MIXED_IDS}
    eager = to_numpy(model(x)["pooled_output"])
    model.compile(jit_compile=jit_compile)
    compiled = model.predict(x, verbose=0)["pooled_output"]
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5)


def test_feature_dropout_in_training_only_and_seeded():
    from keras_flix.src.layers.feature_dropout import FeatureDropout

    ids = np.zeros((2000, 2), "int32")
    dropout = FeatureDropout(SCHEMA, rate={"language": 0.3, "task": 0.0}, seed=7)
    np.testing.assert_array_equal(to_numpy(dropout(ids, training=False)), ids)
    dropped = to_numpy(dropout(ids, training=True))
    assert abs((dropped[:, 0] == -1).mean() - 0.3) < 0.05
    assert (dropped[:, 1] == 0).all()
    again = to_numpy(FeatureDropout(SCHEMA, rate={"language": 0.3}, seed=7)(ids, training=True))
    np.testing.assert_array_equal(dropped, again)
    config = dropout.get_config()
    assert config["rate"] == {"language": 0.3, "task": 0.0}


def test_feature_dropout_reaches_the_layers_in_training():
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=2, feature_dropout=0.5, seed=1)
    randomize_adapters(model)
    x = {**bert_inputs(len(MIXED_IDS)), "feature_ids": MIXED_IDS}
    inference = to_numpy(model(x, training=False)["pooled_output"])
    np.testing.assert_array_equal(
        inference, to_numpy(model(x, training=False)["pooled_output"])
    )
    absent = {**x, "feature_ids": np.full_like(MIXED_IDS, -1)}
    base = to_numpy(model(absent, training=False)["pooled_output"])
    # Training mode drops features: some examples fall back to the base.
    runs = [to_numpy(model(x, training=True)["sequence_output"]) for _ in range(3)]
    assert any(not np.allclose(r, runs[0]) for r in runs[1:])
    assert not np.allclose(inference, base)


def pooled_bert():
    backbone = tiny_bert(seed=5)
    return keras.Model(backbone.input, backbone.output["pooled_output"])


def test_gradient_checkpointing_recomputes_with_the_forward_ids():
    rng = np.random.default_rng(0)
    x = {"inputs": rng.standard_normal((6, 4, 8)).astype("float32"),
         "feature_ids": MIXED_IDS}
    y = rng.standard_normal((6, 4, 8)).astype("float32")
    scope = keras.RematScope(mode="list_of_layers", layer_names=["block_0", "block_1"])
    assert_same_training(block_model, scope, x, y)


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="KerasHub backbones fail under keras.RematScope on jax and "
    "tensorflow with or without FLix (Keras' remat of layers called with "
    "keyword arguments); the block model test covers those backends.",
)
def test_gradient_checkpointing_of_a_kerashub_backbone():
    x = {**bert_inputs(len(MIXED_IDS), seed=4), "feature_ids": MIXED_IDS}
    y = np.ones((len(MIXED_IDS), 32), "float32")
    assert_same_training(pooled_bert, keras.RematScope(mode="full"), x, y)


@pytest.mark.slow
def test_fit_under_mixed_bfloat16_keeps_float32_adapters_and_learns():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = kf.retrofit(
            tiny_classifier(num_classes=4), SCHEMA, rank=4, train_also=["logits"]
        )
    finally:
        keras.config.set_dtype_policy(previous)
    for layer in model.flix_layers:
        assert layer.compute_dtype == "bfloat16"
        assert {v.dtype for v in layer.adapter_variables} == {"float32"}
    x, y = tagged_texts(128, seed=0)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    losses = model.fit(x, y, batch_size=32, epochs=4, verbose=0).history["loss"]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    b = to_numpy(model.flix_layers[0].adapter_b["task"])
    assert np.abs(b).max() > 0
