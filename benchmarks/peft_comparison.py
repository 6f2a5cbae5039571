"""keras-flix against Hugging Face PEFT at mixed-adapter inference, on torch.

What PEFT offers for a batch whose examples need different adapters is
`model(..., adapter_names=[...])`: one LoRA adapter per example, applied by
a loop over the adapters present. keras-flix's counterpart is a FLix model
with one feature type of N values, every example its own value. This
script times both, in one process, interleaved (see `timing.py`), each over
its own frozen base, with the same sizes:

* `kerashub_base`: a random-weight KerasHub `BertBackbone` (hidden 384, 4
  layers, 6 heads, intermediate 1536, vocabulary 30522), called on a batch
  of 32 x 64 tokens;
* `flix_n{N}`: the same backbone retrofitted with rank 8 on query and value
  for one feature type of N values (`keras_flix.retrofit`), example `i`
  using value `i % N`;
* `hf_base`: a random-weight transformers `BertModel` of the same sizes;
* `peft_n{N}`: the same model with N PEFT LoRA adapters of rank 8 on query
  and value (`get_peft_model` + `add_adapter`), example `i` using adapter
  `i % N` through `adapter_names=`;

for N in 2, 8 and 32. Every call is a forward pass in inference mode under
`torch.no_grad()` (the Keras models called directly, as the transformers
ones are, so neither pays for a `predict` loop). A method's overhead is its
time over its own base's, measured in the same round; the goal is that
keras-flix's overhead is at most PEFT's at every N.

Run:  python benchmarks/peft_comparison.py [--json out.json] [--quick]
          [--rounds 8] [--values 2 8 32]
(KERAS_BACKEND is set to torch; another backend is refused.)
"""

import argparse
import json
import os
import sys
import time

if os.environ.setdefault("KERAS_BACKEND", "torch") != "torch":
    sys.exit(
        "benchmarks/peft_comparison.py compares against PEFT, a torch library: "
        f"run it with KERAS_BACKEND=torch (found {os.environ['KERAS_BACKEND']!r})."
    )

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

import keras_flix as kf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert  # noqa: E402  (benchmarks/bert.py)
import timing  # noqa: E402  (benchmarks/timing.py)

FULL = {
    "vocabulary_size": 30522,
    "num_layers": 4,
    "num_heads": 6,
    "hidden_dim": 384,
    "intermediate_dim": 1536,
    "dropout": 0.0,
    "batch_size": 32,
    "sequence_length": 64,
    "rank": 8,
    "values": [2, 8, 32],
    "rounds": 8,
    "calls": 2,
    "warm_up_calls": 2,
}
QUICK = {
    **FULL,
    "vocabulary_size": 256,
    "num_layers": 1,
    "num_heads": 2,
    "hidden_dim": 32,
    "intermediate_dim": 64,
    "batch_size": 8,
    "sequence_length": 16,
    "rounds": 2,
    "calls": 1,
    "warm_up_calls": 1,
}
TARGET_MODULES = ["query", "value"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="also write the results to this path")
    parser.add_argument("--quick", action="store_true", help="tiny models, 2 rounds")
    parser.add_argument("--rounds", type=int, help="timed rounds")
    parser.add_argument("--values", type=int, nargs="+", help="adapters per model (N)")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    if args.rounds is not None:
        settings["rounds"] = args.rounds
    if args.values is not None:
        if any(n < 1 for n in args.values):
            parser.error(f"--values must be positive; received {args.values}")
        settings["values"] = args.values
    return args, settings


def token_batch(settings):
    """Random token ids (no padding), as NumPy arrays."""
    rng = np.random.default_rng(0)
    shape = (settings["batch_size"], settings["sequence_length"])
    return {
        "token_ids": rng.integers(1, settings["vocabulary_size"], shape).astype("int32"),
        "segment_ids": np.zeros(shape, "int32"),
        "padding_mask": np.ones(shape, "int32"),
    }


def keras_models(settings, tokens):
    """The KerasHub base and one retrofitted copy per N: name -> forward call."""

    inputs = {key: torch.from_numpy(value) for key, value in tokens.items()}
    calls = {"kerashub_base": _inference(bert.random_backbone(settings), inputs)}
    batch = settings["batch_size"]
    for n in settings["values"]:
        schema = kf.FeatureSchema({"adapter": [f"a{i}" for i in range(n)]})
        model = kf.retrofit(
            bert.random_backbone(settings),
            schema,
            rank=settings["rank"],
            target_layers=TARGET_MODULES,
        )
        ids = (np.arange(batch) % n).astype("int32")[:, None]
        calls[f"flix_n{n}"] = _inference(
            model, {**inputs, "feature_ids": torch.from_numpy(ids)}
        )
    return calls


