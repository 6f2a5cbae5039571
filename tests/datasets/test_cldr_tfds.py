"""The TFDS builder serves exactly the examples of `cldr_multitask.load`."""

import collections
import concurrent.futures
import threading

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from keras_flix.datasets import cldr_multitask
from keras_flix.datasets.cldr_multitask import tfds_builder

FIELDS = ("text", "language", "task", "label", "label_id", "kind")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tfds")
    tfds.builder("cldr_multitask", data_dir=directory).download_and_prepare()
    return directory


def _rows(dataset):
    """Every example of a TFDS split as a tuple of FIELDS, in file order."""
    rows = []
    for batch in tfds.as_numpy(dataset.batch(4096)):
        columns = [
            [v.decode("utf-8") if isinstance(v, bytes) else int(v) for v in batch[f]]
            for f in FIELDS
        ]
        rows.extend(zip(*columns))
    return rows


def _expected_rows(split):
    return [
        (
            e["text"],
            e["language"],
            e["task"],
            e["label"],
            cldr_multitask.LABELS[e["task"]].index(e["label"]),
            e["kind"],
        )
        for e in cldr_multitask.load(split)
    ]


def test_registered_by_import():
    assert "cldr_multitask" in tfds.list_builders(with_community_datasets=False)
    assert tfds_builder.CldrMultitask.name == "cldr_multitask"
    assert str(tfds_builder.CldrMultitask.VERSION) == cldr_multitask.DATASET_VERSION


@pytest.mark.parametrize("split", cldr_multitask.SPLITS)
def test_split_matches_loader(data_dir, split):
    rows = _rows(tfds.load("cldr_multitask", split=split, data_dir=data_dir))
    expected = _expected_rows(split)
    kind_counts = collections.Counter(row[-1] for row in rows)
    assert kind_counts == collections.Counter(row[-1] for row in expected)
    # TFDS stores examples in an order of its own: compare as multisets.
    assert collections.Counter(rows) == collections.Counter(expected)


def test_test_split_counts_by_kind(data_dir):
    builder = tfds.builder("cldr_multitask", data_dir=data_dir)
    assert builder.info.splits["test"].num_examples == 19_850
    rows = _rows(builder.as_dataset(split="test"))
    assert collections.Counter(row[-1] for row in rows) == {
        "supervised": 5_889,
        "heldout_combination": 9_436,
        "unseen_language": 4_525,
    }


def test_label_ids_index_task_labels(data_dir):
    builder = tfds.builder("cldr_multitask", data_dir=data_dir)
    for example in tfds.as_numpy(builder.as_dataset(split="dev").take(200)):
        labels = cldr_multitask.LABELS[example["task"].decode()]
        assert labels[example["label_id"]] == example["label"].decode()


def test_tampered_data_is_refused(tmp_path, monkeypatch):
    def corrupt():
        raise cldr_multitask.DataIntegrityError("data file x is corrupt")

    monkeypatch.setattr(cldr_multitask, "verify", corrupt)
    with pytest.raises(cldr_multitask.DataIntegrityError, match="corrupt"):
        tfds.builder("cldr_multitask", data_dir=tmp_path).download_and_prepare()


def test_prepare_is_safe_in_parallel(tmp_path, monkeypatch):
    # Both preparations get past TFDS's "already prepared?" check before
    # either finishes, as two processes started together on a fresh machine
    # do; plain `download_and_prepare` then fails in the one that renames last.
    both_generating = threading.Barrier(2, timeout=60)
    verify = cldr_multitask.verify

    def verify_then_wait():
        verify()
        both_generating.wait()

    monkeypatch.setattr(cldr_multitask, "verify", verify_then_wait)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        builders = list(pool.map(lambda _: tfds_builder.prepare(tmp_path), range(2)))

    for builder in builders:
        assert builder.is_prepared()
        assert builder.info.splits["test"].num_examples == 19_850
    # The copy that lost the race is removed, not left half-written.
    leftovers = [p.name for p in (tmp_path / "cldr_multitask").iterdir()]
    assert leftovers == [cldr_multitask.DATASET_VERSION]
