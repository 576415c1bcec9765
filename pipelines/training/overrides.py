"""The one parser of `section.field=value` overrides, for every CLI and the sweep.

    overrides = parse_overrides(["train.lr=3e-4", "objective.beat_weight=0.5"])
    overrides.model   # {"objective.beat_weight": 0.5}   → ModelConfig.with_overrides / resolve_config
    overrides.train   # {"lr": 0.0003}                   → TrainConfig.with_overrides

Values are JSON where they parse (numbers, true/false, lists), strings otherwise. Sections: `ecg`,
`text`, `objective` (models/config.py) and `train` (pipelines/training/config.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

MODEL_SECTIONS = ("ecg", "text", "objective")
SECTIONS = (*MODEL_SECTIONS, "train")


@dataclass(frozen=True)
class Overrides:
    model: dict[str, Any] = field(default_factory=dict)
    """`{"section.field": value}` for the model sections."""
    train: dict[str, Any] = field(default_factory=dict)
    """`{field: value}` for TrainConfig."""


def parse_overrides(items: Iterable[str] | Mapping[str, Any], sections: Iterable[str] = SECTIONS) -> Overrides:
    """`key=value` strings (a command line) or a `{key: value}` mapping (a sweep's sample) → Overrides;
    ValueError naming the item that is not `section.field=value` of one of `sections`."""
    sections = tuple(sections)
    pairs = items.items() if isinstance(items, Mapping) else (_split(text) for text in items)
    model, train = {}, {}
    for key, value in pairs:
        section, dot, name = key.partition(".")
        if not dot or not name or section not in sections:
            raise ValueError(
                f"override {key!r}: expected section.field=value with section one of {', '.join(sections)}"
            )
        if section == "train":
            train[name] = value
        else:
            model[key] = value
    return Overrides(model, train)


def _split(text: str) -> tuple[str, Any]:
    key, separator, raw = text.partition("=")
    if not separator:
        raise ValueError(f"override {text!r} is not section.field=value")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw
