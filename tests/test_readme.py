"""The README's quickstart runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs():
    text = README.read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1]
    code = re.search(r"```python\n(.*?)```", quickstart, re.S).group(1)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert tuple(namespace["outputs"]["pooled_output"].shape) == (2, 32)
    assert namespace["ids"].tolist() == [[2, 0], [-1, 1]]


def test_quickstart_example_runs_quickly(monkeypatch):
    import runpy

    script = README.parent / "examples" / "quickstart.py"
    module = runpy.run_path(str(script))
    # A short run: it must go end to end; the score is the example's business.
    monkeypatch.setattr(module["keras"].Model, "fit", lambda self, *a, **k: None)
    module["main"]()
