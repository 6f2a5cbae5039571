import json
import os
import zipfile

import keras
import keras_hub
import numpy as np
import pytest
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import another_backend
from helpers import bert_inputs
from helpers import max_relative_error
from helpers import randomize_adapters
from helpers import run_under
from helpers import tiny_bert
from helpers import tiny_classifier
from helpers import to_numpy

import keras_flix as kf

TEXTS = np.array(["the cat sat", "a dog ran", "the dog sat", "a cat ran", "big cat", "small dog"])
TARGETS = ["query", "value", "attention_output", "pooled_dense"]


def flix_bert(schema=SCHEMA, seed=0, rank=None, **kwargs):
    rank = rank or {"language": 2, "task": 3}
    model = kf.retrofit(
        tiny_bert(seed=seed), schema, rank=rank, target_layers=TARGETS, **kwargs
    )
    return model


def pooled(model, ids=MIXED_IDS):
    return to_numpy(model({**bert_inputs(len(ids)), "feature_ids": ids})["pooled_output"])


def test_keras_file_round_trip_in_process(tmp_path):
    model = kf.retrofit(
        tiny_classifier(), SCHEMA, rank={"language": 2, "task": 3},
        feature_dropout={"language": 0.2, "task": 0.0}, train_also=["logits"],
    )
    randomize_adapters(model)
    x = {"inputs": TEXTS, "feature_ids": MIXED_IDS}
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert isinstance(loaded, kf.FLixModel)
    assert loaded.schema == SCHEMA
    assert loaded.feature_dropout.rate == {"language": 0.2, "task": 0.0}
    np.testing.assert_allclose(loaded.predict(x, verbose=0), expected, atol=1e-6, rtol=0)
    assert sorted(v.path for v in loaded.trainable_variables) == sorted(
        v.path for v in model.trainable_variables
    )


LOAD_SCRIPT = """
import sys, numpy as np, keras
sys.path.insert(0, {tests!r})
from helpers import bert_inputs, MIXED_IDS
model = keras.saving.load_model({path!r})
out = model({{**bert_inputs(len(MIXED_IDS)), "feature_ids": MIXED_IDS}})
np.save({out!r}, keras.ops.convert_to_numpy(out["pooled_output"]))
print(type(model).__name__, keras.backend.backend())
"""


@pytest.mark.slow
def test_keras_file_loads_in_a_fresh_process_on_another_backend(tmp_path):
    model = flix_bert()
    randomize_adapters(model)
    expected = pooled(model)
    path = str(tmp_path / "model.keras")
    model.save(path)
    tests = os.path.dirname(os.path.abspath(__file__))
    backend = another_backend()
    out = str(tmp_path / f"{backend}.npy")
    stdout = run_under(backend, LOAD_SCRIPT.format(tests=tests, path=path, out=out))
    assert f"FLixModel {backend}" in stdout
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6, rtol=0)


def test_adapter_file_round_trip_is_small(tmp_path):
    model = flix_bert()
    randomize_adapters(model)
    expected = pooled(model)
    path = tmp_path / "adapters.flix"
    kf.save_adapters(model, path)
    adapter_bytes = sum(v.numpy().nbytes if hasattr(v, "numpy") else to_numpy(v).nbytes
                        for layer in model.flix_layers for v in layer.adapter_variables)
    base_bytes = sum(to_numpy(v).nbytes for v in model.base_model.weights) - adapter_bytes
    assert os.path.getsize(path) < adapter_bytes + 20_000
    assert os.path.getsize(path) < base_bytes
    fresh = flix_bert()
    assert not np.allclose(pooled(fresh), expected)
    kf.load_adapters(fresh, path)
    np.testing.assert_allclose(pooled(fresh), expected, atol=1e-6, rtol=0)
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("metadata.json"))
        assert not any("kernel" in name or "bias" in name for name in archive.namelist())
    assert metadata["schema"] == SCHEMA.get_config()


def test_adapters_load_into_a_schema_with_appended_values(tmp_path):
    model = flix_bert()
    randomize_adapters(model)
    kf.save_adapters(model, tmp_path / "adapters.flix")
    grown = kf.FeatureSchema(
        {"language": ["en", "de", "sw", "yo"], "task": ["qa", "ner", "parse"]}
    )
    bigger = flix_bert(schema=grown)
    before = {v.path: to_numpy(v) for l in bigger.flix_layers for v in l.adapter_variables}
    kf.load_adapters(bigger, tmp_path / "adapters.flix")
    np.testing.assert_allclose(pooled(bigger), pooled(model), atol=1e-6, rtol=0)
    for layer in bigger.flix_layers:
        new_rows = to_numpy(layer.adapter_a["language"])[3]
        np.testing.assert_array_equal(new_rows, before[layer.adapter_a["language"].path][3])


