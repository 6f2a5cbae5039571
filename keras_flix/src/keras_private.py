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


def compute_loss(model, **kwargs):
    """`Trainer._compute_loss`: the loss as `train_step` computes it."""
    return model._compute_loss(**kwargs)


def loss_tracker(model):
    """`Trainer._loss_tracker`: the metric `train_step` reports as "loss"."""
    return model._loss_tracker


def update_metrics_variables(model, *args):
    """`JAXTrainer._update_metrics_variables`, the stateless metrics update."""
    return model._update_metrics_variables(*args)
