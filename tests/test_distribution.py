"""Scale-out on the backends' own engines, each in a process of its own."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed")


def run_script(name, *args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [sys.executable, os.path.join(HERE, name), *args],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_adapters_laid_out_like_gemma_ffw_kernel(result):
    # Gemma's ffw_linear kernel is ("model", "batch"): A follows its input
    # axis, B its output axis; the value axis is replicated.
    kernels, shardings = result["kernel_shardings"], result["adapter_shardings"]
    assert kernels["decoder_block_0/ffw_linear/kernel"] == "P('model', 'batch')"
    assert shardings["decoder_block_0/ffw_linear/flix_language_a"] == "P(None, 'model', None)"
    assert shardings["decoder_block_0/ffw_linear/flix_language_b"] == "P(None, None, 'batch')"


# The scripts pick their own backend; run them once, from the matching suite.
only_on = lambda backend: pytest.mark.skipif(  # noqa: E731
    keras.backend.backend() != backend,
    reason=f"runs its own {backend} process; exercised from the {backend} suite",
)


# Every jax scenario, trained in one process (a process with 8 simulated
# devices costs more to start than a scenario costs to run).
JAX_SCENARIOS = (
    "model_parallel",
    "model_parallel+int8",
    "values_sharded",
    "data_parallel",
    "data_parallel+lazy_adam",
    "values_sharded+lazy_adam",
)


@pytest.fixture(scope="module")
def jax_results():
    return run_script("jax_parallel.py", *JAX_SCENARIOS)


@pytest.mark.slow
@only_on("jax")
def test_jax_model_parallel_with_kerashub_layout_map(jax_results):
    result = jax_results["model_parallel"]
    np.testing.assert_allclose(result["losses"], result["single_losses"], rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5
    assert_adapters_laid_out_like_gemma_ffw_kernel(result)


@pytest.mark.slow
@only_on("jax")
def test_jax_model_parallel_over_an_int8_backbone(jax_results):
    # QLoRA style under KerasHub's layout map: Keras quantizes the backbone
    # under the distribution, the int8 kernels keep the float kernels'
    # layout and the adapters are laid out from it, as over a float base.
    # (Keras' int4 EinsumDense stores its kernel packed in 2-D, which a
    # layout map written for the 3-D float kernel cannot shard: Keras'
    # `quantize("int4")` itself fails under it.)
    result = jax_results["model_parallel+int8"]
    np.testing.assert_allclose(result["losses"], result["single_losses"], rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5
    assert set(result["kernel_dtypes"].values()) == {"int8"}
    assert_adapters_laid_out_like_gemma_ffw_kernel(result)


@pytest.mark.slow
@only_on("jax")
def test_jax_model_parallel_with_sharded_feature_values(jax_results):
    result = jax_results["values_sharded"]
    np.testing.assert_allclose(result["losses"], result["single_losses"], rtol=1e-5)
    shardings = result["adapter_shardings"]
    assert shardings["decoder_block_0/ffw_linear/flix_language_a"] == "P('model', None, None)"
    assert shardings["decoder_block_0/ffw_linear/flix_language_b"] == "P('model', None, 'batch')"


@pytest.mark.slow
@only_on("jax")
def test_jax_data_parallel(jax_results):
    result = jax_results["data_parallel"]
    np.testing.assert_allclose(result["losses"], result["single_losses"], rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5


@pytest.mark.slow
@only_on("jax")
@pytest.mark.parametrize("mode", ["data_parallel", "values_sharded"])
def test_jax_row_sparse_lazy_adam_step_distributed(jax_results, mode):
    # The FLixModel trained with LazyAdam (row-sparse table gradients), on a
    # data-parallel mesh and with the value axis sharded over "model".
    result = jax_results[f"{mode}+lazy_adam"]
    np.testing.assert_allclose(result["losses"], result["single_losses"], rtol=1e-5)
    assert result["max_weight_difference"] < 1e-5


@pytest.mark.slow
@only_on("tensorflow")
def test_tf_mirrored_strategy():
    result = run_script("tf_mirrored.py")
    assert result["replicas"] == 2
    np.testing.assert_allclose(result["losses"], result["single_losses"], rtol=5e-3)
    assert result["max_weight_difference"] < 1e-4


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="keras.distribution has no device support on the torch backend",
)
def test_layout_map_keeps_base_entries_and_checks_arguments():
    import keras_flix as kf

    mesh = keras.distribution.DeviceMesh((1,), ["model"], keras.distribution.list_devices()[:1])
    base = keras.distribution.LayoutMap(mesh)
    base[".*proj.*kernel"] = ("model", None)
    layout = kf.layout_map(base)
    assert layout.device_mesh is mesh
    assert tuple(layout["dense/proj/kernel"].axes) == ("model", None)
    with pytest.raises(ValueError, match="not an axis of the device mesh"):
        kf.layout_map(base, values_axis="batch")
    with pytest.raises(TypeError, match="LayoutMap"):
        kf.layout_map({".*": ("model",)})
