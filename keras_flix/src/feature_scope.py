"""How feature ids reach FLix layers deep inside a model.

KerasHub layers call their projections themselves, so the ids cannot be
threaded through their `call` signatures. Instead a model opens a
`feature_scope` around its forward pass and every FLix layer called inside it
reads the ids from there. The scope is thread-local, so the replicas that
`tf.distribute` runs in parallel threads each see their own ids.

Gradient checkpointing recomputes a layer's forward pass during the backward
pass, which on TensorFlow and torch runs after the scope has closed.
`preserve_scope_in_remat` makes a rematerialized layer carry the ids it saw in
its forward pass into that recomputation.
"""

import contextlib
import threading

_state = threading.local()


def _stack():
    if not hasattr(_state, "stack"):
        _state.stack = []
    return _state.stack


@contextlib.contextmanager
def feature_scope(feature_ids):
    """Makes `feature_ids` visible to every FLix layer called inside.

    Scopes nest; the innermost one wins.

    Args:
        feature_ids: int32 tensor of shape `[batch, n_feature_types]`
            (see `FeatureSchema`), `keras_flix.ABSENT` for every feature of
            every example absent, or `None` to hide an enclosing scope.

    Example:

    >>> import numpy as np
    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
    >>> layer = kf.layers.FLixDense(4, schema=schema, rank=2)
    >>> x = np.ones((3, 8), "float32")
    >>> with kf.feature_scope(schema.encode([{"language": "sw"}] * 3)):
    ...     y = layer(x)
    >>> tuple(y.shape)
    (3, 4)
    """
    stack = _stack()
    stack.append(feature_ids)
    try:
        yield feature_ids
    finally:
        stack.pop()


def current_feature_ids():
    """The ids of the innermost open `feature_scope`, or `None`."""
    stack = _stack()
    return stack[-1] if stack else None


def preserve_scope_in_remat(layer):
    """Makes `layer`'s rematerialized call re-enter the caller's scope.

    Keras applies gradient checkpointing in `Layer.__call__` by wrapping
    `call` with the backend's remat, which TensorFlow and torch re-run during
    the backward pass. The ids visible when the forward pass wrapped the call
    are captured, and the wrapped call re-opens a scope with them, so the
    recomputation uses exactly the forward pass's ids.

    Args:
        layer: a Keras layer built under a `keras.RematScope`.
    """
    if getattr(layer, "_flix_remat_wrapped", False):
        return
    keras_rematerialized_call = layer.rematerialized_call

    def rematerialized_call(layer_call, *args, **kwargs):
        ids = current_feature_ids()

        def call_in_scope(*call_args, **call_kwargs):
            with feature_scope(ids):
                return layer_call(*call_args, **call_kwargs)

        return keras_rematerialized_call(call_in_scope, *args, **kwargs)

    # Plain object attributes: these are not state Keras should track.
    object.__setattr__(layer, "rematerialized_call", rematerialized_call)
    object.__setattr__(layer, "_flix_remat_wrapped", True)
