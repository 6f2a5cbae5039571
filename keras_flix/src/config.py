"""`FLixConfig`: every FLix setting of a retrofitted model, checked once."""

import copy

import keras

from keras_flix.src.layers.selection import check_compute_path
from keras_flix.src.schema import FeatureSchema

LAYER_KEYS = ("schema", "rank", "alpha", "a_initializer", "b_initializer", "compute_path")
"""The settings a FLix layer takes on top of its base layer's arguments.

`base_layer_config` removes exactly these from a FLix layer's config to
rebuild its base layer, and `FLixConfig.layer_arguments` passes exactly these
to a new FLix layer.
"""


def base_layer_config(layer_config):
    """A FLix layer's config without its FLix settings: its base layer's.

    Example:

    >>> base_layer_config({"units": 4, "rank": {"language": 2}, "name": "proj"})
    {'units': 4, 'name': 'proj'}
    """
    return {key: value for key, value in layer_config.items() if key not in LAYER_KEYS}

WEIGHT_KEYS = ("rank", "alpha")
"""The per-layer settings that adapter weights are only valid for.

Adapter files record them per layer, and `load_adapters` refuses a file
whose values differ from the model's (the schema is compared on its own).
"""


@keras.saving.register_keras_serializable(package="keras_flix")
class FLixConfig:
    """The FLix settings of a model: what `keras_flix.retrofit` takes.

    Every setting is checked here, before any model is touched, and the
    error names the bad value and what was expected. A `FLixModel` keeps its
    config (`model.flix_config`), and everything that needs the settings
    (saving and loading the model, `merge`, adapter files, export) reads
    them from it.

    Args:
        schema: the `keras_flix.FeatureSchema`.
        rank: adapter rank, a positive int or a dict from feature type to
            positive int.
        alpha: scale numerator (`None`: equal to the rank), a positive
            number or a dict from feature type to number. The scale of a
            feature type's adapters is `alpha / rank`.
        target_layers: names, paths or regular expressions (full match) of
            the layers to adapt, or `None` for a KerasHub backbone's
            `default_lora_layer_names()`. After `retrofit`, the paths of the
            adapted layers.
        feature_dropout: probability of dropping each feature of each
            example in training, a float in `[0, 1)` or a dict from feature
            type to float (types left out are never dropped).
        train_also: names, paths or regular expressions of further layers
            to keep trainable (e.g. a task head).
        seed: int seed of the feature dropout, or `None`.
        a_initializer: initializer of each value's `A` matrix (`[d_in, r]`).
        b_initializer: initializer of each value's `B` matrix.
        compute_path: how FLix layers select each example's adapters:
            `"auto"`, `"gather"` or `"one_hot"` (see
            `keras_flix.src.layers.selection.COMPUTE_PATHS`).

    Example:

    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en", "sw"], "task": ["qa"]})
    >>> config = kf.FLixConfig(schema, rank={"language": 4, "task": 2},
    ...                        feature_dropout=0.1, compute_path="one_hot")
    >>> config.feature_dropout
    {'language': 0.1, 'task': 0.1}
    >>> kf.FLixConfig.from_config(config.get_config()) == config
    True
    >>> kf.FLixConfig(schema, rank=0)
    Traceback (most recent call last):
    ...
    ValueError: `rank` for feature type 'language' must be a positive int. Received: 0
    """

    def __init__(
        self,
        schema,
        rank=8,
        alpha=None,
        target_layers=None,
        feature_dropout=0.0,
        train_also=(),
        seed=None,
        a_initializer="he_uniform",
        b_initializer="zeros",
        compute_path="auto",
    ):
        if not isinstance(schema, FeatureSchema):
            raise TypeError(
                "`schema` must be a keras_flix.FeatureSchema. Received: "
                f"{type(schema).__name__}"
            )
        self.schema = schema
        per_type(rank, schema, "rank", int)
        per_type(rank if alpha is None else alpha, schema, "alpha", float)
        self.rank = rank
        self.alpha = alpha
        self.target_layers = (
            None if target_layers is None else _patterns(target_layers, "target_layers")
        )
        self.feature_dropout = dropout_rates(feature_dropout, schema)
        self.train_also = _patterns(train_also, "train_also")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"`seed` must be an int or None. Received: {seed!r}")
        self.seed = seed
        self.a_initializer = _initializer(a_initializer, "a_initializer")
        self.b_initializer = _initializer(b_initializer, "b_initializer")
        self.compute_path = check_compute_path(compute_path)

    KEYS = (
        "schema",
        "rank",
        "alpha",
        "target_layers",
        "feature_dropout",
        "train_also",
        "seed",
        "a_initializer",
        "b_initializer",
        "compute_path",
    )
    """The settings, in the order of the constructor's arguments."""

    def layer_arguments(self):
        """The arguments (`LAYER_KEYS`) a FLix layer is built with."""
        return {key: getattr(self, key) for key in LAYER_KEYS}

    def replace(self, **changes):
        """A copy of the config with some settings changed (and checked)."""
        return type(self)(**{**self._settings(), **changes})

    def _settings(self):
        return {key: getattr(self, key) for key in self.KEYS}

    def get_config(self):
        config = copy.deepcopy({k: v for k, v in self._settings().items() if k != "schema"})
        return {"schema": self.schema.get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schema"] = FeatureSchema.from_config(config["schema"])
        return cls(**config)

    def __eq__(self, other):
        if not isinstance(other, FLixConfig):
            return NotImplemented
        return self.get_config() == other.get_config()

    __hash__ = None

    def __repr__(self):
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"FLixConfig({settings})"


def per_type(value, schema, name, kind):
    """Expands an int/float or a per-feature-type dict to a full dict.

    Args:
        value: one value for every feature type, or a dict from feature type
            to value that names every type of `schema`.
        schema: the `FeatureSchema`.
        name: the argument's name, for error messages.
        kind: `int` or `float`: what each value must be (positive).

    Returns:
        A dict from every feature type to its value.

    Example:

    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en"], "task": ["qa"]})
    >>> per_type(4, schema, "rank", int)
    {'language': 4, 'task': 4}
    """
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(schema.feature_types))
        missing = [t for t in schema.feature_types if t not in value]
        if unknown or missing:
            raise ValueError(
                f"`{name}` as a dict must name each feature type of the schema "
                f"{schema.feature_types} exactly once. Unknown: {unknown}; "
                f"missing: {missing}."
            )
        values = {t: value[t] for t in schema.feature_types}
    else:
        values = {t: value for t in schema.feature_types}
    for feature_type, v in values.items():
        ok_type = isinstance(v, int) if kind is int else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or not v > 0:
            raise ValueError(
                f"`{name}` for feature type '{feature_type}' must be a "
                f"positive {kind.__name__}. Received: {v!r}"
            )
    return values


