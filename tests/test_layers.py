"""The layers written in pyproject.toml hold (import-linter), and the import graph has no cycle."""

from __future__ import annotations

from pathlib import Path

import grimp
import networkx as nx
from importlinter import cli

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "pipelines", "tune")


def test_import_contracts_are_kept(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == cli.EXIT_STATUS_SUCCESS


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
