"""Small models and data shared by the tests."""

import contextlib
import os
import subprocess
import sys

import keras
import keras_hub
import numpy as np

import keras_flix as kf

SCHEMA = kf.FeatureSchema(
    {"language": ["en", "de", "sw"], "task": ["qa", "ner"]}
)

# Every combination of values and absences of SCHEMA, one example each.
MIXED_IDS = np.array(
    [[0, 0], [1, 1], [2, 0], [2, -1], [-1, 1], [-1, -1]], dtype="int32"
)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def tiny_bert(seed=0, num_layers=2):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.BertBackbone(
        vocabulary_size=64,
        num_layers=num_layers,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=12,
    )


def bert_inputs(batch, length=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, 64, (batch, length)).astype("int32"),
        "segment_ids": np.zeros((batch, length), "int32"),
        "padding_mask": np.ones((batch, length), "int32"),
    }


def dense_flix_model(schema=SCHEMA, rank=2, dropout=None, **retrofit_kwargs):
    """A retrofitted `Dense(4, name="proj")` on 8 inputs, then `Dropout(dropout)`."""
    inputs = keras.Input((8,))
    outputs = keras.layers.Dense(4, name="proj")(inputs)
    if dropout:
        outputs = keras.layers.Dropout(dropout)(outputs)
    base = keras.Model(inputs, outputs)
    return kf.retrofit(base, schema, rank=rank, target_layers=["proj"], **retrofit_kwargs)


def randomize_adapters(model, seed=0, scale=0.2):
    """Gives every adapter random values (B starts at zero otherwise)."""
    rng = np.random.default_rng(seed)
    for layer in model.flix_layers:
        for variable in layer.adapter_variables:
            variable.assign(
                (scale * rng.standard_normal(variable.shape)).astype("float32")
            )


def max_relative_error(actual, expected):
    actual, expected = np.asarray(actual), np.asarray(expected)
    return float(np.max(np.abs(actual - expected)) / (np.max(np.abs(expected)) + 1e-12))


RANKS = {"language": 2, "task": 3}
ALPHAS = {"language": 4.0, "task": 1.5}

# (equation, output_shape, bias_axes, input_shape): every projection equation of
# KerasHub's BERT / XLM-R / GPT-2 (MultiHeadAttention), Gemma and Llama, plus
# ellipsis and plain-matrix forms.
EQUATIONS = [
    ("abc,cde->abde", (None, 2, 4), "de", (6, 5, 8)),
    ("abcd,cde->abe", (None, 8), "e", (6, 5, 2, 4)),
    ("btd,ndh->btnh", (None, 2, 4), None, (6, 5, 8)),
    ("bsd,kdh->bskh", (None, 1, 4), None, (6, 5, 8)),
    ("btnh,nhd->btd", (None, 8), None, (6, 5, 2, 4)),
    ("btd,df->btf", (None, 12), None, (6, 5, 8)),
    ("btf,fd->btd", (None, 8), None, (6, 5, 12)),
    ("bqm,muh->bquh", (None, 2, 4), None, (6, 5, 8)),
    ("bkm,mvh->bkvh", (None, 1, 4), None, (6, 5, 8)),
    ("bquh,uhm->bqm", (None, 8), None, (6, 5, 2, 4)),
    ("...b,bc->...c", 7, "c", (6, 5, 8)),
    ("ab,bc->ac", 7, "c", (6, 8)),
]


def reference_kernel(layer, equation, ids_row, ranks=RANKS, alphas=ALPHAS):
    """W0 + sum_t s_t reshape(A_t B_t), written out independently.

    `ranks` and `alphas` are the ones the layer was built with (by feature
    type of `layer.schema`); `s_t = alphas[t] / ranks[t]`.
    """
    kernel = to_numpy(layer.base_kernel)
    return kernel + reference_update(layer, equation, ids_row, kernel.shape, ranks, alphas)


def reference_update(layer, equation, ids_row, kernel_shape, ranks=RANKS, alphas=ALPHAS):
    """sum_t s_t reshape(A_t B_t), of shape `kernel_shape`, written out independently."""
    inputs, rest = equation.split(",")
    kernel_term, output = rest.split("->")
    inputs = inputs.replace("...", "")
    update = np.zeros(kernel_shape, "float32")
    contracted = [i for i, c in enumerate(kernel_term) if c in inputs]
    outputs = [i for i, c in enumerate(kernel_term) if c in output]
    for t, feature_type in enumerate(layer.schema.feature_types):
        value = ids_row[t]
        if value < 0:
            continue
        a = to_numpy(layer.adapter_a[feature_type])[value]
        b = to_numpy(layer.adapter_b[feature_type])[value]
        product = (a @ b).reshape([kernel_shape[i] for i in contracted + outputs])
        product = np.transpose(product, np.argsort(contracted + outputs))
        update += alphas[feature_type] / ranks[feature_type] * product
    return update


