"""The private Keras APIs keras-flix relies on, in one place.

Keras has no public API for some of what FLix needs: rewiring a built model,
carrying feature ids into gradient checkpointing, a training step and an
optimizer update of its own, the layouts of quantized kernels. Every use of a private Keras attribute goes
through this module (the FLix layers, subclasses of `Dense` and
`EinsumDense`, also use their base classes' `_kernel` through it), so a Keras
release that changes one breaks here, and `tests/test_keras_private.py`
names what disappeared.

Tested with Keras 3.15.1 (the upper bound in pyproject.toml is the newest
version the suite has run on); the lower bound 3.10 is the oldest release
whose API the code was written against.
"""

import contextlib
import importlib
import types

import keras
from keras.src import backend as keras_backend

TESTED_KERAS_VERSIONS = ("3.15.1",)

RELIED_ON = (
    # (owner, attribute, backends or None for all, what keras-flix uses it for)
    ("Layer", "_flatten_layers", None, "every layer under a model"),
    ("Layer", "_tracker", None, "replacing a tracked sublayer"),
    ("Layer", "_remat_mode", None, "a FLix layer checkpoints like its base layer"),
    ("Layer", "_dtype_policy", None, "saving a quantized layer rebuilt from a config"),
    ("Layer", "rematerialized_call", None, "feature ids in gradient checkpointing"),
    ("Layer", "_torch_params", ("torch",), "refreshing torch's parameter registry"),
    ("Layer", "_track_variables", ("torch",), "refreshing torch's parameter registry"),
    ("Dense", "_kernel", None, "the frozen base kernel a FLix layer adapts"),
    ("EinsumDense", "_kernel", None, "the frozen base kernel a FLix layer adapts"),
    ("Dense", "variable_serialization_spec", None, "a quantized base's variables"),
    ("EinsumDense", "variable_serialization_spec", None, "a quantized base's variables"),
    ("EinsumDense", "_adjust_scale_for_dequant", None, "dequantizing an int8 kernel"),
    ("quantizers", "dequantize_with_sz_map", None, "dequantizing a grouped int4 kernel"),
    ("Functional", "_operations", None, "rewiring a Functional graph"),
    ("Functional", "_operations_by_depth", None, "rewiring a Functional graph"),
    ("Functional", "_nodes", None, "rewiring a Functional graph"),
    ("Functional", "_nodes_by_depth", None, "rewiring a Functional graph"),
    ("Operation", "_inbound_nodes", None, "rewiring a Functional graph"),
    ("Operation", "_outbound_nodes", None, "rewiring a Functional graph"),
    ("KerasTensor", "_keras_history", None, "rewiring a Functional graph"),
    ("Sequential", "_functional", None, "the graph a Sequential model hides"),
    ("Trainer", "train_step", ("jax", "torch"), "dispatching to the row-sparse step"),
    ("Model", "_compile_config", None, "compiling as a task's compile resolved"),
    ("Model", "_compute_loss", ("torch",), "the row-sparse training step"),
    ("Model", "_loss_tracker", ("torch",), "the row-sparse training step"),
    ("Model", "_update_metrics_variables", ("jax",), "the row-sparse training step"),
    ("Optimizer", "_get_variable_index", None, "LazyAdam's update of a table"),
    ("Optimizer", "_apply_weight_decay", None, "LazyAdam decays used rows only"),
    ("Adam", "_momentums", None, "LazyAdam's update of a table"),
    ("Adam", "_velocities", None, "LazyAdam's update of a table"),
    ("LayoutMap", "_layout_map", None, "adapter layouts derived from kernels"),
    ("symbolic_scope", "in_symbolic_scope", None, "ids seen during shape inference"),
    ("Model", "_initial_epoch", None, "the epoch a resumed fit starts at"),
    ("Trainer", "_symbolic_build", None, "metrics built before a resumed epoch"),
    ("backend.numpy", "matmul", ("torch",), "int8 products by torch's integer GEMM"),
    ("backend.numpy", "einsum", ("torch",), "int8 products by torch's integer GEMM"),
    ("Dense", "_int8_call", None, "the int8 product whose input gradient runs blockwise"),
    ("EinsumDense", "_int8_call", None, "the int8 product whose input gradient runs blockwise"),
    ("EinsumDense", "_custom_gradient_equation", None, "an int8 layer's input gradient"),
)
"""Each private attribute relied on, and why (see `tests/test_keras_private.py`)."""


def all_layers(layer):
    """Every layer under `layer` (itself included), each once."""
    return layer._flatten_layers(include_self=True, recursive=True)


def set_initial_epoch(model, epoch):
    """Makes the `fit` that is starting begin at `epoch` (`None`: as given).

    Keras' trainers read it after the callbacks' `on_train_begin`, as
    Keras' own `BackupAndRestore` uses it.
    """
    model._initial_epoch = epoch


