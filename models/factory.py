"""One entry point that builds model + tokenizer from a config name, a JSON file or a saved model."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from models.config import ModelConfig, load_config
from models.model import CONFIG_FILE, ECGTextModel
from models.objectives import objective_class


def create_model(
    name_or_path: str | os.PathLike = "tiny",
    objective: str | None = None,
    overrides: dict | None = None,
) -> tuple[ECGTextModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a named config (`tiny`, `merl-vit-tiny`, …), a config JSON file, or a
    folder written by `save_pretrained`. `objective` picks melp / cmelt / mets; `overrides` are
    `{"section.field": value}`. METS always freezes the whole text tower, as the paper does."""
    path = Path(name_or_path)
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        if objective or overrides:
            raise ValueError("a saved model is loaded as saved; objective and overrides apply to configs")
        model = ECGTextModel.from_pretrained(path)
        return model, model.text.tokenizer
    model = ECGTextModel(resolve_config(name_or_path, objective, overrides))
    return model, model.text.tokenizer


def resolve_config(
    name_or_path: str | os.PathLike, objective: str | None = None, overrides: dict | None = None
) -> ModelConfig:
    """The model config `create_model` builds: named config or JSON file, objective, overrides, and the
    objective's rules (`freezes_text_tower`: METS freezes the whole text tower)."""
    config = load_config(name_or_path, overrides, objective)
    if objective_class(config.objective.name).freezes_text_tower and config.text.freeze_layers != -1:
        config = replace(config, text=replace(config.text, freeze_layers=-1))
    return config
