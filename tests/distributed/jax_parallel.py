"""FLix training on 8 simulated CPU devices with keras.distribution (JAX).

Run as a script in its own process: the device count must be set before JAX
is imported. Arguments: scenarios, each a mode joined by `+` to any of the
options `lazy_adam` (train the `FLixModel` itself with `LazyAdam`, row-sparse
table gradients, instead of a wrapper with SGD) and `int8` (quantize the
backbone with Keras' `quantize("int8")`, under the distribution, before
`retrofit`), e.g. `values_sharded+lazy_adam`. Prints one JSON line: for each
scenario, the single-device and distributed losses, the largest weight
difference after training, the shardings of the adapter variables and of
the base kernels, and the base kernels' dtypes. One process runs them all
(each starts from `set_random_seed(0)` and no distribution).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import json  # noqa: E402

import jax  # noqa: E402
import keras  # noqa: E402
import keras_hub  # noqa: E402
import numpy as np  # noqa: E402

import keras_flix as kf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import randomize_adapters  # noqa: E402

SCHEMA = kf.FeatureSchema(
    {"language": ["en", "de", "sw", "fr"], "task": ["qa", "ner", "pos", "mt"]}
)
BATCH, LENGTH, STEPS = 16, 8, 4


def gemma():
    return keras_hub.models.GemmaBackbone(
        vocabulary_size=64, num_layers=2, num_query_heads=4, num_key_value_heads=4,
        hidden_dim=32, intermediate_dim=64, head_dim=8,
    )


def bert():
    return keras_hub.models.BertBackbone(
        vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=LENGTH,
    )


def data(hidden):
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1, 64, (BATCH, LENGTH)).astype("int32"),
        "padding_mask": np.ones((BATCH, LENGTH), "int32"),
        "feature_ids": np.stack(
            [rng.integers(-1, 4, BATCH), rng.integers(-1, 4, BATCH)], 1
        ).astype("int32"),
    }
    y = rng.standard_normal((BATCH, LENGTH, hidden)).astype("float32")
    return x, y


class Sequence(keras.Model):
    """The FLix backbone's sequence output, for an MSE loss."""

    def __init__(self, flix):
        super().__init__()
        self.flix = flix

    def call(self, inputs, training=None):
        outputs = self.flix(inputs, training=training)
        return outputs["sequence_output"] if isinstance(outputs, dict) else outputs


def train(
    make_backbone, distribution, initial_weights=None, lazy_adam=False, quantization=None
):
    keras.distribution.set_distribution(distribution)
    keras.utils.set_random_seed(0)
    backbone = make_backbone()
    if quantization:
        backbone.quantize(quantization)
    targets = [".*(query|value|attention_output|ffw_linear|_dense)"]
    base = backbone
    if lazy_adam and isinstance(backbone.output, dict):
        # The FLixModel itself is trained (so its row-sparse jax step runs):
        # it needs the sequence output alone.
        base = keras.Model(backbone.input, backbone.output["sequence_output"])
    model = kf.retrofit(base, SCHEMA, rank=2, target_layers=targets)
    if initial_weights is not None:
        model.set_weights(initial_weights)
    else:
        randomize_adapters(model, seed=1, scale=0.1)
    weights = model.get_weights()
    if lazy_adam:
        wrapper = model
        wrapper.compile(optimizer=kf.optimizers.LazyAdam(0.01), loss="mse")
    else:
        wrapper = Sequence(model)
        wrapper.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x, y = data(32)
    if "segment_ids" in backbone.input:
        x["segment_ids"] = np.zeros((BATCH, LENGTH), "int32")
    losses = [float(wrapper.train_on_batch(x, y)) for _ in range(STEPS)]
    shardings = {
        v.path: str(getattr(v.value.sharding, "spec", None))
        for layer in model.flix_layers[:2]
        for v in layer.adapter_variables[:2]
    }
    kernel_shardings = {
        layer._kernel.path: str(getattr(layer._kernel.value.sharding, "spec", None))
        for layer in model.flix_layers[:2]
    }
    kernel_dtypes = {layer._kernel.path: layer._kernel.dtype for layer in model.flix_layers}
    result = (
        losses,
        [np.asarray(w) for w in model.get_weights()],
        shardings,
        kernel_shardings,
        kernel_dtypes,
    )
    keras.distribution.set_distribution(None)
    return result, weights


MODES = ("model_parallel", "values_sharded", "data_parallel")
OPTIONS = ("lazy_adam", "int8")


def run(scenario):
    mode, *options = scenario.split("+")
    if mode not in MODES:
        raise SystemExit(f"unknown mode {mode!r} in {scenario!r}; expected one of {MODES}")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise SystemExit(f"unknown options {unknown}; expected any of {OPTIONS}")
    lazy_adam = "lazy_adam" in options
    quantization = "int8" if "int8" in options else None
    devices = jax.devices()
    assert len(devices) == 8, devices
    if mode in ("model_parallel", "values_sharded"):
        make = gemma
        mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
        base = keras_hub.models.GemmaBackbone.get_layout_map(mesh, model_parallel_dim_name="model", data_parallel_dim_name="batch")
        distribution = keras.distribution.ModelParallel(
            layout_map=kf.layout_map(
                base, values_axis="model" if mode == "values_sharded" else None
            ),
            batch_dim_name="batch",
        )
    else:
        make = bert
        distribution = keras.distribution.DataParallel(devices=devices)
    (single_losses, single_weights, *_), initial = train(
        make, None, lazy_adam=lazy_adam, quantization=quantization
    )
    (losses, weights, shardings, kernel_shardings, kernel_dtypes), _ = train(
        make, distribution, initial, lazy_adam=lazy_adam, quantization=quantization
    )
    return {
        "single_losses": single_losses,
        "losses": losses,
        "max_weight_difference": max(
            float(np.max(np.abs(a - b))) for a, b in zip(weights, single_weights)
        ),
        "adapter_shardings": shardings,
        "kernel_shardings": kernel_shardings,
        "kernel_dtypes": kernel_dtypes,
    }


if __name__ == "__main__":
    print(json.dumps({scenario: run(scenario) for scenario in sys.argv[1:]}))
