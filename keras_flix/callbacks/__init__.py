"""Callbacks for training keras-flix models.

`BackupAndRestore` takes the arguments of Keras' callback of that name and
resumes an interrupted fit exactly: weights, optimizer and metric state,
seed-generator states and the position in the data are backed up and
restored.
"""

from keras_flix.src.callbacks.backup_and_restore import BackupAndRestore

__all__ = ["BackupAndRestore"]