def make_layer(equation, output_shape, bias_axes, **kwargs):
    return kf.layers.FLixEinsumDense(
        equation,
        output_shape=output_shape,
        bias_axes=bias_axes,
        schema=SCHEMA,
        rank=RANKS,
        alpha=ALPHAS,
        **kwargs,
    )


def randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    for variable in layer.adapter_variables:
        variable.assign(rng.standard_normal(variable.shape).astype("float32"))


def compiled_versions(fn):
    """`fn` eagerly and under each of the backend's compilers."""
    backend = keras.backend.backend()
    versions = [fn]
    if backend == "jax":
        import jax

        versions.append(jax.jit(fn))
    elif backend == "tensorflow":
        import tensorflow as tf

        versions.append(tf.function(fn))
        versions.append(tf.function(fn, jit_compile=True))
    return versions


def tiny_classifier(num_classes=2, seed=0):
    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
        "the", "a", "cat", "dog", "sat", "ran", "big", "small",
    ]
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=8
    )
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), num_layers=2, num_heads=2,
        hidden_dim=32, intermediate_dim=64, max_sequence_length=8,
    )
    return keras_hub.models.BertTextClassifier(
        backbone, num_classes=num_classes, preprocessor=preprocessor
    )


LETTERS = "abcdefgh"
"""The alphabet of `letter_preprocessor`'s tokenizer."""


def tiny_gpt2(preprocessor=None, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(LETTERS) + 2 if preprocessor else 40,
        num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=16,
    )
    causal_lm = keras_hub.models.GPT2CausalLM(backbone, preprocessor=preprocessor)
    causal_lm.compile(sampler="greedy")
    return causal_lm


def letter_preprocessor(sequence_length=12):
    vocabulary = {"<|endoftext|>": 0, **{c: i + 1 for i, c in enumerate(LETTERS)}}
    vocabulary["gh"] = len(vocabulary)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["g h"])
    return keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=sequence_length)


def letter_sentences(count=64, length=6, seed=0):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(LETTERS), length)) for _ in range(count)]


def letter_sentencepiece(**special_pieces):
    """A tiny SentencePiece model of `LETTERS` words (Gemma, Llama tokenizers)."""
    import io

    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(letter_sentences(seed=1)), model_writer=model,
        vocab_size=20, model_type="BPE", character_coverage=1.0, minloglevel=2,
        **special_pieces,
    )
    return model.getvalue()


def causal_lm_preprocessor(family, sequence_length=12):
    """A CausalLM preprocessor of `family` with a tokenizer of `LETTERS`."""
    if family == "gpt2":
        return letter_preprocessor(sequence_length)
    if family == "gemma":
        tokenizer = keras_hub.models.GemmaTokenizer(proto=letter_sentencepiece(
            pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="<pad>",
            bos_piece="<bos>", eos_piece="<eos>", unk_piece="<unk>"))
        return keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=sequence_length)
    tokenizer = keras_hub.models.LlamaTokenizer(
        proto=letter_sentencepiece(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    )
    return keras_hub.models.LlamaCausalLMPreprocessor(tokenizer, sequence_length=sequence_length)


def tiny_causal_lm(family, seed=0, with_preprocessor=False):
    """A tiny GPT-2, Gemma or Llama CausalLM, compiled with the greedy sampler.

    Without a preprocessor its vocabulary has 40 tokens; with one, the
    tokenizer's vocabulary of `LETTERS`.
    """
    preprocessor = causal_lm_preprocessor(family) if with_preprocessor else None
    if family == "gpt2":
        return tiny_gpt2(preprocessor, seed=seed)
    keras.utils.set_random_seed(seed)
    small = dict(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size() if preprocessor else 40,
        num_layers=2, hidden_dim=32, intermediate_dim=64,
    )
    if family == "gemma":
        backbone = keras_hub.models.GemmaBackbone(
            num_query_heads=2, num_key_value_heads=1, head_dim=16, **small
        )
        causal_lm = keras_hub.models.GemmaCausalLM(backbone, preprocessor=preprocessor)
    else:
        backbone = keras_hub.models.LlamaBackbone(
            num_query_heads=2, num_key_value_heads=1, **small
        )
        causal_lm = keras_hub.models.LlamaCausalLM(backbone, preprocessor=preprocessor)
    causal_lm.compile(sampler="greedy")
    return causal_lm


def bart_preprocessor():
    """A BART Seq2SeqLM preprocessor with a byte-pair tokenizer of `LETTERS`."""
    vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(LETTERS)}}
    vocabulary["gh"] = len(vocabulary)
    vocabulary["<mask>"] = len(vocabulary)
    tokenizer = keras_hub.models.BartTokenizer(vocabulary=vocabulary, merges=["g h"])
    return keras_hub.models.BartSeq2SeqLMPreprocessor(
        tokenizer, encoder_sequence_length=10, decoder_sequence_length=8
    )


