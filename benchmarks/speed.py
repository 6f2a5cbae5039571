"""Speed and memory of FLix against a frozen base model and Keras LoRA.

One process, on the current `KERAS_BACKEND`, times a random-weight KerasHub
BERT (MiniLM-L6-like: 6 layers, hidden 384, 12 heads, vocabulary 30522;
batch 32, sequence 64; dropout 0, see benchmarks/README.md) in these
configurations:

* `frozen`: the base model alone (inference only).
* `keras_lora`: KerasHub's `backbone.enable_lora(8)` (query and value).
* `flix_v8`, `flix_v64`, `flix_v1024`: `keras_flix.retrofit` on query and
  value with 2 feature types of rank 4 each (the same active rank, 8) and
  8, 64 or 1024 values per type, trained with Adam.
* `flix_v8_lazy`, `flix_v1024_lazy`: as `flix_v8`, `flix_v1024`, trained
  with `LazyAdam` (row-sparse updates of the adapter tables; on jax and
  torch also row-sparse table gradients, see
  `keras_flix/src/row_sparse_step.py`).
* `flix_v8_one_hot`: as `flix_v8`, with `compute_path="one_hot"`.
* `merged_v8`: `keras_flix.merge` of `flix_v8` for one combination
  (inference only).
* `flix_t1`, `flix_t2`, `flix_t4`, `flix_t8`: as `flix_v8` (8 values per
  type, Adam), with the active rank 8 split among 1, 2, 4 or 8 feature
  types (rank 8, 4, 2, 1 each): what adding feature types costs.
* `keras_lora_head`, `flix_v8_head`, `flix_v1024_lazy_head`: as
  `keras_lora`, `flix_v8`, `flix_v1024_lazy`, in the other common pattern:
  a user's Functional model with a `Dense` head around the adapted (or
  retrofitted) backbone model, which is what is compiled and trained.

Every other configuration is a Functional model of the backbone's sequence
output (the FLix ones the `FLixModel` that `retrofit` returns for it, so
the whole model is retrofitted), trained with a mean squared error. Train step: `model.compile(...)` then
`model.train_on_batch`, i.e. the step `fit` runs: forward, backward and
optimizer update, compiled with XLA on jax and TensorFlow
(`jit_compile=True`) and eager on torch. Inference:
`predict_on_batch` on a batch whose examples mix feature combinations,
absent features included. Every configuration is warmed up (compiled)
first; then the configurations run interleaved for several rounds. A round
calls every configuration in a rotating order and again in the reverse
order (a train step once each time, inference twice) and takes the mean of
its calls, so that a drift in the machine's load within the round affects
all configurations alike. The table gives the median and minimum over
rounds; a ratio is the median over rounds of the ratio of the two times
measured in the same round.

Peak training memory is measured in a fresh subprocess per configuration:
the resident set size's high-water mark (`VmHWM`, reset after warm-up so
that compilation does not count) during training steps, minus the resident
size before the model was built (after imports and `malloc_trim`). It counts
weights, gradients, optimizer state and activations however the backend
allocates them (`tracemalloc` would miss XLA's and torch's buffers). On jax
the probe also reports XLA's own buffer assignment for the compiled train
step (arguments + temporaries + outputs not aliased to donated arguments),
which is exact and noise-free; the memory ratio uses it there. On TensorFlow
the ratio uses the peak of TensorFlow's CPU allocator during the measured
steps (`tf.config.experimental.get_memory_info`): every tensor, nothing else.
On torch it uses the peak of the CPU tensors during as many steps again
(`peak_memory.TorchCpuTensors`, from torch's profiler), since the resident
set also counts what the C allocator keeps of freed blocks; the resident
set's ratio is reported too (`rss_ratio`).

Run:  KERAS_BACKEND=jax python benchmarks/speed.py [--json out.json]
          [--quick] [--mixed-precision] [--layers 6] [--rounds 6]
          [--only flix_v8,keras_lora] [--no-memory]
      python benchmarks/speed.py --backend-info
"""

import argparse
import collections
import gc
import json
import os
import statistics
import sys
import time

import keras
import keras_hub
import numpy as np

import keras_flix as kf
from keras_flix.optimizers import LazyAdam

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert  # noqa: E402  (benchmarks/bert.py)
import peak_memory  # noqa: E402  (benchmarks/peak_memory.py)
import timing  # noqa: E402  (benchmarks/timing.py)

