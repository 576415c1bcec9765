"""Objectives: what a batch costs under MELP, C-MELT or METS, as a dict of named `*_loss` terms.

An objective holds its own parameters (temperatures, decoders) and reads the towers and
projections of the model it is called with; `loss` is the weighted total the optimizer steps on.
Each objective also says which text inputs it needs (`text_inputs`), so collation stays with it.

C-MELT lives in models.cmelt and MELP's stage 1 (masked-LM training of the text tower, "melp-lm")
in models.masked_language_modeling.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.beat_alignment import beat_alignment_loss
from models.caption_decoder import CaptionDecoder
from models.cmelt import CmeltObjective
from models.config import ModelConfig, ObjectiveConfig
from models.losses import ClipLoss, LogitScale
from models.masked_language_modeling import TextMLMObjective

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower

MAX_SENTENCES = 8
_SENTENCE_END = re.compile(r"\.\s*")


def split_sentences(report: str) -> list[str]:
    """A report's statements ("sinus rhythm. left axis deviation." → two), at most MAX_SENTENCES."""
    return [s.strip() for s in _SENTENCE_END.split(report) if s.strip()][:MAX_SENTENCES]


class MetsObjective(nn.Module):
    """METS: the ECG tower trained with CLIP InfoNCE against a frozen language model."""

    def __init__(self, config: ObjectiveConfig) -> None:
        super().__init__()
        self.logit_scale = LogitScale(config.init_temperature, config.max_logit_scale, config.learn_temperature)
        self.clip = ClipLoss()

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        return text.tokenize(reports)

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ecg = model.encode_ecg(batch["signal"], batch["lead_mask"])
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        contrastive = self.clip(ecg, text, self.logit_scale())
        return {"contrastive_loss": contrastive, "loss": contrastive}


class MelpObjective(nn.Module):
    """MELP stage 2: rhythm (InfoNCE), token (captioning) and beat (sentence-beat) levels at once.

    total = rhythm_weight · rhythm + token_weight · token + beat_weight · beat (MELP: 1, 2, 0.2).
    """

    def __init__(self, config: ObjectiveConfig, model_config: ModelConfig, text_width: int) -> None:
        super().__init__()
        self.config = config
        self.logit_scale = LogitScale(config.init_temperature, config.max_logit_scale, config.learn_temperature)
        self.clip = ClipLoss()
        self.caption = CaptionDecoder(
            text_width, model_config.ecg.width, config.caption_layers, model_config.text.max_length
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


def build_objective(config: ModelConfig, text: TextTower) -> nn.Module:
    """The objective that config.objective.name names, sized to the model's text tower (width, vocabulary)."""
    name = config.objective.name
    if name == "mets":
        return MetsObjective(config.objective)
    if name == "melp":
        return MelpObjective(config.objective, config, text.hidden_size)
    if name == "melp-lm":
        return TextMLMObjective(config.objective, text)
    if name == "cmelt":
        return CmeltObjective(config.objective, config, text)
    raise ValueError(f"unknown objective {name!r}")
