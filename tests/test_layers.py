"""The layers written in pyproject.toml hold (import-linter), and the import graph has no cycle."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipelines", "tune")


def test_import_contracts_are_kept():
    # In a subprocess, as a person runs it: import-linter's CLI reconfigures logging with dictConfig, which
    # would disable every logger already created in this test session.
    lint = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert lint.returncode == 0, lint.stdout[-3000:] + lint.stderr[-3000:]
    assert "3 kept, 0 broken" in lint.stdout


def test_the_readmes_layers_are_the_contract():
    """The README's Layers snippet is pyproject.toml's layers contract, name and layers."""
    snippet = re.search(r"## Layers\n.*?```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)[1]
    shown = tomllib.loads(snippet)["tool"]["importlinter"]["contracts"][0]
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    kept = next(contract for contract in contracts if contract["type"] == "layers")
    assert (shown["name"], shown["layers"]) == (kept["name"], kept["layers"])


def test_the_import_graph_has_no_cycle():
    graph = grimp.build_graph(*PACKAGES, exclude_type_checking_imports=True)
    edges = nx.DiGraph(
        (module, imported) for module in graph.modules for imported in graph.find_modules_directly_imported_by(module)
    )
    assert list(nx.simple_cycles(edges)) == []


def test_a_new_objective_is_found_without_editing_the_registry():
    """Objectives are discovered from their folder: every module there registers one, by its own name."""
    from models.objectives import objective_class, objective_names

    modules = {path.stem for path in (ROOT / "models" / "objectives").glob("*.py") if path.stem != "__init__"}
    names = objective_names()
    assert len(names) == len(modules) == 4
    assert {objective_class(name).__module__.rsplit(".", 1)[1] for name in names} == modules