FULL = {
    "vocabulary_size": 30522,
    "num_layers": 6,
    "num_heads": 12,
    "hidden_dim": 384,
    "intermediate_dim": 1536,
    "sequence_length": 64,
    "batch_size": 32,
    "rank": 8,
    "values": (8, 64, 1024),
    "dropout": 0.0,
    "rounds": 6,
    "calls": {"train": 1, "infer": 2},
    "warm_up_calls": 2,
    "memory_steps": 3,
}
QUICK = {
    "vocabulary_size": 512,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "sequence_length": 16,
    "batch_size": 8,
    "rank": 4,
    "values": (8, 64, 1024),
    "dropout": 0.0,
    "rounds": 3,
    "calls": {"train": 1, "infer": 1},
    "warm_up_calls": 1,
    "memory_steps": 2,
}
FEATURE_TYPE_COUNTS = (1, 2, 4, 8)

# (numerator, denominator, phase or "memory", target): the targets.
TARGETS = [
    ("flix_v8", "keras_lora", "train", 1.05),
    # 1,024 values with `LazyAdam` (row-sparse) against 8 with plain Adam.
    ("flix_v1024_lazy", "flix_v8", "train", 1.05),
    ("flix_v8", "frozen", "infer", 1.10),
    ("merged_v8", "frozen", "infer", 1.02),
    ("flix_v8", "keras_lora", "memory", 1.10),
    # The same two training targets with a head around the adapted backbone.
    ("flix_v8_head", "keras_lora_head", "train", 1.05),
    ("flix_v1024_lazy_head", "flix_v8_head", "train", 1.05),
    # The same total rank in 8 feature types as in 1.
    ("flix_t8", "flix_t1", "train", 1.05),
    ("flix_t8", "flix_t1", "infer", 1.05),
]
# Further ratios, reported without a target.
EXTRA_RATIOS = [
    ("flix_t2", "flix_t1", "train"),
    ("flix_t4", "flix_t1", "train"),
    ("flix_t2", "flix_t1", "infer"),
    ("flix_t4", "flix_t1", "infer"),
    ("flix_v64", "flix_v8", "train"),
    ("flix_v1024", "flix_v8", "train"),
    ("flix_v1024_lazy", "flix_v8_lazy", "train"),
    ("flix_v8_lazy", "flix_v8", "train"),
    ("flix_v1024_lazy", "flix_v1024", "train"),
    ("flix_v8_one_hot", "flix_v8", "train"),
    ("flix_v64", "frozen", "infer"),
    ("flix_v1024", "frozen", "infer"),
    ("flix_v8_one_hot", "frozen", "infer"),
    ("flix_v1024", "flix_v8", "memory"),
    ("flix_v1024_lazy", "flix_v8", "memory"),
]


class Configuration(collections.namedtuple(
    "Configuration", "kind values optimizer compute_path phases head types",
    defaults=(False, 2),
)):
    """One timed model.

    Fields: `kind` ("frozen", "keras_lora", "flix" or "merged"), `values`
    per feature type, `optimizer`, `compute_path`, `phases` timed, `head`
    (the model trained is a Functional model with a `Dense` head around
    the adapted backbone model, not that model itself) and `types`, the
    number of feature types (the active rank is split evenly among them).
    """


def configurations(settings):
    """Name -> `Configuration`."""
    small, medium, large = settings["values"]
    both = ("train", "infer")
    configs = {
        "frozen": Configuration("frozen", None, None, None, ("infer",)),
        "keras_lora": Configuration("keras_lora", None, "adam", None, ("train",)),
        "flix_v8": Configuration("flix", small, "adam", "auto", both),
        "flix_v64": Configuration("flix", medium, "adam", "auto", both),
        "flix_v1024": Configuration("flix", large, "adam", "auto", both),
        "flix_v8_lazy": Configuration("flix", small, "lazy_adam", "auto", ("train",)),
        "flix_v1024_lazy": Configuration("flix", large, "lazy_adam", "auto", ("train",)),
        "flix_v8_one_hot": Configuration("flix", small, "adam", "one_hot", both),
        "merged_v8": Configuration("merged", small, None, None, ("infer",)),
        "keras_lora_head": Configuration("keras_lora", None, "adam", None, ("train",), True),
        "flix_v8_head": Configuration("flix", small, "adam", "auto", ("train",), True),
        "flix_v1024_lazy_head": Configuration(
            "flix", large, "lazy_adam", "auto", ("train",), True
        ),
    }
    # The same total rank split among 1, 2, 4, 8 feature types.
    for types in FEATURE_TYPE_COUNTS:
        configs[f"flix_t{types}"] = Configuration(
            "flix", small, "adam", "auto", both, types=types
        )
    return configs


