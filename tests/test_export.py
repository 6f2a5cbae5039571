import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import bert_inputs
from helpers import randomize_adapters
from helpers import tiny_bart
from helpers import tiny_bert
from helpers import tiny_causal_lm
from helpers import to_numpy
from helpers import token_inputs

import keras_flix as kf

pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="SavedModel export runs on jax and tensorflow; torch is tested to "
    "refuse it in test_torch_export_is_refused_clearly",
)
SPECS = {
    name: keras.InputSpec(shape=(None, 12), dtype="int32")
    for name in ("token_ids", "segment_ids", "padding_mask")
}
LANGUAGES = ["en", "de", "sw", "sw", "", ""]
TASKS = ["qa", "ner", "qa", "", "ner", ""]  # the same combinations as MIXED_IDS


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=2, target_layers=[".*"])
    randomize_adapters(model)
    path = str(tmp_path_factory.mktemp("export") / "saved_model")
    kf.export_saved_model(model, path, input_signature=SPECS)
    expected = to_numpy(model({**bert_inputs(6), "feature_ids": MIXED_IDS})["pooled_output"])
    return path, expected


SERVE_SCRIPT = """
import sys, json
sys.modules["keras"] = None  # neither keras nor keras_flix may be imported
sys.modules["keras_flix"] = None
import numpy as np, tensorflow as tf
served = tf.saved_model.load({path!r})
x = {{k: tf.constant(v) for k, v in np.load({inputs!r}).items()}}
by_name = served.signatures["serving_default"](
    **x, language=tf.constant({languages!r}), task=tf.constant({tasks!r}))
by_ids = served.signatures["serve_ids"](**x, feature_ids=tf.constant({ids!r}, tf.int32))
print(json.dumps([by_name["pooled_output"].numpy().tolist(),
                  by_ids["pooled_output"].numpy().tolist()]))
"""


@pytest.mark.slow
def test_saved_model_serves_without_keras(exported):
    import json

    path, expected = exported
    inputs = os.path.join(os.path.dirname(path), "inputs.npz")
    np.savez(inputs, **bert_inputs(6))
    script = SERVE_SCRIPT.format(
        inputs=inputs, path=path, languages=LANGUAGES, tasks=TASKS, ids=MIXED_IDS.tolist()
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    by_name, by_ids = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(by_name, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(by_ids, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_unknown_values_fail_the_request_or_are_absent(exported, tmp_path):
    import tensorflow as tf

    path, expected = exported
    served = tf.saved_model.load(path)
    x = {k: tf.constant(v) for k, v in bert_inputs(6).items()}
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Unknown value for feature type\W+language\W[\s\S]*\[xx xx"):
        served.signatures["serving_default"](
            **x, language=tf.constant(["xx"] * 6), task=tf.constant(TASKS)
        )
    lenient = kf.FeatureSchema(SCHEMA.get_config()["features"], unknown="absent")
    model = kf.retrofit(tiny_bert(), lenient, rank=2, target_layers=[".*"])
    randomize_adapters(model)
    kf.export_saved_model(model, tmp_path / "lenient", input_signature=SPECS)
    served = tf.saved_model.load(str(tmp_path / "lenient"))
    out = served.signatures["serving_default"](
        **x, language=tf.constant(["xx", "", "xx", "", "xx", ""]), task=tf.constant([""] * 6)
    )
    base = model({**bert_inputs(6), "feature_ids": -np.ones((6, 2), "int32")})
    np.testing.assert_allclose(
        out["pooled_output"].numpy(), to_numpy(base["pooled_output"]), rtol=1e-5, atol=1e-5
    )


@pytest.mark.slow
def test_saved_model_cli_lists_the_signatures(exported):
    path, _ = exported
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    result = subprocess.run(
        [cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for expected in ("signature_def['serving_default']", "signature_def['serve_ids']",
                     "inputs['language']", "inputs['task']", "inputs['feature_ids']",
                     "inputs['token_ids']"):
        assert expected in result.stdout


@pytest.mark.slow
def test_export_example_runs(tmp_path, monkeypatch):
    import runpy

    example = os.path.join(os.path.dirname(__file__), "..", "examples", "export_serving.py")
    monkeypatch.setattr(sys, "argv", ["export_serving.py", "--output", str(tmp_path / "sm")])
    runpy.run_path(example, run_name="__main__")
    assert os.path.exists(tmp_path / "sm" / "saved_model.pb")


DYNAMIC_MODELS = {
    "bert_backbone": tiny_bert,  # max_sequence_length 12
    "gpt2_causal_lm": lambda: tiny_causal_lm("gpt2"),  # 16
    "llama_causal_lm": lambda: tiny_causal_lm("llama"),  # rotary: no maximum
    "bart_seq2seq": tiny_bart,  # 12, encoder and decoder lengths apart
}
# (batch, sequence length or lengths by input prefix): two of each.
SIZES = [(6, {"": 12, "encoder_": 12, "decoder_": 3}), (3, {"": 5, "encoder_": 4, "decoder_": 9})]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DYNAMIC_MODELS))
def test_export_without_signature_serves_any_batch_and_length(name, tmp_path):
    import tensorflow as tf

    model = kf.retrofit(DYNAMIC_MODELS[name](), SCHEMA, rank=2, target_layers=[".*"])
    randomize_adapters(model)
    kf.export_saved_model(model, tmp_path / "saved_model")
    served = tf.saved_model.load(str(tmp_path / "saved_model"))
    for batch, lengths in SIZES:
        x = token_inputs(model.base_model.input, batch, lengths)
        ids = MIXED_IDS[:batch]
        expected = [to_numpy(y) for y in keras.tree.flatten(model({**x, "feature_ids": ids}))]
        x = {k: tf.constant(v) for k, v in x.items()}
        by_ids = served.signatures["serve_ids"](**x, feature_ids=tf.constant(ids))
        by_name = served.signatures["serving_default"](
            **x, language=tf.constant(LANGUAGES[:batch]), task=tf.constant(TASKS[:batch])
        )
        for outputs in (by_ids, by_name):
            assert len(outputs) == len(expected)
            for (_, got), want in zip(sorted(outputs.items()), expected):
                np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


class LengthDependent(keras.layers.Layer):
    """Branches in Python on the sequence length, which jax cannot trace unknown."""

    def call(self, x):
        return x if x.shape[1] <= 4 else 2 * x

    def compute_output_shape(self, input_shape):
        return input_shape


@pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="TensorFlow traces an unknown size as unknown: nothing to refuse",
)
def test_export_names_the_fix_where_a_size_cannot_stay_unknown(tmp_path):
    inputs = keras.Input((None, 8), name="x")
    base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(LengthDependent()(inputs)))
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["proj"])
    with pytest.raises(ValueError, match=r"unknown size .*inputs_1.*pass `input_signature=`"):
        kf.export_saved_model(model, tmp_path / "dynamic")
    fixed = {"inputs": keras.InputSpec(shape=(None, 6, 8), dtype="float32")}
    kf.export_saved_model(model, tmp_path / "fixed", input_signature=fixed)
    assert os.path.exists(tmp_path / "fixed" / "saved_model.pb")


def test_export_bad_arguments(tmp_path):
    with pytest.raises(TypeError, match="takes the model returned by"):
        kf.export_saved_model(tiny_bert(), tmp_path / "x")
    model = kf.retrofit(tiny_bert(), SCHEMA, rank=2)
    with pytest.raises(ValueError, match="clash"):
        kf.export_saved_model(model, tmp_path / "x", input_signature={**SPECS, "language": SPECS["token_ids"]})
