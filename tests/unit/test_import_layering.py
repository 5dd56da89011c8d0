"""The layering the folder layout promises, checked on every import statement.

Layers: the shared base (``kubetune.api``, ``kubetune.contract``, ``kubetune.plan``)
imports neither side;
the operator and the trainer import the base but never each other; the CLI sits on
top; the dev cluster is development tooling that only the CLI and tests use. Lazy
imports inside functions count too: they are how a layer leaks without anyone noticing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from importlib import util
from pathlib import Path

import pytest

BASE = ("kubetune.api", "kubetune.contract", "kubetune.plan")
OPERATOR = ("kubetune_operator",)
TRAINER = ("kubetune_trainer",)
CLI = ("kubetune.cli",)
DEVCLUSTER = ("kubetune.devcluster",)
HEAVY = ("torch", "transformers", "peft", "trl", "deepspeed", "accelerate", "datasets")
CLUSTER_CLIENTS = ("kopf", "kubernetes")

# layer -> prefixes its modules must never import
FORBIDDEN: dict[tuple[str, ...], tuple[str, ...]] = {
    BASE: (*OPERATOR, *TRAINER, *CLI, *DEVCLUSTER, *HEAVY, *CLUSTER_CLIENTS),
    OPERATOR: (*TRAINER, *CLI, *DEVCLUSTER, *HEAVY),
    TRAINER: (*OPERATOR, *CLI, *DEVCLUSTER, *CLUSTER_CLIENTS),
    DEVCLUSTER: (*OPERATOR, *TRAINER, *CLI, *HEAVY),
}


def _matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def imported_modules(source: str, module: str) -> Iterator[str]:
    """Every absolute module name an import statement in ``source`` names."""
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                yield f"{base}.{node.module}" if node.module else base
            elif node.module:
                yield node.module


def violations(layer: tuple[str, ...], sources: dict[str, str]) -> list[str]:
    """``module imports forbidden`` lines for the modules of ``layer`` in ``sources``."""
    found = []
    for module, source in sorted(sources.items()):
        if not _matches(module, layer):
            continue
        for name in imported_modules(source, module):
            if _matches(name, FORBIDDEN[layer]):
                found.append(f"{module} imports {name}")
    return found


def _package_sources(package: str) -> dict[str, str]:
    spec = util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    root = Path(next(iter(spec.submodule_search_locations)))
    sources = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        sources[".".join((package, *parts))] = path.read_text()
    return sources


@pytest.fixture(scope="module")
def all_sources() -> dict[str, str]:
    sources: dict[str, str] = {}
    for package in ("kubetune", "kubetune_operator", "kubetune_trainer"):
        sources.update(_package_sources(package))
    return sources


@pytest.mark.parametrize("layer", list(FORBIDDEN), ids=lambda layer: layer[0])
def test_layer_imports_only_what_it_may(
    layer: tuple[str, ...], all_sources: dict[str, str]
) -> None:
    assert any(_matches(m, layer) for m in all_sources), f"no modules found for {layer}"
    assert violations(layer, all_sources) == []


def test_checker_catches_a_forbidden_import() -> None:
    sources = {
        "kubetune.api.bad": "def f():\n    from kubetune_operator import settings\n",
        "kubetune.contract.rel": "from ..cli import main\n",
        "kubetune_trainer.x": "import kubetune_operator.render.pods\n",
        "kubetune_operator.y": "import torch\n",
        "kubetune_operator.ok": "from kubetune.api import FineTuneJob\n",
    }
    assert violations(BASE, sources) == [
        "kubetune.api.bad imports kubetune_operator",
        "kubetune.contract.rel imports kubetune.cli",
    ]
    assert violations(TRAINER, sources) == [
        "kubetune_trainer.x imports kubetune_operator.render.pods"
    ]
    assert violations(OPERATOR, sources) == ["kubetune_operator.y imports torch"]


def test_base_and_operator_import_without_torch_or_the_other_side() -> None:
    """At run time too: the operator image has no torch, and the base pulls in no side."""
    probe = (
        "import sys, kubetune.api, kubetune.contract, kubetune.plan, kubetune_operator.runner\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'torch', 'transformers', 'kubetune_trainer'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
