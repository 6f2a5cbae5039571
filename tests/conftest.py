"""Test-suite configuration shared by every test module.

Shared models, data and helpers live in `helpers.py`; test modules import
from it, never from each other.
"""

import pathlib

import pytest

# The main job's end-to-end test module is maintained with the example it
# runs; every test in it trains or runs the example, so all are slow.
SLOW_MODULES = ("test_multilingual_multitask.py",)


def pytest_collection_modifyitems(items):
    for item in items:
        if pathlib.Path(str(item.fspath)).name in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