def build_for_batch(model, batch):
    """Builds `model`, its compiled loss and metrics for batches like `batch`.

    Keras' jax and torch `fit` do this before the first step; its
    TensorFlow `fit` (without a distribution strategy) only as the first
    step is traced, too late for a metrics state restored before it.
    """
    model._symbolic_build(data_batch=batch)


def remat_mode(layer):
    """The layer's gradient checkpointing mode (`keras.RematScope`), or `None`."""
    return getattr(layer, "_remat_mode", None)


def set_remat_mode(layer, mode):
    """Gives `layer` the remat mode another layer was built with."""
    layer._remat_mode = mode


def kernel(layer):
    """The kernel variable of a `Dense` / `EinsumDense` (not LoRA-merged)."""
    return layer._kernel


def set_kernel(layer, variable):
    """Makes `variable` the kernel of a `Dense` / `EinsumDense` layer."""
    layer._kernel = variable


def saved_variable_names(layer):
    """The names of the variables Keras saves for a `Dense` / `EinsumDense`.

    In Keras' order for the layer's quantization mode (`None` for a float
    layer), `"kernel"` standing for the kernel variable; names of optional
    variables the layer does not have (no bias; `kernel_zero` and `g_idx`
    of per-channel int4) included. Public in Keras 3.15, but not in every
    release the lower bound admits.
    """
    return layer.variable_serialization_spec[layer.quantization_mode]


def resolve_dtype_policy_maps(model):
    """Gives every layer of `model` that reads a `DTypePolicyMap` its own policy.

    A model rebuilt from a config that holds a `DTypePolicyMap` (a quantized
    KerasHub backbone's) leaves the map as each layer's `dtype_policy`;
    Keras 3.15's `save_own_variables` of a quantized `Dense` /
    `EinsumDense` reads the mode from `dtype_policy` rather than from
    `quantization_mode`, so saving such a layer writes `None` for its scale
    and fails ("Invalid dtype: object"). The map keeps its entries: the
    model's config is unchanged.
    """
    for layer in all_layers(model):
        policy = layer._dtype_policy
        if isinstance(policy, keras.dtype_policies.DTypePolicyMap) and layer.path in policy:
            layer._dtype_policy = policy[layer.path]


def int8_kernel_scale(layer, scale=None):
    """The scale of an int8 kernel, shaped to divide the kernel by.

    `EinsumDense` stores its scale in the layout of its quantized einsum.

    Args:
        layer: an int8 `Dense` / `EinsumDense`.
        scale: the value of its `kernel_scale` to reshape (default: the
            variable's).
    """
    scale = layer.kernel_scale if scale is None else scale
    if isinstance(layer, keras.layers.EinsumDense):
        return layer._adjust_scale_for_dequant(scale)
    return scale


def input_gradient_equation(layer):
    """The einsum an int8 `EinsumDense` passes its gradient on with.

    `"<output>,<kernel>-><input>"`: the upstream gradient times the kernel.
    """
    return layer._custom_gradient_equation


def wrap_custom_gradient(wrap):
    """Replaces `ops.custom_gradient` as Keras' own layers call it, once.

    Keras' layers look `custom_gradient` up on `keras.src.ops` at every call;
    the public `keras.ops.custom_gradient` stays Keras' own.

    Args:
        wrap: takes Keras' `custom_gradient`, returns the new one.
    """
    _wrap_once(importlib.import_module("keras.src.ops"), "custom_gradient", wrap)


# The code of the products with a custom gradient that Keras' int8 calls
# define: the local function of each call, by its name.
_INT8_PRODUCT_CODES = frozenset(
    constant
    for layer_class, name in (
        (keras.layers.Dense, "matmul_with_inputs_gradient"),
        (keras.layers.EinsumDense, "einsum_with_inputs_gradient"),
    )
    for constant in layer_class._int8_call.__code__.co_consts
    if isinstance(constant, types.CodeType) and constant.co_name == name
)


def int8_product_layer(function):
    """The layer whose Keras int8 call defined `function`, else `None`.

    `Dense._int8_call` and `EinsumDense._int8_call` multiply with a local
    function `f(inputs, kernel, kernel_scale) -> (outputs, grad_fn)`, a
    closure over the layer, which they pass to `ops.custom_gradient`. A
    function is one of them when its code is theirs.

    Args:
        function: a function passed to `ops.custom_gradient`.

    Returns:
        The int8 `Dense` / `EinsumDense` it belongs to, or `None`.
    """
    if not isinstance(function, types.FunctionType):
        return None
    code = function.__code__
    if code not in _INT8_PRODUCT_CODES:
        return None
    return function.__closure__[code.co_freevars.index("self")].cell_contents


