"""Small models and data shared by the tests."""

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
    inputs, rest = equation.split(",")
    kernel_term, output = rest.split("->")
    inputs = inputs.replace("...", "")
    kernel = to_numpy(layer.base_kernel).copy()
    contracted = [i for i, c in enumerate(kernel_term) if c in inputs]
    outputs = [i for i, c in enumerate(kernel_term) if c in output]
    for t, feature_type in enumerate(layer.schema.feature_types):
        value = ids_row[t]
        if value < 0:
            continue
        a = to_numpy(layer.adapter_a[feature_type])[value]
        b = to_numpy(layer.adapter_b[feature_type])[value]
        update = (a @ b).reshape([kernel.shape[i] for i in contracted + outputs])
        update = np.transpose(update, np.argsort(contracted + outputs))
        kernel += alphas[feature_type] / ranks[feature_type] * update
    return kernel


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
