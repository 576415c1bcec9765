"""METS: the ECG tower trained with CLIP InfoNCE against a frozen language model.

    losses = model(batch)   # {"contrastive_loss", "loss"}
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from models.config import ModelConfig, ObjectiveConfig
from models.losses import ClipLoss, LogitScale
from models.objectives import Objective, register

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower


@register
class MetsObjective(Objective):
    """METS: the ECG tower trained with CLIP InfoNCE against a frozen language model."""

    name = "mets"
    freezes_text_tower = True
    sweep_space = {
        "objective.init_temperature": {"loguniform": [0.02, 0.2]},
        "objective.learn_temperature": {"choice": [True, False]},
    }

    def __init__(self, config: ObjectiveConfig, model_config: ModelConfig, text: TextTower) -> None:
        super().__init__(config, model_config, text)
        self.logit_scale = LogitScale(config.init_temperature, config.max_logit_scale, config.learn_temperature)
        self.clip = ClipLoss()

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ecg = model.encode_ecg(batch["signal"], batch["lead_mask"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        contrastive = self.clip(ecg, text, self.logit_scale())
        return {"contrastive_loss": contrastive, "loss": contrastive}
