"""Every private Keras API keras-flix relies on still exists in this Keras."""

import ast
import importlib
import inspect

import keras
import numpy as np
import pytest

from keras_flix.src import keras_private


def probes():
    """One object of each Keras class that `RELIED_ON` names."""
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3)
    functional = keras.Model(inputs, dense(inputs))
    functional.compile(optimizer="adam", loss="mse")
    einsum = keras.layers.EinsumDense("ab,bc->ac", 3)
    einsum.build((None, 4))
    einsum.quantize("int8")  # Some attributes exist in quantized layers only.
    sequential = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    adam = keras.optimizers.Adam()
    adam.build([keras.Variable(np.zeros((2, 2), "float32"))])
    mesh = keras.distribution.DeviceMesh((1,), ["batch"], devices=["cpu:0"])
    return {
        "Layer": dense,
        "Dense": dense,
        "EinsumDense": einsum,
        "Functional": functional,
        "Operation": dense,
        "KerasTensor": inputs,
        "Sequential": sequential,
        "Model": functional,
        "Trainer": functional,
        "Optimizer": adam,
        "Adam": adam,
        "LayoutMap": keras.distribution.LayoutMap(mesh),
        "symbolic_scope": importlib.import_module(
            "keras.src.backend.common.symbolic_scope"
        ),
        "quantizers": importlib.import_module("keras.src.quantizers.quantizers"),
        "backend.numpy": importlib.import_module("keras.src.backend").numpy,
    }


ON_THIS_BACKEND = [
    (owner, attribute, why)
    for owner, attribute, backends, why in keras_private.RELIED_ON
    if backends is None or keras.backend.backend() in backends
]


@pytest.mark.parametrize(
    "owner, attribute, why",
    ON_THIS_BACKEND,
    ids=[f"{owner}.{attribute}" for owner, attribute, _ in ON_THIS_BACKEND],
)
def test_private_api_exists(owner, attribute, why):
    probe = probes()[owner]
    assert hasattr(probe, attribute), (
        f"keras-flix relies on Keras' private `{owner}.{attribute}` ({why}), "
        f"which Keras {keras.__version__} does not have. "
        "keras_flix/src/keras_private.py is the one place that uses it "
        f"(tested with Keras {', '.join(keras_private.TESTED_KERAS_VERSIONS)})."
    )


def test_the_list_names_every_private_attribute_the_module_uses():
    tree = ast.parse(inspect.getsource(keras_private))
    used = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and node.attr != "_replace"  # a namedtuple's public method
    }
    used |= {
        node.args[1].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) in ("getattr", "hasattr")
        and isinstance(node.args[1], ast.Constant)
    }
    used |= {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith("_")
        and node.value[1:].isidentifier()
    }
    listed = {attribute for _, attribute, _, _ in keras_private.RELIED_ON}
    assert used - listed == set()


def test_the_tested_version_is_the_installed_one_or_older():
    installed = tuple(int(p) for p in keras.__version__.split(".")[:3])
    newest = max(
        tuple(int(p) for p in v.split(".")) for v in keras_private.TESTED_KERAS_VERSIONS
    )
    assert installed <= newest, (
        f"Keras {keras.__version__} is newer than any version keras-flix was "
        f"tested with ({keras_private.TESTED_KERAS_VERSIONS}); run the suite and "
        "add it to TESTED_KERAS_VERSIONS and pyproject.toml's bound."
    )
