"""torch: the row-sparse training step, sparse COO gradients, host values.

The training step is the counterpart of the one in `backend/jax.py`:
autograd would give every adapter table a dense gradient of the table's
shape (zeros plus the rows the batch used). Inside this step every
selection a FLix layer makes is detached from its table and made a leaf
tensor of its own (`selection_route`), so backpropagation reaches the
selected rows only, and the optimizer gets each table's gradient as a
sparse COO tensor of those rows (repeats included; it sums them). Used by
every model's `train_step` when the optimizer asks for it
(`LazyAdam(sparse_gradients=True)`, the default; see
`keras_flix.src.row_sparse_step`).
"""

import functools
import importlib.util
import math

import keras
import torch
from keras.src.backend.torch.trainer import TorchTrainer as keras_trainer  # noqa: F401

from keras_flix.src import keras_private
from keras_flix.src.backend.common import assert_in_range_in_graph  # noqa: F401
from keras_flix.src.backend.common import DYNAMIC_SHAPE_ERRORS  # noqa: F401
from keras_flix.src.backend.common import on_tpu  # noqa: F401
from keras_flix.src.backend.common import saved_model_endpoint_options  # noqa: F401
from keras_flix.src.backend.common import skip_train_function  # noqa: F401
from keras_flix.src.layers.selection_route import selection_route


def row_sparse_train_step(model, data, tables):
    """`keras.Model.train_step` (torch) with row-sparse table gradients.

    Args:
        model: the model trained (any model whose trainable variables
            include FLix adapter tables).
        data: the batch, `(x, y, sample_weight)` or a prefix of it.
        tables: `row_sparse_tables(model)`, index in
            `model.trainable_variables` -> adapter table.

    Returns:
        The metrics' results, as Keras' torch `train_step` returns them.
    """
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    index_of = {id(table): index for index, table in tables.items()}
    selections = {index: [] for index in tables}

    def route(table, rows, selected):
        index = index_of.get(id(table))
        if index is None:  # A frozen table: nothing to differentiate.
            return selected
        leaf = selected.detach().requires_grad_()
        selections[index].append((rows, leaf))
        return leaf

    with selection_route(route):
        y_pred = model(x, training=True)
    model.zero_grad()
    loss = keras_private.compute_loss(
        model, x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )
    keras_private.loss_tracker(model).update_state(
        loss,
        sample_weight=next(i for i in keras.tree.flatten(x) if i is not None).shape[0],
    )
    model.optimizer.scale_loss(loss).backward()
    variables = model.trainable_variables
    grads = [
        _rows_gradient(selections[index], variable.shape)
        if index in tables
        else variable.value.grad
        for index, variable in enumerate(variables)
    ]
    with torch.no_grad():
        model.optimizer.apply(grads, variables)
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def row_sparse_step_traceable_here():
    """False inside `torch.compile`, which cannot trace sparse COO tensors."""
    return not torch.compiler.is_compiling()


def _rows_gradient(uses, shape):
    """A table's gradient as a sparse COO tensor of its selected rows."""
    uses = [(rows, leaf.grad) for rows, leaf in uses if leaf.grad is not None]
    if not uses:
        return None
    rows = torch.cat([rows.reshape(-1) for rows, _ in uses])
    values = torch.cat([grad.reshape(-1, *shape[1:]) for _, grad in uses])
    return torch.sparse_coo_tensor(
        rows[None].long(), values, tuple(shape), check_invariants=False
    )


def host_value(x):
    if torch.compiler.is_compiling() or x.device.type != "cpu":
        return None
    return x.detach().numpy()


def assign_rows(variable, rows, values):
    """Writes `values` into the rows `rows` (distinct) of `variable`, in place.

    `ops.scatter_update` would copy the whole table to change a few rows.
    """
    with torch.no_grad():
        variable.value.index_copy_(0, rows.long(), values.to(variable.value.dtype))


def row_sparse_parts(gradient):
    """`(indices, values)` of a sparse COO tensor of rows, each row once."""
    if isinstance(gradient, torch.Tensor) and gradient.is_sparse:
        gradient = gradient.coalesce()
        return gradient.indices()[0], gradient.values()
    return None


def integer_matmul(x1, x2):
    """`x1 @ x2` of int8 tensors on the CPU, in int32, by torch's integer GEMM.

    Keras' torch backend uses `torch._int_mm` on CUDA only; on the CPU it
    copies both operands to int32 and calls `torch.matmul`, which has no
    optimized integer kernel. `torch._int_mm` accumulates in int32 as well,
    so the result is the same to the bit.

    Args:
        x1: `[..., k]` int8.
        x2: `[k, n]` int8.

    Returns:
        `[..., n]` int32, or None where this does not apply (other dtypes,
        devices or ranks): then Keras' own product runs.
    """
    if not _int8_on_cpu(x1, x2) or x1.ndim < 2 or x2.ndim != 2:
        return None
    rows = x1.reshape(-1, x1.shape[-1])
    if 0 in rows.shape or 0 in x2.shape:
        return None
    return torch._int_mm(rows, x2).reshape(*x1.shape[:-1], x2.shape[-1])


