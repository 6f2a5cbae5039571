"""FLix training under tf.distribute.MirroredStrategy on 2 logical CPUs.

Run as a script in its own process (logical devices must be configured
before TensorFlow initializes). Prints one JSON line with the one-device and
mirrored losses and the largest weight difference after training.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import json  # noqa: E402

import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2
)

import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_flix as kf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import randomize_adapters  # noqa: E402

SCHEMA = kf.FeatureSchema({"language": ["en", "de", "sw"], "task": ["qa", "ner"]})
BATCH, LENGTH = 8, 8


def dataset():
    rng = np.random.default_rng(0)
    n = 4 * BATCH
    x = {
        "token_ids": rng.integers(1, 64, (n, LENGTH)).astype("int32"),
        "segment_ids": np.zeros((n, LENGTH), "int32"),
        "padding_mask": np.ones((n, LENGTH), "int32"),
        "language": rng.choice(["en", "de", "sw"], n),
        "task": rng.choice(["qa", "ner"], n),
    }
    y = rng.standard_normal((n, 32)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = kf.data.tag(ds, SCHEMA, from_keys={"language": "language", "task": "task"})
    return ds.batch(BATCH)


class Pooled(keras.Model):
    def __init__(self, flix):
        super().__init__()
        self.flix = flix

    def call(self, inputs, training=None):
        return self.flix(inputs, training=training)["pooled_output"]


def train(strategy, initial_weights=None):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
            intermediate_dim=64, max_sequence_length=LENGTH,
        )
        model = kf.retrofit(backbone, SCHEMA, rank=2)
        if initial_weights is not None:
            model.set_weights(initial_weights)
        else:
            randomize_adapters(model, seed=1, scale=0.1)
        weights = model.get_weights()
        wrapper = Pooled(model)
        wrapper.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = wrapper.fit(dataset(), epochs=2, verbose=0)
    return history.history["loss"], model.get_weights(), weights


def main():
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2, devices
    single_losses, single_weights, initial = train(tf.distribute.OneDeviceStrategy(devices[0]))
    mirrored = tf.distribute.MirroredStrategy(devices)
    losses, weights, _ = train(mirrored, initial)
    print(json.dumps({
        "replicas": mirrored.num_replicas_in_sync,
        "single_losses": [float(v) for v in single_losses],
        "losses": [float(v) for v in losses],
        "max_weight_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(weights, single_weights)
        ),
    }))


if __name__ == "__main__":
    main()
