import keras
import keras_hub
import numpy as np
import pytest
from helpers import LETTERS
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import letter_preprocessor
from helpers import randomize_adapters
from helpers import tiny_bart
from helpers import tiny_causal_lm
from helpers import tiny_gpt2
from helpers import to_numpy

import keras_flix as kf


def prompts(batch, length=12, prompt_length=4, seed=0):
    rng = np.random.default_rng(seed)
    token_ids = np.zeros((batch, length), "int32")
    token_ids[:, :prompt_length] = rng.integers(1, 40, (batch, prompt_length))
    padding_mask = np.zeros((batch, length), bool)
    padding_mask[:, :prompt_length] = True
    return {"token_ids": token_ids, "padding_mask": padding_mask}


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "gemma", "llama"])
def test_each_prompt_generates_as_if_alone_with_its_features(family):
    model = kf.retrofit(
        tiny_causal_lm(family), SCHEMA, rank=4, target_layers=[".*(query|value|_dense|ffw|feedforward).*"]
    )
    randomize_adapters(model, scale=0.5)
    x = prompts(len(MIXED_IDS))
    batch = model.generate({**x, "feature_ids": MIXED_IDS}, stop_token_ids=None)
    assert batch["token_ids"].shape == (6, 12)
    for i in range(len(MIXED_IDS)):
        alone = model.generate(
            {**{k: v[i : i + 1] for k, v in x.items()}, "feature_ids": MIXED_IDS[i : i + 1]},
            stop_token_ids=None,
        )
        np.testing.assert_array_equal(alone["token_ids"][0], batch["token_ids"][i])
    # The features matter: the same prompts with other ids generate otherwise.
    other = model.generate(
        {**x, "feature_ids": np.full_like(MIXED_IDS, -1)}, stop_token_ids=None
    )
    assert not np.array_equal(other["token_ids"], batch["token_ids"])
    # A second call with new ids is not served from the first call's trace.
    again = model.generate({**x, "feature_ids": MIXED_IDS}, stop_token_ids=None)
    np.testing.assert_array_equal(again["token_ids"], batch["token_ids"])


