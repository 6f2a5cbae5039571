"""Peak training memory and step time of FLix over an int8 / int4 base vs float32.

A Llama-shaped KerasHub backbone of Llama 3.2 1B's width (hidden 2048,
feed-forward 8192, 32 query heads and 8 key / value heads of size 64), with
2 of its 16 layers and a vocabulary of 4,096 (so that, as in the full model,
the transformer layers hold most of the weights), random weights, in three
configurations:

* `float32`: the base as built.
* `int8`, `int4`: the base quantized by Keras before retrofitting,
  `backbone.quantize(mode)` with Keras' defaults: every `Dense` /
  `EinsumDense` and the embedding; int8 weights and per-token int8 inputs,
  int4 weights in groups of 128 inputs (float inputs).

Each is retrofitted with `kf.retrofit` on the query and value projections,
2 feature types of 8 values at rank 4 each (active rank 8), and trained
with `kf.optimizers.LazyAdam` on the mean squared error of its sequence
output against a random target, batch 2 x 128 tokens with mixed feature
combinations; `train_on_batch`, compiled with XLA on jax and TensorFlow,
eager on torch.

Step time: the three models are built, compiled and warmed up in one
process, then timed in interleaved rounds (`timing.interleaved_rounds`); a
ratio is the median over rounds of the per-round ratio to `float32`, and
its spread the smallest and largest per-round ratio. Peak training memory:
one fresh process per configuration (`peak_memory.training_memory`), the
tensors at their peak as the backend counts them: on jax XLA's buffer
assignment for the compiled train step, on TensorFlow its CPU allocator's
peak, on torch the CPU tensors its profiler sees allocated and released
(`peak_memory.TorchCpuTensors`). The resident set's high-water mark is
reported too (`rss_ratio`); it also counts what the C allocator keeps of
freed blocks.

On a GPU the same script measures the GPU: jax's figure is XLA's buffer
assignment for that device, torch's the peak of its CUDA allocator.

Run:  KERAS_BACKEND=jax python benchmarks/quantized.py [--json out.json]
          [--quick] [--rounds 7] [--layers 2] [--batch-size 2]
          [--sequence-length 128] [--vocabulary-size 4096] [--no-memory]
"""

import argparse
import json
import math
import os
import sys
import time
import warnings

import keras
import keras_hub
import numpy as np

import keras_flix as kf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peak_memory  # noqa: E402  (benchmarks/peak_memory.py)
import timing  # noqa: E402  (benchmarks/timing.py)

