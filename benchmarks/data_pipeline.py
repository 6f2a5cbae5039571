"""Throughput of a feature-tagged tf.data pipeline, with and without tagging.

The pipeline: ten per-language datasets of the bundled CLDR multitask data,
each example a dict with its text, language and task; temperature `mix`,
`batch`, a KerasHub BERT preprocessor (WordPiece tokenization, packing,
padding) and `prefetch`. Tagging reads the language and task from the
string fields (`keras_flix.data.tag`), either per batch (after `mix` and
`batch`, the recommended place) or per example (each dataset before `mix`).
All pipelines run in one process, in interleaved repetitions, each reading
the same batches from a fresh iterator; the script prints the median time of
each and its ratio to the pipeline without tagging.

Run:  python benchmarks/data_pipeline.py [--batches 300] [--repeats 7]
"""

import argparse
import statistics
import time

import keras_hub
import numpy as np
import tensorflow as tf

import keras_flix as kf
from keras_flix.data import mix
from keras_flix.data import tag
from keras_flix.datasets import cldr_multitask

LANGUAGES = ("ar", "de", "en", "es", "fr", "hi", "ja", "ru", "tr", "zh")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FROM_KEYS = {"language": "language", "task": "task"}
TAGGING = {
    "none": "without tag",
    "batch": "tag per batch (mix, batch, tag)",
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
    def preprocess(x, y):
        inputs = preprocessor(x["text"])
        if "feature_ids" in x:
            inputs["feature_ids"] = x["feature_ids"]
        return inputs, y

    if tagging == "example":
        datasets = [tag(d, schema, from_keys=FROM_KEYS) for d in datasets]
    batches = mix(datasets, temperature=2.0, seed=0).batch(batch_size)
    if tagging == "batch":
        batches = tag(batches, schema, from_keys=FROM_KEYS)
    return batches.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def seconds_to_read(dataset, batches):
    start = time.perf_counter()
    for _ in dataset.take(batches):
        pass
    return time.perf_counter() - start


def main(batches=300, repeats=7, batch_size=32):
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
    for _ in range(repeats):
        for tagging, dataset in pipelines.items():
            times[tagging].append(seconds_to_read(dataset, batches))
    medians = {tagging: statistics.median(t) for tagging, t in times.items()}
    examples = batches * batch_size
    print(f"{batches} batches of {batch_size}, {repeats} interleaved repetitions, "
          "median time:")
    for tagging, seconds in medians.items():
        ratio = seconds / medians["none"]
        print(f"  {TAGGING[tagging]:<36} {seconds:6.3f} s  "
              f"{examples / seconds:8,.0f} examples/s  ratio {ratio:.3f}")
    return {t: s / medians["none"] for t, s in medians.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    main(args.batches, args.repeats, args.batch_size)
