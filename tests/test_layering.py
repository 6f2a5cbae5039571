"""The import structure CONTRIBUTING.md describes holds."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_flix"


def imported_modules(path):
    """The keras_flix modules a source file imports (at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("keras_flix")}


def module_path(name):
    relative = pathlib.Path(*name.split(".")[1:])
    for candidate in (PACKAGE / relative.with_suffix(".py"), PACKAGE / relative / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def transitive_imports(path):
    seen, pending = set(), [path]
    while pending:
        for name in imported_modules(pending.pop()):
            found = module_path(name)
            if name not in seen and found is not None:
                seen.add(name)
                pending.append(found)
    return seen


def test_data_imports_only_the_input_contract_and_the_schema():
    forbidden = ("flix_model", "adapters", "surgery", "layers", "retrofit", "merging")
    for path in (PACKAGE / "src" / "data").glob("*.py"):
        imports = transitive_imports(path)
        bad = sorted(
            name for name in imports
            if any(part in forbidden for part in name.split(".")[2:])
        )
        assert not bad, f"{path.name} imports {bad}"


def test_backend_code_lives_in_the_backend_package_only():
    backend_package = PACKAGE / "src" / "backend"
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if backend_package in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "backend"
                and isinstance(node.func.value, ast.Attribute)
                and node.func.value.attr == "backend"
            ):
                modules = ["keras.backend.backend()"]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in ("jax", "torch", "keras.backend.backend()"):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {module}")
    assert not offenders, offenders
