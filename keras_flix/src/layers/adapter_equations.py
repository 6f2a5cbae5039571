"""Rewrites a layer's einsum equation into the two einsums of its adapter.

A FLix adapter sees a kernel as the matrix `[d_in, d_out]`, `d_in` the product
of the kernel's contracted axes and `d_out` the product of its output axes,
each flattened in the order the axes appear in the kernel (the flattened-matrix
LoRA that PEFT uses for multi-axis kernels). For an example `b` with selected
adapters `A[b]` (`[d_in, r]`) and `B[b]` (`[r, d_out]`):

    delta[b] = einsum(inputs[b], A[b] viewed as [*contracted, r]) -> [..., r]
               then einsum(that, B[b] viewed as [r, *kernel_outputs])

which equals `einsum(equation, inputs, reshape(A[b] @ B[b]))` without ever
forming the per-example kernel.
"""

import dataclasses
import string


@dataclasses.dataclass(frozen=True)
class AdapterEquations:
    """The einsums of an adapter for one base equation and input rank.

    Attributes:
        down: `inputs, A_selected -> low-rank activations`, where
            `A_selected` has shape `[batch, *contracted_dims, rank]`.
        up: `low-rank activations, B_selected -> outputs`, where `B_selected`
            has shape `[batch, rank, *kernel_output_dims]`.
        contracted_axes: kernel axes summed against the inputs, in kernel
            order (their sizes multiply to `d_in`).
        output_axes: kernel axes that reach the output, in kernel order
            (their sizes multiply to `d_out`).
    """

    down: str
    up: str
    contracted_axes: tuple
    output_axes: tuple


def adapter_equations(equation, input_rank):
    """Analyses `equation` for an adapter whose first input axis is the batch.

    Args:
        equation: an `EinsumDense` equation such as `"abc,cde->abde"`.
        input_rank: the rank of the layer's inputs (spells out `...`).

    Returns:
        An `AdapterEquations`.

    Raises:
        ValueError: if the equation cannot carry a per-example adapter: a
            malformed equation, an ellipsis in the kernel, an axis that is
            summed away or broadcast against the kernel, or a batch axis
            (the first input axis) that does not reach the output untouched.
    """
    inputs, kernel, output = _split(equation)
    inputs, output = _expand_ellipsis(equation, inputs, output, input_rank)
    for name, term in (("input", inputs), ("kernel", kernel), ("output", output)):
        if len(set(term)) != len(term):
            raise ValueError(
                f"Unsupported equation '{equation}': the {name} term "
                f"'{term}' repeats an axis (diagonals are not supported)."
            )
    shared = set(inputs) & set(kernel) & set(output)
    if shared:
        raise ValueError(
            f"Unsupported equation '{equation}': axes {sorted(shared)} appear "
            "in the input, the kernel and the output (a kernel broadcast over "
            "input axes), which has no flattened [d_in, d_out] view."
        )
    for letter in kernel:
        if letter not in inputs and letter not in output:
            raise ValueError(
                f"Unsupported equation '{equation}': kernel axis '{letter}' "
                "is summed away."
            )
    for letter in inputs:
        if letter not in kernel and letter not in output:
            raise ValueError(
                f"Unsupported equation '{equation}': input axis '{letter}' is "
                "summed away without meeting the kernel."
            )
    if len(inputs) != input_rank:
        raise ValueError(
            f"Equation '{equation}' expects inputs of rank {len(inputs)}, but "
            f"the layer is built for inputs of rank {input_rank}."
        )
    batch = inputs[0]
    if batch in kernel:
        raise ValueError(
            f"Unsupported equation '{equation}': the first input axis "
            f"'{batch}' must be the batch axis, but it is contracted with "
            "the kernel."
        )
    rank = next(c for c in string.ascii_letters if c not in inputs + kernel + output)
    contracted = "".join(c for c in kernel if c in inputs)
    kernel_outputs = "".join(c for c in kernel if c in output)
    activations = "".join(c for c in inputs if c not in kernel)
    down = f"{inputs},{batch}{contracted}{rank}->{activations}{rank}"
    up = f"{activations}{rank},{batch}{rank}{kernel_outputs}->{output}"
    return AdapterEquations(
        down=down,
        up=up,
        contracted_axes=tuple(kernel.index(c) for c in contracted),
        output_axes=tuple(kernel.index(c) for c in kernel_outputs),
    )


def kernel_shape(equation, input_shape, output_shape):
    """The shape of an `EinsumDense` kernel, from its input and output shapes.

    Every kernel axis of an equation `adapter_equations` accepts is an input
    or an output axis, so its size is known without the kernel (which a
    quantized layer may store packed).

    Args:
        equation: the layer's equation.
        input_shape: the shape of its inputs.
        output_shape: the shape of its outputs.

    Returns:
        The kernel shape, a tuple of ints.

    Example:

    >>> kernel_shape("abc,cde->abde", (None, 5, 8), (None, 5, 2, 4))
    (8, 2, 4)
    """
    inputs, kernel, output = _split(equation)
    inputs, output = _expand_ellipsis(equation, inputs, output, len(input_shape))
    sizes = {**dict(zip(output, output_shape)), **dict(zip(inputs, input_shape))}
    return tuple(int(sizes[letter]) for letter in kernel)


def dense_equation(input_rank):
    """The `EinsumDense` equation that a `Dense` layer computes."""
    if input_rank < 2:
        raise ValueError(
            f"Dense inputs must have rank >= 2. Received rank {input_rank}."
        )
    letters = string.ascii_lowercase[: input_rank - 1]
    return f"{letters}y,yz->{letters}z"


def _split(equation):
    if not isinstance(equation, str) or equation.count("->") != 1:
        raise ValueError(
            "Expected an equation of the form 'input,kernel->output'. "
            f"Received: {equation!r}"
        )
    left, output = equation.replace(" ", "").split("->")
    terms = left.split(",")
    if len(terms) != 2:
        raise ValueError(
            "Expected an equation with exactly two operands, "
            f"'input,kernel->output'. Received: {equation!r}"
        )
    inputs, kernel = terms
    if "." in kernel:
        raise ValueError(
            f"Unsupported equation '{equation}': the kernel term cannot hold "
            "an ellipsis."
        )
    for term in (inputs, kernel, output):
        letters = term.replace("...", "")
        if not all(c in string.ascii_letters for c in letters):
            raise ValueError(
                f"Unsupported equation '{equation}': terms may only hold "
                "letters and one '...'."
            )
    return inputs, kernel, output


def _expand_ellipsis(equation, inputs, output, input_rank):
    if "..." not in inputs and "..." not in output:
        return inputs, output
    if "..." not in inputs or "..." not in output:
        raise ValueError(
            f"Unsupported equation '{equation}': '...' must appear in both "
            "the input and the output."
        )
    used = set(equation)
    explicit = len(inputs.replace("...", ""))
    if input_rank < explicit:
        raise ValueError(
            f"Equation '{equation}' needs inputs of rank >= {explicit}; the "
            f"layer is built for rank {input_rank}."
        )
    spare = [c for c in string.ascii_letters if c not in used]
    expansion = "".join(spare[: input_rank - explicit])
    return (
        inputs.replace("...", expansion),
        output.replace("...", expansion),
    )
