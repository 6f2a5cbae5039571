"""The per-feature low-rank adapters shared by `FLixDense` and `FLixEinsumDense`."""

import contextlib
import math
import threading

import keras
import numpy as np
from keras import ops

from keras_flix.src import keras_private
from keras_flix.src.config import per_type
from keras_flix.src.distribution import register_adapter_layouts
from keras_flix.src.inputs import ABSENT
from keras_flix.src.inputs import is_all_absent
from keras_flix.src.inputs import standardize_feature_ids
from keras_flix.src.feature_scope import current_feature_ids
from keras_flix.src.feature_scope import feature_scope
from keras_flix.src.layers.initializers import AdapterAInitializer
from keras_flix.src.layers.quantized_base import base_variables
from keras_flix.src.layers.quantized_base import check_quantization_mode
from keras_flix.src.layers.quantized_base import dequantized_kernel
from keras_flix.src.layers.selection import adapter_rows
from keras_flix.src.layers.selection import check_compute_path
from keras_flix.src.layers.selection import positions_per_example
from keras_flix.src.layers.selection import resolve_compute_path
from keras_flix.src.layers.selection import select_rows
from keras_flix.src.layers.selection_route import routed
from keras_flix.src.schema import FeatureSchema

# The FLix layers whose activation Keras' base call must not apply (by id).
_deferred_activations = threading.local()


