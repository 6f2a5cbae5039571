"""Finding a model's target layers and swapping in FLix layers."""

import re

import keras

from keras_flix.src import keras_private
from keras_flix.src import surgery
from keras_flix.src.feature_scope import preserve_scope_in_remat
from keras_flix.src.hub import Backbone
from keras_flix.src.hub import Task
from keras_flix.src.layers.flix_adapter import FLixAdapter
from keras_flix.src.layers.flix_dense import FLixDense
from keras_flix.src.layers.flix_einsum_dense import FLixEinsumDense

_ADAPTABLE = (keras.layers.Dense, keras.layers.EinsumDense)


def flix_layers(model):
    """The FLix layers under `model`, in model order."""
    return [
        layer for layer in surgery.all_layers(model) if isinstance(layer, FLixAdapter)
    ]


def require_flix_layers(model):
    """The FLix layers under `model`; raises if there are none.

    Args:
        model: a model returned by `keras_flix.retrofit`, or any model or
            layer.

    Returns:
        The FLix layers, in model order.

    Raises:
        ValueError: if `model` holds no FLix layer.
    """
    layers = flix_layers(model)
    if not layers:
        raise ValueError(f"Model '{model.name}' holds no FLix layers.")
    return layers


def inject(model, config):
    """Replaces the target layers of `model` by FLix layers, in place.

    `retrofit` calls it on the model it adapts. `FLixModel.from_config` calls
    it on the base model it has just deserialized, because loading needs the
    same surgery: a KerasHub backbone or task is rebuilt from its constructor
    arguments, so its adapted layers come back as plain `Dense` /
    `EinsumDense` layers and are replaced again (a Functional model's config
    holds the FLix layers themselves, which are kept). Either way the
    wrappers that carry feature ids into gradient checkpointing are not part
    of any config and are put back here.

    All FLix layers are built before the first replacement, so an equation
    that cannot be adapted leaves the model's structure as it was.

    Args:
        model: a built Keras model.
        config: the `FLixConfig`. Its `target_layers` name the layers to
            adapt; `None` means a KerasHub backbone's default LoRA layers.

    Returns:
        `config` with `target_layers` set to the paths of the FLix layers.
    """
    replacements = []
    for layer in target_layers_of(model, config):
        if isinstance(layer, FLixAdapter):
            replacements.append((layer, layer))
            continue
        flix_class = FLixDense if type(layer) is keras.layers.Dense else FLixEinsumDense
        replacements.append(
            (layer, flix_class.from_base(layer, **config.layer_arguments()))
        )
    for layer, flix in replacements:
        if flix is not layer:
            surgery.replace_layer(model, layer, flix)
    # Gradient checkpointing must carry the feature ids into recomputation.
    for layer in surgery.all_layers(model):
        if keras_private.remat_mode(layer):
            preserve_scope_in_remat(layer)
    surgery.refresh_parameter_registries(model)
    return config.replace(target_layers=[flix.path for _, flix in replacements])


def target_layers_of(model, config):
    """The layers of `model` that `config.target_layers` names.

    Args:
        model: the model to search.
        config: the `FLixConfig`.

    Returns:
        The matched `Dense` / `EinsumDense` (or, in a deserialized model,
        FLix) layers, in model order, each once.

    Raises:
        ValueError: if a given pattern matches no adaptable layer, or the
            model has no default target layers.
    """
    if config.target_layers is None:
        return _resolve_targets(model, _default_target_layers(model), required=False)
    return _resolve_targets(model, config.target_layers, required=True)


def check_train_also(model, patterns):
    """The layers each `train_also` pattern names; raises if one names none.

    Returns:
        A list of the matched layers (repeats possible).
    """
    layers = []
    for pattern, matched in match_layers(model, patterns, "train_also").items():
        if not matched:
            raise ValueError(
                f"`train_also` pattern {pattern!r} matches no layer of "
                f"'{model.name}'."
            )
        layers.extend(matched)
    return layers


def match_layers(model, patterns, argument):
    """The layers under `model` that each pattern names.

    A pattern names a layer when it equals the layer's name or path, or when
    it fully matches either as a regular expression.

    Args:
        model: the model to search.
        patterns: a list of strings (checked by `FLixConfig`).
        argument: the argument's name, for error messages.

    Returns:
        A dict from each pattern to the list of layers it matches.

    Raises:
        ValueError: if a pattern is not a valid regular expression.
    """
    layers = [layer for layer in surgery.all_layers(model) if layer is not model]
    matches = {}
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"`{argument}` entry {pattern!r} is not a valid regular "
                f"expression: {error}"
            ) from None
        matches[pattern] = [
            layer
            for layer in layers
            if pattern in (layer.name, layer.path)
            or regex.fullmatch(layer.name)
            or (layer.path and regex.fullmatch(layer.path))
        ]
    return matches


def _resolve_targets(model, target_layers, required):
    """The Dense / EinsumDense layers that `target_layers` names.

    Args:
        model: the model to search.
        target_layers: names, paths or regular expressions.
        required: whether every pattern must match; `False` for the default
            names of a KerasHub backbone, which list names for many
            architectures at once.

    Returns:
        The matched layers, in model order, each once.
    """
    matches = match_layers(model, target_layers, "target_layers")
    candidates = {}
    for pattern, layers in matches.items():
        adaptable = []
        for layer in layers:
            # FLix layers are matched when a saved model is rebuilt and its
            # config holds them already (`retrofit` refuses such models).
            if type(layer) in _ADAPTABLE or isinstance(layer, FLixAdapter):
                adaptable.append(layer)
            elif isinstance(layer, _ADAPTABLE):
                raise ValueError(
                    f"`target_layers` pattern {pattern!r} matches "
                    f"'{layer.path}', a {type(layer).__name__}: a subclass of "
                    "Dense / EinsumDense whose call FLix cannot safely adapt. "
                    "Target plain Dense / EinsumDense layers only."
                )
        if required and not adaptable:
            raise ValueError(
                f"`target_layers` pattern {pattern!r} matches no Dense or "
                f"EinsumDense layer. Adaptable layers: "
                f"{adaptable_layer_paths(model)}"
            )
        for layer in adaptable:
            candidates[id(layer)] = layer
    if not candidates:
        raise ValueError(
            f"`target_layers` {list(matches)} match no Dense or EinsumDense "
            f"layer. Adaptable layers: {adaptable_layer_paths(model)}"
        )
    order = {id(layer): i for i, layer in enumerate(surgery.all_layers(model))}
    return sorted(candidates.values(), key=lambda layer: order[id(layer)])


def adaptable_layer_paths(model):
    return [layer.path for layer in surgery.all_layers(model) if type(layer) in _ADAPTABLE]


def _default_target_layers(model):
    backbone = model if isinstance(model, Backbone) else None
    if isinstance(model, Task):
        backbone = model.backbone
    if backbone is None:
        raise ValueError(
            f"Model '{model.name}' is not a KerasHub Backbone or Task, so it "
            "has no default target layers; pass `target_layers` (layer "
            "names, paths or regular expressions)."
        )
    return backbone.default_lora_layer_names()
