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
    dataset = dataset.shuffle(48, seed=1, reshuffle_each_iteration=False).repeat().batch(8)
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


class Interrupt(keras.callbacks.Callback):
    """Stops the fit with an error after its `batches`-th batch."""

    def __init__(self, batches):
        super().__init__()
        self.batches = batches
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.batches:
            raise KeyboardInterrupt


def small_problem():
    """A fresh small FLix model (feature dropout, Dropout, LazyAdam) and data."""
    keras.utils.set_random_seed(0)
    model = dense_flix_model(dropout=0.3, feature_dropout=0.3)
    # A compiled metric: its state is part of a mid-epoch backup.
    model.compile(optimizer=kf.optimizers.LazyAdam(1e-2), loss="mse", metrics=["mae"])
    rng = np.random.default_rng(0)
    x = {"inputs": rng.standard_normal((40, 8)).astype("float32"),
         "feature_ids": np.stack([rng.integers(-1, 3, 40), rng.integers(-1, 2, 40)], 1)
         .astype("int32")}
    return model, x, rng.standard_normal((40, 4)).astype("float32")


def small_fit(backup, interrupt=None, dataset=False, **fit_kwargs):
    """Fits the small problem for 3 epochs with `backup`; `None` if interrupted.

    The data: a seeded tf.data pipeline of 5 batches with `dataset`, else
    the arrays.
    """
    model, x, y = small_problem()
    data = (x, y)
    if dataset:
        data = (tf.data.Dataset.from_tensor_slices(data).shuffle(
            40, seed=1, reshuffle_each_iteration=False).batch(8),)
    callbacks = [backup] + ([Interrupt(interrupt)] if interrupt else [])
    try:
        history = model.fit(*data, epochs=3, callbacks=callbacks, verbose=0, **fit_kwargs)
    except KeyboardInterrupt:
        return None
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables], history


@pytest.mark.parametrize(
    "save_freq, interrupt",
    [
        (2, 7),  # backed up mid-epoch 1 (after its batch 1), interrupted after batch 2
        pytest.param("epoch", 8, marks=pytest.mark.slow),
        pytest.param(5, 6, marks=pytest.mark.slow),  # backed up at epoch 0's last batch
    ],
)
def test_an_interrupted_fit_resumes_exactly_in_a_fresh_model(tmp_path, save_freq, interrupt):
    def fit(directory, interrupt=None):
        backup = kf.callbacks.BackupAndRestore(tmp_path / directory, save_freq=save_freq)
        return small_fit(backup, interrupt, dataset=True)

    expected, full = fit("a")
    assert fit("b", interrupt) is None
    got, resumed = fit("b")
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)
    first = resumed.epoch[0]
    for name in ("loss", "mae"):
        np.testing.assert_allclose(
            resumed.history[name], full.history[name][first:], atol=1e-6
        )
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_keras_own_callback_does_not_resume_exactly(tmp_path):
    """Why keras_flix has its own: Keras' restores weights and the epoch only."""
    def fit(interrupt=None):
        backup = keras.callbacks.BackupAndRestore(tmp_path / "keras")
        return small_fit(backup, interrupt, batch_size=8, shuffle=False)

    expected, _ = fit()
    assert fit(8) is None  # backed up after epoch 0, interrupted in epoch 1
    got, _ = fit()
    assert max(np.max(np.abs(a - b)) for a, b in zip(got, expected)) > 1e-4


def fit_with_backup(tmp_path, data, model=None, **fit_kwargs):
    model = model or dense_flix_model()
    model.compile(optimizer="adam", loss="mse")
    backup = kf.callbacks.BackupAndRestore(tmp_path / "backup")
    return model.fit(data, callbacks=[backup], verbose=0, **fit_kwargs)


def xy(n=16):
    """`n` distinct examples, so that batches in another order differ."""
    return ({"inputs": np.arange(n * 8, dtype="float32").reshape(n, 8),
             "feature_ids": np.zeros((n, 2), "int32")},
            np.zeros((n, 4), "float32"))


