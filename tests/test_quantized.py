"""FLix over a Keras-quantized frozen base (QLoRA): int8, int4 and float8.

The reference for a FLix layer over a quantized base is the quantized base
layer itself (Keras' own int8 / int4 / float8 call) plus the FLix update,
which NumPy computes from the adapters; "relative to the update" below means
the largest difference divided by the largest entry of that update.
"""

import functools
import os
import warnings

import keras
import keras_hub
import numpy as np
import pytest
from helpers import ALPHAS
from helpers import EQUATIONS
from helpers import MIXED_IDS
from helpers import RANKS
from helpers import SCHEMA
from helpers import another_backend
from helpers import assert_same_training
from helpers import bert_inputs
from helpers import block_model
from helpers import compiled_versions
from helpers import max_relative_error
from helpers import randomize
from helpers import randomize_adapters
from helpers import reference_update
from helpers import run_under
from helpers import tiny_bert
from helpers import tiny_classifier
from helpers import to_numpy
from safetensors.numpy import load_file

import keras_flix as kf
from keras_flix.src.layers.quantized_base import SUPPORTED_MODES

MODES = list(SUPPORTED_MODES)
TARGETS = ["query", "value", "attention_output", "pooled_dense"]
ABSENT_IDS = np.full((len(MIXED_IDS), 2), -1, "int32")
# (equation, output_shape, bias_axes, input_shape); "dense" builds a Dense.
SPECS = [
    ("dense", 7, None, (6, 5, 8)),
    EQUATIONS[0],  # attention query / key / value: abc,cde->abde
    EQUATIONS[4],  # attention output, Gemma / Llama: btnh,nhd->btd
]
SPEC_IDS = [spec[0] for spec in SPECS]


@pytest.fixture(autouse=True)
def _quiet_model_quantize():
    # `Model.quantize` warns about every layer that has no `quantize`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have a `quantize`")
        # ... and about the embeddings, which have no float8 mode.
        warnings.filterwarnings("ignore", message="Invalid quantization mode")
        yield


def base_layer(spec, activation="tanh"):
    equation, output_shape, bias_axes, _ = spec
    if equation == "dense":
        return keras.layers.Dense(
            output_shape, activation=activation, bias_initializer="random_normal"
        )
    return keras.layers.EinsumDense(
        equation, output_shape, bias_axes=bias_axes, activation=activation,
        bias_initializer="random_normal" if bias_axes else "zeros",
    )


def quantized_pair(spec, mode, seed=0):
    """A quantized base layer, its quantized linear twin (same weights, no
    activation: the pre-activation reference) and an input."""
    x = np.random.default_rng(seed).standard_normal(spec[3]).astype("float32")
    keras.utils.set_random_seed(seed)
    base, linear = base_layer(spec), base_layer(spec, activation=None)
    base(x)
    linear(x)
    for own, other in zip(linear.weights, base.weights):
        own.assign(other)
    base.quantize(mode)
    linear.quantize(mode)
    return base, linear, x


def flix_class(spec):
    return kf.layers.FLixDense if spec[0] == "dense" else kf.layers.FLixEinsumDense


