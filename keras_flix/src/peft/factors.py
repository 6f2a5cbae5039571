"""FLix adapter factors as PEFT LoRA weights of Hugging Face modules, and back.

PEFT's LoRA on a module computes `scaling * lora_B @ lora_A @ x` with
`lora_A.weight` `[r, in]` and `lora_B.weight` `[out, r]` (also for GPT-2's
`Conv1D`, whose own weight is `[in, out]`). A FLix layer's update for one
combination is `x @ a @ b` with `a` `[d_in, R]` and `b` `[R, d_out]` (scales
folded into `b`), so `lora_A = a.T`, `lora_B = b.T`, `scaling = 1`. A module
fused from several KerasHub layers (GPT-2's `c_attn`) gets the layers'
`lora_A`s stacked and a block-diagonal `lora_B` (each layer's rows in its
own output slice, zeros elsewhere): exact, of rank the sum of the parts'.
"""

import numpy as np

from keras_flix.src.peft.names import HFTarget


def hf_targets(layers, names, prefix):
    """Each FLix layer's `HFTarget`, with `prefix` on the module names.

    Args:
        layers: the model's FLix layers.
        names: the family's `HFModuleNames`.
        prefix: what goes before each module name (see `hf_names_of`).

    Returns:
        A dict from each layer's path to its `HFTarget`.

    Raises:
        ValueError: naming every layer that has no Hugging Face counterpart.
    """
    targets = {layer.path: names.target(layer.path) for layer in layers}
    missing = [path for path, target in targets.items() if target is None]
    if missing:
        raise ValueError(
            f"FLix target layers {missing} have no Hugging Face counterpart "
            f"in a {names!r} model. Layers with one: "
            f"{names.modules()} (retrofit with `target_layers` among them)."
        )
    return {
        path: HFTarget(prefix + target.module, target.part, target.num_parts)
        for path, target in targets.items()
    }


def peft_weights(layers, targets, feature_ids):
    """One combination's update of every module, as PEFT LoRA weights.

    Args:
        layers: the model's FLix layers.
        targets: each layer's `HFTarget`, from `hf_targets`.
        feature_ids: the combination (see `FLixAdapter.combination_factors`).

    Returns:
        `(weights, rank)`: a dict from module name to `(lora_A, lora_B)`
        (float32 `[rank, in]` and `[out, rank]`, scales folded into
        `lora_B`, so that `lora_alpha = rank` reproduces the update), and
        the one rank of every module: a module of lower rank (a GPT-2 layer
        beside a fused `c_attn`) is padded with zeros, which adds nothing.
    """
    parts = {}
    for layer in layers:
        factors = layer.combination_factors(feature_ids)
        if factors is None:
            continue
        target = targets[layer.path]
        parts.setdefault(target.module, (target.num_parts, {}))[1][target.part] = factors
    weights = {module: _fused(*entry) for module, entry in parts.items()}
    rank = max(lora_a.shape[0] for lora_a, _ in weights.values())
    return {
        module: (_pad(lora_a, rank, axis=0), _pad(lora_b, rank, axis=1))
        for module, (lora_a, lora_b) in weights.items()
    }, rank


def _fused(num_parts, factors):
    """`(lora_A, lora_B)` of a module from its parts' `{part: (a, b)}`."""
    ordered = [factors[part] for part in sorted(factors)]
    lora_a = np.concatenate([a.T for a, _ in ordered], axis=0)
    d_out = ordered[0][1].shape[1]
    lora_b = np.zeros((num_parts * d_out, lora_a.shape[0]), "float32")
    column = 0
    for part in sorted(factors):
        b = factors[part][1]
        lora_b[part * d_out : (part + 1) * d_out, column : column + b.shape[0]] = b.T
        column += b.shape[0]
    return lora_a.astype("float32"), lora_b


def _pad(weight, rank, axis):
    missing = rank - weight.shape[axis]
    widths = [(0, 0), (0, 0)]
    widths[axis] = (0, missing)
    return np.ascontiguousarray(np.pad(weight, widths), dtype="float32")


def flix_factors(lora_a, lora_b, target, d_in, d_out):
    """A layer's `(a, b)` (`[d_in, r]`, `[r, d_out]`) in a module's PEFT weights.

    The inverse of `peft_weights` for one layer: `x @ a @ b` is the module's
    unscaled LoRA update restricted to the layer's output slice. Ranks whose
    `lora_B` columns are zero in that slice add nothing to it and are left
    out, so `r` is the rank the layer needs: a block of GPT-2's fused
    `c_attn` (or a zero-padded module) needs only its own block's rank.

    Args:
        lora_a, lora_b: the module's `[r, in]` and `[out, r]` weights.
        target: the layer's `HFTarget`.
        d_in, d_out: the layer's adapter input and output sizes.

    Raises:
        ValueError: if the weights' shapes do not fit the layer.
    """
    if lora_a.shape[1] != d_in or lora_b.shape != (target.num_parts * d_out, lora_a.shape[0]):
        raise ValueError(
            f"PEFT weights of module '{target.module}' have shapes lora_A "
            f"{tuple(lora_a.shape)} and lora_B {tuple(lora_b.shape)}; the FLix "
            f"layer needs lora_A (r, {d_in}) and lora_B "
            f"({target.num_parts * d_out}, r)."
        )
    rows = lora_b[target.part * d_out : (target.part + 1) * d_out]
    used = np.any(rows != 0, axis=0)
    return lora_a[used].T, rows[:, used].T


def untargeted_rows(lora_b, targets, d_out):
    """The rows of a fused module's `lora_B` that no FLix layer receives."""
    kept = np.zeros(lora_b.shape[0], bool)
    for target in targets:
        kept[target.part * d_out : (target.part + 1) * d_out] = True
    return lora_b[~kept]