class FLixAdapter:
    """Mixin adding per-feature low-rank updates to a `Dense`-like layer.

    For every feature type `t` of the schema it holds `A_t` of shape
    `[n_values_t, d_in, r_t]` and `B_t` of shape `[n_values_t, r_t, d_out]`,
    where `d_in` / `d_out` are the flattened contracted / output axes of the
    base kernel. For an example with feature ids `f` it adds

        sum_t  (alpha_t / r_t) * x @ A_t[f_t] @ B_t[f_t]

    to the base layer's pre-activation output, gathering each example's own
    `A_t[f_t]`, `B_t[f_t]`: the cost per example grows with the number of
    feature types, not with the number of values. An absent feature (`-1`)
    adds nothing. An id outside the schema turns the example's output into
    NaN (only possible inside compiled graphs; eager calls raise).

    The base kernel and bias are frozen; only the adapters train. The base
    may be quantized by Keras (`"int8"`, `"int4"`, `"float8"`: see
    `keras_flix.src.layers.quantized_base`): its quantized call computes the
    base, the adapters stay float32 and their update is added to it.
    """

    base_layer_class = None
    """The Keras layer class whose layers this FLix layer adapts."""

    @classmethod
    def from_base(
        cls,
        layer,
        schema,
        rank=8,
        alpha=None,
        a_initializer="he_uniform",
        b_initializer="zeros",
        compute_path="auto",
    ):
        """Builds a FLix layer that adapts the built base `layer`.

        The new layer has the base layer's configuration (its quantization
        included) and name, and places its adapter variables under the base
        layer's path, e.g. `.../query/flix_language_a`. A float base
        layer's kernel and bias are shared, not copied. For a quantized base
        Keras builds the quantized variables, with the state its quantized
        call needs, and they take the base layer's values.

        Args:
            layer: a built layer of the FLix layer's base class (`Dense` for
                `FLixDense`, `EinsumDense` for `FLixEinsumDense`), float or
                quantized in a mode of `quantized_base.SUPPORTED_MODES`,
                without Keras LoRA.
            schema, rank, alpha, a_initializer, b_initializer, compute_path:
                as for the constructor.

        Returns:
            The new, built FLix layer.
        """
        if type(layer) is not cls.base_layer_class:
            raise TypeError(
                f"{cls.__name__}.from_base takes a "
                f"{cls.base_layer_class.__name__} layer; '{layer.name}' is a "
                f"{type(layer).__name__}."
            )
        if not layer.built:
            raise ValueError(
                f"Layer '{layer.name}' is not built yet; build or call the "
                "model once before adding FLix adapters."
            )
        check_quantization_mode(layer.quantization_mode, f"Layer '{layer.path}'")
        if layer.lora_enabled:
            raise ValueError(
                f"Layer '{layer.path}' already has Keras LoRA enabled; merge "
                "or remove it before adding FLix adapters."
            )
        config = layer.get_config()
        config.update(
            schema=schema,
            rank=rank,
            alpha=alpha,
            a_initializer=a_initializer,
            b_initializer=b_initializer,
            compute_path=compute_path,
        )
        flix = cls.from_config(config)
        # Not Keras-tracked state: consumed and removed by `build`.
        object.__setattr__(flix, "_adopted_base", layer)
        keras_private.set_remat_mode(flix, keras_private.remat_mode(layer))
        parent_path = layer.path.rpartition("/")[0]
        with contextlib.ExitStack() as scopes:
            for part in filter(None, parent_path.split("/")):
                scopes.enter_context(keras.name_scope(part))
            flix.build(layer.get_build_config()["input_shape"])
        return flix

    def _build_base(self, input_shape):
        """Creates the base variables, or takes those of `from_base`'s layer.

        Returns:
            Whether a float base layer's kernel and bias were taken over as
            they are: Keras' `build` did not run, and the subclass sets the
            input spec it would have set.
        """
        base = self.__dict__.pop("_adopted_base", None)
        if base is not None and base.quantization_mode is None:
            keras_private.set_kernel(self, keras_private.kernel(base))
            self.bias = base.bias
            return True
        # Keras' build, which builds the quantized variables of the layer's
        # mode and the state its quantized call reads.
        super().build(input_shape)
        if base is not None:
            for own, adopted in zip(base_variables(self), base_variables(base)):
                own.assign(adopted)
        return False

    def _init_adapter(
        self, schema, rank, alpha, a_initializer, b_initializer, compute_path
    ):
        if isinstance(schema, dict):
            schema = FeatureSchema.from_config(schema)
        if not isinstance(schema, FeatureSchema):
            raise TypeError(
                "`schema` must be a keras_flix.FeatureSchema. Received: "
                f"{schema!r}"
            )
        self.schema = schema
        self.rank = per_type(rank, schema, "rank", int)
        self.alpha = per_type(
            self.rank if alpha is None else alpha, schema, "alpha", float
        )
        self.a_initializer = AdapterAInitializer(a_initializer)
        self.b_initializer = keras.initializers.get(b_initializer)
        self.compute_path = compute_path
        self.adapter_a = {}
        self.adapter_b = {}

    @property
    def compute_path(self):
        """How each example's adapters are selected: see `selection.COMPUTE_PATHS`."""
        return self._compute_path

    @compute_path.setter
    def compute_path(self, value):
        self._compute_path = check_compute_path(value)

    @property
    def scales(self):
        """The dict of scales `alpha_t / rank_t` per feature type."""
        return {t: self.alpha[t] / self.rank[t] for t in self.schema.feature_types}

    @property
    def adapter_variables(self):
        """The adapter variables: each type's `A` then `B`, in schema order."""
        return [
            v
            for t in self.schema.feature_types
            for v in (self.adapter_a[t], self.adapter_b[t])
        ]

    def _freeze_base(self):
        # float8's scaling statistics are not weights: Keras overwrites them
        # with their "gradients" in training, so they stay trainable.
        for variable in base_variables(self):
            if not variable.overwrite_with_gradient:
                variable.trainable = False

    def _build_adapters(self, d_in, d_out):
        self._freeze_base()
        register_adapter_layouts(self)
        for feature_type in self.schema.feature_types:
            num_values = self.schema.num_values[feature_type]
            rank = self.rank[feature_type]
            # Adapters stay float32 whatever the policy: low-rank updates are
            # small and underflow in half precision.
            self.adapter_a[feature_type] = self.add_weight(
                name=f"flix_{feature_type}_a",
                shape=(num_values, d_in, rank),
                initializer=self.a_initializer,
                dtype="float32",
            )
            self.adapter_b[feature_type] = self.add_weight(
                name=f"flix_{feature_type}_b",
                shape=(num_values, rank, d_out),
                initializer=self.b_initializer,
                dtype="float32",
            )
            # Lets row-sparse optimizers (`LazyAdam`) tell the tables apart.
            for variable in (
                self.adapter_a[feature_type],
                self.adapter_b[feature_type],
            ):
                variable._flix_adapter_table = True

    @property
    def trainable(self):
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value):
        # Keras propagates `trainable` to every variable; the base weights of
        # a FLix layer stay frozen whatever the flag.
        keras.layers.Layer.trainable.fset(self, value)
        if self.built:
            self._freeze_base()

    def __call__(self, inputs, *args, feature_ids=None, **kwargs):
        if feature_ids is None:
            feature_ids = current_feature_ids()
        if feature_ids is None and isinstance(inputs, keras.KerasTensor):
            # Symbolic calls (Functional model construction) only compute
            # shapes; the ids arrive through the scope when the graph runs.
            return super().__call__(inputs, *args, **kwargs)
        if feature_ids is None:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' was called without "
                "feature ids. Pass `feature_ids=` to the layer, call it "
                "inside `keras_flix.feature_scope(feature_ids)`, or call the "
                "model returned by `keras_flix.retrofit` with a "
                "'feature_ids' input."
            )
        if is_all_absent(feature_ids):
            feature_ids = ops.full(
                (ops.shape(inputs)[0], len(self.schema.feature_types)), ABSENT, "int32"
            )
        if isinstance(feature_ids, keras.KerasTensor):
            # A symbolic input: wire the ids into the Functional graph.
            return super().__call__(
                inputs, *args, feature_ids=feature_ids, **kwargs
            )
        batch_size = getattr(inputs, "shape", (None,))[0]
        feature_ids = standardize_feature_ids(
            feature_ids,
            self.schema,
            batch_size=batch_size,
            owner=f"{type(self).__name__} '{self.name}'",
        )
        # The ids travel by scope rather than as a call argument: Keras'
        # gradient checkpointing on TensorFlow cannot take keyword arguments.
        with feature_scope(feature_ids):
            return super().__call__(inputs, *args, **kwargs)

    def call(self, inputs, feature_ids=None, training=None):
        return self._adapted_call(super().call, inputs, feature_ids, training)

    def quantized_call(self, inputs, feature_ids=None, training=None):
        return self._adapted_call(
            super().quantized_call, inputs, feature_ids, training
        )

    def _adapted_call(self, base_call, inputs, feature_ids, training):
        """The base layer's output plus the FLix update, then the activation.

        `base_call` is Keras' own call of the base layer class for the
        layer's mode: the float call, or the int8, int4 or float8 quantized
        call (which may quantize the inputs too). Every mode adds the same
        update, computed once from the float inputs, where Keras adds its
        LoRA term: after the base product and bias, before the activation,
        which Keras' call leaves out (`activation` reads `None` inside it).
        """
        delta = self._adapter_delta(
            inputs, feature_ids, self._adapter_equations(inputs)
        )
        deferred = _deferred_activation_ids()
        deferred.add(id(self))
        try:
            x = base_call(inputs, training=training)
        finally:
            deferred.discard(id(self))
        x = ops.add(x, delta)
        if self.activation is not None:
            x = self.activation(x)
        return x

    @property
    def activation(self):
        """The activation; `None` while Keras' base call runs (see `call`)."""
        if id(self) in _deferred_activation_ids():
            return None
        return self._flix_activation

    @activation.setter
    def activation(self, value):
        self._flix_activation = value

    def _adapter_equations(self, inputs):
        """The `AdapterEquations` of the base product for these inputs."""
        raise NotImplementedError

    @property
    def base_kernel(self):
        """The frozen kernel variable of the base layer (int8 if quantized so;
        int4 packs two values per byte into a matrix)."""
        return keras_private.kernel(self)

    @property
    def base_kernel_shape(self):
        """The shape of the base kernel in float, whatever its quantization."""
        return self._base_kernel_shape

    def dequantized_kernel(self):
        """The base kernel in float32, as the layer's base call sees it.

        Returns:
            A tensor of shape `base_kernel_shape`: the kernel of a float or
            float8 layer, an int8 or int4 kernel divided by its scales
            (see `keras_flix.src.layers.quantized_base.dequantized_kernel`).
        """
        return dequantized_kernel(self, self.base_kernel_shape)

    def _adapter_delta(self, inputs, feature_ids, equations):
        """The summed low-rank updates of each example's active features."""
        if feature_ids is None:
            feature_ids = current_feature_ids()
        kernel_shape = self.base_kernel_shape
        types = self.schema.feature_types
        # All types at once, with NumPy constants: eager backends pay per op.
        num_values = np.array([self.schema.num_values[t] for t in types], "int32")
        scales = np.array([self.scales[t] for t in types], "float32")
        rows, present, valid = adapter_rows(feature_ids, num_values)
        gate = ops.where(valid, ops.where(present, scales, 0.0), math.nan)
        positions = positions_per_example(inputs, equations)
        a_parts, b_parts = [], []
        for column, feature_type in enumerate(types):
            type_rows = rows[:, column]
            type_gate = gate[:, column]
            table_a = self.adapter_a[feature_type]
            table_b = self.adapter_b[feature_type]
            path = resolve_compute_path(
                self.compute_path, int(num_values[column]), positions
            )
            a = routed(table_a, type_rows, select_rows(table_a, type_rows, path))
            b = routed(table_b, type_rows, select_rows(table_b, type_rows, path))
            # The scale (0 when absent, NaN when out of range) goes on the
            # small selected `A`, which XLA fuses into the selection.
            a_parts.append(ops.multiply(a, type_gate[:, None, None]))
            b_parts.append(b)
        a = _concat(a_parts, axis=-1)
        b = _concat(b_parts, axis=1)
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        if dtype != "float32":  # The adapters' dtype, whatever the policy.
            a, b = ops.cast(a, dtype), ops.cast(b, dtype)
        total_rank = sum(self.rank.values())
        contracted = tuple(kernel_shape[i] for i in equations.contracted_axes)
        outputs = tuple(kernel_shape[i] for i in equations.output_axes)
        if len(contracted) > 1:
            a = ops.reshape(a, (-1, *contracted, total_rank))
        if len(outputs) > 1:
            b = ops.reshape(b, (-1, total_rank, *outputs))
        return ops.einsum(equations.up, ops.einsum(equations.down, inputs, a), b)

    def merged_kernel(self, feature_ids):
        """The kernel of one feature combination, adapters folded in.

        Args:
            feature_ids: int sequence of length `len(schema.feature_types)`,
                one combination (`-1` = absent).

        Returns:
            `W0 + sum_t s_t * reshape(A_t[f_t] @ B_t[f_t])` as a tensor of the
            base kernel's shape and dtype; for a quantized base layer `W0`
            is `dequantized_kernel()` and the result is float32 (`merge`
            quantizes it again).
        """
        ids = self.schema.encode_checked(feature_ids)
        contracted_axes, output_axes = self.kernel_axes
        kernel_shape = self.base_kernel_shape
        permuted_shape = [kernel_shape[a] for a in contracted_axes + output_axes]
        inverse = [0] * len(kernel_shape)
        for position, axis in enumerate(contracted_axes + output_axes):
            inverse[axis] = position
        kernel = self.dequantized_kernel()
        for feature_type, value in zip(self.schema.feature_types, ids):
            if value < 0:
                continue
            update = ops.matmul(
                self.adapter_a[feature_type][value],
                self.adapter_b[feature_type][value],
            ) * self.scales[feature_type]
            update = ops.transpose(ops.reshape(update, permuted_shape), inverse)
            kernel = kernel + ops.cast(update, kernel.dtype)
        return kernel

    def combination_factors(self, feature_ids):
        """One combination's update as a single low-rank product.

        Args:
            feature_ids: a dict of feature values or a sequence of
                `len(schema.feature_types)` ids (`-1` = absent): one
                combination.

        Returns:
            `(a, b)`, NumPy arrays `[d_in, R]` and `[R, d_out]` whose product
            is `sum_t s_t * A_t[f_t] @ B_t[f_t]` over the active features:
            the `A`s concatenated along the rank axis (`R = sum_t r_t`) and
            the `B`s scaled by their `s_t` and stacked in the same order
            (exact). `None` when every feature is absent.
        """
        ids = self.schema.encode_checked(feature_ids)
        parts_a, parts_b = [], []
        for feature_type, value in zip(self.schema.feature_types, ids):
            if value < 0:
                continue
            parts_a.append(ops.convert_to_numpy(self.adapter_a[feature_type][value]))
            parts_b.append(
                self.scales[feature_type]
                * ops.convert_to_numpy(self.adapter_b[feature_type][value])
            )
        if not parts_a:
            return None
        return np.concatenate(parts_a, axis=1), np.concatenate(parts_b, axis=0)

    def enable_lora(self, *args, **kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} '{self.name}' already carries FLix "
            "adapters; Keras LoRA cannot be enabled on top of them."
        )

    def quantize(self, mode=None, type_check=True, config=None):
        """Quantizes the base kernel as Keras quantizes its base layer class.

        The adapters stay float32 and active: the layer computes Keras'
        quantized base call plus the FLix update. What `model.quantize`
        calls on each layer.

        Args:
            mode: `"int8"`, `"int4"` or `"float8"` (see
                `quantized_base.SUPPORTED_MODES`).
            type_check: ignored: Keras' check that refuses subclasses of
                `Dense` / `EinsumDense`, which a FLix layer passes.
            config: a `keras.quantizers.QuantizationConfig` for `mode`.

        Example:

        >>> import numpy as np
        >>> import keras_flix as kf
        >>> schema = kf.FeatureSchema({"language": ["en", "sw"]})
        >>> layer = kf.layers.FLixDense(4, schema=schema, rank=2)
        >>> ids = schema.encode([{"language": "sw"}])
        >>> y = layer(np.ones((1, 8), "float32"), feature_ids=ids)
        >>> layer.quantize("int8")
        >>> layer.base_kernel.dtype, layer.adapter_a["language"].dtype
        ('int8', 'float32')
        """
        check_quantization_mode(mode, f"{type(self).__name__} '{self.name}'")
        super().quantize(mode, type_check=False, config=config)
        self._freeze_base()

    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(base_variables(self)):
            store[str(i)] = variable
        for variable in self.adapter_variables:
            store[variable.name] = variable

    def load_own_variables(self, store):
        if not self.built:
            return
        base = {str(i): v for i, v in enumerate(base_variables(self))}
        named = {v.name: v for v in self.adapter_variables}
        expected = {**base, **named}
        missing = sorted(set(expected) - set(store.keys()))
        extra = sorted(set(store.keys()) - set(expected))
        if missing or extra:
            raise ValueError(
                f"Layer '{self.name}' expected saved variables "
                f"{sorted(expected)} but found {sorted(store.keys())} "
                f"(missing {missing}, unexpected {extra})."
            )
        for key, variable in expected.items():
            value = store[key]
            if tuple(value.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Layer '{self.name}': saved variable '{key}' has shape "
                    f"{tuple(value.shape)}, expected {tuple(variable.shape)}."
                )
        for key, variable in expected.items():
            variable.assign(store[key])

    def get_config(self):
        return {**super().get_config(), **self.adapter_config()}

    def adapter_config(self):
        """The layer's FLix settings (`config.LAYER_KEYS`), serializable."""
        config = {
            "schema": self.schema.get_config(),
            "rank": dict(self.rank),
            "alpha": dict(self.alpha),
            "a_initializer": keras.initializers.serialize(self.a_initializer.base),
            "b_initializer": keras.initializers.serialize(self.b_initializer),
        }
        # Left out at its default, as Keras leaves out `lora_rank`: configs
        # of default layers stay what they were before the option existed.
        if self.compute_path != "auto":
            config["compute_path"] = self.compute_path
        return config


def is_adapter_table(variable):
    """Whether `variable` is a FLix adapter table (`[n_values, ...]` rows)."""
    return getattr(variable, "_flix_adapter_table", False)


def _concat(parts, axis):
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=axis)


def default_name(kwargs, prefix):
    """Names an unnamed layer `prefix`, `prefix_1`, ... like Keras does.

    Keras would derive "f_lix_dense" from the class name.
    """
    if kwargs.get("name") is None:
        uid = keras.backend.get_uid(prefix)
        kwargs["name"] = prefix if uid == 1 else f"{prefix}_{uid - 1}"


def reject_base_options(layer_name, kwargs):
    """Raises if `kwargs` enable Keras LoRA on a FLix layer."""
    for option in ("lora_rank", "lora_alpha"):
        if kwargs.pop(option, None) is not None:
            raise ValueError(
                f"{layer_name} does not take `{option}`: a FLix layer's "
                "adapters take the place of Keras LoRA."
            )


def _deferred_activation_ids():
    if not hasattr(_deferred_activations, "ids"):
        _deferred_activations.ids = set()
    return _deferred_activations.ids