def reference_delta(layer, spec, x, ids):
    """The update of each example, from NumPy (the layer built with RANKS, ALPHAS)."""
    equation = "...b,bc->...c" if spec[0] == "dense" else spec[0]
    return np.concatenate([
        np.einsum(equation, x[i : i + 1],
                  reference_update(layer, equation, row, layer.base_kernel_shape))
        for i, row in enumerate(ids)
    ])


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_layer_is_the_quantized_base_plus_the_update(mode, spec):
    base, linear, x = quantized_pair(spec, mode)
    expected_base = to_numpy(base(x))
    layer = flix_class(spec).from_base(base, SCHEMA, rank=RANKS, alpha=ALPHAS)
    assert layer.quantization_mode == mode
    assert layer.adapter_a["language"].dtype == "float32"
    np.testing.assert_array_equal(to_numpy(layer(x, feature_ids=MIXED_IDS)), expected_base)
    randomize(layer)
    delta = reference_delta(layer, spec, x, MIXED_IDS)
    expected = np.tanh(to_numpy(linear(x)) + delta)
    np.testing.assert_array_equal(to_numpy(layer(x, feature_ids=ABSENT_IDS)), expected_base)
    for run in compiled_versions(lambda x, ids: layer(x, feature_ids=ids)):
        y = to_numpy(run(x, MIXED_IDS))
        assert np.abs(y - expected).max() <= 1e-5 * np.abs(delta).max()


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("mode", MODES)
def test_quantizing_before_or_after_adding_adapters_is_the_same_layer(mode, spec):
    x = np.random.default_rng(1).standard_normal(spec[3]).astype("float32")
    keras.utils.set_random_seed(1)
    float_base = base_layer(spec)
    float_base(x)
    quantized_base = base_layer(spec)
    quantized_base(x)
    quantized_base.set_weights(float_base.get_weights())
    quantized_base.quantize(mode)
    before = flix_class(spec).from_base(quantized_base, SCHEMA, rank=2)
    after = flix_class(spec).from_base(float_base, SCHEMA, rank=2)
    after.quantize(mode)
    assert not after.base_kernel.trainable and after.quantization_mode == mode
    randomize(before)
    for own, other in zip(after.adapter_variables, before.adapter_variables):
        own.assign(other)
    assert [v.path for v in after.trainable_variables] == [
        v.path for v in after.adapter_variables
    ] + [v.path for v in after.weights if v.overwrite_with_gradient]
    np.testing.assert_array_equal(
        to_numpy(after(x, feature_ids=MIXED_IDS)), to_numpy(before(x, feature_ids=MIXED_IDS))
    )


# Weight-only quantization, whose call is the float product with the
# dequantized kernel: int8 without input quantization, int4 per channel and
# in groups of 4 inputs.
WEIGHT_ONLY = {
    "int8": lambda: keras.quantizers.Int8QuantizationConfig(activation_quantizer=None),
    "int4_per_channel": lambda: keras.quantizers.Int4QuantizationConfig(block_size=None),
    "int4_groups": lambda: keras.quantizers.Int4QuantizationConfig(block_size=4),
}


@pytest.mark.parametrize("spec", SPECS, ids=SPEC_IDS)
@pytest.mark.parametrize("config", list(WEIGHT_ONLY))
def test_dequantized_kernel_is_the_kernel_keras_computes_with(config, spec):
    config = WEIGHT_ONLY[config]()
    x = np.random.default_rng(2).standard_normal(spec[3]).astype("float32")
    base = base_layer(spec, activation=None)
    base(x)
    base.quantize(config.mode, config=config)
    layer = flix_class(spec).from_base(base, SCHEMA, rank=2)
    kernel = to_numpy(layer.dequantized_kernel())
    assert kernel.shape == layer.base_kernel_shape
    equation = "...b,bc->...c" if spec[0] == "dense" else spec[0]
    bias = to_numpy(base.bias) if base.bias is not None else 0.0
    assert max_relative_error(np.einsum(equation, x, kernel) + bias, to_numpy(base(x))) < 1e-6


# The target layers, as `quantize`'s `filters` (regular expressions of names).
QUANTIZED = "^(query|value|attention_output|pooled_dense)$"


@functools.lru_cache(maxsize=None)
def _quantized_bert_state(mode, policy):
    backbone = tiny_bert()
    backbone.quantize(mode, filters=QUANTIZED)
    return backbone.get_config(), {v.path: to_numpy(v) for v in backbone.weights}


def quantized_bert(mode, **retrofit_kwargs):
    """`tiny_bert()` with its target layers quantized in `mode`, retrofitted.

    Keras' `quantize` takes seconds even for a tiny model (a garbage
    collection per replaced kernel), so it runs once per mode and policy;
    later copies are built from its config, quantized variables directly,
    as a saved quantized model loads.
    """
    config, weights = _quantized_bert_state(mode, keras.config.dtype_policy().name)
    backbone = keras_hub.models.BertBackbone.from_config(config)
    for variable in backbone.weights:
        variable.assign(weights[variable.path])
    return kf.retrofit(
        backbone, SCHEMA, rank={"language": 2, "task": 3}, target_layers=TARGETS,
        **retrofit_kwargs,
    )


def pooled(model, ids=MIXED_IDS):
    return to_numpy(model({**bert_inputs(len(ids)), "feature_ids": ids})["pooled_output"])


