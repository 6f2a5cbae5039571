"""PEFT adapter folders: `adapter_config.json` and `adapter_model.safetensors`."""

import contextlib
import json
import os
import re
import shutil
import tempfile

from safetensors.numpy import load_file
from safetensors.numpy import save_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_KEY_PREFIX = "base_model.model."
_WEIGHT_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<factor>[AB])\.weight")


def lora_config(rank, target_modules, fan_in_fan_out, base_model_name_or_path, task_type):
    """The `adapter_config.json` of a LoRA whose scales are in its weights.

    `lora_alpha = r` makes PEFT's scaling `lora_alpha / r` one, so the update
    is exactly `lora_B @ lora_A`. The keys are those of PEFT's `LoraConfig`;
    no other field is needed by PEFT or by multi-LoRA servers.
    """
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model_name_or_path,
        "r": rank,
        "lora_alpha": rank,
        "target_modules": sorted(target_modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "init_lora_weights": True,
        "inference_mode": True,
    }


def write_adapter(folder, config, weights):
    """Writes one PEFT adapter into the existing, empty `folder`.

    Args:
        folder: the folder.
        config: the `adapter_config.json` content.
        weights: a dict from module name to `(lora_A, lora_B)`.
    """
    tensors = {}
    for module, (lora_a, lora_b) in weights.items():
        tensors[f"{_KEY_PREFIX}{module}.lora_A.weight"] = lora_a
        tensors[f"{_KEY_PREFIX}{module}.lora_B.weight"] = lora_b
    with open(os.path.join(folder, CONFIG_FILE), "w") as file:
        json.dump(config, file, indent=2)
    save_file(tensors, os.path.join(folder, WEIGHTS_FILE), metadata={"format": "pt"})


def read_adapter(folder):
    """Reads a PEFT LoRA adapter folder.

    Args:
        folder: a folder holding `adapter_config.json` and
            `adapter_model.safetensors` (what PEFT's `save_pretrained`
            writes).

    Returns:
        `(config, weights)`: the config dict, and a dict from module name (as
        in the saved model, without PEFT's `base_model.model.`) to
        `(lora_A, lora_B)` float32 arrays.

    Raises:
        ValueError: if a file is missing, the adapter is not a LoRA, or its
            weights are not pairs of `lora_A` / `lora_B` matrices.
    """
    paths = [os.path.join(folder, name) for name in (CONFIG_FILE, WEIGHTS_FILE)]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ValueError(
            f"'{folder}' is not a PEFT adapter folder: {missing} not found "
            f"(expected {CONFIG_FILE} and {WEIGHTS_FILE}, as PEFT's "
            "save_pretrained writes them)."
        )
    with open(paths[0]) as file:
        config = json.load(file)
    if config.get("peft_type") != "LORA":
        raise ValueError(
            f"'{folder}' holds a {config.get('peft_type')!r} adapter; only "
            "'LORA' adapters can be imported."
        )
    factors = {}
    for key, value in load_file(paths[1]).items():
        match = _WEIGHT_KEY.fullmatch(key.removeprefix(_KEY_PREFIX))
        if match is None or value.ndim != 2:
            raise ValueError(
                f"'{folder}': tensor '{key}' of shape {value.shape} is not a "
                "LoRA matrix (expected '<module>.lora_A.weight' and "
                "'<module>.lora_B.weight'; embedding LoRA, DoRA and bias "
                "weights cannot be imported)."
            )
        factors.setdefault(match["module"], {})[match["factor"]] = value.astype("float32")
    unpaired = sorted(module for module, pair in factors.items() if len(pair) != 2)
    if unpaired:
        raise ValueError(f"'{folder}': modules {unpaired} lack lora_A or lora_B.")
    return config, {module: (pair["A"], pair["B"]) for module, pair in factors.items()}


@contextlib.contextmanager
def new_directory(directory):
    """A temporary folder that becomes `directory` if the block succeeds.

    Nothing is written to `directory` until everything is: an error leaves
    no half-written adapter behind.

    Raises:
        ValueError: if `directory` exists and is not an empty folder.
    """
    directory = os.path.abspath(directory)
    if os.path.exists(directory) and (
        not os.path.isdir(directory) or os.listdir(directory)
    ):
        raise ValueError(
            f"'{directory}' already exists and is not an empty folder; "
            "choose a new folder (nothing was written)."
        )
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    temporary = tempfile.mkdtemp(dir=parent, prefix=".partial-")
    os.chmod(temporary, 0o755)  # mkdtemp's 0o700 would hide it from a server.
    try:
        yield temporary
        if os.path.isdir(directory):
            os.rmdir(directory)
        os.rename(temporary, directory)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise

