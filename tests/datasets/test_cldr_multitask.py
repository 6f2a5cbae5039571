"""Tests for the bundled CLDR multilingual x multitask dataset."""

import collections
import importlib.util
import shutil
import sys
import unicodedata
from pathlib import Path

import pytest

DATASET_DIR = (
    Path(__file__).resolve().parents[2] / "keras_flix" / "datasets" / "cldr_multitask"
)


def _import_from_file(name, path):
    """Imports a module from its file path.

    The dataset code is standard library only; importing it by path keeps
    `keras_flix/__init__.py`, which loads Keras and a backend, out of these
    tests.
    """
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    # Registered before execution because dataclasses look the module up.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cldr = _import_from_file("cldr_multitask_under_test", DATASET_DIR / "__init__.py")
generate = _import_from_file(
    "cldr_multitask_generate_under_test", DATASET_DIR / "generate.py"
)


def _key(text):
    return unicodedata.normalize("NFKC", text).casefold()


def _dominant_script(texts):
    """Returns the most common script word (LATIN, CYRILLIC, ...) of letters."""
    scripts = collections.Counter(
        unicodedata.name(char, "UNKNOWN").split()[0]
        for text in texts
        for char in text
        if unicodedata.category(char).startswith("L")
    )
    return scripts.most_common(1)[0][0]


@pytest.fixture(scope="module")
def rows():
    return cldr.load()


def test_checksums_verify():
    cldr.verify()


def test_constants_match_metadata_and_generator():
    info = cldr.info()
    assert info["version"] == cldr.DATASET_VERSION
    assert info["sources"]["cldr_version"] == cldr.CLDR_VERSION
    assert info["sources"]["emoji_version"] == cldr.EMOJI_VERSION
    assert tuple(lang["code"] for lang in info["languages"]) == cldr.LANGUAGES
    assert tuple(info["unseen_languages"]) == cldr.UNSEEN_LANGUAGES
    assert tuple(task["name"] for task in info["tasks"]) == cldr.TASKS
    assert {task["name"]: tuple(task["labels"]) for task in info["tasks"]} == dict(
        cldr.LABELS
    )
    assert tuple(map(tuple, info["heldout_cells"])) == cldr.HELDOUT_CELLS
    assert generate.LANGUAGES == cldr.LANGUAGES
    assert generate.UNSEEN_LANGUAGES == cldr.UNSEEN_LANGUAGES
    assert generate.TASKS == cldr.TASKS
    assert tuple(generate.heldout_cells()) == cldr.HELDOUT_CELLS
    for labels in cldr.LABELS.values():
        assert list(labels) == sorted(labels)


def test_size_languages_scripts_and_tasks(rows):
    assert len(cldr.LANGUAGES) >= 24
    assert len(cldr.TASKS) >= 3
    texts_by_language = collections.defaultdict(list)
    for row in rows:
        texts_by_language[row["language"]].append(row["text"])
    assert set(texts_by_language) == set(cldr.LANGUAGES)
    scripts = {_dominant_script(texts) for texts in texts_by_language.values()}
    assert len(scripts - {"LATIN"}) >= 4, scripts


def test_every_cell_has_test_data(rows):
    cells = {(row["language"], row["task"]) for row in rows if row["split"] == "test"}
    assert len(cells) == len(cldr.LANGUAGES) * len(cldr.TASKS)


def test_row_kinds_follow_the_grid(rows):
    heldout = set(cldr.HELDOUT_CELLS)
    for row in rows:
        if row["language"] in cldr.UNSEEN_LANGUAGES:
            expected = "unseen_language"
        elif (row["language"], row["task"]) in heldout:
            expected = "heldout_combination"
        else:
            expected = "supervised"
        assert row["kind"] == expected, row


def test_unseen_languages_are_test_only():
    assert len(cldr.UNSEEN_LANGUAGES) >= 2
    rows = cldr.load(languages=cldr.UNSEEN_LANGUAGES)
    assert rows
    assert {row["split"] for row in rows} == {"test"}
    assert {row["kind"] for row in rows} == {"unseen_language"}
    scripts = {
        _dominant_script([row["text"] for row in rows if row["language"] == lang])
        for lang in cldr.UNSEEN_LANGUAGES
    }
    assert "LATIN" in scripts and len(scripts) >= 2


def test_heldout_cells_are_test_only_and_large_enough(rows):
    grid_size = len(cldr.LANGUAGES) * len(cldr.TASKS)
    assert len(cldr.HELDOUT_CELLS) / grid_size >= 0.2
    for language, _ in cldr.HELDOUT_CELLS:
        assert language not in cldr.UNSEEN_LANGUAGES
    heldout = set(cldr.HELDOUT_CELLS)
    heldout_rows = [row for row in rows if (row["language"], row["task"]) in heldout]
    assert {row["split"] for row in heldout_rows} == {"test"}
    assert {(row["language"], row["task"]) for row in heldout_rows} == heldout