@pytest.mark.parametrize(
    "make_other, message",
    [
        (lambda: flix_bert(rank=2), "rank differs"),
        (lambda: kf.retrofit(tiny_bert(), SCHEMA, rank={"language": 2, "task": 3}),
         "target layers differ"),
        (lambda: flix_bert(schema=kf.FeatureSchema(
            {"language": ["de", "en", "sw"], "task": ["qa", "ner"]})),
         "values of 'language' differ"),
        (lambda: flix_bert(schema=kf.FeatureSchema({"language": ["en", "de", "sw"]}),
                           rank=2),
         "feature types differ"),
        (lambda: flix_bert(seed=1), "base kernels differ"),
        (lambda: kf.retrofit(
            keras_hub.models.BertBackbone(vocabulary_size=64, num_layers=2, num_heads=2,
                                          hidden_dim=16, intermediate_dim=64,
                                          max_sequence_length=12),
            SCHEMA, rank={"language": 2, "task": 3}, target_layers=TARGETS),
         "kernel_shape differs"),
    ],
)
def test_mismatched_adapters_are_refused_and_nothing_is_loaded(tmp_path, make_other, message):
    model = flix_bert()
    randomize_adapters(model)
    kf.save_adapters(model, tmp_path / "adapters.flix")
    other = make_other()
    before = [to_numpy(v) for v in other.weights]
    with pytest.raises(ValueError, match=message):
        kf.load_adapters(other, tmp_path / "adapters.flix")
    for value, variable in zip(before, other.weights):
        np.testing.assert_array_equal(to_numpy(variable), value)


def test_base_check_can_be_waived(tmp_path):
    model = flix_bert()
    randomize_adapters(model)
    kf.save_adapters(model, tmp_path / "adapters.flix")
    other = flix_bert(seed=1)
    kf.load_adapters(other, tmp_path / "adapters.flix", check_base=False)
    layer = other.flix_layers[0]
    np.testing.assert_array_equal(
        to_numpy(layer.adapter_b["task"]), to_numpy(model.flix_layers[0].adapter_b["task"])
    )


def test_bad_adapter_files(tmp_path):
    model = flix_bert()
    before = [to_numpy(v) for v in model.weights]
    not_zip = tmp_path / "notes.txt"
    not_zip.write_text("hello")
    with pytest.raises(ValueError, match="not a readable keras-flix adapter file"):
        kf.load_adapters(model, not_zip)
    kf.save_adapters(model, tmp_path / "good.flix")
    data = (tmp_path / "good.flix").read_bytes()
    (tmp_path / "truncated.flix").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="or is truncated"):
        kf.load_adapters(model, tmp_path / "truncated.flix")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("metadata.json", json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not marked as keras-flix-adapters"):
        kf.load_adapters(model, tmp_path / "other.zip")
    for value, variable in zip(before, model.weights):
        np.testing.assert_array_equal(to_numpy(variable), value)


COMBINATIONS = [
    {"language": "sw", "task": "ner"},
    {"task": "qa"},  # an unseen language: only the task adapter
    {},
]


@pytest.mark.slow
@pytest.mark.parametrize("as_lora", [False, True])
def test_merge_matches_the_flix_model(as_lora):
    model = flix_bert()
    randomize_adapters(model, scale=0.3)
    for combination in COMBINATIONS:
        ids = np.tile(SCHEMA.encode(combination), (4, 1))
        expected = pooled(model, ids)
        merged = kf.merge(model, combination, as_lora=as_lora)
        assert type(merged) is type(model.base_model)
        assert not any(
            isinstance(l, (kf.layers.FLixDense, kf.layers.FLixEinsumDense))
            for l in merged._flatten_layers()
        )
        got = to_numpy(merged(bert_inputs(4))["pooled_output"])
        assert max_relative_error(got, expected) < 1e-5, combination
    if as_lora:
        layers = {l.path: l for l in merged._flatten_layers()}
        assert layers["pooled_dense"].lora_enabled is False  # {} = all absent
        lora = kf.merge(model, COMBINATIONS[0], as_lora=True)
        layers = {l.path: l for l in lora._flatten_layers()}
        prefix = "transformer_layer_0/self_attention_layer/"
        assert layers["pooled_dense"].lora_rank == 5
        assert layers[prefix + "attention_output"].lora_rank == 5
        assert layers[prefix + "query"].lora_rank == 2 * 5  # 2 heads


@pytest.mark.slow
def test_merged_task_keeps_preprocessor_and_loads_without_keras_flix(tmp_path):
    model = kf.retrofit(tiny_classifier(), SCHEMA, rank=2, train_also=["logits"])
    randomize_adapters(model, scale=0.3)
    combination = {"language": "de", "task": "qa"}
    ids = np.tile(SCHEMA.encode(combination), (len(TEXTS), 1))
    expected = model.predict({"inputs": TEXTS, "feature_ids": ids}, verbose=0)
    merged = kf.merge(model, combination)
    assert isinstance(merged, keras_hub.models.BertTextClassifier)
    np.testing.assert_allclose(merged.predict(TEXTS, verbose=0), expected, rtol=1e-5, atol=1e-5)
    path = str(tmp_path / "merged.keras")
    merged.save(path)
    script = (
        "import sys, numpy as np, keras\n"
        "sys.modules['keras_flix'] = None  # keras-flix is not installed\n"
        f"model = keras.saving.load_model({path!r})\n"
        f"print(np.asarray(model.predict(np.array({TEXTS.tolist()!r}), verbose=0)).tolist())\n"
    )
    stdout = run_under(keras.backend.backend(), script)
    np.testing.assert_allclose(np.array(json.loads(stdout.strip().splitlines()[-1])),
                               expected, rtol=1e-5, atol=1e-5)


def test_merge_bad_combination():
    model = flix_bert()
    with pytest.raises(ValueError, match="Unknown value 'xx'"):
        kf.merge(model, {"language": "xx"})
    with pytest.raises(ValueError, match="out of range"):
        kf.merge(model, [5, 0])


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="torch only")
def test_torch_export_is_refused_clearly(tmp_path):
    model = flix_bert()
    with pytest.raises(NotImplementedError, match="torch_xla"):
        kf.export_saved_model(model, tmp_path / "m")
