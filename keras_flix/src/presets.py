"""Presets of a retrofitted KerasHub task: the task's preset plus its adapters.

A FLix preset directory is, first, the KerasHub preset of the base task as
it computes with every feature absent: its own weights (the frozen base
kernels, and the `train_also` layers as trained), its preprocessor and
tokenizer assets. KerasHub alone loads it
(`keras_hub.models.CausalLM.from_preset(preset_dir)`). Beside it lie two
files: `CONFIG_FILE`, the task class and the FLix settings (schema
included), and `ADAPTERS_FILE`, the adapters as `keras_flix.save_adapters`
writes them. `FLixModel.from_preset` loads the task, retrofits it with the
settings and loads the adapters, which checks them against the base
kernels.
"""

import json
import os

import keras

from keras_flix.src.adapter_files import save_adapters
from keras_flix.src.hub import Task
from keras_flix.src.merging import merge

CONFIG_FILE = "flix_config.json"
"""The FLix settings and the task class, in a preset directory."""

ADAPTERS_FILE = "flix_adapters.flix"
"""The adapter weights (`keras_flix.save_adapters`), in a preset directory."""


def save_preset(model, preset_dir, max_shard_size=10):
    """`FLixModel.save_to_preset`: see its docstring.

    The task's weights are those of `keras_flix.merge(model, {})` (every
    feature absent: the base kernels exactly), which holds a second copy
    of the base weights while it saves.
    """
    base_model = model.base_model
    if not isinstance(base_model, Task):
        raise TypeError(
            f"`save_to_preset` needs a retrofitted KerasHub task; "
            f"'{base_model.name}' is a {type(base_model).__name__}. Save the "
            "model with `model.save('model.keras')` or its adapters with "
            "`keras_flix.save_adapters`."
        )
    merge(model, {}).save_to_preset(preset_dir, max_shard_size=max_shard_size)
    save_adapters(model, os.path.join(preset_dir, ADAPTERS_FILE))
    saved = {
        "task_class": keras.saving.get_registered_name(type(base_model)),
        "name": model.name,
        "flix_config": model.flix_config.get_config(),
    }
    with open(os.path.join(preset_dir, CONFIG_FILE), "w") as file:
        json.dump(saved, file, indent=2)


def read_preset(preset_dir):
    """What `FLixModel.from_preset` needs from a FLix preset directory.

    Returns:
        `(task_class, flix_config, name, adapters_path)`: the KerasHub task
        class, the `FLixConfig` config, the FLix model's name and the
        adapter file's path.
    """
    path = os.path.join(preset_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"'{preset_dir}' has no {CONFIG_FILE}: it is not a FLix preset "
            "(written by `FLixModel.save_to_preset`). Load a KerasHub preset "
            "with the task class's `from_preset` and `keras_flix.retrofit` it."
        )
    with open(path) as file:
        saved = json.load(file)
    task_class = keras.saving.get_registered_object(saved["task_class"])
    if task_class is None:
        raise ValueError(
            f"'{path}' names the task class '{saved['task_class']}', which "
            "this KerasHub does not register."
        )
    return (
        task_class,
        saved["flix_config"],
        saved["name"],
        os.path.join(preset_dir, ADAPTERS_FILE),
    )
