"""TensorFlow Datasets through keras_flix.data: a local builder, tag, mix, fit."""

import importlib.util
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers import SCHEMA
from helpers import tiny_classifier

import keras_flix as kf
from keras_flix import data as kd

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tfds_pipeline.py"
WORDS = ["the", "a", "cat", "dog", "sat", "ran", "big", "small"]


class FlixToyTexts(tfds.core.GeneratorBasedBuilder):
    """Texts with a language field, one split per `<task>.jsonl` file."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Put <task>.jsonl files in manual_dir."

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "text": tfds.features.Text(),
                    "label": np.int64,
                    "language": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {
            path.stem: self._generate_examples(path)
            for path in sorted(pathlib.Path(dl_manager.manual_dir).glob("*.jsonl"))
        }

    def _generate_examples(self, path):
        for i, line in enumerate(path.read_text("utf-8").splitlines()):
            yield i, json.loads(line)


def write_task(directory, task, languages, seed):
    rng = np.random.default_rng(seed)
    rows = [
        {
            "text": " ".join(rng.choice(WORDS, 3)),
            "label": 2 * SCHEMA.values("language").index(language)
            + SCHEMA.values("task").index(task),
            "language": language,
        }
        for language in languages
    ]
    (directory / f"{task}.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in rows), "utf-8"
    )
    return rows


def prepared_builder(tmp_path):
    tfds.disable_progress_bar()
    files = tmp_path / "files"
    files.mkdir()
    rows = {
        "qa": write_task(files, "qa", ["en"] * 12 + ["sw"] * 4, seed=0),
        "ner": write_task(files, "ner", ["de"] * 20 + ["en"] * 20 + ["sw"] * 8, seed=1),
    }
    builder = FlixToyTexts(data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(files), try_download_gcs=False
        )
    )
    return builder, rows


def tagged_task(builder, task):
    dataset = kd.tag(
        builder.as_dataset(split=task), SCHEMA, task=task, from_keys={"language": "language"}
    )
    return dataset.map(
        lambda e: (
            {"inputs": e["text"], "feature_ids": e["feature_ids"]},
            tf.cast(e["label"], "int32"),
        )
    )


@pytest.mark.slow
def test_local_tfds_builder_through_tag_mix_and_fit(tmp_path):
    builder, rows = prepared_builder(tmp_path)
    datasets = {task: tagged_task(builder, task) for task in ("qa", "ner")}
    for task, dataset in datasets.items():
        assert dataset.cardinality() == len(rows[task])
        # TFDS may reorder examples: compare the multisets of (text, ids, label).
        got = sorted(
            (x["inputs"].decode(), tuple(x["feature_ids"].tolist()), int(y))
            for x, y in dataset.as_numpy_iterator()
        )
        expected = sorted(
            (r["text"], tuple(SCHEMA.encode({"language": r["language"], "task": task}).tolist()), r["label"])
            for r in rows[task]
        )
        assert got == expected

    mixed = kd.mix(list(datasets.values()), temperature=2.0, seed=0)
    target = kd.mixture_probabilities(list(datasets.values()), temperature=2.0)
    np.testing.assert_allclose(target, np.sqrt([16, 48]) / np.sqrt([16, 48]).sum())
    realised = kd.count_cells(mixed, SCHEMA, "task", max_elements=3000, normalize=True)
    np.testing.assert_allclose([realised["qa"], realised["ner"]], target, atol=0.03)

    model = kf.retrofit(tiny_classifier(num_classes=6), SCHEMA, rank=2, train_also=["logits"])
    model.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    history = model.fit(mixed.batch(16), steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    test = datasets["qa"].concatenate(datasets["ner"])
    cells = kd.by_cell(test, SCHEMA, ("language", "task"), cells=[("en", "qa"), ("sw", "ner")])
    sizes = {cell: sum(1 for _ in ds) for cell, ds in cells.items()}
    assert sizes == {("en", "qa"): 12, ("sw", "ner"): 8}


@pytest.mark.slow
def test_tfds_example_runs_end_to_end(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("tfds_pipeline_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    # Training is tested above, and the example's score is its own business:
    # a smaller grid, without fit, runs the same code end to end.
    monkeypatch.setattr(keras.Model, "fit", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(example, "LANGUAGES", ("es",))
    result = example.main(tmp_path, verbose=0)
    cells = [(lang, task) for lang in ("es",) for task in example.TASKS]
    cells += [("<absent>", task) for task in example.TASKS]
    assert list(result["accuracy"]) == cells
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"].values())
    np.testing.assert_allclose(
        [result["realised"][t] for t in example.TASKS], result["target"], atol=0.04
    )
    assert tf.io.gfile.exists(str(tmp_path / "tfds" / "cldr_files" / "1.0.0"))