def integer_einsum(subscripts, *operands):
    """`einsum` of two int8 tensors on the CPU, in int32, as one integer GEMM.

    Applies to contractions without batch axes — every axis of the output
    from exactly one operand, every other axis in both — which covers every
    projection of `EinsumDense` (e.g. `"btd,dnh->btnh"`): the operands are
    transposed into `[free_1, contracted] @ [contracted, free_2]` and the
    product is `integer_matmul`'s.

    Returns:
        The int32 result, or None where this does not apply: then Keras'
        own `einsum` runs.
    """
    if len(operands) != 2 or not _int8_on_cpu(*operands):
        return None
    plan = _contraction_plan(subscripts)
    if plan is None or any(
        x.ndim != len(axes) for x, axes in zip(operands, plan.operand_axes)
    ):
        return None
    x1, x2 = operands
    free_1, contracted, free_2 = (
        [x1.shape[i] for i in plan.x1_free],
        [x1.shape[i] for i in plan.x1_contracted],
        [x2.shape[i] for i in plan.x2_free],
    )
    left = x1.permute(*plan.x1_free, *plan.x1_contracted).reshape(
        math.prod(free_1), math.prod(contracted)
    )
    right = x2.permute(*plan.x2_contracted, *plan.x2_free).reshape(
        math.prod(contracted), math.prod(free_2)
    )
    product = integer_matmul(left, right)
    if product is None:
        return None
    return product.reshape(*free_1, *free_2).permute(*plan.output_order)


def _int8_on_cpu(*operands):
    return all(
        isinstance(x, torch.Tensor) and x.dtype == torch.int8 and x.device.type == "cpu"
        for x in operands
    )


class _ContractionPlan:
    """Axis positions that turn a two-operand einsum into one matmul."""

    def __init__(self, x1, x2, output):
        self.operand_axes = (x1, x2)
        contracted = [a for a in x1 if a in x2]
        self.x1_free = [x1.index(a) for a in x1 if a not in x2]
        self.x2_free = [x2.index(a) for a in x2 if a not in x1]
        self.x1_contracted = [x1.index(a) for a in contracted]
        self.x2_contracted = [x2.index(a) for a in contracted]
        product_axes = [x1[i] for i in self.x1_free] + [x2[i] for i in self.x2_free]
        self.output_order = [product_axes.index(a) for a in output]


@functools.lru_cache(maxsize=None)
def _contraction_plan(subscripts):
    """The plan for `subscripts`, or None if it is not a batch-free contraction."""
    inputs, arrow, output = subscripts.replace(" ", "").partition("->")
    operands = inputs.split(",")
    if not arrow or "." in subscripts or len(operands) != 2:
        return None
    x1, x2 = operands
    every_axis_once = all(len(set(axes)) == len(axes) for axes in (x1, x2, output))
    shared = set(x1) & set(x2)
    free = (set(x1) | set(x2)) - shared
    if not every_axis_once or shared & set(output) or free != set(output):
        return None
    return _ContractionPlan(x1, x2, output)


def refresh_parameter_registry(layer):
    """Re-registers `layer`'s variables with its `torch.nn.Module`.

    Every Keras layer is a `torch.nn.Module` here, keeping a `ParameterDict`
    of all the variables under it, filled when it was built. After sublayers
    are swapped, that registry still lists the old variables and misses the
    new ones, so `module.parameters()` would be wrong.
    """
    keras_private.refresh_torch_parameters(layer)


def sublayer_attributes(layer):
    """`torch.nn.Module` keeps sublayers in `_modules`, not in `__dict__`."""
    return dict(getattr(layer, "_modules", None) or {})


def check_saved_model_export():
    if importlib.util.find_spec("torch_xla") is None:
        raise NotImplementedError(
            "Keras exports torch models to SavedModel only through torch_xla, "
            "which is not installed. Save the model (`model.save('m.keras')`) "
            "and export it from a process with KERAS_BACKEND=jax or "
            "tensorflow: .keras files load on every backend."
        )


def framework_random_state():
    """torch's global random states, which Keras' unseeded dropout draws from.

    Keras' torch `dropout` for a layer built without a seed takes
    `torch.nn.functional.dropout`'s fast path, outside any Keras seed
    generator; the data loader also draws its seed from here.
    """
    state = {"cpu": torch.get_rng_state().numpy()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{index}"] = cuda_state.numpy()
    return state


def set_framework_random_state(state):
    """Restores what `framework_random_state` returned."""
    for name, value in state.items():
        value = torch.from_numpy(value.copy())
        if name == "cpu":
            torch.set_rng_state(value)
        else:
            torch.cuda.set_rng_state(value, int(name[len("cuda"):]))
