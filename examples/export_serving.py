"""Export a FLix model as a TensorFlow SavedModel and query it.

Retrofits a small KerasHub BERT backbone (random weights), exports it with
`keras_flix.export_saved_model`, then reloads the SavedModel with TensorFlow
alone and queries both signatures with a batch that mixes feature
combinations: `serving_default` with feature names as strings, `serve_ids`
with feature ids. The export fixes no size: the same SavedModel serves any
batch size and any sequence length up to the backbone's maximum.

Run with KERAS_BACKEND=jax or tensorflow:
    python examples/export_serving.py [--output DIR]
"""

import argparse
import os
import tempfile

import keras
import keras_hub
import numpy as np

import keras_flix as kf

SEQUENCE_LENGTH = 16


def export(directory):
    """Builds, retrofits and exports a model; returns its reference outputs."""
    schema = kf.FeatureSchema(
        {"language": ["en", "de", "sw"], "task": ["qa", "ner"]}, unknown="absent"
    )
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    model = kf.retrofit(backbone, schema, rank=4)
    kf.export_saved_model(model, directory)
    return model, schema


def query(directory, schema, model=None, length=SEQUENCE_LENGTH):
    """Queries the SavedModel with TensorFlow only, at a sequence length."""
    import tensorflow as tf

    served = tf.saved_model.load(directory)
    rng = np.random.default_rng(0)
    batch = {
        "token_ids": tf.constant(rng.integers(1, 100, (4, length)), tf.int32),
        "segment_ids": tf.zeros((4, length), tf.int32),
        "padding_mask": tf.ones((4, length), tf.int32),
    }
    # Mixed combinations; "" and the unknown "yo" are absent (unknown="absent").
    languages = tf.constant(["sw", "en", "", "yo"])
    tasks = tf.constant(["qa", "ner", "qa", "ner"])
    by_name = served.signatures["serving_default"](
        **batch, language=languages, task=tasks
    )
    ids = schema.encode(
        [{"language": "sw", "task": "qa"}, {"language": "en", "task": "ner"},
         {"task": "qa"}, {"task": "ner"}]
    )
    by_ids = served.signatures["serve_ids"](**batch, feature_ids=tf.constant(ids))
    pooled = by_name["pooled_output"].numpy()
    np.testing.assert_allclose(pooled, by_ids["pooled_output"].numpy(), atol=1e-6)
    if model is not None:
        expected = model({**{k: v.numpy() for k, v in batch.items()}, "feature_ids": ids})
        np.testing.assert_allclose(
            pooled, keras.ops.convert_to_numpy(expected["pooled_output"]), atol=1e-5
        )
    print("signatures:", sorted(served.signatures))
    print(f"length {length}: pooled_output[:, :4] =\n", np.round(pooled[:, :4], 4))
    return pooled


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=None, help="SavedModel directory")
    args = parser.parse_args()
    directory = args.output or os.path.join(tempfile.mkdtemp(), "flix_saved_model")
    model, schema = export(directory)
    print(f"Exported to {directory}")
    for length in (SEQUENCE_LENGTH, SEQUENCE_LENGTH // 2):
        query(directory, schema, model, length)


if __name__ == "__main__":
    main()