def dropout_rates(rate, schema):
    """Each feature type's dropout rate, checked.

    Args:
        rate: one float in `[0, 1)` for every type, or a dict from feature
            type to float; types it leaves out get 0.
        schema: the `FeatureSchema`.

    Returns:
        A dict from every feature type, in schema order, to its float rate.

    Example:

    >>> import keras_flix as kf
    >>> schema = kf.FeatureSchema({"language": ["en"], "task": ["qa"]})
    >>> dropout_rates({"language": 0.2}, schema)
    {'language': 0.2, 'task': 0.0}
    """
    rates = rate if isinstance(rate, dict) else dict.fromkeys(schema.feature_types, rate)
    unknown = sorted(set(rates) - set(schema.feature_types))
    if unknown:
        raise ValueError(
            f"`feature_dropout` names unknown feature types {unknown}; the "
            f"schema's types are {schema.feature_types}."
        )
    checked = {}
    for feature_type in schema.feature_types:
        value = rates.get(feature_type, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(
                f"Feature dropout rate for '{feature_type}' must be a float "
                f"in [0, 1). Received: {value!r}"
            )
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"Feature dropout rate for '{feature_type}' must be in "
                f"[0, 1). Received: {value}"
            )
        checked[feature_type] = float(value)
    return checked


def _patterns(patterns, argument):
    """Layer patterns as a list of strings."""
    if isinstance(patterns, str):
        patterns = [patterns]
    try:
        patterns = list(patterns)
    except TypeError:
        raise ValueError(
            f"`{argument}` must be a string or a sequence of strings. "
            f"Received: {patterns!r}"
        ) from None
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(
                f"`{argument}` entries must be layer names, paths or regular "
                f"expressions (strings). Received: {pattern!r}"
            )
    return patterns


def _initializer(identifier, argument):
    """An initializer as its serialized config (what a saved model records)."""
    # Inside a saving or loading scope Keras marks the configs of objects it
    # serialized twice by their id(), which a short-lived object can reuse:
    # in the identifier, in the config `serialize` returns, or later in a
    # config it returned earlier. The settings never share an initializer
    # object: the mark is dropped on the way in and out, and the config kept
    # is a copy Keras holds no reference to.
    def unmarked(config):
        return {k: v for k, v in config.items() if k != "shared_object_id"}

    if isinstance(identifier, dict):
        identifier = unmarked(identifier)
    try:
        return unmarked(keras.initializers.serialize(keras.initializers.get(identifier)))
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"`{argument}` must be a Keras initializer, its name or its "
            f"config. Received: {identifier!r} ({error})"
        ) from None
