"""The model a run trains, built from its config on whichever node builds it (a worker, or the driver that
exports): a text encoder named by a URI (`text.name_or_path=s3://…/export/text-encoder`, MELP stage 2 on
stage 1's encoder in a bucket) is loaded from this node's cached copy (`pipelines.storage.cached_copy`), and
the model's config keeps the URI, so an export names where its encoder came from, not a node's cache."""

from __future__ import annotations

from dataclasses import replace

from models.config import ModelConfig
from models.model import ECGTextModel
from pipelines.storage import cached_copy, is_uri


def build_model(config: ModelConfig) -> ECGTextModel:
    if not is_uri(config.text.name_or_path):
        return ECGTextModel(config)
    local = cached_copy(config.text.name_or_path)
    model = ECGTextModel(replace(config, text=replace(config.text, name_or_path=str(local))))
    model.config = config
    return model
