"""A retrofitted KerasHub task is used as the task is, feature ids added."""

import keras
import keras_hub
import numpy as np
import pytest
from helpers import SCHEMA
from helpers import letter_sentences
from helpers import randomize_adapters
from helpers import tiny_bart
from helpers import tiny_causal_lm
from helpers import tiny_classifier
from helpers import to_numpy

import keras_flix as kf

TASKS = {
    "gpt2": lambda: tiny_causal_lm("gpt2", with_preprocessor=True),
    "gemma": lambda: tiny_causal_lm("gemma", with_preprocessor=True),
    "llama": lambda: tiny_causal_lm("llama", with_preprocessor=True),
    "bart": lambda: tiny_bart(with_preprocessor=True),
    "bert_classifier": tiny_classifier,
}
GENERATIVE = ["gpt2", "gemma", "llama", "bart"]
# tf-text's SentencePiece op fails inside a parallel tf.data map in this
# TensorFlow (tensorflow/text#374), for the plain KerasHub task as well.
SENTENCEPIECE = ["gemma", "llama"]
IDS = SCHEMA.encode([{"language": "sw", "task": "qa"}, {"task": "ner"}])
PROMPTS = ["abc", "hg"]


def compile_config(model):
    """`model.get_compile_config()` without the optimizer's numbered name."""
    config = model.get_compile_config()
    del config["optimizer"]["config"]["name"]
    return config


@pytest.mark.parametrize("name", sorted(TASKS))
def test_compile_takes_the_tasks_arguments_and_auto_defaults(name):
    task = TASKS[name]()
    model = kf.retrofit(task, SCHEMA, rank=2)
    # Compiled at retrofit as the task was, so `fit` needs no `compile`.
    assert compile_config(model) == compile_config(task)
    model.compile()
    fresh = TASKS[name]()
    fresh.compile()
    assert compile_config(model) == compile_config(fresh)
    optimizer = keras.optimizers.SGD(0.1)
    if name in GENERATIVE:
        model.compile(optimizer=optimizer, sampler="greedy")
        assert isinstance(model.base_model.sampler, keras_hub.samplers.GreedySampler)
        model.compile(sampler=keras_hub.samplers.TopKSampler(k=3))
        assert model.base_model.sampler.k == 3
        with pytest.raises(TypeError, match="metricz"):
            model.compile(metricz="auto")
    else:
        model.compile(optimizer=optimizer, metrics="auto")
        with pytest.raises(TypeError, match="sampler"):
            model.compile(sampler="greedy")
    model.compile(optimizer=optimizer)
    assert model.optimizer is optimizer


@pytest.mark.slow
@pytest.mark.parametrize("name", GENERATIVE)
def test_generative_task_fits_generates_scores_and_round_trips_a_preset(name, tmp_path):
    task = TASKS[name]()
    model = kf.retrofit(task, SCHEMA, rank=2)
    model.compile(sampler="greedy")
    texts, ids = np.array(letter_sentences(16)), np.tile(IDS, (8, 1))
    if name in SENTENCEPIECE:
        preprocessor = model.preprocessor
        x, y, weights = keras.utils.unpack_x_y_sample_weight(preprocessor(texts))
        model.preprocessor = None
        history = model.fit(
            {**x, "feature_ids": ids}, y, sample_weight=weights, batch_size=8, verbose=0
        )
        model.preprocessor = preprocessor
    elif name == "bart":
        x = {"encoder_text": texts, "decoder_text": texts[::-1], "feature_ids": ids}
        history = model.fit(x, batch_size=8, verbose=0)
    else:
        history = model.fit({"inputs": texts, "feature_ids": ids}, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    randomize_adapters(model, scale=0.5)
    assert model.backbone is task.backbone and model.preprocessor is task.preprocessor
    generated = model.generate({"prompts": PROMPTS, "feature_ids": IDS}, max_length=8)
    assert len(generated) == 2 and all(isinstance(text, str) for text in generated)
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    loaded = kf.FLixModel.from_preset(preset)
    assert loaded.flix_config == model.flix_config
    if name == "bart":
        # KerasHub's BART preprocessor saves no sequence lengths (it loads
        # with 1024, beyond this backbone's maximum), with or without FLix.
        loaded.preprocessor.encoder_sequence_length = model.preprocessor.encoder_sequence_length
        loaded.preprocessor.decoder_sequence_length = model.preprocessor.decoder_sequence_length
    loaded.compile(sampler="greedy")
    assert loaded.generate({"prompts": PROMPTS, "feature_ids": IDS}, max_length=8) == generated
    # The preset is the task's own: KerasHub alone loads the base model.
    plain = type(task).from_preset(preset)
    x = model.preprocessor.generate_preprocess(PROMPTS, sequence_length=8)
    absent = np.full_like(IDS, kf.ABSENT)
    np.testing.assert_allclose(
        to_numpy(plain(x)), to_numpy(model({**x, "feature_ids": absent})), rtol=1e-5, atol=1e-5
    )
    if name == "bart":
        return
    logits = to_numpy(model({**x, "feature_ids": IDS}))
    scored = model.score(x["token_ids"], x["padding_mask"], feature_ids=IDS)
    np.testing.assert_allclose(to_numpy(scored), logits, rtol=1e-5, atol=1e-5)
    assert not np.allclose(
        to_numpy(model.score(x["token_ids"], x["padding_mask"], feature_ids=absent)), logits
    )
    np.testing.assert_allclose(
        to_numpy(loaded.score(x["token_ids"], x["padding_mask"], feature_ids=IDS)),
        logits, rtol=1e-5, atol=1e-5,
    )


@pytest.mark.slow
def test_text_classifier_fits_predicts_and_round_trips_a_preset(tmp_path):
    task = tiny_classifier()
    model = kf.retrofit(task, SCHEMA, rank=2, train_also=["logits"])
    model.compile()  # the task's defaults: Adam(5e-5), cross-entropy, accuracy
    texts = np.array(["the cat sat", "a dog ran", "the big dog", "a small cat"] * 4)
    labels = np.array([0, 1, 1, 0] * 4)
    x = {"inputs": texts, "feature_ids": np.tile(IDS, (8, 1))}
    model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
    results = model.evaluate(x, labels, batch_size=8, verbose=0, return_dict=True)
    assert set(results) == {"loss", "sparse_categorical_accuracy"}
    randomize_adapters(model, scale=0.5)
    predicted = model.predict(x, batch_size=8, verbose=0)
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    loaded = kf.FLixModel.from_preset(preset)
    np.testing.assert_allclose(
        loaded.predict(x, batch_size=8, verbose=0), predicted, rtol=1e-5, atol=1e-5
    )
    # Without a preprocessor the model takes preprocessed inputs, as the task.
    preprocessed = model.preprocessor(texts[:2])
    model.preprocessor = None
    assert task.preprocessor is None
    np.testing.assert_allclose(
        to_numpy(model({**preprocessed, "feature_ids": IDS})), predicted[:2], rtol=1e-5, atol=1e-5
    )


def test_presets_need_a_task_and_a_flix_preset(tmp_path):
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(2, name="proj")(inputs))
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["proj"])
    with pytest.raises(TypeError, match="needs a retrofitted KerasHub task"):
        model.save_to_preset(str(tmp_path / "preset"))
    tiny_classifier().save_to_preset(str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="not a FLix preset"):
        kf.FLixModel.from_preset(str(tmp_path / "plain"))
    with pytest.raises(AttributeError, match="does not score"):
        kf.retrofit(tiny_classifier(), SCHEMA).score(np.ones((2, 8), "int32"), feature_ids=IDS)
