"""keras-flix with TensorFlow Datasets: a local builder, tagged and mixed.

Writes two tasks of the bundled CLDR multitask data, in five languages plus
one the model never sees (Ukrainian), to local JSON-lines files standing in
for your own data. A `tfds.core.GeneratorBasedBuilder` turns them into a
TFDS dataset without downloading anything: it reads the files from
`manual_dir`. Each task's split is tagged with its task (a constant) and each
example's language (the dataset's own `language` field), the tasks are mixed
with temperature sampling, and a FLix-retrofitted KerasHub BERT classifier
(tiny, random weights) is trained on the mixture. Last, a language x task grid
of test accuracy comes from `by_cell`, including held-out combinations and the
unseen language (its feature is absent: the schema does not know it).

Run with any backend:  KERAS_BACKEND=jax python examples/tfds_pipeline.py
"""

import collections
import json
import pathlib
import tempfile
import warnings

import keras
import keras_hub
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_flix as kf
from keras_flix import data as kd
from keras_flix.datasets import cldr_multitask

LANGUAGES = ("de", "en", "es", "fr", "ru")  # In the schema.
UNSEEN_LANGUAGE = "uk"  # In the test files only.
TASKS = ("emoji_group", "unit_quantity")
NUM_CLASSES = max(len(cldr_multitask.LABELS[task]) for task in TASKS)
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TEST_PER_CELL = 64


class CldrFiles(tfds.core.GeneratorBasedBuilder):
    """Short texts labelled per task, read from `{split}-{task}.jsonl` files.

    Splits are named `{split}_{task}`; labels are indices into the task's
    label names (`cldr_multitask.LABELS`).
    """

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put the {split}-{task}.jsonl files in manual_dir."

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description="CLDR multitask examples from local files.",
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": np.int64,
                    "language": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        files = sorted(pathlib.Path(dl_manager.manual_dir).glob("*.jsonl"))
        return {
            path.stem.replace("-", "_"): self._generate_examples(path)
            for path in files
        }

    def _generate_examples(self, path):
        task = path.stem.split("-", 1)[1]
        labels = cldr_multitask.LABELS[task]
        with open(path, encoding="utf-8") as lines:
            for i, line in enumerate(lines):
                example = json.loads(line)
                yield i, {
                    "text": example["text"],
                    "label": labels.index(example["label"]),
                    "language": example["language"],
                }


def write_files(directory):
    """Writes the local source files: one per split and task.

    The test files keep 64 examples per language and task, so that every
    cell evaluates as one batch.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        for task in TASKS:
            examples = cldr_multitask.load(
                split, languages=LANGUAGES + (UNSEEN_LANGUAGE,), tasks=task
            )
            if split == "test":
                examples = [
                    e
                    for language in LANGUAGES + (UNSEEN_LANGUAGE,)
                    for e in [e for e in examples if e["language"] == language][
                        :TEST_PER_CELL
                    ]
                ]
            with open(directory / f"{split}-{task}.jsonl", "w", encoding="utf-8") as f:
                for e in examples:
                    row = {k: e[k] for k in ("text", "label", "language")}
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")


def tagged_split(builder, schema, split, task):
    """A task's split as ({"inputs": text, "feature_ids": ids}, label)."""
    dataset = builder.as_dataset(split=f"{split}_{task}")
    dataset = kd.tag(dataset, schema, task=task, from_keys={"language": "language"})
    return dataset.map(
        lambda e: ({"inputs": e["text"], "feature_ids": e["feature_ids"]}, e["label"]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def word_piece_vocabulary(texts):
    """Words seen twice, and every character alone or as a continuation.

    A quick stand-in for `keras_hub.tokenizers.compute_word_piece_vocabulary`:
    every word can be tokenized, frequent ones as one token.
    """
    words = collections.Counter()
    for text in texts.as_numpy_iterator():
        words.update(text.decode("utf-8").split())
    characters = sorted({c for word in words for c in word})
    frequent = sorted(word for word, n in words.items() if n >= 2 and len(word) > 1)
    return SPECIAL_TOKENS + characters + [f"##{c}" for c in characters] + frequent


def make_classifier(train_texts):
    vocabulary = word_piece_vocabulary(train_texts)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=16
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=64,
        max_sequence_length=16,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=NUM_CLASSES, preprocessor=preprocessor
    )


def main(work_dir=None, steps_per_epoch=50, epochs=4, batch_size=32, verbose=2):
    """Runs the pipeline end to end; returns the accuracy grid and proportions."""
    keras.utils.set_random_seed(0)
    tfds.disable_progress_bar()
    work_dir = pathlib.Path(work_dir or tempfile.mkdtemp())
    write_files(work_dir / "files")
    builder = CldrFiles(data_dir=str(work_dir / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(work_dir / "files"), try_download_gcs=False
        )
    )

    # Unknown languages (here "uk") are absent: only the task adapter acts.
    schema = kf.FeatureSchema(
        {"language": list(LANGUAGES), "task": list(TASKS)}, unknown="absent"
    )
    train = [tagged_split(builder, schema, "train", task) for task in TASKS]
    train = [dataset.shuffle(2048, seed=i) for i, dataset in enumerate(train)]
    target = kd.mixture_probabilities(train, temperature=2.0)
    mixed = kd.mix(train, temperature=2.0, seed=0)
    realised = kd.count_cells(mixed, schema, "task", max_elements=2000, normalize=True)
    print("task mixture (temperature 2):")
    for task, p in zip(TASKS, target):
        print(f"  {task:<14} target {p:.3f}  realised {realised.get(task, 0.0):.3f}")

    train_texts = builder.as_dataset(split="+".join(f"train_{t}" for t in TASKS))
    train_texts = train_texts.map(lambda e: e["text"])
    model = kf.retrofit(
        make_classifier(train_texts),
        schema,
        rank=4,
        target_layers=["query", "value", "pooled_dense"],
        train_also=["logits", "token_embedding"],
        seed=0,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(5e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        mixed.batch(batch_size),
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        shuffle=False,  # A tf.data pipeline shuffles itself (see above).
        verbose=verbose,
    )

    test = tagged_split(builder, schema, "test", TASKS[0])
    for task in TASKS[1:]:
        test = test.concatenate(tagged_split(builder, schema, "test", task))
    cells = [(lang, task) for lang in LANGUAGES for task in TASKS] + [
        (kd.ABSENT_VALUE, task) for task in TASKS
    ]
    grid = {}
    print("\ntest accuracy per cell")
    for cell, dataset in kd.by_cell(test, schema, ("language", "task"), cells).items():
        with warnings.catch_warnings():
            # Keras warns when a dataset of unknown size (a filter) ends.
            warnings.filterwarnings("ignore", "Your input ran out of data")
            metrics = model.evaluate(
                dataset.batch(TEST_PER_CELL), verbose=0, return_dict=True
            )
        language, task = cell
        grid[cell] = metrics["accuracy"]
        kind = _kind(UNSEEN_LANGUAGE if language == kd.ABSENT_VALUE else language, task)
        print(f"  {language:<8} x {task:<14} {metrics['accuracy']:5.2f}  ({kind})")
    return {"accuracy": grid, "target": target, "realised": realised}


def _kind(language, task):
    if language == UNSEEN_LANGUAGE:
        return "unseen language"
    if (language, task) in cldr_multitask.HELDOUT_CELLS:
        return "held-out combination"
    return "supervised"


if __name__ == "__main__":
    main()