@pytest.mark.parametrize("mode", MODES)
def test_retrofit_of_a_quantized_backbone_is_exactly_the_backbone(mode):
    backbone = tiny_bert()
    backbone.quantize(mode, filters=QUANTIZED)
    expected = to_numpy(backbone(bert_inputs(len(MIXED_IDS)))["pooled_output"])
    model = kf.retrofit(backbone, SCHEMA, rank=2, target_layers=TARGETS)
    assert {layer.quantization_mode for layer in model.flix_layers} == {mode}
    np.testing.assert_array_equal(pooled(model), expected)


@pytest.mark.parametrize("mode", MODES)
def test_retrofit_then_quantize_equals_quantize_then_retrofit(mode):
    retrofitted_first = kf.retrofit(
        tiny_bert(), SCHEMA, rank={"language": 2, "task": 3}, target_layers=TARGETS
    )
    randomize_adapters(retrofitted_first)
    retrofitted_first.quantize(mode, filters=QUANTIZED)
    quantized_first = quantized_bert(mode)
    for own, other in zip(quantized_first.flix_layers, retrofitted_first.flix_layers):
        for a, b in zip(own.adapter_variables, other.adapter_variables):
            a.assign(b)
    np.testing.assert_array_equal(pooled(retrofitted_first), pooled(quantized_first))
    assert sorted(v.path for v in retrofitted_first.trainable_variables) == sorted(
        v.path for v in quantized_first.trainable_variables
    )


@pytest.mark.parametrize("mode", MODES)
def test_training_moves_only_the_adapters(mode):
    model = quantized_bert(mode, feature_dropout=0.3)
    # "sw" (language 2) is never in the data: its rows stay as they are.
    ids = MIXED_IDS[[0, 1, 4, 5, 0, 1]]
    x = {**bert_inputs(len(ids)), "feature_ids": ids}
    y = {"pooled_output": np.ones((len(ids), 32), "float32"),
         "sequence_output": np.zeros((len(ids), 12, 32), "float32")}
    model.compile(optimizer=kf.optimizers.LazyAdam(1e-2), loss="mse")
    before = {v.path: to_numpy(v).copy() for v in model.weights}
    losses = model.fit(x, y, batch_size=3, epochs=3, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    adapters = {v.path for layer in model.flix_layers for v in layer.adapter_variables}
    statistics = {v.path for v in model.weights if v.overwrite_with_gradient}
    changed = {v.path for v in model.weights if not np.array_equal(before[v.path], to_numpy(v))}
    assert changed <= adapters | statistics and changed & adapters
    assert bool(statistics) == (mode == "float8")
    for layer in model.flix_layers:
        np.testing.assert_array_equal(
            to_numpy(layer.adapter_b["language"])[2], before[layer.adapter_b["language"].path][2]
        )
    summary = kf.summary(model, print_fn=None)
    assert summary["trainable"] == sum(summary["per_feature_type"].values())


def test_mixed_bfloat16_over_an_int8_base():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = quantized_bert("int8")
    finally:
        keras.config.set_dtype_policy(previous)
    layer = model.flix_layers[0]
    assert layer.quantization_mode == "int8" and layer.compute_dtype == "bfloat16"
    assert {v.dtype for v in layer.adapter_variables} == {"float32"}
    randomize_adapters(model, scale=0.2)
    x = {**bert_inputs(len(MIXED_IDS)), "feature_ids": MIXED_IDS}
    y = model(x)["pooled_output"]
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    targets = {"pooled_output": np.ones((6, 32), "float32"),
               "sequence_output": np.zeros((6, 12, 32), "float32")}
    losses = model.fit(x, targets, batch_size=3, epochs=2, verbose=0).history["loss"]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def quantized_block_model():
    model = block_model()
    model.quantize("int8")
    return model


def test_gradient_checkpointing_recomputes_the_quantized_call_with_the_forward_ids():
    rng = np.random.default_rng(0)
    x = {"inputs": rng.standard_normal((6, 4, 8)).astype("float32"), "feature_ids": MIXED_IDS}
    y = rng.standard_normal((6, 4, 8)).astype("float32")
    scope = keras.RematScope(mode="list_of_layers", layer_names=["block_0", "block_1"])
    assert_same_training(quantized_block_model, scope, x, y)


@pytest.mark.parametrize("make_config", [
    lambda: keras.quantizers.GPTQConfig(dataset=["a"], tokenizer=lambda x: x),
    lambda: keras.quantizers.AWQConfig(dataset=["a"], tokenizer=lambda x: x),
], ids=["gptq", "awq"])
def test_modes_keras_runs_no_lora_with_are_refused(make_config):
    config = make_config()
    message = (
        rf"FLix adapters are not supported with '{config.mode}' quantization "
        r"\(Keras runs no LoRA with it either\). Supported quantization modes: "
        r"\('int8', 'int4', 'float8'\)"
    )
    base = keras.layers.Dense(4, name="proj")
    base.build((None, 8))
    base.quantize(config.mode, config=config)
    with pytest.raises(NotImplementedError, match="Layer 'proj': " + message):
        kf.layers.FLixDense.from_base(base, SCHEMA)
    layer = kf.layers.FLixDense(4, schema=SCHEMA, rank=2)
    layer.build((None, 8))
    with pytest.raises(NotImplementedError, match=message):
        layer.quantize(config.mode, config=config)
    inputs = keras.Input((8,))
    model = kf.retrofit(
        keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs)),
        SCHEMA, rank=2, target_layers=["proj"],
    )
    for kwargs in ({"mode": config.mode, "config": config}, {"config": config}):
        with pytest.raises(NotImplementedError, match=message):
            model.quantize(**kwargs)
        assert model.flix_layers[0].quantization_mode is None


