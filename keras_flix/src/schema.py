"""The feature vocabulary shared by every FLix layer of a model."""

import json
import re
from collections.abc import Mapping
from collections.abc import Sequence

import keras
import numpy as np

from keras_flix.src.inputs import ABSENT
from keras_flix.src.inputs import FEATURE_IDS_KEY

UNKNOWN_POLICIES = ("error", "absent")

# Feature type names become variable names, SavedModel argument names and JSON
# keys, so they are restricted to identifiers.
_FEATURE_TYPE_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_NAMES = (FEATURE_IDS_KEY,)


@keras.saving.register_keras_serializable(package="keras_flix")
class FeatureSchema:
    """The feature types of a dataset mixture and the values each can take.

    A schema fixes the layout of `feature_ids`, the integer tensor that tells
    every FLix layer which adapters an example uses: shape
    `[batch, len(feature_types)]`, column `j` holding the index of the
    example's value of `feature_types[j]` within that type's values, or `-1`
    when the feature is absent for that example.

    Args:
        features: mapping from feature type name (e.g. `"language"`) to the
            sequence of its values (e.g. `["en", "de", "sw"]`). The order of
            types fixes the columns of `feature_ids`; the order of values fixes
            their ids. Type names are identifiers; values are non-empty,
            distinct strings.
        unknown: what `encode` does with a value the schema does not know:
            `"error"` raises a `ValueError`, `"absent"` encodes it as `-1`
            (zero-shot use on an unseen language).

    Example:

    >>> schema = FeatureSchema(
    ...     {"language": ["en", "de", "sw"], "task": ["qa", "ner"]})
    >>> schema.feature_types
    ('language', 'task')
    >>> schema.encode({"language": "sw", "task": "qa"}).tolist()
    [2, 0]
    >>> schema.encode([{"language": "sw"}, {"task": "ner"}]).tolist()
    [[2, -1], [-1, 1]]
    >>> schema.decode([[2, -1]])
    [{'language': 'sw'}]
    """

    def __init__(self, features, unknown="error"):
        if not isinstance(features, Mapping) or not features:
            raise ValueError(
                "`features` must be a non-empty mapping from feature type "
                f"name to its list of values. Received: {features!r}"
            )
        if unknown not in UNKNOWN_POLICIES:
            raise ValueError(
                f"`unknown` must be one of {UNKNOWN_POLICIES}. "
                f"Received: unknown={unknown!r}"
            )
        self._values = {}
        for feature_type, values in features.items():
            _check_feature_type_name(feature_type)
            self._values[feature_type] = _check_values(feature_type, values)
        self._index = {
            feature_type: {value: i for i, value in enumerate(values)}
            for feature_type, values in self._values.items()
        }
        self._unknown = unknown

    @property
    def feature_types(self):
        """The feature type names, in the column order of `feature_ids`."""
        return tuple(self._values)

    @property
    def unknown(self):
        """The policy for unknown values: `"error"` or `"absent"`."""
        return self._unknown

    @property
    def num_values(self):
        """A dict from feature type to its number of values."""
        return {t: len(v) for t, v in self._values.items()}

    def values(self, feature_type):
        """The values of `feature_type`, in id order."""
        self._check_type(feature_type)
        return self._values[feature_type]

    def index(self, feature_type):
        """The column of `feature_type` in `feature_ids`."""
        self._check_type(feature_type)
        return self.feature_types.index(feature_type)

    def encode(self, features):
        """Encodes feature values as `feature_ids`.

        Args:
            features: one example's features as a dict from feature type to
                value, or a sequence of such dicts. A missing key, or a value
                of `None`, means the feature is absent for that example.

        Returns:
            An int32 NumPy array of shape `[len(feature_types)]` for one dict,
            `[n, len(feature_types)]` for a sequence of `n` dicts.
        """
        if isinstance(features, Mapping):
            return np.asarray(self._encode_one(features), dtype="int32")
        if isinstance(features, (str, bytes)) or not isinstance(
            features, Sequence
        ):
            raise TypeError(
                "`encode` takes a dict of feature values or a sequence of "
                f"such dicts. Received: {features!r}"
            )
        rows = [self._encode_one(f) for f in features]
        return np.asarray(rows, dtype="int32").reshape(
            len(rows), len(self._values)
        )

    def decode(self, feature_ids):
        """Decodes `feature_ids` back to dicts of feature values.

        Absent features (`-1`) are left out of the dicts.

        Args:
            feature_ids: integer array of shape `[len(feature_types)]` or
                `[n, len(feature_types)]`.

        Returns:
            One dict for a rank-1 input, a list of dicts for a rank-2 input.
        """
        ids = np.asarray(feature_ids)
        self.check_ids(ids)
        if ids.ndim == 1:
            return self._decode_one(ids)
        return [self._decode_one(row) for row in ids]

    def check_ids(self, feature_ids):
        """Raises a `ValueError` unless `feature_ids` is valid for the schema.

        Valid ids are integers of shape `[..., len(feature_types)]` with every
        entry in `[-1, num_values[t])` for its column's type `t`.

        Args:
            feature_ids: array-like of feature ids.
        """
        ids = np.asarray(feature_ids)
        if ids.dtype.kind not in "iu":
            raise ValueError(
                "Feature ids must be integers (int32, -1 = absent). Received "
                f"dtype {ids.dtype}."
            )
        if ids.ndim < 1 or ids.shape[-1] != len(self._values):
            raise ValueError(
                f"Feature ids must have shape [..., {len(self._values)}], one "
                f"column per feature type {self.feature_types}. Received "
                f"shape {ids.shape}."
            )
        for column, (feature_type, values) in enumerate(self._values.items()):
            bad = (ids[..., column] < ABSENT) | (
                ids[..., column] >= len(values)
            )
            if bad.any():
                raise ValueError(
                    f"Feature id {int(ids[..., column][bad].flat[0])} is out "
                    f"of range for feature type '{feature_type}', which has "
                    f"{len(values)} values: expected -1 (absent) or an id in "
                    f"[0, {len(values) - 1}]."
                )

    def encode_checked(self, feature_ids):
        """One combination's ids, checked, as a tuple of Python ints.

        Args:
            feature_ids: a dict of feature values, or a sequence of
                `len(feature_types)` ids.

        Returns:
            A tuple of ints, one per feature type (`-1` = absent).
        """
        if isinstance(feature_ids, Mapping):
            return tuple(int(i) for i in self.encode(feature_ids))
        ids = np.asarray(feature_ids)
        if ids.ndim != 1:
            raise ValueError(
                "Expected one combination: a dict of feature values or "
                f"{len(self._values)} ids. Received shape {ids.shape}."
            )
        self.check_ids(ids)
        return tuple(int(i) for i in ids)

    def _encode_one(self, features):
        if not isinstance(features, Mapping):
            raise TypeError(
                "Each example's features must be a dict from feature type to "
                f"value. Received: {features!r}"
            )
        for feature_type in features:
            if feature_type not in self._index:
                raise ValueError(
                    f"Unknown feature type '{feature_type}'. The schema's "
                    f"feature types are {self.feature_types}."
                )
        row = []
        for feature_type, index in self._index.items():
            value = features.get(feature_type)
            if value is None:
                row.append(ABSENT)
            elif value in index:
                row.append(index[value])
            elif self._unknown == "absent":
                row.append(ABSENT)
            else:
                raise ValueError(
                    f"Unknown value {value!r} for feature type "
                    f"'{feature_type}'. Known values: "
                    f"{list(self._values[feature_type])}. Add it to the "
                    "schema, or build the schema with unknown='absent' to "
                    "treat unknown values as absent."
                )
        return row

    def _decode_one(self, row):
        return {
            feature_type: self._values[feature_type][int(i)]
            for feature_type, i in zip(self._values, row)
            if i != ABSENT
        }

    def _check_type(self, feature_type):
        if feature_type not in self._values:
            raise ValueError(
                f"Unknown feature type '{feature_type}'. The schema's feature "
                f"types are {self.feature_types}."
            )

    def get_config(self):
        return {
            "features": {t: list(v) for t, v in self._values.items()},
            "unknown": self._unknown,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def to_json(self):
        """The schema as a JSON string (see `from_json`)."""
        return json.dumps(self.get_config(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text):
        """Rebuilds a schema written by `to_json`."""
        return cls.from_config(json.loads(text))

    def __eq__(self, other):
        if not isinstance(other, FeatureSchema):
            return NotImplemented
        return (
            self._values == other._values and self._unknown == other._unknown
        )

    def __hash__(self):
        return hash((tuple(self._values.items()), self._unknown))

    def __repr__(self):
        features = ", ".join(
            f"{t!r}: {list(v)!r}" for t, v in self._values.items()
        )
        return f"FeatureSchema({{{features}}}, unknown={self._unknown!r})"


def _check_feature_type_name(feature_type):
    if not isinstance(feature_type, str) or not _FEATURE_TYPE_PATTERN.fullmatch(
        feature_type
    ):
        raise ValueError(
            "Feature type names must be identifiers (a letter, then letters, "
            f"digits or '_'). Received: {feature_type!r}"
        )
    if feature_type in RESERVED_NAMES:
        raise ValueError(
            f"'{feature_type}' is reserved and cannot name a feature type."
        )


def _check_values(feature_type, values):
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(
            f"The values of feature type '{feature_type}' must be a list of "
            f"strings. Received: {values!r}"
        )
    values = tuple(values)
    if not values:
        raise ValueError(f"Feature type '{feature_type}' has no values.")
    for value in values:
        if not isinstance(value, str) or not value:
            raise ValueError(
                f"Values of feature type '{feature_type}' must be non-empty "
                f"strings. Received: {value!r}"
            )
    duplicates = sorted({v for v in values if values.count(v) > 1})
    if duplicates:
        raise ValueError(
            f"Feature type '{feature_type}' lists these values more than "
            f"once: {duplicates}."
        )
    return values
