"""Replacing one layer by another inside a built Keras model, in place.

A layer can be referenced from several places at once: an attribute of its
parent (in `__dict__`, or where the backend's framework keeps sublayers),
a list or dict attribute, the parent's layer tracker, and, for a Functional
model, the graph's nodes and operation lists. Every reference is redirected,
so the old layer leaves the model (its weights with it) and the new one is
saved, trained and called in its place.
"""

from keras_flix.src import backend


def all_layers(model):
    """Every layer under `model` (itself included), each once."""
    return model._flatten_layers(include_self=True, recursive=True)


def _containers(model):
    """Every layer under `model`, plus the Functional graphs that a
    `Sequential` model keeps out of its tracked layers."""
    layers = all_layers(model)
    hidden = [
        _attributes(layer)["_functional"]
        for layer in layers
        if _attributes(layer).get("_functional") is not None
    ]
    return layers + hidden


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
        tracker = getattr(container, "_tracker", None)
        was_locked = tracker is not None and tracker.locked
        if tracker is not None:
            tracker.unlock()
            if tracker.is_in_store("layers", old):
                tracker.replace_tracked_value("layers", old, new)
                replaced = True
        try:
            # The graph first: its operation lists are attributes too.
            replaced |= _replace_in_graph(container, old, new)
            replaced |= _replace_in_attributes(container, old, new)
        finally:
            if was_locked:
                tracker.lock()
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


def _replace_in_graph(container, old, new):
    """Rewires the nodes of a Functional model that call `old`."""
    operations = getattr(container, "_operations", None)
    if operations is None or not any(op is old for op in operations):
        return False
    container._operations = [new if op is old else op for op in operations]
    for depth, ops_at_depth in container._operations_by_depth.items():
        container._operations_by_depth[depth] = [
            new if op is old else op for op in ops_at_depth
        ]
    # Node keys embed the operation's id (`make_node_key`).
    old_prefix, new_prefix = f"{id(old)}_ib-", f"{id(new)}_ib-"
    container._nodes = {
        new_prefix + key[len(old_prefix) :] if key.startswith(old_prefix) else key
        for key in container._nodes
    }
    new._inbound_nodes = old._inbound_nodes
    new._outbound_nodes = old._outbound_nodes
    graph_nodes = [n for nodes in container._nodes_by_depth.values() for n in nodes]
    for node in {id(n): n for n in graph_nodes + list(old._inbound_nodes)}.values():
        if node.operation is not old:
            continue
        node.operation = new
        for tensor in node.outputs:
            history = tensor._keras_history
            if history.operation is old:
                tensor._keras_history = history._replace(operation=new)
    return True