@pytest.mark.parametrize("mode", MODES)
def test_keras_file_keeps_the_quantized_kernels(mode, tmp_path):
    model = quantized_bert(mode)
    randomize_adapters(model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    for own, saved in zip(loaded.flix_layers, model.flix_layers):
        assert own.quantization_mode == mode
        assert own.base_kernel.dtype == saved.base_kernel.dtype
        np.testing.assert_array_equal(to_numpy(own.base_kernel), to_numpy(saved.base_kernel))
    np.testing.assert_array_equal(pooled(loaded), pooled(model))
    assert sorted(v.path for v in loaded.trainable_variables) == sorted(
        v.path for v in model.trainable_variables
    )


def test_keras_file_of_a_functional_model_keeps_its_quantized_flix_layers(tmp_path):
    # A Functional model's config holds the FLix layers themselves, which
    # build their quantized variables when it loads.
    inputs = keras.Input((8,))
    base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=["proj"])
    model.quantize("int4")
    randomize_adapters(model)
    x = {"inputs": np.random.default_rng(0).standard_normal((6, 8)).astype("float32"),
         "feature_ids": MIXED_IDS}
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    layer = loaded.flix_layers[0]
    assert isinstance(layer, kf.layers.FLixDense) and layer.quantization_mode == "int4"
    assert tuple(layer.base_kernel.shape) == (8, 2)  # two int4 values per byte
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(model(x)))


LOAD_SCRIPT = """
import sys
import numpy as np, keras
sys.path.insert(0, {tests!r})
from helpers import bert_inputs, MIXED_IDS
for path, out in {files!r}:
    model = keras.saving.load_model(path)
    kernels = {{l.path: str(l.base_kernel.dtype) + "/" + str(l.quantization_mode)
               for l in model.flix_layers}}
    outputs = model({{**bert_inputs(len(MIXED_IDS)), "feature_ids": MIXED_IDS}})
    np.save(out, keras.ops.convert_to_numpy(outputs["pooled_output"]))
    print(path, sorted(set(kernels.values())))
"""