def test_training_coverage(rows):
    train = [row for row in rows if row["split"] == "train"]
    seen = set(cldr.LANGUAGES) - set(cldr.UNSEEN_LANGUAGES)
    assert {row["language"] for row in train} == seen
    for task in cldr.TASKS:
        trained_languages = {row["language"] for row in train if row["task"] == task}
        assert len(trained_languages) >= len(seen) // 2, task
        assert {row["label"] for row in train if row["task"] == task} == set(
            cldr.LABELS[task]
        )


def test_no_evaluation_text_is_in_train(rows):
    train_keys = {
        (row["task"], _key(row["text"])) for row in rows if row["split"] == "train"
    }
    leaked = [
        row
        for row in rows
        if row["split"] != "train" and (row["task"], _key(row["text"])) in train_keys
    ]
    assert not leaked, leaked[:5]


def test_rows_are_unique_and_labels_valid(rows):
    keys = [(row["task"], row["language"], _key(row["text"])) for row in rows]
    assert len(keys) == len(set(keys))
    for row in rows:
        assert row["label"] in cldr.LABELS[row["task"]], row
        assert row["split"] in cldr.SPLITS and row["kind"] in cldr.KINDS
        assert row["text"] and row["text"] == row["text"].strip()


def test_info_counts_match_rows(rows):
    info = cldr.info()
    assert info["counts"]["total"] == len(rows)
    by_split = collections.Counter(row["split"] for row in rows)
    assert info["counts"]["by_split"] == {s: by_split[s] for s in cldr.SPLITS}
    by_cell = collections.Counter((r["language"], r["task"], r["split"]) for r in rows)
    for cell in info["grid"]:
        for split, count in cell["counts"].items():
            assert by_cell[cell["language"], cell["task"], split] == count


def test_load_filters():
    rows = cldr.load("dev", languages="fr", tasks=["unit_quantity", "emoji_group"])
    assert rows
    assert {row["split"] for row in rows} == {"dev"}
    assert {row["language"] for row in rows} == {"fr"}
    # fr/unit_quantity is held out, so only emoji rows have a dev split.
    assert {row["task"] for row in rows} == {"emoji_group"}
    heldout = cldr.load(kind="heldout_combination", tasks="unit_quantity")
    assert {row["language"] for row in heldout} == {
        lang for lang, task in cldr.HELDOUT_CELLS if task == "unit_quantity"
    }


@pytest.mark.parametrize(
    "kwargs, bad_value, allowed_value",
    [
        ({"split": "training"}, "training", "train"),
        ({"kind": "heldout"}, "heldout", "heldout_combination"),
        ({"languages": ["fr", "xx"]}, "xx", "fr"),
        ({"tasks": "emoji"}, "emoji", "emoji_group"),
        ({"languages": []}, "must not be empty", "fr"),
    ],
)
def test_load_rejects_bad_arguments(kwargs, bad_value, allowed_value):
    with pytest.raises(ValueError) as error:
        cldr.load(**kwargs)
    assert bad_value in str(error.value)
    assert allowed_value in str(error.value)


@pytest.fixture
def copied_data_dir(tmp_path, monkeypatch):
    """Points the loader at a private copy of the data files."""
    data_dir = tmp_path / "cldr_multitask"
    shutil.copytree(DATASET_DIR, data_dir, ignore=shutil.ignore_patterns("*.py*"))
    monkeypatch.setattr(cldr, "_DATA_DIR", data_dir)
    return data_dir


def test_tampered_file_is_detected(copied_data_dir):
    path = copied_data_dir / "data" / "territory_region.tsv"
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))
    with pytest.raises(cldr.DataIntegrityError, match="territory_region.tsv") as error:
        cldr.load("train")
    assert "cldr_multitask.generate" in str(error.value)
    with pytest.raises(cldr.DataIntegrityError):
        cldr.info()


def test_missing_manifest_is_detected(copied_data_dir):
    (copied_data_dir / "MANIFEST.json").unlink()
    with pytest.raises(cldr.DataIntegrityError, match="MANIFEST.json"):
        cldr.verify()


def test_verification_runs_once_per_process(copied_data_dir, monkeypatch):
    calls = []
    original_verify = cldr.verify

    def counting_verify():
        calls.append(1)
        original_verify()

    monkeypatch.setattr(cldr, "verify", counting_verify)
    cldr.load("dev", tasks="emoji_group")
    cldr.load("test", tasks="emoji_group")
    assert len(calls) == 1


def test_generate_reports_missing_sources(tmp_path, capsys):
    status = generate.main(["--cldr-dir", str(tmp_path), "--check"])
    assert status == 2
    message = capsys.readouterr().err
    assert "unicode-cldr-core" in message and "unicode-data" in message


def test_generate_reproduces_committed_files():
    try:
        generate.check_sources(generate.DEFAULT_CLDR_DIR, generate.DEFAULT_EMOJI_TEST)
    except generate.SourceError as error:
        pytest.skip(
            "CLDR sources not installed (apt-get install unicode-cldr-core "
            f"unicode-data): {error}"
        )
    assert generate.main(["--check"]) == 0