def tiny_bart(seed=0, with_preprocessor=False):
    """A tiny BART Seq2SeqLM, compiled with the greedy sampler."""
    preprocessor = bart_preprocessor() if with_preprocessor else None
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=preprocessor.tokenizer.vocabulary_size() if preprocessor else 40,
        num_layers=1, num_heads=2, hidden_dim=32, intermediate_dim=64,
        max_sequence_length=12,
    )
    seq2seq = keras_hub.models.BartSeq2SeqLM(backbone, preprocessor=preprocessor)
    seq2seq.compile(sampler="greedy")
    return seq2seq


def token_inputs(specs, batch, lengths, seed=0):
    """Random inputs for a KerasHub model's token inputs.

    Args:
        specs: the model's inputs (e.g. `model.input`), a dict of name to
            a tensor with a `dtype`.
        batch: the batch size.
        lengths: the sequence length, or a dict from input-name prefix
            (`"encoder_"`, `"decoder_"`) to it.

    Returns:
        A dict of NumPy arrays: token ids in `[1, 40)`, padding masks with
        the last position of every other example padded, zero segment ids.
    """
    rng = np.random.default_rng(seed)
    inputs = {}
    for name, spec in specs.items():
        prefix = name.split("_")[0] + "_" if name.startswith(("encoder_", "decoder_")) else ""
        length = lengths[prefix] if isinstance(lengths, dict) else lengths
        if name.endswith("token_ids"):
            value = rng.integers(1, 40, (batch, length))
        elif name.endswith("padding_mask"):
            value = np.ones((batch, length))
            value[::2, -1] = 0
        else:
            value = np.zeros((batch, length))
        inputs[name] = value.astype(keras.backend.standardize_dtype(spec.dtype))
    return inputs


BACKENDS = ("jax", "tensorflow", "torch")


def another_backend():
    """The backend after this process's one in `BACKENDS`, cyclically.

    A test that saves a file here and loads it in a fresh process on
    `another_backend()` makes, across the three backends' test runs, every
    backend write once and read once: three fresh processes, where every
    (writer, reader) pair would take nine. Loading on the writing backend is
    tested in-process.
    """
    return BACKENDS[(BACKENDS.index(keras.backend.backend()) + 1) % len(BACKENDS)]


def run_under(backend, script):
    """Runs the Python `script` in a fresh process on `backend`; its stdout."""
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


class Block(keras.layers.Layer):
    """A residual MLP block: gradient checkpointing recomputes its call."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.up = keras.layers.Dense(16, activation="tanh", name="up")
        self.down = keras.layers.Dense(8, name="down")

    def build(self, input_shape):
        self.up.build(input_shape)
        self.down.build(input_shape[:-1] + (16,))

    def call(self, x):
        return x + self.down(self.up(x))


def train_steps(make_model, remat_scope, x, y, steps=3):
    """Losses and trainable weights of `steps` SGD steps of the retrofitted
    `make_model()`, built inside `remat_scope`."""
    with remat_scope:
        base = make_model()
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=REMAT_TARGETS)
    randomize_adapters(model, seed=3)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    losses = [float(model.train_on_batch(x, y)) for _ in range(steps)]
    return losses, [to_numpy(v) for v in model.trainable_variables]


REMAT_TARGETS = [r".*(up|down|query|value)"]
"""What `train_steps` adapts: the blocks' and a BERT's projections."""


def block_model():
    """Two `Block`s, for gradient checkpointing (`keras.RematScope`) tests."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((4, 8))
    hidden = Block(name="block_0")(inputs)
    outputs = Block(name="block_1")(hidden)
    return keras.Model(inputs, outputs)


def assert_same_training(make_model, remat_scope, x, y):
    """Training with `remat_scope` takes the steps training without it does."""
    plain_losses, plain_weights = train_steps(
        make_model, contextlib.nullcontext(), x, y
    )
    remat_losses, remat_weights = train_steps(make_model, remat_scope, x, y)
    assert plain_losses[-1] < plain_losses[0]
    np.testing.assert_allclose(remat_losses, plain_losses, rtol=1e-5)
    for a, b in zip(remat_weights, plain_weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