def hugging_face_models(settings, tokens):
    """The transformers base and one PEFT model per N: name -> forward call."""

    def transformers_bert():
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=settings["vocabulary_size"],
            hidden_size=settings["hidden_dim"],
            num_hidden_layers=settings["num_layers"],
            num_attention_heads=settings["num_heads"],
            intermediate_size=settings["intermediate_dim"],
            max_position_embeddings=settings["sequence_length"],
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return transformers.BertModel(config, add_pooling_layer=False).eval()

    inputs = {
        "input_ids": torch.from_numpy(tokens["token_ids"]).long(),
        "token_type_ids": torch.from_numpy(tokens["segment_ids"]).long(),
        "attention_mask": torch.from_numpy(tokens["padding_mask"]).long(),
    }
    calls = {"hf_base": _inference(transformers_bert(), keyword_inputs=inputs)}
    config = peft.LoraConfig(
        r=settings["rank"],
        lora_alpha=settings["rank"],
        lora_dropout=0.0,
        target_modules=TARGET_MODULES,
    )
    batch = settings["batch_size"]
    for n in settings["values"]:
        model = peft.get_peft_model(transformers_bert(), config, adapter_name="a0")
        for i in range(1, n):
            model.add_adapter(f"a{i}", config)
        model.eval()
        names = [f"a{i % n}" for i in range(batch)]
        calls[f"peft_n{n}"] = _inference(
            model, keyword_inputs={**inputs, "adapter_names": names}
        )
    return calls


def _inference(model, inputs=None, keyword_inputs=None):
    """A forward call without gradients: `model(inputs, training=False)` for
    a Keras model, `model(**keyword_inputs)` for a torch module."""

    def call():
        with torch.no_grad():
            if keyword_inputs is None:
                model(inputs, training=False)
            else:
                model(**keyword_inputs)

    return call


def compare(settings, log=print):
    """Warms every model up, times them interleaved; returns the results."""
    tokens = token_batch(settings)
    started = time.perf_counter()
    calls = {**keras_models(settings, tokens), **hugging_face_models(settings, tokens)}
    for name, call in calls.items():
        for _ in range(settings["warm_up_calls"]):
            call()
    log(f"  built and warmed up {len(calls)} models ({time.perf_counter() - started:.1f} s)")
    samples, cpu_samples = timing.interleaved_rounds(
        {name: (call, settings["calls"]) for name, call in calls.items()},
        settings["rounds"],
        log,
    )
    overheads = []
    for n in settings["values"]:
        flix = timing.ratio(samples, cpu_samples, f"flix_n{n}", "kerashub_base")
        peft_ratio = timing.ratio(samples, cpu_samples, f"peft_n{n}", "hf_base")
        # Per round: keras-flix's overhead relative to PEFT's.
        relative = [
            (f / kb) / (p / hb)
            for f, kb, p, hb in zip(
                samples[f"flix_n{n}"], samples["kerashub_base"],
                samples[f"peft_n{n}"], samples["hf_base"],
            )
        ]
        overheads.append({
            "values": n,
            "flix_over_its_base": flix,
            "peft_over_its_base": peft_ratio,
            "flix_relative_to_peft": {
                "value": float(np.median(relative)),
                "min": min(relative),
                "max": max(relative),
            },
            "met": flix["value"] <= peft_ratio["value"],
        })
    return {
        "settings": settings,
        "info": {
            **timing.machine(),
            "versions": {
                "keras": keras.__version__,
                "keras_hub": keras_hub.__version__,
                "keras_flix": getattr(kf, "__version__", None),
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": peft.__version__,
            },
            "torch_threads": torch.get_num_threads(),
        },
        "configurations": {
            name: timing.summarize(samples[name], cpu_samples[name]) for name in calls
        },
        "overheads": overheads,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def print_report(results):
    info, settings = results["info"], results["settings"]
    print(
        f"\ntorch {info['versions']['torch']} ({info['torch_threads']} threads), "
        f"{info['cpu_count']} CPU cores ({info['cpu']}); keras "
        f"{info['versions']['keras']}, keras_hub {info['versions']['keras_hub']}, "
        f"transformers {info['versions']['transformers']}, peft {info['versions']['peft']}"
    )
    print(
        f"BERT: {settings['num_layers']} layers, hidden {settings['hidden_dim']}, "
        f"{settings['num_heads']} heads, batch {settings['batch_size']} x "
        f"{settings['sequence_length']}, rank {settings['rank']} on query and value; "
        f"{settings['rounds']} rounds. Inference, ms: median / minimum over rounds."
    )
    for name, row in results["configurations"].items():
        print(f"  {name:<16}{1e3 * row['median_s']:8.1f} / {1e3 * row['min_s']:.1f}")
    print(
        "\nOverhead over each method's own base: median over rounds of the per-round "
        "ratio (spread);\nlast column: keras-flix's ratio over PEFT's, per round (goal: <= 1)."
    )
    print(f"{'N':>4}{'keras-flix':>24}{'PEFT':>24}{'flix / PEFT':>24}  met")
    for row in results["overheads"]:
        cells = "".join(
            f"{r['value']:>10.3f} ({r['min']:.3f}-{r['max']:.3f})"
            for r in (
                row["flix_over_its_base"],
                row["peft_over_its_base"],
                row["flix_relative_to_peft"],
            )
        )
        print(f"{row['values']:>4}{cells}  {'yes' if row['met'] else 'NO'}")
    print(f"Done in {results['wall_time_s']} s.")


def main(argv=None):
    args, settings = parse_args(argv)
    print(f"Timing keras-flix and PEFT at N = {settings['values']} ...", flush=True)
    results = compare(settings, log=lambda line: print(line, flush=True))
    print_report(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
