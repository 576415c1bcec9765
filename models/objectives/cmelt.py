"""C-MELT as its authors build it (manhph2211/D-BETA models/dbeta.py, M3AE-style): one masked pass.

    losses = model(batch)   # {"mem_loss", "mlm_loss", "itm_loss", "contrastive_loss", "loss"}

The 75 %-masked ECG (MAE's random masking, behind a class token of its own) and the 25 %-masked report go
through the towers and the co-attention fusion once (models.co_attention). MLM logits come from the fused text
stream; the masked-ECG decoder (models.masked_ecg_modeling) reads the fused ECG stream at the authors' fusion
layer; matching reads both streams' first tokens; the sigmoid contrastive loss reads the towers' own embeddings
of the same masked inputs. Half of each training batch's reports were replaced in collation by N3S negatives
from the run's corpus index (models.n3s), and matching and the sigmoid loss take those pairs as negatives.
"loss" is the weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.co_attention import CoAttentionFusion, FirstTokenPooler
from models.config import ModelConfig, ObjectiveConfig
from models.losses import LogitScale, SigLipLoss
from models.masked_ecg_modeling import TARGET_NORMALISATIONS, MaskedECGDecoder, ecg_targets, masked_patch_loss
from models.masked_language_modeling import MaskedLMHead, mask_tokens
from models.n3s import CorpusIndex
from models.objectives import Objective, register
from models.text_tower import TextTower

if TYPE_CHECKING:
    from models.model import ECGTextModel


@dataclass(frozen=True)
class CmeltConfig(ObjectiveConfig):
    """C-MELT's knobs: masking ratios, loss weights, the masked-ECG decoder and fusion sizes (the authors'
    D-BETA configs/config.json), SigLIP's initial scale and bias (the paper's), N3S."""

    ecg_mask_ratio: float = 0.75
    text_mask_ratio: float = 0.25
    mem_weight: float = 1.0
    mlm_weight: float = 1.0
    itm_weight: float = 1.0
    contrastive_weight: float = 1.0
    ecg_targets: Literal["lead", "patch"] = "lead"
    """Masked-ECG targets: each lead z-scored over the record (the authors' code), or each patch normalised
    (MAE's norm_pix_loss)."""
    decoder_width: int = 384
    decoder_depth: int = 4
    decoder_heads: int = 6
    """The masked-ECG decoder: the authors' 384 wide, 4 blocks, 6 heads (`mem_decoder_*`; their
    `Transformer(…, num_layers + 1)` builds num_layers blocks)."""
    fusion_layers: int = 6
    """Co-attention layers per stream (the authors' `num_top_layer`); the fusion is the text tower's width."""
    fusion_heads: int = 12
    fusion_tap_layer: int = 3
    """The masked-ECG decoder reads the ECG stream after this many fusion layers (the authors' `mem_layer`)."""
    siglip_init_scale: float = 10.0
    siglip_init_bias: float = -10.0
    n3s_neighbours: int = 64
    """N3S draws a replacement among this many nearest neighbours of a report's negated embedding."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for ratio in ("ecg_mask_ratio", "text_mask_ratio"):
            if not 0.0 <= getattr(self, ratio) < 1.0:
                raise ValueError(f"{ratio} must be in [0, 1), got {getattr(self, ratio)}")
        if self.ecg_targets not in TARGET_NORMALISATIONS:
            raise ValueError(f"ecg_targets must be one of {', '.join(TARGET_NORMALISATIONS)}, got {self.ecg_targets!r}")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"decoder_width {self.decoder_width} must divide by decoder_heads {self.decoder_heads}")
        if not 0 <= self.fusion_tap_layer <= self.fusion_layers:
            raise ValueError(f"fusion_tap_layer {self.fusion_tap_layer} must be within 0-{self.fusion_layers}")
        if self.n3s_neighbours < 1:
            raise ValueError(f"n3s_neighbours must be at least 1, got {self.n3s_neighbours}")


@register
class CmeltObjective(Objective):
    """C-MELT: mem_weight · MEM + mlm_weight · MLM + itm_weight · ITM + contrastive_weight · SigLIP, one pass.

    `n3s_index` (set by the training run from its corpus index) makes collation in training mode replace half
    the reports with N3S negatives; without one, or in eval mode (validation, the export check), every pair is
    aligned.
    """

    name = "cmelt"
    config_class = CmeltConfig
    uses_corpus_index = True
    sweep_space = {
        "objective.siglip_init_scale": {"loguniform": [3.0, 30.0]},
        "objective.learn_temperature": {"choice": [True, False]},
        "objective.ecg_mask_ratio": {"uniform": [0.5, 0.9]},
        "objective.text_mask_ratio": {"uniform": [0.1, 0.4]},
        "objective.mem_weight": {"uniform": [0.25, 2.0]},
        "objective.mlm_weight": {"uniform": [0.25, 2.0]},
        "objective.itm_weight": {"uniform": [0.25, 2.0]},
        "objective.contrastive_weight": {"uniform": [0.25, 2.0]},
    }
    """C-MELT's temperature is SigLIP's initial logit scale (1 / temperature)."""

    def __init__(self, config: CmeltConfig, model_config: ModelConfig, text: TextTower) -> None:
        super().__init__(config, model_config, text)
        ecg, width = model_config.ecg, text.hidden_size
        self.config = config
        self.ecg_class_token = nn.Parameter(torch.rand(ecg.width))  # the authors' `class_embedding`, uniform_
        self.fusion = CoAttentionFusion(
            width, ecg.width, width, config.fusion_layers, config.fusion_heads, config.fusion_tap_layer
        )
        self.ecg_decoder = MaskedECGDecoder(
            width, config.decoder_width, config.decoder_depth, config.decoder_heads, ecg.n_patches,
            ecg.n_leads * ecg.patch_size,
        )
        self.mlm_head = MaskedLMHead(width, text.vocab_size)
        self.text_pooler, self.ecg_pooler = FirstTokenPooler(width), FirstTokenPooler(width)
        self.matching_head = nn.Linear(2 * width, 2)
        self.logit_scale = LogitScale(1 / config.siglip_init_scale, config.max_logit_scale, config.learn_temperature)
        self.logit_bias = nn.Parameter(torch.full((1,), float(config.siglip_init_bias)))  # [1]: see LogitScale
        self.siglip = SigLipLoss()
        self.n3s_index: CorpusIndex | None = None
        self._n3s_rng = np.random.default_rng(torch.initial_seed())

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        """The reports, in training half replaced by N3S negatives where an index is set, tokenized [B, L], and
        aligned [B] bool (False where replaced)."""
        if self.n3s_index is None or not self.training:
            aligned = torch.ones(len(reports), dtype=torch.bool)
        else:
            reports, aligned = self.n3s_index.replace_half(reports, self._n3s_rng, self.config.n3s_neighbours)
        return {**text.tokenize(reports), "aligned": aligned}

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        config, text, tower = self.config, model.text, model.ecg
        signal, lead_mask, aligned = batch["signal"], batch["lead_mask"], batch["aligned"]
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        masked_ids, mlm_labels = mask_tokens(
            input_ids, attention_mask, text.tokenizer.all_special_ids, text.mask_token_id, text.vocab_size,
            config.text_mask_ratio,
        )
        text_out = text(masked_ids, attention_mask)  # [B, L, H]
        tokens = tower.embed(signal, tower.drop_leads(lead_mask))  # [B, N, W]
        kept, mem_mask, ids_restore = tower.random_masking(tokens, config.ecg_mask_ratio)  # [B, N_keep, W], [B, N]
        class_token = self.ecg_class_token.to(kept.dtype).expand(len(kept), 1, -1)  # [B, 1, W]
        encoded = tower.encode(torch.cat([class_token, kept], dim=1))  # [B, 1 + N_keep, W]
        pooled, _ = tower.pool(encoded[:, 1:])  # [B, W]
        fused_text, fused_ecg, tapped_ecg = self.fusion(text_out.tokens, attention_mask, encoded)

        mlm = self.mlm_head(fused_text, mlm_labels, text.word_embeddings)
        prediction = self.ecg_decoder(tapped_ecg[:, 1:], ids_restore)  # [B, N, 12 * P]
        target = ecg_targets(tower, signal.to(prediction.dtype), lead_mask, config.ecg_targets)
        mem = masked_patch_loss(prediction, target, mem_mask)
        matching = self.matching_head(torch.cat([self.text_pooler(fused_text), self.ecg_pooler(fused_ecg)], dim=-1))
        itm = F.cross_entropy(matching, aligned.long())
        ecg = F.normalize(model.ecg_projection(pooled), dim=-1)  # [B, D]
        report = F.normalize(model.text_projection(text_out.pooled), dim=-1)  # [B, D]
        contrastive = self.siglip(ecg, report, self.logit_scale(), self.logit_bias, aligned)
        total = (
            config.mem_weight * mem
            + config.mlm_weight * mlm
            + config.itm_weight * itm
            + config.contrastive_weight * contrastive
        )
        return {"mem_loss": mem, "mlm_loss": mlm, "itm_loss": itm, "contrastive_loss": contrastive, "loss": total}
