"""Throughput of a feature-tagged tf.data pipeline, with and without tagging.

The pipeline: ten per-language datasets of the bundled CLDR multitask data,
each example a dict with its text, language and task; temperature `mix`,
`batch`, a KerasHub BERT preprocessor (WordPiece tokenization, packing,
padding) and `prefetch`. Tagging reads the language and task from the
string fields: with a `keras_flix.data.Tagger` called inside the
preprocessing `map` (no stage of its own), with `keras_flix.data.tag` per
batch (after `mix` and `batch`: a `map` stage of its own) or with `tag` per
example (each dataset before `mix`). A control pipeline adds the same
parallel `map` stage as per-batch `tag`, minus the lookups, to tell the cost
of the lookups from that of the stage.
All pipelines run in one process, in interleaved rounds (one run of each per
round, in a rotating order), each run reading the same batches from a fresh
iterator; the script prints each pipeline's median wall-clock time and CPU
time (of all the process's threads: on a busy machine the CPU time varies
less than the wall-clock time), and the median over rounds of its time
divided by that of the pipeline without tagging in the same round.

Run:  python benchmarks/data_pipeline.py [--batches 300] [--repeats 21] [--batch-size 32]
"""

import argparse
import statistics
import time

import keras_hub
import numpy as np
import tensorflow as tf

import keras_flix as kf
from keras_flix.data import Tagger
from keras_flix.data import mix
from keras_flix.data import tag
from keras_flix.datasets import cldr_multitask

LANGUAGES = ("ar", "de", "en", "es", "fr", "hi", "ja", "ru", "tr", "zh")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FROM_KEYS = {"language": "language", "task": "task"}
TAGGING = {
    "none": "without tagging",
    "fused": "Tagger in the preprocessing map",
    "batch": "tag per batch (mix, batch, tag)",
    "stage": "control: tag's stage, no lookups",
    "example": "tag per example (tag, mix, batch)",
}


def language_datasets():
    """One dataset per language: ({"text", "language", "task"}, label)."""
    examples = cldr_multitask.load("train", languages=LANGUAGES)
    label_ids = {
        task: {label: i for i, label in enumerate(labels)}
        for task, labels in cldr_multitask.LABELS.items()
    }
    datasets = []
    for language in LANGUAGES:
        rows = [e for e in examples if e["language"] == language]
        x = {k: np.array([e[k] for e in rows]) for k in ("text", "language", "task")}
        y = np.array([label_ids[e["task"]][e["label"]] for e in rows], "int32")
        datasets.append(tf.data.Dataset.from_tensor_slices((x, y)))
    return datasets, [e["text"] for e in examples]


def make_preprocessor(texts):
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        tf.data.Dataset.from_tensor_slices(texts).batch(1024),
        vocabulary_size=4000,
        reserved_tokens=SPECIAL_TOKENS,
    )
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    return keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=32
    )


def pipeline(datasets, schema, preprocessor, tagging, batch_size):
    tagger = Tagger(schema, from_keys=FROM_KEYS)

    def preprocess(x, y):
        if tagging == "fused":
            x, y = tagger(x, y)
        inputs = preprocessor(x["text"])
        if "feature_ids" in x:
            inputs["feature_ids"] = x["feature_ids"]
        return inputs, y

    if tagging == "example":
        datasets = [tag(d, schema, from_keys=FROM_KEYS) for d in datasets]
    batches = mix(datasets, temperature=2.0, seed=0).batch(batch_size)
    if tagging == "batch":
        batches = tag(batches, schema, from_keys=FROM_KEYS)
    elif tagging == "stage":
        # tag's pipeline stage without its work: what the stage costs alone.
        batches = batches.map(
            lambda x, y: ({"text": x["text"]}, y),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    return batches.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def seconds_to_read(dataset, batches):
    """Wall-clock and CPU seconds (all of the process's threads) of a read."""
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in dataset.take(batches):
        pass
    return time.perf_counter() - start, time.process_time() - start_cpu


def main(batches=300, repeats=21, batch_size=32):
    datasets, texts = language_datasets()
    schema = kf.FeatureSchema(
        {"language": list(LANGUAGES), "task": list(cldr_multitask.TASKS)}
    )
    preprocessor = make_preprocessor(texts)
    pipelines = {
        tagging: pipeline(datasets, schema, preprocessor, tagging, batch_size)
        for tagging in TAGGING
    }
    for dataset in pipelines.values():  # Warm-up: tracing, table set-up.
        seconds_to_read(dataset, 20)
    times = {tagging: [] for tagging in TAGGING}
    order = list(TAGGING)
    for round_ in range(repeats):
        # A rotating order, so that no pipeline always runs after another.
        for tagging in order[round_ % len(order):] + order[: round_ % len(order)]:
            times[tagging].append(seconds_to_read(pipelines[tagging], batches))
    examples = batches * batch_size
    print(f"{batches} batches of {batch_size}, {repeats} interleaved rounds. "
          "Wall-clock and CPU seconds per run, as median and minimum (the least "
          "disturbed run);")
    print("ratio: median over rounds of the time over that of the pipeline "
          "without tagging in the same round, and ratio of the minima.")
    ratios = {}
    for tagging in TAGGING:
        line = f"  {TAGGING[tagging]:<34}"
        for clock in (0, 1):
            these = [t[clock] for t in times[tagging]]
            base = [t[clock] for t in times["none"]]
            ratio = statistics.median(t / b for t, b in zip(these, base))
            ratios[tagging, ("wall", "cpu")[clock]] = ratio
            line += (
                f"  {('wall', 'CPU')[clock]} {statistics.median(these):.3f} / "
                f"{min(these):.3f} s, ratio {ratio:.3f} / "
                f"{min(these) / min(base):.3f}"
            )
        print(line)
    print(f"({examples} examples per run; without tagging: "
          f"{examples / statistics.median(t[0] for t in times['none']):,.0f} "
          "examples/s median)")
    return ratios


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    main(args.batches, args.repeats, args.batch_size)
