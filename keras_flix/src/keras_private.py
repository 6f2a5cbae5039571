"""The private Keras APIs keras-flix relies on, in one place.

Keras has no public API for some of what FLix needs: rewiring a built model,
carrying feature ids into gradient checkpointing, a training step of its own.
Every use of a private Keras attribute goes through this module, so a Keras
release that changes one breaks here, and `tests/test_keras_private.py`
names what disappeared.
"""


def remat_mode(layer):
    """The layer's gradient checkpointing mode (`keras.RematScope`), or `None`."""
    return getattr(layer, "_remat_mode", None)


def set_remat_mode(layer, mode):
    """Gives `layer` the remat mode another layer was built with."""
    layer._remat_mode = mode