FULL = {
    "vocabulary_size": 4096,
    "num_layers": 2,
    "num_query_heads": 32,
    "num_key_value_heads": 8,
    "hidden_dim": 2048,
    "intermediate_dim": 8192,
    "batch_size": 2,
    "sequence_length": 128,
    "values": 8,
    "rank": 4,
    "rounds": 7,
    "warm_up_calls": 2,
    "memory_steps": 3,
}
QUICK = {
    **FULL,
    "vocabulary_size": 256,
    "num_layers": 1,
    "num_query_heads": 4,
    "num_key_value_heads": 2,
    "hidden_dim": 64,
    "intermediate_dim": 128,
    "sequence_length": 16,
    "rounds": 2,
    "warm_up_calls": 1,
    "memory_steps": 1,
}
# Options that change the model's or the batch's size: option -> settings key.
# The memory probes are started with the same ones.
SIZE_OPTIONS = {
    "layers": "num_layers",
    "vocabulary_size": "vocabulary_size",
    "batch_size": "batch_size",
    "sequence_length": "sequence_length",
}
CONFIGURATIONS = ("float32", "int8", "int4")
FEATURE_TYPES = ("language", "task")
# (numerator, denominator, "train" or "memory", target or None).
RATIOS = [
    ("int8", "float32", "memory", 0.5),
    ("int8", "float32", "train", 1.3),
    ("int4", "float32", "memory", None),
    ("int4", "float32", "train", None),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the results to this path")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and 2 rounds (smoke test)"
    )
    parser.add_argument("--layers", type=int, help="transformer layers")
    parser.add_argument("--vocabulary-size", type=int, help="vocabulary size")
    parser.add_argument("--batch-size", type=int, help="sequences per batch")
    parser.add_argument("--sequence-length", type=int, help="tokens per sequence")
    parser.add_argument("--rounds", type=int, help="timed rounds")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the memory subprocesses"
    )
    parser.add_argument("--memory-probe", choices=CONFIGURATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for option, key in {**SIZE_OPTIONS, "rounds": "rounds"}.items():
        value = getattr(args, option)
        if value is not None:
            if value < 1:
                parser.error(f"{flag(option)} must be at least 1, got {value}")
            settings[key] = value
    return args, settings


def build(mode, settings):
    """The retrofitted model of configuration `mode`, compiled.

    Returns:
        `(model, inputs, target)`, inputs and target as backend tensors.
    """
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=settings["vocabulary_size"],
        num_layers=settings["num_layers"],
        num_query_heads=settings["num_query_heads"],
        num_key_value_heads=settings["num_key_value_heads"],
        hidden_dim=settings["hidden_dim"],
        intermediate_dim=settings["intermediate_dim"],
    )
    if mode != "float32":
        with warnings.catch_warnings():
            # About every layer without a `quantize` (norms, the input layers).
            warnings.simplefilter("ignore")
            backbone.quantize(mode)
    values = settings["values"]
    schema = kf.FeatureSchema(
        {t: [f"{t}_{i}" for i in range(values)] for t in FEATURE_TYPES}
    )
    model = kf.retrofit(
        keras.Model(backbone.input, backbone.output),
        schema,
        rank=settings["rank"],
        target_layers=["query", "value"],
    )
    model.compile(
        optimizer=kf.optimizers.LazyAdam(1e-4),
        loss="mse",
        jit_compile=keras.backend.backend() != "torch",
    )
    batch, length = settings["batch_size"], settings["sequence_length"]
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1, settings["vocabulary_size"], (batch, length)),
        "padding_mask": np.ones((batch, length)),
        # Mixed combinations, absent features (-1) included.
        "feature_ids": rng.integers(-1, values, (batch, len(FEATURE_TYPES))),
    }
    inputs = {k: keras.ops.convert_to_tensor(v.astype("int32")) for k, v in inputs.items()}
    target = rng.standard_normal((batch, length, settings["hidden_dim"]))
    return model, inputs, keras.ops.convert_to_tensor(target.astype("float32"))


def run_info():
    """The backend, the library versions and the machine of this run."""
    backend = keras.backend.backend()
    framework = __import__(backend)
    return {
        "backend": backend,
        "versions": {
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            backend: framework.__version__,
        },
        **timing.machine(),
        # XLA's options change its schedules, hence memory and time.
        "xla_flags": os.environ.get("XLA_FLAGS"),
        # How freed memory returns to the system moves torch's figure (the
        # resident set): glibc keeps freed blocks below its mmap threshold
        # unless the threshold is fixed, and another allocator may be preloaded.
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
        "ld_preload": os.environ.get("LD_PRELOAD"),
    }


def weight_bytes(model):
    """Bytes of the model's variables: the frozen base and the adapters."""
    return sum(
        math.prod(v.shape) * np.dtype(keras.backend.standardize_dtype(v.dtype)).itemsize
        for v in model.weights
    )


def flag(option):
    """The command-line flag of an `args` attribute: `batch_size` -> `--batch-size`."""
    return "--" + option.replace("_", "-")


def start_memory_probe(args, mode):
    flags = ["--quick"] if args.quick else []
    for option in SIZE_OPTIONS:
        value = getattr(args, option)
        if value is not None:
            flags += [flag(option), str(value)]
    return peak_memory.start_probe(__file__, ["--memory-probe", mode, *flags])


