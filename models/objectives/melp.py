"""MELP stage 2: rhythm (InfoNCE), token (captioning) and beat (sentence-beat) levels at once.

    losses = model(batch)   # {"rhythm_loss", "token_loss", "beat_loss", "loss"}

The caption decoder lives in models.multimodal_decoder (the authors', over the causal text tower's states;
models.caption_decoder with `text.causal=false`), the beat level's alignment in
models.beat_alignment and its sentences in models.report_sentences, InfoNCE with its cross-rank gather in
models.losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.beat_alignment import beat_alignment_loss
from models.caption_decoder import CaptionDecoder
from models.config import ModelConfig, ObjectiveConfig
from models.losses import ClipLoss, LogitScale
from models.multimodal_decoder import MultimodalCaptioner
from models.objectives import Objective, register
from models.report_sentences import sentence_means, token_sentence_index

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower


@dataclass(frozen=True)
class MelpConfig(ObjectiveConfig):
    """MELP's knobs: total = rhythm + 2 token + 0.2 beat (MELP's defaults)."""

    rhythm_pooling: ClassVar[str] = "beat-mean"
    text_causal: ClassVar[bool] = True

    rhythm_weight: float = 1.0
    token_weight: float = 2.0
    beat_weight: float = 0.2
    caption_layers: int = 6
    """Layers of the caption decoder (causal self-attention + cross-attention to the ECG); the authors' 6."""
    caption_heads: int = 8
    """Attention heads of the caption decoder and of its ECG caption pooler (the authors' 8; causal text only)."""
    caption_queries: int = 128
    """ECG caption queries the decoder attends to (the authors' 128; causal text only)."""


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
        if model_config.text.causal:
            self.caption = MultimodalCaptioner(
                text.hidden_size, model_config.ecg.width, config.caption_heads, config.caption_layers,
                config.caption_queries, text.vocab_size,
            )
        else:
            self.caption = CaptionDecoder(
                text.hidden_size, model_config.ecg.width, config.caption_layers, model_config.text.max_length
            )
        self.sentence_projection = nn.Linear(text.hidden_size, config.embed_dim)  # the authors' `sent_proj`

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        """The whole reports [B, L], and the sentence of each of their tokens, sentence_index [B, L]."""
        inputs = text.tokenize_with_offsets(reports)
        offsets, special = inputs.pop("offset_mapping"), inputs.pop("special_tokens_mask")
        inputs["sentence_index"] = token_sentence_index(reports, offsets, special)
        return inputs

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        ecg_out = model.ecg(batch["signal"], batch["lead_mask"])
        ecg = F.normalize(model.ecg_projection(ecg_out.pooled), dim=-1)  # [B, D]
        text_out = model.text(batch["input_ids"], batch["attention_mask"])
        text = F.normalize(model.text_projection(text_out.pooled), dim=-1)  # [B, D]
        rhythm = self.clip(ecg, text, self.logit_scale())
        token = self._token_loss(model, batch, text_out.tokens, ecg_out.tokens)
        beats = model.ecg_projection(ecg_out.beats)  # [B, K, D]: the rhythm embedding's own projection
        sentence_index = batch["sentence_index"]
        n_sentences = int(sentence_index.max()) + 1
        sentences, sentence_mask = sentence_means(text_out.tokens, sentence_index, n_sentences)  # [B, S, H], [B, S]
        beat = beat_alignment_loss(self.sentence_projection(sentences), sentence_mask, beats)
        total = self.config.rhythm_weight * rhythm + self.config.token_weight * token + self.config.beat_weight * beat
        return {"rhythm_loss": rhythm, "token_loss": token, "beat_loss": beat, "loss": total}

    def _token_loss(
        self, model: ECGTextModel, batch: dict[str, torch.Tensor], text_states: torch.Tensor, ecg_tokens: torch.Tensor
    ) -> torch.Tensor:
        """The caption loss: over the causal tower's own states [B, L, H] (the trailing [CLS] left out), so the
        token level trains the text tower as the authors'; or re-embedding the tokens (bidirectional tower)."""
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if isinstance(self.caption, MultimodalCaptioner):
            return self.caption(text_states[:, :-1], input_ids[:, :-1], attention_mask[:, :-1], ecg_tokens)
        return self.caption(input_ids, attention_mask, ecg_tokens, model.text.word_embeddings)
