"""The study's data: TFDS splits, the training mixture, model inputs.

TFDS (the bundled builder, offline) -> one dataset per task, mixed by
temperature with `keras_flix.data.mix` -> batch -> one `map` that tags
feature ids (`keras_flix.data.Tagger`) and runs the KerasHub preprocessor.
"""

import keras_hub
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

import keras_flix as kf
from keras_flix.datasets import cldr_multitask
from keras_flix.datasets.cldr_multitask import tfds_builder  # noqa: F401 (registers)

from multilingual_study.methods import SHARED

EVAL_BATCH_SIZE = 128


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


def scripts():
    """Language code -> ISO 15924 script (from the data set's metadata)."""
    return {lang["code"]: lang["script"] for lang in cldr_multitask.info()["languages"]}


def training_size(languages):
    return len(cldr_multitask.load("train", languages=languages))


class Pipeline:
    """Batches of raw examples -> model inputs (and union-label ids).

    Build it after `keras.utils.set_random_seed`: that call resets
    TensorFlow's global seed, which destroys the TF resources of a
    SentencePiece tokenizer built before it (the next `map` fails with
    `NotFoundError ... SentencepieceOp`).

    Args:
        preset: the backbone's KerasHub preset or folder.
        sequence_length: tokens per example, padding included.
        text_prefix: put before every text (e5 expects `"query: "`).
        schema: the method's `FeatureSchema`, or None (no feature ids).
        label_names: the union label space.
    """

    def __init__(self, preset, sequence_length, text_prefix, schema, label_names):
        self.preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset, sequence_length=sequence_length
        )
        self.text_prefix = text_prefix
        self.tagger = None
        if schema is not None:
            self.tagger = kf.data.Tagger(
                schema, from_keys={t: t for t in schema.feature_types}
            )
        self.labels = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                label_names, np.arange(len(label_names), dtype=np.int32)
            ),
            default_value=-1,
        )

    def text(self, batch):
        """The model's text: the task is named, so plain LoRA can tell tasks apart."""
        return tf.strings.join([self.text_prefix, batch["task"], ": ", batch["text"]])

    def inputs(self, batch):
        x = self.preprocessor(self.text(batch))
        if self.tagger is not None:
            features = {
                "language": batch["language"],
                "task": batch["task"],
                SHARED: tf.fill(tf.shape(batch["task"]), "all"),
            }
            wanted = {t: features[t] for t in self.tagger.schema.feature_types}
            x = {**x, **self.tagger(wanted)}
        return x

    def apply(self, dataset, with_labels):
        def preprocess(batch):
            x = self.inputs(batch)
            return (x, self.labels.lookup(batch["label"])) if with_labels else x

        return dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE
        )

    def truncated(self, texts):
        """How many of `texts` (raw batches' fields) exceed the sequence length."""
        tokens = self.preprocessor.tokenizer(self.text(texts))
        # A ragged tensor on tensorflow, lists elsewhere; <s> and </s> come on
        # top of the text's tokens.
        lengths = np.array([len(ids) for ids in tokens]) + 2
        return int(np.sum(lengths > self.sequence_length))

    @property
    def sequence_length(self):
        return self.preprocessor.sequence_length


def training_data(languages, batch_size, temperature, seed, data_dir):
    """The training stream of one seed: the same for every method.

    One dataset per task (each shuffled and repeated), mixed with
    temperature sampling so that small tasks are not drowned by emoji.
    """
    train = tfds.load("cldr_multitask", split="train", data_dir=data_dir)
    wanted = tf.constant(list(languages))
    per_task, sizes = [], []
    for task in cldr_multitask.TASKS:
        size = len(cldr_multitask.load("train", languages=languages, tasks=task))
        if not size:
            continue
        dataset = train.filter(
            lambda e, task=task: tf.logical_and(
                tf.equal(e["task"], task),
                tf.reduce_any(tf.equal(e["language"], wanted)),
            )
        )
        per_task.append(dataset.cache().shuffle(size, seed=seed).repeat())
        sizes.append(size)
    mixed = kf.data.mix(per_task, temperature=temperature, sizes=sizes, seed=seed)
    return mixed.batch(batch_size, drop_remainder=True)


def evaluation_examples(split, languages, per_cell, data_dir):
    """The evaluated examples: at most `per_cell` per (language, task) cell.

    Read from TFDS like the training data; the per-cell subsample is fixed
    (seeded), the same for every method and seed.
    """
    dataset = tfds.load("cldr_multitask", split=split, data_dir=data_dir)
    cells = {}
    for e in tfds.as_numpy(dataset):
        e = {k: v.decode("utf-8") for k, v in e.items() if k != "label_id"}
        if e["language"] in languages:
            cells.setdefault((e["language"], e["task"]), []).append(e)
    rng = np.random.default_rng(0)
    examples = []
    for cell in sorted(cells):
        cell_examples = sorted(cells[cell], key=lambda e: e["text"])
        if per_cell and len(cell_examples) > per_cell:
            keep = rng.choice(len(cell_examples), per_cell, replace=False)
            cell_examples = [cell_examples[i] for i in sorted(keep)]
        examples += cell_examples
    return examples


def columns(examples):
    """Examples as a dict of string arrays (the raw batch format)."""
    return {
        key: np.array([e[key] for e in examples])
        for key in ("text", "language", "task")
    }


def predict_correct(model, pipeline, examples, label_names, task_masks):
    """Per-example correctness, the argmax restricted to the task's labels.

    The examples are padded to whole batches so that the compiled predict
    function sees one shape.
    """
    padded = examples + examples[:1] * (-len(examples) % EVAL_BATCH_SIZE)
    data = tf.data.Dataset.from_tensor_slices(columns(padded)).batch(EVAL_BATCH_SIZE)
    logits = model.predict(pipeline.apply(data, with_labels=False), verbose=0)
    logits = logits[: len(examples)]
    masks = np.stack([task_masks[e["task"]] for e in examples])
    predicted = np.where(masks, logits, -np.inf).argmax(axis=-1)
    truth = np.array([label_names.index(e["label"]) for e in examples])
    return predicted == truth
