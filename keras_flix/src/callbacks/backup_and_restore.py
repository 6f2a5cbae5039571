"""`BackupAndRestore`: a fit that resumes exactly where it was interrupted."""

import json
import os
import shutil
import zipfile

import keras
import numpy as np

from keras_flix.src import backend
from keras_flix.src import keras_private
from keras_flix.src.atomic_files import replaced_atomically
from keras_flix.src.callbacks.resumable_data import at_epoch
from keras_flix.src.callbacks.resumable_data import batch_spec
from keras_flix.src.callbacks.resumable_data import keeps_one_iterator

_STATE_FILE = "training_state.npz"
_PREVIOUS_STATE_FILE = "training_state.previous.npz"
_POSITION_KEY = "position"
_GROUPS = ("model", "optimizer", "metrics")
_RANDOM_STATE_PREFIX = "random_state/"


class BackupAndRestore(keras.callbacks.Callback):
    """Backs up a fit and resumes it exactly where it was interrupted.

    Takes the arguments of `keras.callbacks.BackupAndRestore`, for the fit
    of a keras-flix model. A fit killed at any point (even by SIGKILL) and
    started again with the same arguments ends with the weights the
    uninterrupted fit would have had, because every piece of state a step
    depends on is backed up and restored:

    * every model variable, including the states of the seed generators
      that feature dropout and dropout layers draw from (Keras' own
      callback restores the weights, so a resumed fit draws other masks);
    * the optimizer's variables (moments, iteration count);
    * the metrics' variables, so the interrupted epoch's logs are exact;
    * the framework's global random state where Keras draws from it
      (torch's, for dropout layers built without a seed);
    * the position in the data: the epoch and the batches of it already
      trained on, which the resumed fit reads and drops (Keras' own
      callback restarts the epoch, and with `steps_per_epoch` restarts the
      data stream too).

    The data must yield the same batches from a fresh iterator: a
    `tf.data.Dataset` shuffled with a seed and
    `reshuffle_each_iteration=False` (endless, e.g. `repeat()` or
    `keras_flix.data.mix`, with `steps_per_epoch`, or finite without it),
    or arrays with `shuffle=False`; `fit` refuses other data with an error
    saying what to pass (see `keras_flix.src.callbacks.resumable_data`).
    Resuming reads (and drops) the batches before the resume point; inside
    the interrupted epoch it does so step by step, and other callbacks see
    those steps as batches with the backed-up logs.

    The backup is one file, written atomically, so a process killed while
    writing it leaves the previous backup. Like Keras' callback, it belongs
    to one fit of one model and is deleted when the fit completes.

    Args:
        backup_dir: the folder of the backup, used by nothing else.
        save_freq: `"epoch"` to back up at the end of every epoch, or an
            integer `n` to back up every `n` batches.
        double_checkpoint: also keep the previous backup, used when the
            latest cannot be read.
        delete_checkpoint: delete the backup when the fit completes.

    Example:

    >>> import os, tempfile
    >>> import keras, numpy as np
    >>> import keras_flix as kf
    >>> inputs = keras.Input((8,))
    >>> base = keras.Model(inputs, keras.layers.Dense(4, name="proj")(inputs))
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
    >>> model = kf.retrofit(base, schema, rank=2, target_layers=["proj"],
    ...                     feature_dropout=0.2)
    >>> model.compile(optimizer=kf.optimizers.LazyAdam(1e-2), loss="mse")
    >>> x = {"inputs": np.ones((8, 8), "float32"),
    ...      "feature_ids": np.zeros((8, 1), "int32")}
    >>> backup = kf.callbacks.BackupAndRestore(
    ...     os.path.join(tempfile.mkdtemp(), "backup"), save_freq=2)
    >>> history = model.fit(x, np.zeros((8, 4)), batch_size=2, epochs=2,
    ...                     shuffle=False, callbacks=[backup], verbose=0)
    >>> len(history.history["loss"])
    2
    """

    def __init__(
        self,
        backup_dir,
        save_freq="epoch",
        double_checkpoint=False,
        delete_checkpoint=True,
    ):
        super().__init__()
        if not backup_dir:
            raise ValueError("Empty `backup_dir` argument passed")
        if save_freq != "epoch" and (
            isinstance(save_freq, bool)
            or not isinstance(save_freq, int)
            or save_freq < 1
        ):
            raise ValueError(
                "Invalid value for argument `save_freq`. Received: "
                f"save_freq={save_freq}. Expected either 'epoch' or a "
                "positive integer."
            )
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.double_checkpoint = double_checkpoint
        self.delete_checkpoint = delete_checkpoint
        self._path = os.path.join(self.backup_dir, _STATE_FILE)
        self._previous_path = os.path.join(self.backup_dir, _PREVIOUS_STATE_FILE)
        self._resume = None  # the backup the coming fit resumes from
        self._data_positioned = False
        self._batch_spec = None  # of the coming fit's data
        self._epoch = 0
        self._batches = 0  # of the current epoch, trained or skipped
        self._skipped_batches = 0  # of the current epoch, read and dropped
        self._unsaved_batches = 0
        self._one_iterator = False  # whether every epoch reads one iterator
        # The framework's random state to restore, and when: "epoch_begin",
        # "batch_begin" (before the next step) or "skipped" (after the
        # batches skipped).
        self._pending_random_state = None
        self._restore_random_state_at = None

    def position_data(self, x, y=None, sample_weight=None, steps_per_epoch=None,
                      shuffle=True):
        """Reads the backup, and returns `x` positioned for the coming fit.

        `FLixModel.fit` calls it with its `x` (after any preprocessing) and
        `fit` arguments before the fit starts: the data is checked to be
        resumable, and for endless data with `steps_per_epoch` the batches
        of the epochs before the backup are skipped.

        Args:
            x, y, sample_weight, steps_per_epoch, shuffle: as given to `fit`.

        Returns:
            The `x` to fit on.
        """
        self._resume = self._read()
        epoch = self._resume[_POSITION_KEY]["epoch"] if self._resume else 0
        x = at_epoch(x, epoch, steps_per_epoch=steps_per_epoch, shuffle=shuffle)
        self._batch_spec = batch_spec(x, y, sample_weight)
        self._one_iterator = keeps_one_iterator(x, steps_per_epoch)
        self._data_positioned = True
        return x

    def on_train_begin(self, logs=None):
        if not self._data_positioned:
            raise ValueError(
                "keras_flix.callbacks.BackupAndRestore resumes the data "
                "position, which it learns in the fit of a keras-flix model "
                "(the model keras_flix.retrofit returns): use it with that "
                "model's fit, or keras.callbacks.BackupAndRestore elsewhere."
            )
        self._data_positioned = False
        self._epoch = self._batches = self._skipped_batches = 0
        self._unsaved_batches = 0
        if self._resume is None:
            return
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        # Metrics are reset as each epoch begins: restored then.
        self._restore(self._resume, ("model", "optimizer"))
        keras_private.set_initial_epoch(model, self._resume[_POSITION_KEY]["epoch"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches = self._skipped_batches = 0
        resume, self._resume = self._resume, None
        if resume is None:
            return
        # The framework's random state as the backup found it. Torch's data
        # loader draws from it as each iterator starts: a backup at an
        # epoch's end precedes the next epoch's iterator where every epoch
        # starts one, and follows it where one serves the whole fit (this
        # fit's first epoch starts its own); a backup mid-epoch follows the
        # last batch it saw.
        self._pending_random_state = {
            key[len(_RANDOM_STATE_PREFIX) :]: value
            for key, value in resume.items()
            if key.startswith(_RANDOM_STATE_PREFIX)
        }
        batches = resume[_POSITION_KEY]["batches"]
        if batches:
            keras_private.build_for_batch(self.model, self._batch_spec)
            self._restore(resume, ("metrics",))
            self._skip(batches)
            self._restore_random_state_at = "skipped"
        elif self._one_iterator:
            self._restore_random_state_at = "batch_begin"
        else:
            self._restore_random_state_at = "epoch_begin"
            self._restore_random_state("epoch_begin")

    def on_train_batch_begin(self, batch, logs=None):
        self._restore_random_state("batch_begin")

    def _restore_random_state(self, moment):
        if moment == self._restore_random_state_at:
            backend.set_framework_random_state(self._pending_random_state)
            self._pending_random_state = self._restore_random_state_at = None

    def on_train_batch_end(self, batch, logs=None):
        # Batches read and dropped while resuming were trained on before.
        trained = batch + 1 - max(self._batches, self._skipped_batches)
        self._batches = batch + 1
        self._unsaved_batches += max(trained, 0)
        if self._batches >= self._skipped_batches:
            self._restore_random_state("skipped")
        if self.save_freq != "epoch" and self._unsaved_batches >= self.save_freq:
            self._save()

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._batches = self._skipped_batches = 0
        if self.save_freq == "epoch":
            self._save()

    def on_train_end(self, logs=None):
        keras_private.set_initial_epoch(self.model, None)
        if self.delete_checkpoint and os.path.exists(self.backup_dir):
            shutil.rmtree(self.backup_dir)

    def _skip(self, batches):
        """Makes the next steps read and drop `batches` batches."""
        model = self.model
        steps = getattr(model, "steps_per_execution", 1) or 1
        calls = -(-batches // steps)
        train_function = model.train_function
        skip = backend.skip_train_function(model.get_metrics_result(), steps)

        def skipping(*args):
            nonlocal calls
            calls -= 1
            if calls == 0:
                model.train_function = train_function
            return skip(*args)

        model.train_function = skipping
        self._skipped_batches = batches

    def _variables(self):
        """The variables of each group, each variable in one group only."""
        model = self.model
        optimizer = model.optimizer.variables if model.optimizer is not None else []
        seen = set()
        groups = {}
        for group, variables in zip(
            _GROUPS, (model.variables, optimizer, model.metrics_variables)
        ):
            groups[group] = [v for v in variables if id(v) not in seen]
            seen.update(id(v) for v in variables)
        return groups

    def _save(self):
        self._unsaved_batches = 0
        groups = self._variables()
        arrays = {
            f"{group}/{i}": keras.ops.convert_to_numpy(variable)
            for group, variables in groups.items()
            for i, variable in enumerate(variables)
        }
        position = {
            "epoch": self._epoch,
            "batches": self._batches,
            "variables": {
                group: [[v.path, list(v.shape)] for v in variables]
                for group, variables in groups.items()
            },
        }
        arrays[_POSITION_KEY] = np.array(json.dumps(position))
        for name, value in backend.framework_random_state().items():
            arrays[_RANDOM_STATE_PREFIX + name] = value
        os.makedirs(self.backup_dir, exist_ok=True)
        with replaced_atomically(self._path) as temporary:
            with open(temporary, "wb") as file:
                np.savez(file, **arrays)
            if self.double_checkpoint and os.path.exists(self._path):
                os.replace(self._path, self._previous_path)

    def _read(self):
        """The latest readable backup, `None` if there is none."""
        problems = []
        for path in (self._path, self._previous_path):
            if not os.path.exists(path):
                continue
            try:
                with np.load(path, allow_pickle=False) as archive:
                    backup = {key: archive[key] for key in archive.files}
                backup[_POSITION_KEY] = json.loads(str(backup[_POSITION_KEY]))
                return backup
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                problems.append(f"{path}: {error}")
        if problems:
            raise ValueError(
                f"The backup in '{self.backup_dir}' cannot be read:\n  "
                + "\n  ".join(problems)
            )
        return None

    def _restore(self, backup, groups):
        # Variables are matched by position and shape: their paths carry
        # auto-numbered names (`seed_generator_9`) that differ by process.
        saved = backup[_POSITION_KEY]["variables"]
        variables = self._variables()
        for group in groups:
            shapes = [list(v.shape) for v in variables[group]]
            saved_shapes = [shape for _, shape in saved[group]]
            if shapes != saved_shapes:
                first = next(
                    (i for i, pair in enumerate(zip(shapes, saved_shapes))
                     if pair[0] != pair[1]),
                    min(len(shapes), len(saved_shapes)),
                )
                raise ValueError(
                    f"The backup in '{self.backup_dir}' was written by another "
                    f"model, optimizer or compile(): it holds "
                    f"{len(saved_shapes)} {group} variables, this fit has "
                    f"{len(shapes)}; the first that differs is number {first} "
                    f"(saved: {saved[group][first] if first < len(saved_shapes) else None}, "
                    f"this fit: {variables[group][first].path if first < len(shapes) else None})."
                )
        for group in groups:
            for i, variable in enumerate(variables[group]):
                variable.assign(backup[f"{group}/{i}"])


def positioned_for_resume(
    x, callbacks, y=None, sample_weight=None, steps_per_epoch=None, shuffle=True
):
    """`x` as a fit with `callbacks` must get it (see `BackupAndRestore`).

    Args:
        x, callbacks, y, sample_weight, steps_per_epoch, shuffle: as given
            to `fit`.

    Returns:
        `x`, positioned by the `BackupAndRestore` among `callbacks` if any.
    """
    backups = [c for c in callbacks or () if isinstance(c, BackupAndRestore)]
    if len(backups) > 1:
        raise ValueError(
            "A fit takes at most one keras_flix.callbacks.BackupAndRestore; "
            f"received {len(backups)}."
        )
    if not backups:
        return x
    return backups[0].position_data(
        x, y, sample_weight, steps_per_epoch=steps_per_epoch, shuffle=shuffle
    )
