"""Objectives: what a batch costs under MELP, C-MELT, METS or MELP's stage 1, as a dict of named `*_loss`
terms. Each lives in one module of this package and registers itself:

    @register
    class MyObjective(Objective):
        name = "mine"                      # what configs and --objective call it
        config_class = MyConfig            # an ObjectiveConfig subclass with this objective's knobs
        reads_signals = True               # False: runs never read the signal columns (text-only)
        unused_modules = ()                # model parts it never calls, frozen so no optimizer touches them
        freezes_text_tower = False         # True: the whole text tower is frozen (METS)
        trains_beat_pooler = False         # True: a loss reads the beat pooler (MELP), so its attention is evidence
        uses_corpus_index = False          # True: the run builds an N3S index of its train reports (C-MELT)
        sweep_space = {"objective.x": {"uniform": [0.1, 1.0]}}   # what tune.sweep searches by default

Every module here is imported on the first lookup, so a new objective is one module in this folder and a
named JSON config in `models/configs/` (README, "Adding an objective").
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from models.config import ModelConfig, ObjectiveConfig

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower

_REGISTRY: dict[str, type[Objective]] = {}


class Objective(nn.Module):
    """An objective holds its own parameters (temperatures, decoders) and reads the towers and projections
    of the model it is called with; `loss` in its output is the weighted total the optimizer steps on."""

    name: ClassVar[str]
    config_class: ClassVar[type[ObjectiveConfig]] = ObjectiveConfig
    reads_signals: ClassVar[bool] = True
    unused_modules: ClassVar[tuple[str, ...]] = ()
    """Attributes of `ECGTextModel` (e.g. "ecg") this objective never calls."""
    freezes_text_tower: ClassVar[bool] = False
    trains_beat_pooler: ClassVar[bool] = False
    """True where a loss reads the ECG tower's beat-level summaries (MELP's beat alignment)."""
    uses_corpus_index: ClassVar[bool] = False
    """True where collation draws from the run's corpus index (C-MELT's N3S): the run builds it once and each
    worker sets it as the objective's `n3s_index` (pipelines.training.n3s_index)."""
    sweep_space: ClassVar[dict[str, dict]] = {}
    """`section.field` → one distribution, in `tune.space`'s notation."""

    def __init__(self, config: ObjectiveConfig, model_config: ModelConfig, text: TextTower) -> None:
        super().__init__()

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        """The tokenized text inputs this objective reads from a batch of reports."""
        return text.tokenize(reports)

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make `cls` buildable by its `name`."""
    if not issubclass(cls, Objective) or not isinstance(getattr(cls, "name", None), str):
        raise TypeError(f"{cls.__name__}: an objective subclasses Objective and names itself")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"objective {cls.name!r} is registered twice ({_REGISTRY[cls.name].__name__}, {cls.__name__})")
    _REGISTRY[cls.name] = cls
    return cls


def objective_class(name: str) -> type[Objective]:
    """The registered objective called `name`; ValueError naming the choices otherwise."""
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective {name!r}; expected one of {', '.join(objective_names())}")
    return _REGISTRY[name]


def objective_names() -> tuple[str, ...]:
    _discover()
    return tuple(sorted(_REGISTRY))


def build_objective(config: ModelConfig, text: TextTower) -> Objective:
    """The objective that `config.objective.name` names, sized to the model's text tower."""
    return objective_class(config.objective.name)(config.objective, config, text)


@cache
def _discover() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