@pytest.mark.slow
def test_keras_files_load_in_a_fresh_process_on_another_backend(tmp_path):
    # One file per mode, every layer Keras quantizes in it, embeddings
    # included; one process loads them all.
    expected, kernel_dtypes = {}, {}
    for mode in MODES:
        backbone = tiny_bert()
        backbone.quantize(mode)
        model = kf.retrofit(backbone, SCHEMA, rank=2, target_layers=TARGETS)
        randomize_adapters(model)
        expected[mode] = pooled(model)
        kernel_dtypes[mode] = str(model.flix_layers[0].base_kernel.dtype)
        model.save(str(tmp_path / f"{mode}.keras"))
    tests = os.path.dirname(os.path.abspath(__file__))
    files = [(str(tmp_path / f"{m}.keras"), str(tmp_path / f"{m}.npy")) for m in MODES]
    stdout = run_under(another_backend(), LOAD_SCRIPT.format(tests=tests, files=files))
    for mode, (path, out) in zip(MODES, files):
        assert f"{path} ['{kernel_dtypes[mode]}/{mode}']" in stdout
        # Float rounding, and that of int8's quantized inputs, differ a
        # little between backends (1e-6 measured).
        np.testing.assert_allclose(np.load(out), expected[mode], atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_adapter_files_load_into_a_base_quantized_the_same_way(mode, tmp_path):
    model = quantized_bert(mode)
    randomize_adapters(model)
    kf.save_adapters(model, tmp_path / "adapters.flix")
    retrofitted_then_quantized = kf.retrofit(
        tiny_bert(), SCHEMA, rank={"language": 2, "task": 3}, target_layers=TARGETS
    )
    retrofitted_then_quantized.quantize(mode, filters=QUANTIZED)
    kf.load_adapters(retrofitted_then_quantized, tmp_path / "adapters.flix")
    np.testing.assert_array_equal(pooled(retrofitted_then_quantized), pooled(model))
    float_model = kf.retrofit(
        tiny_bert(), SCHEMA, rank={"language": 2, "task": 3}, target_layers=TARGETS
    )
    with pytest.raises(ValueError, match="base kernels differ"):
        kf.load_adapters(float_model, tmp_path / "adapters.flix")
    kf.load_adapters(float_model, tmp_path / "adapters.flix", check_base=False)
    layer = float_model.flix_layers[0]
    np.testing.assert_array_equal(
        to_numpy(layer.adapter_b["task"]), to_numpy(model.flix_layers[0].adapter_b["task"])
    )


COMBINATION = {"language": "sw", "task": "ner"}
# The merged (re-quantized) model's largest output difference from the FLix
# model, relative to the largest change the adapters make to the outputs.
# Measured with adapters of scale 0.3 on jax / tensorflow / torch (whose
# random base weights differ): int8 2.2 / 3.8 / 1.7 %, int4 14 / 41 / 35 %,
# float8 7.9 / 20 / 8.5 %.
MERGE_ERROR = {"int8": 0.1, "int4": 0.6, "float8": 0.3}


@pytest.mark.parametrize("mode", MODES)
def test_merge_requantizes_the_merged_kernels(mode):
    model = quantized_bert(mode)
    randomize_adapters(model, scale=0.3)
    ids = np.tile(SCHEMA.encode(COMBINATION), (4, 1))
    expected, base = pooled(model, ids), pooled(model, np.full((4, 2), -1, "int32"))
    merged = kf.merge(model, COMBINATION)
    layers = {layer.path: layer for layer in merged._flatten_layers()}
    for layer in model.flix_layers:
        assert type(layers[layer.path]) is layer.base_layer_class
        assert layers[layer.path].quantization_mode == mode
        assert layers[layer.path]._kernel.dtype == layer.base_kernel.dtype
    got = to_numpy(merged(bert_inputs(4))["pooled_output"])
    error = np.abs(got - expected).max() / np.abs(expected - base).max()
    assert 0 < error < MERGE_ERROR[mode]
    # Every feature absent: the quantized kernels as they are.
    unchanged = kf.merge(model, {})
    values = {v.path: to_numpy(v) for v in unchanged.weights}
    for layer in model.flix_layers:
        np.testing.assert_array_equal(values[layer.base_kernel.path], to_numpy(layer.base_kernel))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_preset_of_a_task_over_a_quantized_backbone_round_trips(mode, tmp_path):
    task = tiny_classifier()
    task.backbone.quantize(mode, filters=QUANTIZED)
    model = kf.retrofit(task, SCHEMA, rank=2, train_also=["logits"])
    randomize_adapters(model, scale=0.5)
    x = {"inputs": np.array(["the cat sat", "a dog ran", "the big dog", "a small cat"]),
         "feature_ids": MIXED_IDS[:4]}
    predicted = model.predict(x, verbose=0)
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    loaded = kf.FLixModel.from_preset(preset)
    assert {layer.quantization_mode for layer in loaded.flix_layers} == {mode}
    np.testing.assert_allclose(loaded.predict(x, verbose=0), predicted, rtol=1e-5, atol=1e-5)
    # The preset is the task's own: KerasHub alone loads the quantized base.
    plain = type(task).from_preset(preset)
    absent = {**x, "feature_ids": np.full_like(x["feature_ids"], kf.ABSENT)}
    np.testing.assert_allclose(
        plain.predict(x["inputs"], verbose=0), model.predict(absent, verbose=0),
        rtol=1e-5, atol=1e-5,
    )


@pytest.mark.parametrize("mode", MODES)
def test_peft_files_of_a_quantized_base_are_those_of_its_float_base(mode, tmp_path):
    # A PEFT LoRA holds only the update; the base it applies to is the user's.
    quantized = quantized_bert(mode)
    randomize_adapters(quantized, scale=0.3)
    float_model = kf.retrofit(
        tiny_bert(), SCHEMA, rank={"language": 2, "task": 3}, target_layers=TARGETS
    )
    for own, other in zip(float_model.flix_layers, quantized.flix_layers):
        for a, b in zip(own.adapter_variables, other.adapter_variables):
            a.assign(b)
    # One feature value, so that the file fits that value's rank on import.
    combination = {"language": "sw"}
    kf.export_peft(quantized, combination, tmp_path / "quantized")
    kf.export_peft(float_model, combination, tmp_path / "float")
    got, expected = (
        load_file(tmp_path / name / "adapter_model.safetensors") for name in ("quantized", "float")
    )
    assert sorted(got) == sorted(expected)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])
    # ... and one imported into a quantized model gives it the same update.
    target = quantized_bert(mode)
    kf.import_peft(target, tmp_path / "quantized", ("language", "sw"))
    ids = np.tile(SCHEMA.encode(combination), (4, 1))
    np.testing.assert_allclose(pooled(target, ids), pooled(quantized, ids), rtol=1e-5, atol=1e-5)
    assert not np.allclose(pooled(target, ids), pooled(target, ABSENT_IDS[:4]))


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_merge_as_lora_keeps_the_quantized_kernels_and_is_exact(mode):
    model = quantized_bert(mode)
    randomize_adapters(model, scale=0.3)
    ids = np.tile(SCHEMA.encode(COMBINATION), (4, 1))
    merged = kf.merge(model, COMBINATION, as_lora=True)
    layers = {layer.path: layer for layer in merged._flatten_layers()}
    for layer in model.flix_layers:
        assert layers[layer.path].lora_enabled and layers[layer.path].quantization_mode == mode
    got = to_numpy(merged(bert_inputs(4))["pooled_output"])
    assert max_relative_error(got, pooled(model, ids)) < 1e-5


