"""Crafted adapter and `.keras` files: clear errors, nothing run, model unchanged."""

import io
import json
import os
import struct
import tracemalloc
import zipfile

import keras
import numpy as np
import pytest
from helpers import MIXED_IDS
from helpers import SCHEMA
from helpers import bert_inputs
from helpers import dense_flix_model
from helpers import randomize_adapters
from helpers import tiny_bert
from helpers import to_numpy

import keras_flix as kf

MEMBER = "proj/flix_language_a.npy"  # [3 values, 8 inputs, rank 2], float32


@pytest.fixture
def saved(tmp_path):
    """A model and the members of a good adapter file of another one like it."""
    model = dense_flix_model()
    source = dense_flix_model()
    source.set_weights(model.get_weights())
    randomize_adapters(source)
    path = tmp_path / "good.flix"
    kf.save_adapters(source, path)
    with zipfile.ZipFile(path) as archive:
        members = [(name, archive.read(name)) for name in archive.namelist()]
    return model, members


def npy(array, **kwargs):
    buffer = io.BytesIO()
    np.save(buffer, array, **kwargs)
    return buffer.getvalue()


def write_archive(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return path


def replaced(members, name, data):
    return [(n, data if n == name else d) for n, d in members]


def assert_refused(model, path, message):
    before = [to_numpy(v) for v in model.weights]
    with pytest.raises(ValueError, match=message):
        kf.load_adapters(model, path)
    for value, variable in zip(before, model.weights):
        np.testing.assert_array_equal(to_numpy(variable), value)


def test_the_good_file_loads(tmp_path, saved):
    model, members = saved
    kf.load_adapters(model, write_archive(tmp_path / "copy.flix", members))
    assert np.any(to_numpy(model.flix_layers[0].adapter_b["task"]))


@pytest.mark.parametrize("name", ["../escaped.npy", "proj/../../escaped.npy",
                                  "/tmp/escaped.npy", "C:/escaped.npy",
                                  "..\\escaped.npy"])
def test_member_names_that_leave_the_archive_are_refused(tmp_path, saved, name):
    model, members = saved
    path = write_archive(tmp_path / "bad.flix", [*members, (name, npy(np.zeros(1)))])
    assert_refused(model, path, "only relative member names without '..'")
    assert not (tmp_path.parent / "escaped.npy").exists()


class _Trap:
    """Unpickling this would create the file `marker`."""

    marker = None

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_arrays_are_never_unpickled(tmp_path, saved):
    model, members = saved
    _Trap.marker = str(tmp_path / "code-ran")
    pickled = np.array([_Trap()] * 48, dtype=object).reshape(3, 8, 2)
    path = write_archive(
        tmp_path / "bad.flix", replaced(members, MEMBER, npy(pickled, allow_pickle=True))
    )
    assert_refused(model, path, "dtype object; expected float32 .*pickles.* never loaded")
    assert not os.path.exists(_Trap.marker)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 8, 2), "float64"), "dtype float64; expected float32"),
        (np.zeros((3, 8, 2), "int32"), "dtype int32; expected float32"),
        (np.zeros((3, 8, 3), "float32"), r"shape \(3, 8, 3\), which does not fit .*\(3, 8, 2\)"),
        (np.zeros((4, 8, 2), "float32"), r"shape \(4, 8, 2\), which does not fit"),
        (np.zeros((3, 16), "float32"), r"shape \(3, 16\), which does not fit"),
        (np.asfortranarray(np.ones((3, 8, 2), "float32")), "in Fortran order"),
    ],
)
def test_arrays_of_the_wrong_dtype_or_shape_are_refused(tmp_path, saved, array, message):
    model, members = saved
    path = write_archive(tmp_path / "bad.flix", replaced(members, MEMBER, npy(array)))
    assert_refused(model, path, message)


def test_a_header_declaring_gigabytes_is_refused_before_reading(tmp_path, saved):
    model, members = saved
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (3 << 28, 8, 2)}
    )
    path = write_archive(
        tmp_path / "bad.flix", replaced(members, MEMBER, header.getvalue() + b"\0" * 64)
    )
    assert_refused(model, path, r"shape \(805306368, 8, 2\), which does not fit")


def _declare_size(path, name, size):
    """Rewrites the uncompressed size that the zip headers declare for `name`."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    for signature, size_offset, name_offset in ((b"PK\x03\x04", 22, 30),
                                                (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            if data[start + name_offset : start + name_offset + len(encoded)] == encoded:
                data[start + size_offset : start + size_offset + 4] = struct.pack("<I", size)
            start += 4
    path.write_bytes(bytes(data))


def test_a_member_declaring_gigabytes_is_refused_before_reading(tmp_path, saved):
    model, members = saved
    path = write_archive(tmp_path / "bad.flix", members)
    _declare_size(path, MEMBER, 3 << 30)
    assert_refused(model, path, r"declares 3221225472 bytes, more than the variable's 192")


def test_a_member_that_inflates_past_its_declared_size_reads_bounded_memory(tmp_path, saved):
    model, members = saved
    good = dict(members)[MEMBER]
    bomb = good + b"\0" * (200 << 20)  # 200 MB of zeros compress to ~200 KB
    path = write_archive(tmp_path / "bomb.flix", replaced(members, MEMBER, bomb))
    _declare_size(path, MEMBER, len(good))
    tracemalloc.start()
    try:
        assert_refused(model, path, "not a readable keras-flix adapter file")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 << 20, peak


def test_duplicate_members_are_refused(tmp_path, saved):
    model, members = saved
    second = (MEMBER, npy(np.full((3, 8, 2), 7.0, "float32")))
    with pytest.warns(UserWarning, match="Duplicate name"):
        path = write_archive(tmp_path / "bad.flix", [*members, second])
    assert_refused(model, path, f"holds the member '{MEMBER}' more than once")


def test_unknown_members_are_refused(tmp_path, saved):
    model, members = saved
    path = write_archive(tmp_path / "bad.flix", [*members, ("run_me.py", b"print(1)")])
    assert_refused(model, path, r"neither metadata.json nor an adapter variable.*run_me.py")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: {**m, "layers": ["proj"]}, "lacks the schema, layers or base fingerprint"),
        (lambda m: {**m, "schema": {"features": 3}}, "the saved schema is invalid"),
        (lambda m: [m], "not marked as keras-flix-adapters"),
        (lambda m: {**m, "format_version": 99}, "format version 99"),
    ],
)
def test_malformed_metadata_is_refused(tmp_path, saved, change, message):
    model, members = saved
    metadata = change(json.loads(dict(members)["metadata.json"]))
    path = write_archive(
        tmp_path / "bad.flix", replaced(members, "metadata.json", json.dumps(metadata))
    )
    assert_refused(model, path, message)


def test_keras_files_load_in_safe_mode(tmp_path):
    model = kf.retrofit(
        tiny_bert(), SCHEMA, rank={"language": 2, "task": 3}, feature_dropout=0.2
    )
    randomize_adapters(model)
    inputs = {**bert_inputs(len(MIXED_IDS)), "feature_ids": MIXED_IDS}
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded, kf.FLixModel)
    np.testing.assert_allclose(
        to_numpy(loaded(inputs)["pooled_output"]),
        to_numpy(model(inputs)["pooled_output"]),
        atol=1e-6, rtol=0,
    )
