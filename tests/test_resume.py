"""An interrupted fit resumed with kf.callbacks.BackupAndRestore ends where
the uninterrupted fit ends, and data that cannot resume exactly is refused."""

import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import SCHEMA
from helpers import dense_flix_model

import keras_flix as kf

TESTS = os.path.dirname(os.path.abspath(__file__))

# A retrofitted BertTextClassifier (dropout in the backbone and the head,
# feature dropout, LazyAdam) fit on tagged raw text through its preprocessor.
# Argument: a JSON dict with `data` ("passes": a finite dataset, the same
# every pass; "stream": an endless one with steps_per_epoch), `save_freq`,
# `kill` (["batch", n]: SIGKILL after the n-th batch of the fit; ["epoch", e]:
# after epoch e ends and is backed up; or null), `backup` and `out`.
FIT_SCRIPT = """
import json, os, signal, sys
import numpy as np, keras, tensorflow as tf
sys.path.insert(0, {tests!r})
from helpers import SCHEMA, tiny_classifier
import keras_flix as kf

args = json.loads(sys.argv[1])
model = kf.retrofit(tiny_classifier(seed=0), SCHEMA, rank={{"language": 2, "task": 3}},
                    feature_dropout=0.3, train_also=["logits"])
model.compile(optimizer=kf.optimizers.LazyAdam(1e-2),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
rng = np.random.default_rng(0)
words = np.array(["the", "a", "cat", "dog", "sat", "ran", "big", "small"])
texts = [" ".join(rng.choice(words, 4)) for _ in range(48)]
ids = np.stack([rng.integers(-1, 3, 48), rng.integers(-1, 2, 48)], 1).astype("int32")
labels = rng.integers(0, 2, 48)
dataset = tf.data.Dataset.from_tensor_slices(({{"inputs": texts, "feature_ids": ids}}, labels))
if args["data"] == "passes":
    dataset = dataset.shuffle(48, seed=1, reshuffle_each_iteration=False).batch(8)
    steps_per_epoch = None  # 6 batches an epoch
else:
    dataset = dataset.shuffle(48, seed=1).repeat().batch(8)
    steps_per_epoch = 4

class Kill(keras.callbacks.Callback):
    batches = 0
    def on_train_batch_end(self, batch, logs=None):
        Kill.batches += 1
        if args["kill"] == ["batch", Kill.batches]:
            os.kill(os.getpid(), signal.SIGKILL)
    def on_epoch_end(self, epoch, logs=None):
        if args["kill"] == ["epoch", epoch]:
            os.kill(os.getpid(), signal.SIGKILL)

backup = kf.callbacks.BackupAndRestore(args["backup"], save_freq=args["save_freq"])
history = model.fit(dataset, epochs=3, steps_per_epoch=steps_per_epoch,
                    callbacks=[backup, Kill()], verbose=0)
state = {{f"model/{{v.path}}": keras.ops.convert_to_numpy(v) for v in model.variables}}
state.update({{f"optimizer/{{v.path}}": keras.ops.convert_to_numpy(v)
              for v in model.optimizer.variables}})
np.savez(args["out"], **state, losses=np.array(history.history["loss"]),
         epochs=np.array(history.epoch))
"""


def fit(tmp_path, name, **args):
    """Runs the fit in a fresh process; returns its return code and outputs."""
    import json

    args = {"backup": str(tmp_path / "backup"), "out": str(tmp_path / f"{name}.npz"),
            "kill": None, **args}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", FIT_SCRIPT.format(tests=TESTS), json.dumps(args)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    if args["kill"] is None:
        assert result.returncode == 0, result.stderr[-3000:]
        return dict(np.load(args["out"]))
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    return None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    return {data: fit(tmp_path, data, data=data, save_freq="epoch")
            for data in ("passes", "stream")}


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, save_freq, kill",
    [
        # Backed up after batch 8 (epoch 1, batch 2), killed after batch 9.
        ("passes", 2, ["batch", 9]),
        # Killed as epoch 0 ends, right after its backup.
        ("passes", "epoch", ["epoch", 0]),
        # Backed up after batch 6 (epoch 1, batch 2), killed after batch 7.
        ("stream", 3, ["batch", 7]),
        # Killed mid-epoch 2: resumes from the end of epoch 1.
        ("stream", "epoch", ["batch", 10]),
    ],
)
def test_a_killed_fit_resumes_to_the_uninterrupted_result(
    tmp_path, uninterrupted, data, save_freq, kill
):
    fit(tmp_path, "killed", data=data, save_freq=save_freq, kill=kill)
    assert os.listdir(tmp_path / "backup") == ["training_state.npz"]
    resumed = fit(tmp_path, "resumed", data=data, save_freq=save_freq)
    expected = uninterrupted[data]
    assert sorted(resumed) == sorted(expected)
    for key, value in expected.items():
        if key in ("losses", "epochs"):
            continue
        assert np.max(np.abs(resumed[key] - value), initial=0) <= 1e-6, key
    # The resumed fit runs the epochs left, with the same per-epoch losses.
    first = resumed["epochs"][0]
    np.testing.assert_array_equal(resumed["epochs"], np.arange(first, 3))
    np.testing.assert_allclose(resumed["losses"], expected["losses"][first:], atol=1e-6)
    assert not (tmp_path / "backup").exists()