def test_merge_as_lora_of_a_float8_base_is_refused():
    model = quantized_bert("float8")
    with pytest.raises(NotImplementedError, match="Keras' float8 call does not run LoRA"):
        kf.merge(model, COMBINATION, as_lora=True)


# The layer's output with its dequantized merged kernel (`merged_kernel`),
# against the layer's own output, relative to the update: int4 quantizes the
# kernel only, so they agree to float rounding (1-2e-7 measured on jax,
# tensorflow and torch); int8 quantizes the inputs too (4-5e-4), float8 the
# inputs and the kernel in each call (4-6e-3).
MERGED_KERNEL_ERROR = {"int4": (0.0, 1e-5), "int8": (1e-4, 0.05), "float8": (1e-3, 0.2)}


@pytest.mark.parametrize("mode", MODES)
def test_dequantized_merged_kernel(mode):
    spec = SPECS[1]
    _, linear, x = quantized_pair(spec, mode)
    layer = kf.layers.FLixEinsumDense.from_base(linear, SCHEMA, rank=RANKS, alpha=ALPHAS)
    randomize(layer)
    ids = np.tile(SCHEMA.encode(COMBINATION), (len(x), 1))
    delta = reference_delta(layer, spec, x, ids)
    merged = np.einsum(spec[0], x, to_numpy(layer.merged_kernel(ids[0]))) + to_numpy(layer.bias)
    error = np.abs(merged - to_numpy(layer(x, feature_ids=ids))).max() / np.abs(delta).max()
    low, high = MERGED_KERNEL_ERROR[mode]
    assert low <= error < high, error


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="SavedModel export runs on jax and tensorflow (torch refuses it: test_saving.py)",
)
@pytest.mark.parametrize("mode", MODES)
def test_saved_model_export_of_a_quantized_model(mode, tmp_path):
    import tensorflow as tf

    model = quantized_bert(mode)
    randomize_adapters(model, scale=0.3)
    kf.export_saved_model(model, tmp_path / "served")
    served = tf.saved_model.load(str(tmp_path / "served"))
    x = {k: tf.constant(v) for k, v in bert_inputs(len(MIXED_IDS)).items()}
    out = served.signatures["serve_ids"](**x, feature_ids=tf.constant(MIXED_IDS))
    assert max_relative_error(out["pooled_output"].numpy(), pooled(model)) < 1e-5