def test_generate_with_preprocessor_from_strings():
    model = kf.retrofit(tiny_gpt2(letter_preprocessor()), SCHEMA, rank=2)
    randomize_adapters(model, scale=0.5)
    ids = SCHEMA.encode([{"language": "sw", "task": "qa"}, {"task": "ner"}])
    texts = model.generate({"prompts": ["abc", "hg"], "feature_ids": ids}, max_length=8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert texts[0].startswith("abc") and texts[1].startswith("hg")
    single = model.generate({"inputs": "abc", "feature_ids": ids[:1]}, max_length=8)
    assert single == texts[0]


def test_generate_bad_inputs():
    model = kf.retrofit(tiny_gpt2(letter_preprocessor()), SCHEMA, rank=2)
    ids = SCHEMA.encode([{"language": "sw"}])
    with pytest.raises(ValueError, match="1 rows but the inputs have a batch of 2"):
        model.generate({"prompts": ["abc", "de"], "feature_ids": ids})
    with pytest.raises(ValueError, match="fills all 4 positions"):
        model.generate({"prompts": ["abcdefgh"], "feature_ids": ids}, max_length=4)
    with pytest.raises(ValueError, match="with a 'feature_ids' entry"):
        model.generate({"prompts": ["abc"]})
    with kf.feature_scope(ids):
        with pytest.raises(ValueError, match="inside `keras_flix.feature_scope` is not"):
            model.base_model.generate(["abc"], max_length=6)
    backbone_model = kf.retrofit(
        keras_hub.models.GPT2Backbone(
            vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16,
            intermediate_dim=32, max_sequence_length=8),
        SCHEMA,
    )
    with pytest.raises(AttributeError, match="does not generate"):
        backbone_model.generate({"inputs": "a", "feature_ids": ids})


@pytest.mark.slow
def test_fit_causal_lm_on_tagged_text():
    model = kf.retrofit(tiny_gpt2(letter_preprocessor()), SCHEMA, rank=4)
    rng = np.random.default_rng(0)
    texts = np.array(["".join(rng.choice(list(LETTERS), 6)) for _ in range(64)])
    features = [{"language": "en", "task": "qa"}, {"language": "de", "task": "ner"}]
    ids = SCHEMA.encode([features[i % 2] for i in range(64)])
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    history = model.fit({"inputs": texts, "feature_ids": ids}, batch_size=16, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_scoring_function_merges_and_exports(tmp_path):
    model = kf.retrofit(tiny_gpt2(), SCHEMA, rank=2)
    randomize_adapters(model, scale=0.5)
    x = prompts(4)
    combination = {"language": "de", "task": "ner"}
    ids = np.tile(SCHEMA.encode(combination), (4, 1))
    logits = to_numpy(model({**x, "feature_ids": ids}))
    merged = kf.merge(model, combination)
    assert isinstance(merged, keras_hub.models.GPT2CausalLM)
    np.testing.assert_allclose(to_numpy(merged(x)), logits, rtol=1e-5, atol=1e-5)
    if keras.backend.backend() == "torch":
        return
    import tensorflow as tf

    specs = {
        "token_ids": keras.InputSpec(shape=(None, 12), dtype="int32"),
        "padding_mask": keras.InputSpec(shape=(None, 12), dtype="bool"),
    }
    kf.export_saved_model(model, tmp_path / "scoring", input_signature=specs)
    served = tf.saved_model.load(str(tmp_path / "scoring"))
    out = served.signatures["serving_default"](
        token_ids=tf.constant(x["token_ids"]), padding_mask=tf.constant(x["padding_mask"]),
        language=tf.constant(["de"] * 4), task=tf.constant(["ner"] * 4),
    )
    np.testing.assert_allclose(list(out.values())[0].numpy(), logits, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_seq2seq_generation_per_example_features():
    model = kf.retrofit(tiny_bart(), SCHEMA, rank=4, target_layers=[".*(query|value)"])
    randomize_adapters(model, scale=0.5)
    rng = np.random.default_rng(0)
    n = len(MIXED_IDS)
    decoder_ids = np.zeros((n, 8), "int32")
    decoder_ids[:, 0] = 2
    decoder_mask = np.zeros((n, 8), bool)
    decoder_mask[:, 0] = True
    x = {
        "encoder_token_ids": rng.integers(3, 40, (n, 6)).astype("int32"),
        "encoder_padding_mask": np.ones((n, 6), bool),
        "decoder_token_ids": decoder_ids,
        "decoder_padding_mask": decoder_mask,
    }
    batch = model.generate({**x, "feature_ids": MIXED_IDS}, stop_token_ids=None)
    for i in range(n):
        alone = model.generate(
            {**{k: v[i : i + 1] for k, v in x.items()}, "feature_ids": MIXED_IDS[i : i + 1]},
            stop_token_ids=None,
        )
        np.testing.assert_array_equal(alone["decoder_token_ids"][0], batch["decoder_token_ids"][i])
    # The features reach the model: the scores differ from the base's.
    flix = to_numpy(model({**x, "feature_ids": MIXED_IDS}))
    base = to_numpy(model({**x, "feature_ids": np.full_like(MIXED_IDS, -1)}))
    assert not np.allclose(flix[0], base[0])
    np.testing.assert_allclose(flix[-1], base[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_causal_lm_example_runs(capsys):
    import runpy

    example = runpy.run_path(
        str(__import__("pathlib").Path(__file__).parents[1] / "examples" / "causal_lm_flix.py")
    )
    example["main"](quick=True)
    printed = capsys.readouterr().out
    assert "exact match per cell" in printed
    assert printed.count("*") >= 3
