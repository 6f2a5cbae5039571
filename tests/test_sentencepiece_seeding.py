"""Seeding in keras-flix never breaks a SentencePiece preprocessor built before.

`keras.utils.set_random_seed` (through `tf.random.set_seed`) destroys the
TensorFlow resource of a SentencePiece tokenizer built before the call: the
next `tf.data` map that uses it fails with `NotFoundError ...
SentencepieceOp ... does not exist`. Library code therefore never calls it;
seeds go to the ops (`seed=` arguments, `keras.random.SeedGenerator`).
"""

import io
import pathlib
import re

import keras
import keras_hub
import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

import keras_flix as kf

PACKAGE = pathlib.Path(kf.__file__).parent


@pytest.fixture(scope="module")
def preprocessor():
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["the quick brown fox", "der schnelle braune fuchs"] * 20),
        model_writer=model,
        vocab_size=26,
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        minloglevel=2,
    )
    tokenizer = keras_hub.models.XLMRobertaTokenizer(proto=model.getvalue())
    return keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)


def tokenized(preprocessor):
    texts = tf.data.Dataset.from_tensor_slices(["the fox", "der fuchs"]).batch(2)
    return next(iter(texts.map(preprocessor)))["token_ids"].numpy()


def test_library_seeding_keeps_the_tokenizer_usable(preprocessor):
    before = tokenized(preprocessor)
    schema = kf.FeatureSchema({"language": ["en", "de"]})
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(3, name="out")(inputs))
    model = kf.retrofit(
        base, schema, rank=2, target_layers="out", feature_dropout=0.5, seed=7
    )
    model.compile(optimizer=kf.optimizers.LazyAdam(1e-2), loss="mse")
    x = {"inputs": np.ones((8, 4), "float32"), "feature_ids": np.zeros((8, 1), "int32")}
    model.fit(x, np.zeros((8, 3)), batch_size=4, epochs=1, verbose=0)
    parts = [tf.data.Dataset.range(4), tf.data.Dataset.range(4)]
    list(kf.data.mix(parts, weights=[1.0, 1.0], seed=3).take(4))
    np.testing.assert_array_equal(tokenized(preprocessor), before)


def test_no_library_module_sets_the_global_seed():
    pattern = re.compile(r"\b(set_random_seed|tf\.random\.set_seed)\s*\(")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
