"""The dynamic sizes of a model's inputs, named and bounded, for export.

A SavedModel exported from jax is traced once with symbolic sizes in place
of the unknown (`None`) axes of its inputs. Two things must then be told
that the model's own `InputSpec`s do not say:

* which unknown sizes are one and the same: the batch of every input, and
  the sequence length of a KerasHub model's `token_ids`, `padding_mask` and
  `segment_ids` (separately for the `encoder_` and `decoder_` inputs of a
  sequence-to-sequence model), which the model adds or compares to each
  other;
* how large a sequence may be: a KerasHub backbone with position
  embeddings reads at most `max_sequence_length` of them, and slicing them
  to a symbolic length only traces with that bound.
"""

import re

BATCH = "batch"
"""The name of the batch size, shared by every input (feature ids included)."""

SEQUENCE_INPUTS = re.compile(r"^(encoder_|decoder_)?(token_ids|padding_mask|segment_ids)$")
"""KerasHub's token inputs; those with the same prefix share a sequence length."""


def symbolic_shapes(specs, model):
    """The symbolic shape of each input and the bounds on its sizes.

    Args:
        specs: a dict from input name to a spec with a `shape` (e.g.
            `tf.TensorSpec`, `keras.InputSpec`).
        model: the model the inputs go to (a KerasHub backbone or task, or
            any Keras model); its backbone's `max_sequence_length`, when it
            has one, bounds the sequence lengths.

    Returns:
        `(shapes, constraints)`. `shapes` maps each input name to its shape
        as jax's shape polymorphism spells it, e.g. `"(batch, sequence)"`:
        static sizes as numbers, the first axis `batch`, the sequence axis
        of KerasHub token inputs `sequence` (`encoder_sequence`,
        `decoder_sequence`), every other unknown size a name of its own.
        `constraints` lists bounds such as `"sequence <= 512"`.

    Example:

    >>> import keras
    >>> specs = {
    ...     "token_ids": keras.InputSpec(shape=(None, None)),
    ...     "padding_mask": keras.InputSpec(shape=(None, None)),
    ...     "pixels": keras.InputSpec(shape=(None, None, 3)),
    ... }
    >>> class Backbone:
    ...     max_sequence_length = 12
    >>> shapes, constraints = symbolic_shapes(specs, Backbone())
    >>> shapes["padding_mask"], shapes["pixels"]
    ('(batch, sequence)', '(batch, pixels_1, 3)')
    >>> constraints
    ['sequence <= 12']
    """
    shapes = {}
    sequences = set()
    for name, spec in specs.items():
        sizes = []
        for axis, size in enumerate(spec.shape):
            if size is not None:
                sizes.append(str(size))
            elif axis == 0:
                sizes.append(BATCH)
            elif axis == 1 and SEQUENCE_INPUTS.match(name):
                prefix = SEQUENCE_INPUTS.match(name).group(1) or ""
                sequences.add(f"{prefix}sequence")
                sizes.append(f"{prefix}sequence")
            else:
                sizes.append(f"{_identifier(name)}_{axis}")
        shapes[name] = f"({', '.join(sizes)})"
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        backbone = model
    limit = getattr(backbone, "max_sequence_length", None)
    if not isinstance(limit, int) or isinstance(limit, bool):
        return shapes, []
    return shapes, [f"{sequence} <= {limit}" for sequence in sorted(sequences)]


def _identifier(name):
    return re.sub(r"\W", "_", name)
