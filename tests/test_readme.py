"""The README's quickstart runs as written, and the example does what it says."""

import pathlib
import re
import runpy

import keras_hub
import numpy as np
import pytest

import keras_flix as kf

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def run_first_python_block(heading):
    """Runs the first Python block after README's `heading`; returns its names."""
    section = README.read_text(encoding="utf-8").split(heading, 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_readme_quickstart_runs(capsys):
    namespace = run_first_python_block("## Quickstart")
    assert tuple(namespace["outputs"]["pooled_output"].shape) == (2, 32)
    assert namespace["ids"].tolist() == [[2, 0], [-1, 1]]
    printed = capsys.readouterr().out
    # What the comments in the block say is printed.
    assert "[[ 2  0]\n [-1  1]]" in printed
    # `(2, 32)`; torch prints a shape as `torch.Size([2, 32])`.
    assert re.search(r"^(torch\.Size\(\[2, 32\]\)|\(2, 32\))$", printed, re.M)
    assert "Trainable parameters:" in printed


def test_readme_qlora_example_runs(capsys):
    namespace = run_first_python_block("## QLoRA")
    # What the comment in the block says is printed.
    assert "int8 int8 float32" in capsys.readouterr().out
    model = namespace["model"]
    assert {v.name.split("_")[-1] for v in model.trainable_variables} == {"a", "b"}
    assert all(layer.quantization_mode == "int8" for layer in model.flix_layers)


@pytest.mark.slow
def test_quickstart_example_does_what_the_readme_says(monkeypatch, capsys):
    # README: the example retrofits a BertTextClassifier with its
    # preprocessor, fits it on raw, feature-tagged text, and evaluates every
    # language x task cell, including a combination held out of training and
    # a language the schema does not know.
    module = runpy.run_path(str(README.parent / "examples" / "quickstart.py"))
    fitted = []
    fit = kf.FLixModel.fit

    def short_fit(self, x=None, y=None, **kwargs):
        fitted.append((self, x, y))
        return fit(self, x, y, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(kf.FLixModel, "fit", short_fit)
    module["main"]()
    (model, x, y), = fitted
    assert isinstance(model.base_model, keras_hub.models.BertTextClassifier)
    assert model.preprocessor is model.base_model.preprocessor is not None
    assert x["inputs"].dtype.kind == "U"  # raw text
    assert x["feature_ids"].shape == (len(y), 2)
    assert np.all(x["feature_ids"] >= 0)  # training features are all known
    cells = {}
    for line in capsys.readouterr().out.splitlines():
        match = re.fullmatch(r"\s+(\w+) x (\w+)\s+([\d.]+)\s+\((.+)\)", line)
        if match:
            language, task, accuracy, kind = match.groups()
            assert 0.0 <= float(accuracy) <= 1.0
            cells[(language, task)] = kind
    assert set(cells) == {
        (language, task)
        for language in ("en", "de", "sw")
        for task in ("topic", "sentiment")
    }
    assert cells[("de", "sentiment")] == "held-out combination"
    assert cells[("sw", "topic")] == cells[("sw", "sentiment")] == "unseen language"
    assert "sw" not in model.schema.values("language")
