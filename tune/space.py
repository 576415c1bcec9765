"""The search spaces: every knob the papers fixed by hand, per objective, in one readable place.

A space maps a config field (`section.field`, as on the pretrain command line) to a distribution:

    {"uniform": [low, high]}   {"loguniform": [low, high]}   {"choice": [a, b, …]}   {"grid": [a, b, …]}

`--space FILE` (YAML or JSON, the same shape) replaces the default of an objective field by field:
fields it names are swept as it says, `{"fixed": value}` pins one, and fields it omits keep their
default distribution. `grid` entries are crossed with each other and repeated `--num-samples` times.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ray import tune

from models.objectives import objective_class, objective_names

Spec = dict[str, list | Any]
"""One distribution: {kind: arguments}."""

COMMON: dict[str, Spec] = {
    "train.lr": {"loguniform": [3e-4, 3e-3]},
    "ecg.lead_drop_prob": {"uniform": [0.0, 0.3]},
}
"""Swept for every objective; each objective adds its own `sweep_space` (models/objectives/)."""
SWEEPABLE: tuple[str, ...] = tuple(name for name in objective_names() if objective_class(name).reads_signals)
"""Objectives a sweep can rank: those whose validation has a zero-shot AUROC (they read the ECGs)."""


KINDS = {
    "uniform": lambda args: tune.uniform(*args),
    "loguniform": lambda args: tune.loguniform(*args),
    "choice": tune.choice,
    "grid": tune.grid_search,
}


def load_space(objective: str, path: str | os.PathLike | None = None) -> dict[str, Spec]:
    """The objective's default space, updated field by field from a YAML / JSON file."""
    if objective not in SWEEPABLE:
        raise ValueError(f"no search space for objective {objective!r}; sweeps rank {', '.join(SWEEPABLE)}")
    space = {**COMMON, **objective_class(objective).sweep_space}
    if path is not None:
        space.update(_read_space_file(Path(path)))
    return space


def to_param_space(space: dict[str, Spec]) -> dict[str, Any]:
    """Tune's `param_space`: `{"overrides": {field: distribution or fixed value}}`."""
    return {"overrides": {field: _distribution(field, spec) for field, spec in space.items()}}


def swept_fields(space: dict[str, Spec]) -> list[str]:
    """Fields that vary between trials (not `fixed`)."""
    return [field for field, spec in space.items() if "fixed" not in spec]


def _distribution(field: str, spec: Spec):
    if "fixed" in spec:
        return spec["fixed"]
    ((kind, args),) = spec.items()
    return KINDS[kind](args)


def _read_space_file(path: Path) -> dict[str, Spec]:
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else _yaml(text)
    except (OSError, ValueError) as error:
        raise ValueError(f"search space file {path}: {error}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"search space file {path}: expected a mapping of section.field to a distribution")
    for field, spec in data.items():
        _check(path, field, spec)
    return data


def _check(path: Path, field: str, spec: Any) -> None:
    if "." not in field or field.split(".", 1)[0] not in ("ecg", "text", "objective", "train"):
        raise ValueError(f"search space file {path}: {field!r} is not a section.field (ecg, text, objective, train)")
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ValueError(f"search space file {path}: {field}: expected one of {{kind: arguments}} or {{fixed: value}}")
    ((kind, args),) = spec.items()
    if kind == "fixed":
        return
    if kind not in KINDS:
        raise ValueError(f"search space file {path}: {field}: unknown kind {kind!r} (use {', '.join(KINDS)} or fixed)")
    if kind in ("uniform", "loguniform") and not (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(a, int | float) for a in args)
        and args[0] < args[1]
    ):
        raise ValueError(f"search space file {path}: {field}: {kind} needs [low, high] with low < high")
    if kind == "loguniform" and args[0] <= 0:
        raise ValueError(f"search space file {path}: {field}: loguniform needs a positive low bound")
    if kind in ("choice", "grid") and not (isinstance(args, list) and args):
        raise ValueError(f"search space file {path}: {field}: {kind} needs a non-empty list")


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(str(error)) from None
