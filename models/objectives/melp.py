"""MELP stage 2: rhythm (InfoNCE), token (captioning) and beat (sentence-beat) levels at once.

    losses = model(batch)   # {"rhythm_loss", "token_loss", "beat_loss", "loss"}

The caption decoder lives in models.caption_decoder, the beat level's alignment in
models.beat_alignment, InfoNCE with its cross-rank gather in models.losses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.beat_alignment import beat_alignment_loss
from models.caption_decoder import CaptionDecoder
from models.config import ModelConfig, ObjectiveConfig
from models.losses import ClipLoss, LogitScale
from models.objectives import Objective, register

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower

MAX_SENTENCES = 8
_SENTENCE_END = re.compile(r"\.\s*")
_WORD = re.compile(r"\w")


def split_sentences(report: str) -> list[str]:
    """A report's statements ("sinus rhythm. left axis deviation." → two), at most MAX_SENTENCES. A piece with
    no word in it ("...", "- -") is no statement: a report of only such pieces has none."""
    return [s.strip() for s in _SENTENCE_END.split(report) if _WORD.search(s)][:MAX_SENTENCES]


@dataclass(frozen=True)
class MelpConfig(ObjectiveConfig):
    """MELP's knobs: total = rhythm + 2 token + 0.2 beat (MELP's defaults)."""

    rhythm_weight: float = 1.0
    token_weight: float = 2.0
    beat_weight: float = 0.2
    caption_layers: int = 2
    """Layers of the caption decoder (causal self-attention + cross-attention to ECG tokens)."""
    beat_temperature: float = 0.1
    """Temperature of the sentence-beat local alignment (GLoRIA style)."""


@register
class MelpObjective(Objective):
    """MELP stage 2: rhythm (InfoNCE), token (captioning) and beat (sentence-beat) levels at once.

    total = rhythm_weight · rhythm + token_weight · token + beat_weight · beat (MELP: 1, 2, 0.2).
    """

    name = "melp"
    config_class = MelpConfig
    trains_beat_pooler = True
    sweep_space = {
        "objective.init_temperature": {"loguniform": [0.02, 0.2]},
        "objective.learn_temperature": {"choice": [True, False]},
        "objective.rhythm_weight": {"uniform": [0.5, 2.0]},
        "objective.token_weight": {"uniform": [0.5, 4.0]},
        "objective.beat_weight": {"loguniform": [0.05, 1.0]},
    }

    def __init__(self, config: MelpConfig, model_config: ModelConfig, text: TextTower) -> None:
        super().__init__(config, model_config, text)
        self.config = config
        self.logit_scale = LogitScale(config.init_temperature, config.max_logit_scale, config.learn_temperature)
        self.clip = ClipLoss()
        self.caption = CaptionDecoder(
            text.hidden_size, model_config.ecg.width, config.caption_layers, model_config.text.max_length
        )
        self.beat_projection = nn.Linear(model_config.ecg.width, config.embed_dim)

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        """The whole reports, and their sentences as [B * MAX_SENTENCES, Ls] with a [B, S] mask."""
        inputs = text.tokenize(reports)
        sentences = [split_sentences(report) for report in reports]
        padded = [s + [""] * (MAX_SENTENCES - len(s)) for s in sentences]
        sentence_tokens = text.tokenize([s for report in padded for s in report])
        inputs["sentence_ids"] = sentence_tokens["input_ids"]
        inputs["sentence_attention_mask"] = sentence_tokens["attention_mask"]
        inputs["sentence_mask"] = torch.tensor([[i < len(s) for i in range(MAX_SENTENCES)] for s in sentences])
        return inputs

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ecg_out = model.ecg(batch["signal"], batch["lead_mask"])
        ecg = F.normalize(model.ecg_projection(ecg_out.pooled), dim=-1)  # [B, D]
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])  # [B, D]
        rhythm = self.clip(ecg, text, self.logit_scale())
        token = self.caption(batch["input_ids"], batch["attention_mask"], ecg_out.tokens, model.text.word_embeddings)
        beats = F.normalize(self.beat_projection(ecg_out.beats), dim=-1)  # [B, K, D]
        batch_size = ecg.shape[0]
        sentences = model.encode_text(batch["sentence_ids"], batch["sentence_attention_mask"])  # [B * S, D]
        sentences = sentences.view(batch_size, MAX_SENTENCES, -1)  # [B, S, D]
        beat = beat_alignment_loss(sentences, batch["sentence_mask"], beats, self.config.beat_temperature)
        total = self.config.rhythm_weight * rhythm + self.config.token_weight * token + self.config.beat_weight * beat
        return {"rhythm_loss": rhythm, "token_loss": token, "beat_loss": beat, "loss": total}
