"""Finding a model's target layers and swapping in FLix layers."""

import re

import keras

from keras_flix.src import surgery
from keras_flix.src.feature_scope import preserve_scope_in_remat
from keras_flix.src.layers.flix_adapter import FLixAdapter
from keras_flix.src.layers.flix_dense import FLixDense
from keras_flix.src.layers.flix_einsum_dense import FLixEinsumDense

def flix_layers(model):
    """The FLix layers under `model`, in model order."""
    return [
        layer for layer in surgery.all_layers(model) if isinstance(layer, FLixAdapter)
    ]


def match_layers(model, patterns, argument):
    """The layers under `model` that each pattern names.

    A pattern names a layer when it equals the layer's name or path, or when
    it fully matches either as a regular expression.

    Args:
        model: the model to search.
        patterns: a string or a sequence of strings.
        argument: the argument's name, for error messages.

    Returns:
        A dict from each pattern to the list of layers it matches.

    Raises:
        ValueError: if a pattern is not a string or matches no layer.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    layers = [layer for layer in surgery.all_layers(model) if layer is not model]
    matches = {}
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(
                f"`{argument}` entries must be layer names, paths or regular "
                f"expressions (strings). Received: {pattern!r}"
            )
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


def resolve_targets(model, target_layers, required, allow_adapted=False):
    """The Dense / EinsumDense layers that `target_layers` names.

    Args:
        model: the model to search.
        target_layers: names, paths or regular expressions.
        required: whether every pattern must match; `False` for the default
            names of a KerasHub backbone, which list names for many
            architectures at once.
        allow_adapted: whether matched FLix layers are returned too (when a
            saved model is rebuilt and its config already holds them);
            otherwise they are an error.

    Returns:
        The matched layers, in model order, each once.
    """
    matches = match_layers(model, target_layers, "target_layers")
    candidates = {}
    for pattern, layers in matches.items():
        adaptable = []
        for layer in layers:
            if type(layer) in (keras.layers.Dense, keras.layers.EinsumDense):
                adaptable.append(layer)
            elif isinstance(layer, FLixAdapter) and allow_adapted:
                adaptable.append(layer)
            elif isinstance(layer, FLixAdapter):
                raise ValueError(
                    f"Layer '{layer.path}' already has FLix adapters. Was the "
                    "model retrofitted in place before? Retrofit a fresh "
                    "model, or pass `copy=True` to keep the original intact."
                )
            elif isinstance(layer, (keras.layers.Dense, keras.layers.EinsumDense)):
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
    return [
        layer.path
        for layer in surgery.all_layers(model)
        if type(layer) in (keras.layers.Dense, keras.layers.EinsumDense)
    ]


def add_adapters(
    model, target_layers, schema, *, rank, alpha, a_initializer, b_initializer
):
    """Replaces each target layer of `model` by a FLix layer, in place.

    All FLix layers are built before the first replacement, so a bad setting
    or an equation that cannot be adapted leaves the model's structure as it
    was.

    Args:
        model: a built Keras model.
        target_layers: the layers to adapt (from `resolve_targets`).
        schema: the `FeatureSchema`.
        rank, alpha, a_initializer, b_initializer: as for the FLix layers.

    Returns:
        The FLix layers, in the order of `target_layers`. A target that is
        already a FLix layer (rebuilt from a saved config) is kept as it is.
    """
    replacements = []
    for layer in target_layers:
        if isinstance(layer, FLixAdapter):
            replacements.append((layer, layer))
            continue
        flix_class = (
            FLixDense if type(layer) is keras.layers.Dense else FLixEinsumDense
        )
        flix = flix_class.from_base(
            layer,
            schema,
            rank=rank,
            alpha=alpha,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
        )
        replacements.append((layer, flix))
    for layer, flix in replacements:
        if flix is not layer:
            surgery.replace_layer(model, layer, flix)
    # Gradient checkpointing must carry the feature ids into recomputation.
    for layer in surgery.all_layers(model):
        if getattr(layer, "_remat_mode", None):
            preserve_scope_in_remat(layer)
    surgery.refresh_parameter_registries(model)
    return [flix for _, flix in replacements]
