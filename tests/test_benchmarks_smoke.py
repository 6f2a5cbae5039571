"""`benchmarks/speed.py --quick` and `benchmarks/quantized.py --quick` run and
write well-formed results.

Speed itself is not asserted: timing targets belong to the benchmark's own
report (see benchmarks/README.md), never to unit tests.
"""

import json
import math
import os
import subprocess
import sys

import keras
import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import peak_memory  # noqa: E402  (benchmarks/peak_memory.py)

# How each backend's memory ratios count memory (`peak_memory.memory_figure`).
MEMORY_METHODS = {
    "jax": "xla_buffer_assignment",
    "tensorflow": "tensorflow_allocator_peak",
    "torch": "torch_cpu_tensors_peak",
}
# Enough for both inference targets and one memory probe, in well under a
# minute; the other configurations only add more of the same kind.
CONFIGURATIONS = ["frozen", "flix_v8", "merged_v8"]


def run_benchmark(script, *arguments, backend=None, timeout=300):
    """Runs `benchmarks/<script>` in a subprocess on `backend` (default: this one).

    Returns:
        The `subprocess.CompletedProcess`, stdout and stderr captured.
    """
    return subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, script), *arguments],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": backend or keras.backend.backend()},
        timeout=timeout,
    )


def run_to_json(script, path, *arguments, backend=None):
    """Runs a benchmark that must succeed; returns the JSON it wrote to `path`."""
    done = run_benchmark(script, *arguments, "--json", str(path), backend=backend)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(path.read_text())


@pytest.mark.slow
def test_quick_run_writes_well_formed_json(tmp_path):
    results = run_to_json(
        "speed.py", tmp_path / "speed.json",
        "--quick", "--rounds", "1", "--only", ",".join(CONFIGURATIONS),
    )
    assert results["info"]["backend"] == keras.backend.backend()
    assert results["settings"]["rounds"] == 1
    configurations = results["configurations"]
    assert list(configurations) == CONFIGURATIONS
    for name, result in configurations.items():
        phases = [p for p in ("train", "infer") if p in result]
        assert phases, name
        for phase in phases:
            assert len(result[phase]["samples_s"]) == 1
            assert 0 < result[phase]["min_s"] <= result[phase]["median_s"]
    assert configurations["flix_v8"]["memory"]["peak_mb"] > 0
    assert configurations["frozen"]["memory"] is None
    ratios = {row["name"]: row for row in results["ratios"]}
    for name in ("flix_v8 / frozen (infer)", "merged_v8 / frozen (infer)"):
        row = ratios[name]
        assert math.isfinite(row["value"]) and row["value"] > 0
        assert isinstance(row["met"], bool) and row["target"] > 1



@pytest.mark.slow
@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="PEFT is a torch library: the comparison runs in the torch test process",
)
def test_peft_comparison_quick_run_writes_well_formed_json(tmp_path):
    results = run_to_json(
        "peft_comparison.py", tmp_path / "peft.json", "--quick", "--values", "2", "3",
        backend="torch",
    )
    assert set(results["configurations"]) == {
        "kerashub_base", "flix_n2", "flix_n3", "hf_base", "peft_n2", "peft_n3"
    }
    assert [row["values"] for row in results["overheads"]] == [2, 3]
    for row in results["overheads"]:
        for key in ("flix_over_its_base", "peft_over_its_base", "flix_relative_to_peft"):
            assert math.isfinite(row[key]["value"]) and row[key]["value"] > 0
            assert row[key]["min"] <= row[key]["value"] <= row[key]["max"]
        assert isinstance(row["met"], bool)


def test_peft_comparison_refuses_another_backend():
    done = run_benchmark("peft_comparison.py", "--quick", backend="jax", timeout=60)
    assert done.returncode != 0
    assert "run it with KERAS_BACKEND=torch (found 'jax')" in done.stderr


@pytest.mark.slow
def test_quantized_quick_run_writes_well_formed_json(tmp_path):
    results = run_to_json(
        "quantized.py", tmp_path / "quantized.json", "--quick", "--batch-size", "3"
    )
    assert results["info"]["backend"] == keras.backend.backend()
    # The environment settings that move the figures travel with them.
    assert results["info"]["xla_flags"] == os.environ.get("XLA_FLAGS")
    assert results["info"]["malloc_mmap_threshold"] == os.environ.get("MALLOC_MMAP_THRESHOLD_")
    assert results["info"]["ld_preload"] == os.environ.get("LD_PRELOAD")
    assert results["settings"]["batch_size"] == 3
    configurations = results["configurations"]
    assert list(configurations) == ["float32", "int8", "int4"]
    for result in configurations.values():
        assert len(result["train"]["samples_s"]) == results["settings"]["rounds"]
        assert result["memory"]["peak_mb"] > 0
    # The quantized bases hold fewer bytes than the float one.
    assert configurations["int4"]["weights_mb"] < configurations["int8"]["weights_mb"]
    assert configurations["int8"]["weights_mb"] < configurations["float32"]["weights_mb"]
    ratios = {row["name"]: row for row in results["ratios"]}
    assert set(ratios) == {
        f"{mode} / float32 ({phase})" for mode in ("int8", "int4") for phase in ("train", "memory")
    }
    for row in ratios.values():
        assert math.isfinite(row["value"]) and row["value"] > 0
    train = ratios["int8 / float32 (train)"]
    assert train["min"] <= train["value"] <= train["max"]
    memory = ratios["int8 / float32 (memory)"]
    assert isinstance(memory["met"], bool)
    assert memory["method"] == MEMORY_METHODS[keras.backend.backend()]
    # The resident sets' ratio is reported beside the tensors' one.
    assert math.isfinite(memory["rss_ratio"]) and memory["rss_ratio"] > 0
    if keras.backend.backend() == "torch":
        for result in configurations.values():
            tensors = result["memory"]["torch_cpu_tensors"]
            # Held on entry: at least the weights; a step makes more.
            assert tensors["before_mb"] >= round(result["weights_mb"], 1)
            assert tensors["peak_mb"] > tensors["before_mb"]
            # A steady state (but for the last step's results, a few KiB),
            # so no release went unseen (see `TorchCpuTensors`).
            assert tensors["after_mb"] == pytest.approx(tensors["before_mb"], abs=0.1)


def test_quantized_refuses_a_size_below_one():
    done = run_benchmark("quantized.py", "--quick", "--sequence-length", "0")
    assert done.returncode != 0
    assert "--sequence-length must be at least 1, got 0" in done.stderr


@pytest.mark.skipif(keras.backend.backend() != "torch", reason="counts torch's tensors")
def test_torch_cpu_tensors_counts_held_and_passing_tensors():
    import torch

    mib = 2**20
    with peak_memory.TorchCpuTensors() as tensors:
        passing = torch.ones(3 * mib, dtype=torch.uint8)
        del passing
        kept = torch.ones(2 * mib, dtype=torch.uint8)
        view = kept[:mib]
    figures = tensors.figures()
    assert figures["peak_mb"] - figures["before_mb"] == pytest.approx(3.0)
    assert figures["after_mb"] - figures["before_mb"] == pytest.approx(2.0)
    with peak_memory.TorchCpuTensors() as again:
        pass
    # Held on entry, each storage once: a view shares its base's.
    assert again.figures()["before_mb"] == pytest.approx(figures["after_mb"])
    del view, kept