MEMORY_PROBES = ("keras_lora", "flix_v8", "flix_v1024", "flix_v1024_lazy")
QUICK_MEMORY_PROBES = ("keras_lora", "flix_v8")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the results to this path")
    parser.add_argument(
        "--quick", action="store_true", help="a tiny model and 3 rounds (smoke test)"
    )
    parser.add_argument(
        "--mixed-precision",
        action="store_true",
        help="run under the `mixed_bfloat16` dtype policy",
    )
    parser.add_argument("--layers", type=int, help="transformer layers")
    parser.add_argument("--rounds", type=int, help="timed rounds")
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the memory subprocesses"
    )
    parser.add_argument(
        "--only",
        help="comma-separated configurations to run (default: all)",
    )
    parser.add_argument(
        "--backend-info",
        action="store_true",
        help="print the backend, versions and machine, then exit",
    )
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.layers is not None:
        settings["num_layers"] = args.layers
    if args.rounds is not None:
        settings["rounds"] = args.rounds
    return args, settings


def backend_info():
    backend = keras.backend.backend()
    framework = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}[backend]
    module = __import__(framework)
    facts = timing.machine()
    return {
        "backend": backend,
        "versions": {
            "python": facts["python"],
            "keras": keras.__version__,
            "keras_hub": keras_hub.__version__,
            framework: module.__version__,
        },
        "devices": _devices(),
        "cpu": facts["cpu"],
        "cpu_count": facts["cpu_count"],
        "memory_gb": facts["memory_gb"],
        "dtype_policy": keras.config.dtype_policy().name,
    }


def _devices():
    try:
        return keras.distribution.list_devices()
    except (AttributeError, NotImplementedError):
        import torch

        return ["cuda"] if torch.cuda.is_available() else ["cpu"]


