"""`save_adapters` / `load_adapters`: FLix weights without the base model."""

import contextlib
import hashlib
import io
import json
import zipfile
import zlib

import keras
import numpy as np

from keras_flix.src.adapters import require_flix_layers
from keras_flix.src.atomic_files import replaced_atomically
from keras_flix.src.config import WEIGHT_KEYS
from keras_flix.src.schema import FeatureSchema

FORMAT = "keras-flix-adapters"
FORMAT_VERSION = 1
_METADATA = "metadata.json"
# Far above what any schema needs; bounds what a crafted file can make us read.
_MAX_METADATA_BYTES = 64 << 20
_MAX_NPY_HEADER_BYTES = 10_000  # NumPy's own default limit


def save_adapters(model, path):
    """Writes a model's FLix adapter weights, schema and settings to `path`.

    The file (a zip of `metadata.json` and one `.npy` per adapter variable)
    holds no base weights: a few MB for a BERT-base-sized model. It records
    the schema, the ranks and scales, each adapted layer's base kernel shape
    and a fingerprint of the base kernels, so that `load_adapters` can tell
    exactly what differs when it does not fit. A quantized kernel is
    fingerprinted as its layer computes with it, dequantized: a base
    quantized the same way (before or after `retrofit`) fits, its float
    original does not.

    Args:
        model: a model returned by `keras_flix.retrofit` (or any model that
            holds FLix layers).
        path: the file to write (written atomically).

    Example:

    >>> import os, tempfile
    >>> import keras
    >>> import keras_flix as kf
    >>> inputs = keras.Input((8,))
    >>> base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
    >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"])
    >>> path = os.path.join(tempfile.mkdtemp(), "adapters.flix")
    >>> kf.save_adapters(model, path)
    >>> kf.load_adapters(model, path)
    """
    layers = require_flix_layers(model)
    metadata = _describe(layers)
    with replaced_atomically(path) as temporary:
        with zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(_METADATA, json.dumps(metadata, indent=1))
            for layer in layers:
                for variable in layer.adapter_variables:
                    buffer = io.BytesIO()
                    np.save(
                        buffer,
                        keras.ops.convert_to_numpy(variable),
                        allow_pickle=False,
                    )
                    archive.writestr(_member(layer, variable), buffer.getvalue())


def load_adapters(model, path, check_base=True):
    """Loads adapter weights written by `save_adapters` into `model`.

    `model` must be retrofitted the same way: the same target layers, ranks
    and scales, the same base kernel shapes, and a schema with the same
    feature types whose values *start with* the saved values (values may be
    appended, e.g. new languages to train later; their adapters keep their
    current values). Everything is checked before anything is assigned, so
    on any error the model is left unchanged.

    Args:
        model: a model returned by `keras_flix.retrofit`.
        path: a file written by `save_adapters`.
        check_base: also require the base kernels to be the ones the
            adapters were trained on (compared by fingerprint).

    Raises:
        ValueError: if the file is not a keras-flix adapter file, is
            truncated, or does not fit the model (the message says what
            differs).
    """
    layers = require_flix_layers(model)
    expected = _describe(layers)
    variables = {
        _member(layer, variable): variable
        for layer in layers
        for variable in layer.adapter_variables
    }
    updates = []
    with _opened(path) as archive:
        members = _checked_members(archive, path)
        metadata = _read_metadata(archive, members, path)
        problems = _compare(metadata, expected, check_base)
        if problems:
            raise ValueError(
                f"Adapters in '{path}' do not fit model '{model.name}':\n  - "
                + "\n  - ".join(problems)
            )
        unknown = sorted(set(members) - {_METADATA, *variables})
        if unknown:
            raise ValueError(
                f"'{path}' has members that are neither {_METADATA} nor an "
                f"adapter variable of the model: {unknown}"
            )
        for key, variable in variables.items():
            if key not in members:
                raise ValueError(f"'{path}' lacks the array '{key}'.")
            current = keras.ops.convert_to_numpy(variable)
            saved = _read_array(archive, members[key], path, current)
            value = np.concatenate([saved, current[saved.shape[0] :]], axis=0)
            updates.append((variable, value))
    for variable, value in updates:
        variable.assign(value)


def _member(layer, variable):
    return f"{layer.path}/{variable.name}.npy"


def _describe(layers):
    schema = layers[0].schema
    fingerprint = hashlib.sha256()
    described = {}
    for layer in layers:
        # A quantized kernel as its layer computes with it, in float.
        kernel = keras.ops.convert_to_numpy(layer.dequantized_kernel()).astype("float32")
        fingerprint.update(layer.path.encode())
        fingerprint.update(np.ascontiguousarray(kernel).tobytes())
        settings = layer.adapter_config()
        described[layer.path] = {
            "class_name": type(layer).__name__,
            "kernel_shape": list(kernel.shape),
            **{key: settings[key] for key in WEIGHT_KEYS},
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema": schema.get_config(),
        "layers": described,
        "base_fingerprint": fingerprint.hexdigest(),
    }


