"""`layout_map`: shard FLix adapters like the kernels they adapt."""

import keras

from keras_flix.src import keras_private


class FLixLayoutMap(keras.distribution.LayoutMap):
    """A `LayoutMap` that also lays out FLix adapter variables.

    It holds every entry of the base layout map. When a FLix layer builds
    its adapters under a `ModelParallel` distribution that uses this map,
    the layer reports its kernel and the map adds an exact entry for each
    adapter variable, derived from the kernel's layout: `A` (`[n_values,
    d_in, rank]`) shards its `d_in` axis like the kernel's contracted axes,
    `B` (`[n_values, rank, d_out]`) shards `d_out` like the kernel's output
    axes, and the value axis is replicated or sharded on `values_axis`.
    Use `keras_flix.layout_map` to make one.
    """

    def __init__(self, base_layout_map, values_axis=None):
        super().__init__(base_layout_map.device_mesh)
        if values_axis is not None and values_axis not in self.device_mesh.axis_names:
            raise ValueError(
                f"`values_axis` {values_axis!r} is not an axis of the device "
                f"mesh; its axes are {list(self.device_mesh.axis_names)}."
            )
        self.values_axis = values_axis
        for key in base_layout_map:
            self[key] = base_layout_map[key]

    def add_adapter_layouts(self, layer):
        """Adds the layouts of `layer`'s adapter variables (before creation).

        Args:
            layer: a FLix layer whose base kernel exists and whose adapters
                are about to be created.
        """
        kernel_layout = self[layer.base_kernel.path]
        kernel_axes = (
            tuple(kernel_layout.axes)
            if kernel_layout is not None
            else (None,) * len(layer.base_kernel_shape)
        )
        contracted_axes, output_axes = layer.kernel_axes
        # A mesh axis can shard only one axis of a variable: the value axis
        # takes it when asked to.
        input_axis = _first_sharded(kernel_axes, contracted_axes, self.values_axis)
        output_axis = _first_sharded(kernel_axes, output_axes, self.values_axis)
        for feature_type in layer.schema.feature_types:
            prefix = f"{layer.path}/flix_{feature_type}"
            entries = keras_private.layout_entries(self)
            entries.pop(f"{prefix}_a", None)
            entries.pop(f"{prefix}_b", None)
            self[f"{prefix}_a"] = (self.values_axis, input_axis, None)
            self[f"{prefix}_b"] = (self.values_axis, None, output_axis)


def _first_sharded(kernel_axes, axes, taken):
    """The mesh axis of the first kernel axis among `axes` sharded on a mesh
    axis other than `taken`."""
    for axis in axes:
        if kernel_axes[axis] not in (None, taken):
            return kernel_axes[axis]
    return None


def layout_map(base_layout_map, values_axis=None):
    """A layout map for `ModelParallel` training of a FLix model.

    Returns a new `keras.distribution.LayoutMap` on the same device mesh with
    every entry of `base_layout_map`, which also lays out the FLix adapters
    of layers built while it is in use: `A` shards like its kernel's input
    (contracted) axes, `B` like its output axes, and the feature-value axis
    is replicated, or sharded on `values_axis` for very large schemas (then
    that mesh axis shards nothing else of the adapter, and each type's number
    of values must divide by its size).

    Set the distribution before building and retrofitting the model, as for
    any `ModelParallel` model:

    ```python
    mesh = keras.distribution.DeviceMesh((2, 4), ["batch", "model"], devices)
    base = keras_hub.models.GemmaBackbone.get_layout_map(mesh)
    keras.distribution.set_distribution(keras.distribution.ModelParallel(
        layout_map=kf.layout_map(base), batch_dim_name="batch"))
    backbone = keras_hub.models.GemmaBackbone.from_preset(...)
    model = kf.retrofit(backbone, schema)
    ```

    Args:
        base_layout_map: the `keras.distribution.LayoutMap` of the base
            model (e.g. from a KerasHub backbone's `get_layout_map`).
        values_axis: optional mesh axis name to shard the feature-value axis
            of every adapter on.

    Returns:
        A `FLixLayoutMap`.
    """
    if not isinstance(base_layout_map, keras.distribution.LayoutMap):
        raise TypeError(
            "`base_layout_map` must be a keras.distribution.LayoutMap. "
            f"Received: {type(base_layout_map).__name__}"
        )
    return FLixLayoutMap(base_layout_map, values_axis=values_axis)


def register_adapter_layouts(layer):
    """Lets an active `FLixLayoutMap` lay out `layer`'s adapters, if any."""
    distribution = keras.distribution.distribution()
    layout = keras_private.active_layout_map(distribution)
    if isinstance(layout, FLixLayoutMap):
        layout.add_adapter_layouts(layer)