def main(argv=None):
    args, settings = parse_args(argv)
    if args.memory_probe:
        peak_memory.print_result(
            peak_memory.training_memory(
                lambda: build(args.memory_probe, settings), settings["memory_steps"]
            )
        )
        return

    def log(message):
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    info = run_info()
    # A smoke test does not need quiet probes: run them alongside the timing.
    probes = () if args.no_memory else CONFIGURATIONS
    running = {mode: start_memory_probe(args, mode) for mode in probes} if args.quick else {}
    models, extras = {}, {}
    for mode in CONFIGURATIONS:
        begin = time.perf_counter()
        models[mode] = build(mode, settings)
        for _ in range(settings["warm_up_calls"]):
            models[mode][0].train_on_batch(*models[mode][1:])
        extras[mode] = {
            "weights_mb": round(weight_bytes(models[mode][0]) / 2**20, 3),
            "build_and_warm_up_s": round(time.perf_counter() - begin, 1),
        }
        log(f"  warmed up {mode}: {extras[mode]}")
    jobs = {
        mode: (lambda built=models[mode]: built[0].train_on_batch(*built[1:]), 1)
        for mode in CONFIGURATIONS
    }
    samples, cpu_samples = timing.interleaved_rounds(jobs, settings["rounds"], log)
    del models, jobs
    memory = {}
    for mode in probes:
        # Full runs probe one configuration at a time, after the timing, so
        # that nothing competes with the probe or with the timed steps.
        memory[mode] = peak_memory.finish_probe(
            mode, running.get(mode) or start_memory_probe(args, mode), log
        )
    ratios = []
    for numerator, denominator, phase, target in RATIOS:
        if phase == "memory":
            row = peak_memory.memory_ratio(memory, numerator, denominator)
            if row is None:
                continue
        else:
            row = timing.ratio(samples, cpu_samples, numerator, denominator)
        row.update(
            name=f"{numerator} / {denominator} ({phase})",
            target=target,
            met=None if target is None else row["value"] <= target,
        )
        ratios.append(row)
    results = {
        "info": info,
        "settings": settings,
        "configurations": {
            mode: {
                **extras[mode],
                "train": timing.summarize(samples[mode], cpu_samples[mode]),
                "memory": memory.get(mode),
            }
            for mode in CONFIGURATIONS
        },
        "ratios": ratios,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    print_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


def print_report(results):
    info, settings = results["info"], results["settings"]
    print(
        f"\nBackend {info['backend']}, {info['cpu_count']} CPU cores ({info['cpu']}), "
        + (f"accelerator {info['accelerator']}, " if info.get("accelerator") else "")
        + ", ".join(f"{k} {v}" for k, v in {"python": info["python"], **info["versions"]}.items())
        + (f"; XLA_FLAGS={info['xla_flags']}" if info["xla_flags"] else "")
    )
    print(
        f"Llama-shaped: {settings['num_layers']} layers, hidden {settings['hidden_dim']}, "
        f"feed-forward {settings['intermediate_dim']}, heads "
        f"{settings['num_query_heads']} / {settings['num_key_value_heads']}, vocabulary "
        f"{settings['vocabulary_size']}; batch {settings['batch_size']} x "
        f"{settings['sequence_length']}; {settings['rounds']} rounds.\n"
    )
    memory = {
        mode: result["memory"]
        for mode, result in results["configurations"].items()
        if result["memory"]
    }
    print(f"{'base':<9}{'weights MiB':>12}{'step ms (median / min)':>25}{'peak MiB':>10}")
    for mode, result in results["configurations"].items():
        train = result["train"]
        peak, _ = peak_memory.memory_figure(memory, mode)
        times = f"{1e3 * train['median_s']:.0f} / {1e3 * train['min_s']:.0f}"
        peak = f"{peak:10.0f}" if peak is not None else f"{'-':>10}"
        print(f"{mode:<9}{result['weights_mb']:12.0f}{times:>25}{peak}")
    print(
        "\nRatios: the median over rounds of the per-round ratio, [smallest, "
        "largest] per-round ratio;\nmemory: XLA buffers on jax, TensorFlow's "
        "allocator peak on tensorflow, CPU tensors (profiler) on torch\n(on a GPU, "
        "its CUDA allocator's peak); RSS: the same ratio of resident sets."
    )
    for row in results["ratios"]:
        if "min" in row:
            spread = f"[{row['min']:.3f}, {row['max']:.3f}]"
        else:
            spread = f"RSS {row['rss_ratio']:.3f}" if "rss_ratio" in row else ""
        target = f"target {row['target']:.2f}: {'met' if row['met'] else 'NOT met'}" if row["target"] else ""
        print(f"{row['name']:<28}{row['value']:7.3f}  {spread:<18}{target}")
    print(f"\nDone in {results['wall_time_s']} s.")


if __name__ == "__main__":
    main()