@contextlib.contextmanager
def _opened(path):
    """The archive at `path`; reading errors become one clear `ValueError`."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, OSError,
            EOFError, NotImplementedError, RuntimeError) as error:
        # RuntimeError: an encrypted member; NotImplementedError: an
        # unsupported compression method.
        raise ValueError(
            f"'{path}' is not a readable keras-flix adapter file (written by "
            f"keras_flix.save_adapters) or is truncated: {error}"
        ) from None


def _checked_members(archive, path):
    """The archive's members by name, refusing unsafe or duplicate names.

    `save_adapters` writes `metadata.json` and one relative name per
    variable, each once: a path that climbs out (`..`), an absolute path or
    a duplicate (which would shadow the first copy) means the file was not
    written by it.
    """
    members = {}
    for info in archive.infolist():
        name = info.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
            raise ValueError(
                f"'{path}' has a member named {name!r}: adapter files hold "
                "only relative member names without '..'."
            )
        if name in members:
            raise ValueError(
                f"'{path}' holds the member {name!r} more than once; an "
                "adapter file names each array once."
            )
        members[name] = info
    if _METADATA not in members:
        raise ValueError(
            f"'{path}' is not a readable keras-flix adapter file (written by "
            f"keras_flix.save_adapters): it has no {_METADATA}."
        )
    return members


def _read_bounded(archive, info, limit, path):
    """A member's bytes, refusing one that declares more than `limit`."""
    if info.file_size > limit:
        raise ValueError(
            f"'{path}': member {info.filename!r} declares {info.file_size} "
            f"bytes; at most {limit} are expected."
        )
    with archive.open(info) as stream:
        # Reading stops at the declared size, so a member whose compressed
        # data expands further than it declares cannot exhaust memory.
        return stream.read(limit + 1)


def _read_metadata(archive, members, path):
    text = _read_bounded(archive, members[_METADATA], _MAX_METADATA_BYTES, path)
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise ValueError(f"'{path}': {_METADATA} is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ValueError(f"'{path}' is not marked as {FORMAT}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"'{path}' has adapter format version "
            f"{metadata.get('format_version')}; this keras-flix reads version "
            f"{FORMAT_VERSION}."
        )
    layers = metadata.get("layers")
    if not (
        isinstance(metadata.get("schema"), dict)
        and isinstance(metadata.get("base_fingerprint"), str)
        and isinstance(layers, dict)
        and all(isinstance(layer, dict) for layer in layers.values())
    ):
        raise ValueError(
            f"'{path}': {_METADATA} lacks the schema, layers or base "
            "fingerprint that save_adapters writes."
        )
    try:
        FeatureSchema.from_config(metadata["schema"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"'{path}': the saved schema is invalid: {error}") from None
    return metadata


def _read_array(archive, info, path, current):
    """The `.npy` member `info`, checked to fit the variable value `current`.

    The header is parsed and checked (dtype, order, shape) before the data
    is read: object arrays (pickles) are never loaded, and nothing larger
    than the variable is read into memory.
    """
    where = f"'{path}': array '{info.filename}'"
    if info.file_size > current.nbytes + _MAX_NPY_HEADER_BYTES:
        raise ValueError(
            f"{where} declares {info.file_size} bytes, more than the "
            f"variable's {current.nbytes} bytes (shape {current.shape})."
        )
    with archive.open(info) as stream:
        try:
            version = np.lib.format.read_magic(stream)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if read_header is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, fortran_order, dtype = read_header(
                stream, max_header_size=_MAX_NPY_HEADER_BYTES
            )
        except ValueError as error:
            raise ValueError(f"{where} is not a valid .npy array: {error}") from None
        if dtype != current.dtype:
            raise ValueError(
                f"{where} has dtype {dtype}; expected {current.dtype} (object "
                "arrays, i.e. pickles, are never loaded)."
            )
        if fortran_order or len(shape) != current.ndim or (
            shape[1:] != current.shape[1:] or shape[0] > current.shape[0]
        ):
            raise ValueError(
                f"{where} has shape {shape}{' in Fortran order' * fortran_order}, "
                f"which does not fit the variable's shape {current.shape}."
            )
        size = int(np.prod(shape)) * dtype.itemsize
        data = stream.read(size + 1)
    if len(data) != size:
        raise ValueError(
            f"{where} holds {len(data)} bytes of data; its header declares "
            f"{size}."
        )
    return np.frombuffer(data, dtype).reshape(shape)


def _compare(saved, expected, check_base):
    problems = []
    saved_schema = FeatureSchema.from_config(saved["schema"])
    model_schema = FeatureSchema.from_config(expected["schema"])
    if saved_schema.feature_types != model_schema.feature_types:
        problems.append(
            f"feature types differ: saved {saved_schema.feature_types}, model "
            f"{model_schema.feature_types}"
        )
    else:
        for feature_type in saved_schema.feature_types:
            old = saved_schema.values(feature_type)
            new = model_schema.values(feature_type)
            if new[: len(old)] != old:
                problems.append(
                    f"values of '{feature_type}' differ: saved {list(old)}, "
                    f"model {list(new)} (the model's values must start with "
                    "the saved ones)"
                )
    missing = sorted(set(saved["layers"]) - set(expected["layers"]))
    extra = sorted(set(expected["layers"]) - set(saved["layers"]))
    if missing or extra:
        problems.append(
            f"target layers differ: only in the file {missing}, only in the "
            f"model {extra}"
        )
    for path in sorted(set(saved["layers"]) & set(expected["layers"])):
        for key in ("class_name", "kernel_shape", *WEIGHT_KEYS):
            if saved["layers"][path].get(key) != expected["layers"][path][key]:
                problems.append(
                    f"layer '{path}': {key} differs: saved "
                    f"{saved['layers'][path].get(key)}, model "
                    f"{expected['layers'][path][key]}"
                )
    if check_base and not problems and (
        saved["base_fingerprint"] != expected["base_fingerprint"]
    ):
        problems.append(
            "the base kernels differ from those the adapters were trained on "
            "(another base model or checkpoint); pass check_base=False to "
            "load them anyway"
        )
    return problems
