"""Replacing one layer by another inside a built Keras model, in place.

A layer can be referenced from several places at once: an attribute of its
parent (in `__dict__`, or where the backend's framework keeps sublayers),
a list or dict attribute, the parent's layer tracker, and, for a Functional
model, the graph's nodes and operation lists. Every reference is redirected,
so the old layer leaves the model (its weights with it) and the new one is
saved, trained and called in its place.
"""

from keras_flix.src import backend
from keras_flix.src import keras_private


def all_layers(model):
    """Every layer under `model` (itself included), each once."""
    return keras_private.all_layers(model)


def _containers(model):
    """Every layer under `model`, plus the Functional graphs that a
    `Sequential` model keeps out of its tracked layers."""
    layers = all_layers(model)
    hidden = [keras_private.sequential_graph(_attributes(layer)) for layer in layers]
    return layers + [graph for graph in hidden if graph is not None]


def replace_layer(model, old, new):
    """Replaces every reference to `old` under `model` by `new`.

    Args:
        model: the root layer or model.
        old: a layer inside `model`.
        new: the layer to put in its place.

    Raises:
        ValueError: if `old` is not referenced anywhere under `model`.
    """
    replaced = False
    for container in _containers(model):
        if container is old:
            continue
        with keras_private.unlocked_tracker(container) as tracker:
            replaced |= keras_private.replace_tracked_layer(tracker, old, new)
            # The graph first: its operation lists are attributes too.
            replaced |= keras_private.replace_in_functional_graph(container, old, new)
            replaced |= _replace_in_attributes(container, old, new)
    if not replaced:
        raise ValueError(f"Layer '{old.name}' was not found in '{model.name}'.")


def refresh_parameter_registries(model):
    """Re-registers variables with every layer's framework module."""
    for layer in all_layers(model):
        backend.refresh_parameter_registry(layer)


def _attributes(container):
    attributes = dict(vars(container))
    attributes.update(backend.sublayer_attributes(container))
    return attributes


def _replace_in_attributes(container, old, new):
    replaced = False
    for name, value in _attributes(container).items():
        if value is old:
            setattr(container, name, new)
            replaced = True
        elif isinstance(value, list) and any(item is old for item in value):
            # A new list rather than an edit: TensorFlow refuses to save a
            # tracked list whose elements were replaced.
            setattr(container, name, [new if item is old else item for item in value])
            replaced = True
        elif isinstance(value, dict):
            for key, item in list(value.items()):
                if item is old:
                    value[key] = new
                    replaced = True
    return replaced
