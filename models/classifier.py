"""Transfer learning: a pretrained ECG tower with a linear multi-label head.

    classifier = ECGClassifier.from_pretrained_tower("runs/tiny/export", ["NORM", "MI", "STTC", "CD", "HYP"])
    losses = classifier({"signal": x, "lead_mask": m, "targets": y})  # {"bce_loss", "loss"}
    probabilities = classifier.predict(x, m)                          # [B, C]
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ECGTowerConfig
from models.ecg_tower import ECGTower


class ECGClassifier(nn.Module):
    """ECG tower → its pooled embedding [B, W] → dropout → linear head → logits [B, C], one per code."""

    def __init__(self, config: ECGTowerConfig, codes: Sequence[str], dropout: float = 0.1) -> None:
        super().__init__()
        if not codes:
            raise ValueError("a classifier needs at least one class code")
        self.config = config
        self.codes = list(codes)
        self.ecg = ECGTower(config)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(config.width, len(self.codes))

    @classmethod
    def from_pretrained_tower(cls, export_dir: str | os.PathLike, codes: Sequence[str]) -> ECGClassifier:
        """The ECG tower of a `save_pretrained` folder, a fresh head for `codes`."""
        from models.model import ECGTextModel

        pretrained = ECGTextModel.from_pretrained(export_dir)
        classifier = cls(pretrained.config.ecg, codes)
        classifier.ecg.load_state_dict(pretrained.ecg.state_dict())
        return classifier

    def logits(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """signal [B, 12, T], lead_mask [B, 12] bool → logits [B, C]."""
        return self.head(self.dropout(self.ecg(signal, lead_mask).pooled))

    @torch.no_grad()
    def predict(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class probabilities [B, C] (independent sigmoids: the labels are multi-label)."""
        return self.logits(signal, lead_mask).sigmoid()

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch: signal [B, 12, T], lead_mask [B, 12], targets [B, C] in {0, 1} → binary cross-entropy."""
        logits = self.logits(batch["signal"], batch["lead_mask"])
        bce = F.binary_cross_entropy_with_logits(logits.float(), batch["targets"].float())
        return {"bce_loss": bce, "loss": bce}
