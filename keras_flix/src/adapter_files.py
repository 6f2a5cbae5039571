"""`save_adapters` / `load_adapters`: FLix weights without the base model."""

import hashlib
import io
import json
import os
import tempfile
import zipfile

import keras
import numpy as np

from keras_flix.src.adapters import require_flix_layers
from keras_flix.src.config import WEIGHT_KEYS
from keras_flix.src.schema import FeatureSchema

FORMAT = "keras-flix-adapters"
FORMAT_VERSION = 1
_METADATA = "metadata.json"


def save_adapters(model, path):
    """Writes a model's FLix adapter weights, schema and settings to `path`.

    The file (a zip of `metadata.json` and one `.npy` per adapter variable)
    holds no base weights: a few MB for a BERT-base-sized model. It records
    the schema, the ranks and scales, each adapted layer's base kernel shape
    and a fingerprint of the base kernels, so that `load_adapters` can tell
    exactly what differs when it does not fit.

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
    directory = os.path.dirname(os.path.abspath(path))
    handle, temporary = tempfile.mkstemp(dir=directory, suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as file:
            with zipfile.ZipFile(file, "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(_METADATA, json.dumps(metadata, indent=1))
                for layer in layers:
                    for variable in layer.adapter_variables:
                        buffer = io.BytesIO()
                        np.save(buffer, keras.ops.convert_to_numpy(variable))
                        archive.writestr(
                            f"{layer.path}/{variable.name}.npy", buffer.getvalue()
                        )
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


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
    metadata, arrays = _read(path)
    expected = _describe(layers)
    problems = _compare(metadata, expected, check_base)
    if problems:
        raise ValueError(
            f"Adapters in '{path}' do not fit model '{model.name}':\n  - "
            + "\n  - ".join(problems)
        )
    updates = []
    for layer in layers:
        for variable in layer.adapter_variables:
            key = f"{layer.path}/{variable.name}.npy"
            if key not in arrays:
                raise ValueError(f"'{path}' lacks the array '{key}'.")
            saved = arrays[key]
            current = keras.ops.convert_to_numpy(variable)
            if saved.shape[1:] != current.shape[1:] or saved.shape[0] > current.shape[0]:
                raise ValueError(
                    f"'{path}': array '{key}' has shape {saved.shape}, which "
                    f"does not fit the variable's shape {current.shape}."
                )
            value = np.concatenate([saved, current[saved.shape[0] :]], axis=0)
            updates.append((variable, value))
    for variable, value in updates:
        variable.assign(value)


def _describe(layers):
    schema = layers[0].schema
    fingerprint = hashlib.sha256()
    described = {}
    for layer in layers:
        kernel = keras.ops.convert_to_numpy(layer.base_kernel).astype("float32")
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


def _read(path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if _METADATA not in names:
                raise ValueError(f"'{path}' has no {_METADATA}")
            metadata = json.loads(archive.read(_METADATA))
            if metadata.get("format") != FORMAT:
                raise ValueError(f"'{path}' is not marked as {FORMAT}")
            arrays = {
                name: np.load(io.BytesIO(archive.read(name)), allow_pickle=False)
                for name in names
                if name.endswith(".npy")
            }
    except (zipfile.BadZipFile, OSError, EOFError, json.JSONDecodeError,
            ValueError, KeyError, zipfile.LargeZipFile) as error:
        raise ValueError(
            f"'{path}' is not a readable keras-flix adapter file (written by "
            f"keras_flix.save_adapters) or is truncated: {error}"
        ) from None
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"'{path}' has adapter format version "
            f"{metadata.get('format_version')}; this keras-flix reads version "
            f"{FORMAT_VERSION}."
        )
    return metadata, arrays


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
            if saved["layers"][path][key] != expected["layers"][path][key]:
                problems.append(
                    f"layer '{path}': {key} differs: saved "
                    f"{saved['layers'][path][key]}, model "
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