def dequantize_grouped(values, scale, zero, group_ids):
    """Keras' dequantization of grouped (sub-channel) int4 `[rows, columns]` values."""
    from keras.src.quantizers.quantizers import dequantize_with_sz_map

    return dequantize_with_sz_map(values, scale, zero, group_ids, group_axis=0)


def compile_arguments(model):
    """The arguments `keras.Model.compile` last received for `model`.

    For a KerasHub task these are the task's `"auto"` defaults resolved
    (the optimizer, loss and metrics objects themselves, not copies).
    """
    return dict(model._compile_config.config)


def sequential_graph(attributes):
    """The Functional graph a `Sequential` model keeps, from its attributes."""
    return attributes.get("_functional")


@contextlib.contextmanager
def unlocked_tracker(layer):
    """Lets `layer`'s tracked attributes change; yields its tracker or `None`.

    Keras locks a layer's tracker once it is built, so that no new
    variables or sublayers appear; a layer replacement needs it open.
    """
    tracker = getattr(layer, "_tracker", None)
    was_locked = tracker is not None and tracker.locked
    if tracker is not None:
        tracker.unlock()
    try:
        yield tracker
    finally:
        if was_locked:
            tracker.lock()


def replace_tracked_layer(tracker, old, new):
    """Replaces `old` by `new` among a tracker's layers; whether it was there."""
    if tracker is None or not tracker.is_in_store("layers", old):
        return False
    tracker.replace_tracked_value("layers", old, new)
    return True


def replace_in_functional_graph(container, old, new):
    """Rewires the nodes of a Functional model that call `old` to call `new`.

    Returns:
        Whether `container` is a Functional graph that calls `old`.
    """
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


def in_symbolic_scope():
    """Whether Keras is running a call only to infer output shapes.

    Keras' `compute_output_spec` traces calls with placeholders whose values
    are never computed; under `tf.distribute`, Keras builds them from a
    cross-replica *mean* of the first batch, so integer inputs such as
    feature ids arrive as floats there.
    """
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    return in_symbolic_scope()


def refresh_torch_parameters(layer):
    """Refills a torch-backend layer's `ParameterDict` from its variables."""
    if hasattr(layer, "_torch_params"):
        layer._track_variables()


# (owner, attribute) -> Keras' own value, for the attributes replaced.
_keras_originals = {}


def _wrap_once(owner, attribute, wrap):
    """Sets `owner.<attribute>` to `wrap(Keras' own value)`, the first time only."""
    if (owner, attribute) in _keras_originals:
        return
    _keras_originals[owner, attribute] = getattr(owner, attribute)
    setattr(owner, attribute, wrap(_keras_originals[owner, attribute]))


def wrap_train_step(trainer_class, wrap):
    """Replaces `trainer_class.train_step` by `wrap(keras_train_step)`, once.

    Args:
        trainer_class: Keras' trainer of the backend (`JAXTrainer`,
            `TorchTrainer`), which every `keras.Model` there inherits.
        wrap: takes Keras' `train_step` function, returns the new one.
    """
    _wrap_once(trainer_class, "train_step", wrap)


def wrap_backend_op(name, wrap):
    """Replaces the backend's `keras.src.backend.numpy.<name>`, once.

    `keras.ops.<name>` looks the backend's function up at every call, so
    every layer's eager and traced calls take the replacement.

    Args:
        name: the op, e.g. `"matmul"`.
        wrap: takes Keras' function, returns the new one.
    """
    _wrap_once(keras_backend.numpy, name, wrap)


def keras_original(owner, attribute):
    """Keras' own `owner.<attribute>`, whether wrapped here or not."""
    return _keras_originals.get((owner, attribute), getattr(owner, attribute))


def keras_backend_op(name):
    """Keras' own backend function `name`, whether wrapped or not."""
    return keras_original(keras_backend.numpy, name)


def compute_loss(model, **kwargs):
    """`Trainer._compute_loss`: the loss as `train_step` computes it."""
    return model._compute_loss(**kwargs)


def loss_tracker(model):
    """`Trainer._loss_tracker`: the metric `train_step` reports as "loss"."""
    return model._loss_tracker


def update_metrics_variables(model, *args):
    """`JAXTrainer._update_metrics_variables`, the stateless metrics update."""
    return model._update_metrics_variables(*args)


def variable_index(optimizer, variable):
    """The index of `variable` in the optimizer's variable list."""
    return optimizer._get_variable_index(variable)


def adam_moments(optimizer, index):
    """`(first moment, second moment)` variables of an Adam variable index."""
    return optimizer._momentums[index], optimizer._velocities[index]


def layout_entries(layout_map):
    """The dict a `LayoutMap` keeps its entries in (key -> layout)."""
    return layout_map._layout_map


def active_layout_map(distribution):
    """The `LayoutMap` of a distribution (`ModelParallel`), or `None`."""
    return getattr(distribution, "_layout_map", None)