@pytest.mark.parametrize(
    "data, fit_kwargs, message",
    [
        (lambda: xy(), {}, "Arrays with shuffle=True"),
        (lambda: tf.data.Dataset.from_tensor_slices(xy()).shuffle(16, seed=0).batch(4), {},
         "Two iterators of the dataset start with different batches"),
        (lambda: tf.data.Dataset.from_tensor_slices(xy()).shuffle(16, seed=0).repeat()
         .batch(4), {"steps_per_epoch": 2},
         "Two iterators of the dataset start with different batches"),
        (lambda: tf.data.Dataset.from_tensor_slices(xy()).batch(4),
         {"steps_per_epoch": 2}, "over a dataset of 4 batches continues each epoch"),
        (lambda: (b for b in [xy(4)] * 8), {"steps_per_epoch": 2},
         "needs a tf.data.Dataset .*received generator"),
    ],
)
def test_data_a_resumed_fit_could_not_reproduce_is_refused(tmp_path, data, fit_kwargs, message):
    data = data()
    x, y = data if isinstance(data, tuple) else (data, None)
    with pytest.raises(ValueError, match=message):
        fit_with_backup(tmp_path, x, y=y, epochs=2, **fit_kwargs)


def test_resumable_data_is_accepted(tmp_path):
    x, y = xy()
    fit_with_backup(tmp_path, x, y=y, batch_size=4, shuffle=False, epochs=2)
    passes = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        16, seed=0, reshuffle_each_iteration=False).batch(4)
    fit_with_backup(tmp_path, passes, epochs=2)
    stream = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        16, seed=0, reshuffle_each_iteration=False).repeat().batch(4)
    fit_with_backup(tmp_path, stream, epochs=2, steps_per_epoch=3)


def test_a_backup_of_another_model_is_refused(tmp_path):
    x, y = xy()
    model = dense_flix_model()
    model.compile(optimizer="adam", loss="mse")
    backup = kf.callbacks.BackupAndRestore(tmp_path / "backup", delete_checkpoint=False)
    model.fit(x, y, batch_size=4, shuffle=False, epochs=1, callbacks=[backup], verbose=0)
    other = dense_flix_model(rank=3)
    other.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match=r"was written by another model.*number 2 \(saved: \['proj/flix_language_a', \[3, 8, 2\]\]"):
        other.fit(x, y, batch_size=4, shuffle=False, epochs=2, callbacks=[backup], verbose=0)


def test_an_unreadable_backup_falls_back_to_the_previous_one(tmp_path):
    x, y = xy()
    model = dense_flix_model()
    model.compile(optimizer="adam", loss="mse")
    backup = kf.callbacks.BackupAndRestore(
        tmp_path / "backup", double_checkpoint=True, delete_checkpoint=False)
    model.fit(x, y, batch_size=4, shuffle=False, epochs=2, callbacks=[backup], verbose=0)
    assert sorted(os.listdir(tmp_path / "backup")) == [
        "training_state.npz", "training_state.previous.npz"]
    (tmp_path / "backup" / "training_state.npz").write_bytes(b"damaged")
    history = model.fit(x, y, batch_size=4, shuffle=False, epochs=3, callbacks=[backup],
                        verbose=0)
    assert history.epoch == [1, 2]  # the previous backup is of epoch 0
    (tmp_path / "backup" / "training_state.npz").write_bytes(b"damaged")
    (tmp_path / "backup" / "training_state.previous.npz").write_bytes(b"damaged")
    with pytest.raises(ValueError, match="cannot be read"):
        model.fit(x, y, batch_size=4, shuffle=False, epochs=3, callbacks=[backup], verbose=0)


def test_other_models_and_bad_arguments_are_refused(tmp_path):
    x, y = xy()
    inputs = keras.Input((8,))
    plain = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    plain.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="in the fit of a keras-flix model"):
        plain.fit(x["inputs"], y, callbacks=[kf.callbacks.BackupAndRestore(tmp_path / "b")],
                  verbose=0)
    model = dense_flix_model()
    model.compile(optimizer="adam", loss="mse")
    two = [kf.callbacks.BackupAndRestore(tmp_path / d) for d in ("b", "c")]
    with pytest.raises(ValueError, match="at most one .*received 2"):
        model.fit(x, y, shuffle=False, callbacks=two, verbose=0)
    for save_freq in (0, "batch", 1.5, True):
        with pytest.raises(ValueError, match="Invalid value for argument `save_freq`"):
            kf.callbacks.BackupAndRestore(tmp_path / "b", save_freq=save_freq)
    with pytest.raises(ValueError, match="Empty `backup_dir`"):
        kf.callbacks.BackupAndRestore("")