def build(name, settings, configs, models=None):
    """The model of configuration `name`, compiled, and its inputs and target.

    Returns:
        `(model, inputs, target)`, inputs and target as backend tensors.
    """
    kind, num_values, optimizer, compute_path, _, head, types = configs[name]
    batch, length = settings["batch_size"], settings["sequence_length"]
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1, settings["vocabulary_size"], (batch, length)),
        "segment_ids": np.zeros((batch, length)),
        "padding_mask": np.ones((batch, length)),
    }
    inputs = {k: v.astype("int32") for k, v in inputs.items()}
    target = rng.standard_normal(
        (batch, length, settings["hidden_dim"])
    ).astype("float32")

    def backbone():
        return bert.random_backbone(settings)

    def sequence_output(backbone):
        return keras.Model(backbone.input, backbone.output["sequence_output"])

    if kind == "frozen":
        model = sequence_output(backbone())
        model.trainable = False
    elif kind == "keras_lora":
        base = backbone()
        base.enable_lora(settings["rank"])
        model = sequence_output(base)
    elif kind == "flix":
        schema = kf.FeatureSchema(
            {f"type{t}": [f"value{i}" for i in range(num_values)] for t in range(types)}
        )
        base = backbone()
        model = kf.retrofit(
            sequence_output(base),
            schema,
            rank=max(1, settings["rank"] // types),
            target_layers=["query", "value"],  # what `enable_lora` adapts
        )
        for layer in model.flix_layers:
            layer.compute_path = compute_path
        # Mixed combinations, absent features (-1) included.
        inputs["feature_ids"] = rng.integers(
            -1, num_values, (batch, types)
        ).astype("int32")
    elif kind == "merged":
        source = models[f"flix_v{num_values}"][0] if models else None
        if source is None:
            source = build(f"flix_v{num_values}", settings, configs)[0]
        model = kf.merge(source, {t: "value1" for t in source.schema.feature_types})
        model.trainable = False
    if head:
        outer_inputs = {
            key: keras.Input(value.shape[1:], dtype="int32", name=key)
            for key, value in inputs.items()
        }
        outputs = keras.layers.Dense(settings["hidden_dim"], name="head")(
            model(outer_inputs)
        )
        model = keras.Model(outer_inputs, outputs)
    model.compile(
        optimizer=(
            LazyAdam(1e-4) if optimizer == "lazy_adam" else keras.optimizers.Adam(1e-4)
        ),
        loss="mse",
        jit_compile=keras.backend.backend() != "torch",
    )
    to_tensor = keras.ops.convert_to_tensor
    return model, {k: to_tensor(v) for k, v in inputs.items()}, to_tensor(target)


def run_phase(phase, model, inputs, target):
    if phase == "train":
        model.train_on_batch(inputs, target)
    else:
        model.predict_on_batch(inputs)


def time_configurations(settings, configs, log):
    """Warm-up, then interleaved timed rounds.

    Returns:
        `(wall-clock samples, CPU-time samples, extras)`, samples as dicts
        from `(configuration, phase)` to one time per round.
    """
    models, extras = {}, {}
    for name in configs:
        start = time.perf_counter()
        models[name] = build(name, settings, configs, models)
        model = models[name][0]
        extras[name] = {
            "trainable_parameters": int(
                sum(int(_size(v.shape)) for v in model.trainable_variables)
            )
        }
        for phase in configs[name].phases:
            for _ in range(settings["warm_up_calls"]):
                run_phase(phase, *models[name])
        extras[name]["build_and_warm_up_s"] = round(time.perf_counter() - start, 2)
        log(f"  warmed up {name} ({extras[name]['build_and_warm_up_s']} s)")
    jobs = {
        (name, phase): (
            lambda name=name, phase=phase: run_phase(phase, *models[name]),
            settings["calls"][phase],
        )
        for name in configs
        for phase in configs[name].phases
    }
    samples, cpu_samples = timing.interleaved_rounds(jobs, settings["rounds"], log)
    models.clear()
    gc.collect()
    return samples, cpu_samples, extras


def _size(shape):
    size = 1
    for dim in shape:
        size *= dim
    return size


def memory_probe(name, settings, configs):
    """Peak training memory of configuration `name` in this fresh process."""
    return peak_memory.training_memory(
        lambda: build(name, settings, configs), settings["memory_steps"]
    )


def start_memory_probe(args, name):
    """Starts the memory probe subprocess of configuration `name`."""
    flags = ["--" + f.replace("_", "-") for f in ("quick", "mixed_precision") if getattr(args, f)]
    if args.layers is not None:
        flags += ["--layers", str(args.layers)]
    return peak_memory.start_probe(__file__, ["--memory-probe", name, *flags])


def collect_ratios(samples, cpu_samples, memory):
    rows = []
    for spec in [(*t, True) for t in TARGETS] + [(*e, None, False) for e in EXTRA_RATIOS]:
        numerator, denominator, phase, target, is_target = spec
        if phase == "memory":
            row = peak_memory.memory_ratio(memory, numerator, denominator)
            if row is None:
                continue
        else:
            row = timing.ratio(
                samples, cpu_samples, (numerator, phase), (denominator, phase)
            )
            if row is None:
                continue
        row.update(
            name=f"{numerator} / {denominator} ({phase})",
            target=target,
            met=(row["value"] <= target) if is_target else None,
        )
        rows.append(row)
    return rows


def print_report(info, settings, samples, cpu_samples, extras, memory, ratios, configs):
    print(
        f"\nBackend {info['backend']} ({info['dtype_policy']}), "
        f"{info['cpu_count']} CPU cores ({info['cpu']}), "
        + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    )
    print(
        f"BERT: {settings['num_layers']} layers, hidden {settings['hidden_dim']}, "
        f"{settings['num_heads']} heads, batch {settings['batch_size']}, "
        f"sequence {settings['sequence_length']}, active rank {settings['rank']}; "
        f"{settings['rounds']} rounds. Times in ms: wall-clock median / minimum "
        "over rounds, and median CPU time of the process.\n"
    )
    header = (
        f"{'configuration':<21}{'train wall':>16}{'cpu':>7}{'infer wall':>15}"
        f"{'cpu':>7}{'peak MiB':>10}{'XLA MiB':>9}{'trainable':>12}"
    )
    print(header)
    print("-" * len(header))
    for name in configs:
        cells = []
        for phase in ("train", "infer"):
            s, c = samples.get((name, phase)), cpu_samples.get((name, phase))
            if s:
                times = f"{1e3 * statistics.median(s):.0f} / {1e3 * min(s):.0f}"
                cells += [f"{times:>{16 if phase == 'train' else 15}}", f"{1e3 * statistics.median(c):7.0f}"]
            else:
                cells += [f"{'-':>{16 if phase == 'train' else 15}}", f"{'-':>7}"]
        probe = memory.get(name, {})
        cells.append(f"{probe['peak_mb']:10.0f}" if probe.get("peak_mb") else f"{'-':>10}")
        xla = probe.get("xla", {}).get("peak_mb")
        cells.append(f"{xla:9.0f}" if xla else f"{'-':>9}")
        cells.append(f"{extras[name]['trainable_parameters']:12,d}")
        print(f"{name:<21}" + "".join(cells))
    print(
        "\nRatios: median over rounds of the per-round ratio (wall-clock), the "
        "same for CPU time,\nits spread over rounds, and the ratios of the medians and "
        "of the minimums (wall-clock). Memory: XLA buffers on jax, TensorFlow's allocator peak on "
        "tensorflow, CPU tensors (profiler) on torch."
    )
    print(
        f"{'ratio':<42}{'median':>8}{'cpu':>8}{'spread':>14}{'of med':>8}"
        f"{'of min':>8}{'target':>8}  met"
    )
    nan = float("nan")
    for row in ratios:
        target = f"{row['target']:8.2f}" if row["target"] else f"{'':8}"
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        spread = f"{row.get('min', nan):.3f}-{row.get('max', nan):.3f}"
        print(
            f"{row['name']:<42}{row['value']:8.3f}{row.get('cpu_value', nan):8.3f}"
            f"{spread:>14}{row.get('ratio_of_medians', nan):8.3f}"
            f"{row.get('ratio_of_minimums', nan):8.3f}{target}  {met}"
        )


def main(argv=None):
    args, settings = parse_args(argv)
    if args.mixed_precision:
        keras.config.set_dtype_policy("mixed_bfloat16")
    configs = configurations(settings)
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - set(configs))
        if unknown:
            raise SystemExit(f"Unknown configurations {unknown}; known: {list(configs)}")
        configs = {name: configs[name] for name in names}
    if args.memory_probe:
        peak_memory.print_result(memory_probe(args.memory_probe, settings, configs))
        return
    info = backend_info()
    if args.backend_info:
        print(json.dumps(info, indent=2))
        return

    def log(message):
        print(message, file=sys.stderr, flush=True)

    start = time.perf_counter()
    probes = []
    if not args.no_memory:
        probes = [
            name
            for name in (QUICK_MEMORY_PROBES if args.quick else MEMORY_PROBES)
            if name in configs
        ]
    # A smoke test does not need quiet probes: run them alongside the timing.
    running = {name: start_memory_probe(args, name) for name in probes} if args.quick else {}
    log(f"Timing {len(configs)} configurations on {info['backend']} ...")
    samples, cpu_samples, extras = time_configurations(settings, configs, log)
    if probes:
        log("Measuring peak training memory (one subprocess per configuration) ...")
    memory = {}
    for name in probes:
        # Full runs probe one configuration at a time, after the timing, so
        # that nothing competes with the probe or with the timed steps.
        process = running.get(name) or start_memory_probe(args, name)
        memory[name] = peak_memory.finish_probe(name, process, log)
    ratios = collect_ratios(samples, cpu_samples, memory)
    print_report(info, settings, samples, cpu_samples, extras, memory, ratios, configs)
    results = {
        "info": info,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()},
        "configurations": {
            name: {
                "kind": spec.kind,
                "values_per_type": spec.values,
                "feature_types": spec.types if spec.kind == "flix" else None,
                "optimizer": spec.optimizer,
                "compute_path": spec.compute_path,
                "head_around_backbone": spec.head,
                **extras[name],
                **{
                    phase: timing.summarize(samples[(name, phase)], cpu_samples[(name, phase)])
                    for phase in spec.phases
                },
                "memory": memory.get(name),
            }
            for name, spec in configs.items()
        },
        "ratios": ratios,
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    log(f"Done in {results['wall_time_s']} s.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
