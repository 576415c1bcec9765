"""MELP stage 1: masked-LM training of the text tower on report text (a cardiology-specific LM).

    losses = model(batch)   # {"mlm_loss", "loss"}

Runs read the report column only; the ECG tower and both projections are never called, so they are
frozen (`unused_modules`) and no optimizer step decays them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from models.config import ModelConfig, ObjectiveConfig
from models.masked_language_modeling import MaskedLMHead, masked_lm_loss
from models.objectives import Objective, register

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower


@dataclass(frozen=True)
class MelpLMConfig(ObjectiveConfig):
    text_mask_ratio: float = 0.25
    """Share of the report tokens corrupted (BERT's 15 %; MELP and C-MELT mask more)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.text_mask_ratio < 1.0:
            raise ValueError(f"text_mask_ratio must be in [0, 1), got {self.text_mask_ratio}")


@register
class TextMLMObjective(Objective):
    """MELP stage 1: masked-LM training of the text tower on reports (text_mask_ratio of the tokens).

    Only the text tower and this head are used; the ECG side of the batch is ignored.
    """

    name = "melp-lm"
    config_class = MelpLMConfig
    reads_signals = False
    unused_modules = ("ecg", "ecg_projection", "text_projection")

    def __init__(self, config: MelpLMConfig, model_config: ModelConfig, text: TextTower) -> None:
        super().__init__(config, model_config, text)
        self.mask_ratio = config.text_mask_ratio
        self.head = MaskedLMHead(text.hidden_size, text.vocab_size)

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mlm = masked_lm_loss(model.text, self.head, batch["input_ids"], batch["attention_mask"], self.mask_ratio)
        return {"mlm_loss": mlm, "loss": mlm}
