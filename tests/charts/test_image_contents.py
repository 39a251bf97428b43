"""Each image holds what its code imports: the operator image base + [operator], the runtime its extras."""

from __future__ import annotations

import ast
import contextlib
import importlib.metadata as metadata
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from chartlib import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
SOURCE_ROOTS = {
    "tts_contract": REPO / "contract" / "tts_contract",
    "tts_runtime": REPO / "runtime" / "tts_runtime",
    "tts_operator": REPO / "operator" / "tts_operator",
}
# The extras each Dockerfile target installs (test_dockerfile.py checks the Dockerfile says the same).
IMAGE_EXTRAS = {"operator": ("operator",), "runtime": ("runtime", "torch")}
# The code each image runs: the operator image runs `tts-operator` (operator and agent).
IMAGE_PACKAGES = {"operator": "tts_operator", "runtime": "tts_runtime"}


def _closure(requirements: list[str]) -> set[str]:
    """Distributions the requirements install, transitively, as far as this environment knows them."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        # Not installed here (e.g. torch's CUDA-only dependencies): the name itself is still allowed.
        with contextlib.suppress(metadata.PackageNotFoundError):
            todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    return seen


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, package: str) -> Iterator[str]:
    """Absolute dotted names a module imports at run time (TYPE_CHECKING blocks excluded)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skip.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
                yield base
                if not node.module:
                    yield from (f"{base}.{alias.name}" for alias in node.names)
            elif node.module:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _module_file(dotted: str) -> Path | None:
    top, *rest = dotted.split(".")
    path = SOURCE_ROOTS[top].joinpath(*rest)
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None  # an attribute imported from a module, not a module


def _third_party_imports(package: str) -> dict[str, str]:
    """Third-party top-level import -> first own module importing it, over all code `package` reaches."""
    todo = [
        ".".join(p.relative_to(SOURCE_ROOTS[package].parent).with_suffix("").parts)
        for p in SOURCE_ROOTS[package].rglob("*.py")
    ]
    seen: set[str] = set()
    found: dict[str, str] = {}
    while todo:
        module = todo.pop().removesuffix(".__init__")
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is None:
            continue
        this_package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for name in _imports(path, this_package):
            top = name.split(".")[0]
            if top in SOURCE_ROOTS:
                todo.append(name)
            elif top not in sys.stdlib_module_names and top != "__future__":
                found.setdefault(top, module)
    return found


@pytest.mark.parametrize("image", sorted(IMAGE_PACKAGES))
def test_image_code_imports_only_installed_distributions(image: str) -> None:
    extras = PROJECT["optional-dependencies"]
    requirements = PROJECT["dependencies"] + [r for extra in IMAGE_EXTRAS[image] for r in extras[extra]]
    allowed = _closure(requirements)
    providers = metadata.packages_distributions()
    imports = _third_party_imports(IMAGE_PACKAGES[image])
    missing = {
        top: module
        for top, module in imports.items()
        if not {canonicalize_name(d) for d in providers.get(top, [top])} & allowed
    }
    assert not missing, (
        f"the {image} image would fail to import these (module -> importer): {missing}; "
        f"add the distribution to the image's extras in pyproject.toml or import it lazily where optional"
    )


def test_operator_image_has_no_torch() -> None:
    extras = PROJECT["optional-dependencies"]
    allowed = _closure(PROJECT["dependencies"] + extras["operator"])
    assert not {"torch", "soundfile", "onnxruntime", "hibari-tts"} & allowed
