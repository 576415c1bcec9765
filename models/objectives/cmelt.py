"""C-MELT: masked ECG modelling, masked language modelling, ECG-text matching with N3S negatives and a
sigmoid contrastive loss, trained together.

    losses = model(batch)   # {"mem_loss", "mlm_loss", "itm_loss", "contrastive_loss", "loss"}

Each term is a small piece: `masked_ecg_loss` (MAE with a light decoder, models.masked_ecg_modeling),
the text tower's masked-LM loss (models.masked_language_modeling), `ECGTextMatching` (fusion layers
and a matching head) on positives and N3S negatives both ways (models.n3s: the batch and a bank of
recent reports), and SigLIP (models.losses). "loss" is their weighted sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig, ObjectiveConfig
from models.cross_attention import TextOverECG
from models.losses import LogitScale, SigLipLoss
from models.masked_ecg_modeling import TARGET_NORMALISATIONS, MaskedECGDecoder, masked_ecg_loss
from models.masked_language_modeling import MaskedLMHead, masked_lm_loss
from models.n3s import ReportBank, drop_padding_columns, n3s_negatives
from models.objectives import Objective, register
from models.text_tower import TextTower, pool_tokens

if TYPE_CHECKING:
    from models.model import ECGTextModel


@dataclass(frozen=True)
class CmeltConfig(ObjectiveConfig):
    """C-MELT's knobs (published defaults): masking ratios, loss weights, decoder and fusion sizes,
    SigLIP's initial scale and bias, N3S."""

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
    """The masked-ECG decoder: the authors' 384 wide, 4 blocks, 6 heads (D-BETA configs/config.json
    `mem_decoder_*`; their `Transformer(…, num_layers + 1)` builds num_layers blocks)."""
    fusion_layers: int = 2
    siglip_init_scale: float = 10.0
    siglip_init_bias: float = -10.0
    n3s_candidates: int = 8
    """N3S: a negative is drawn from this many reports least similar to the positive."""
    n3s_bank_size: int = 4096
    """N3S searches the batch and a bank of the last this many training reports (of all ranks);
    0 = the batch only. The bank is not saved with the model: a resumed run refills it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for ratio in ("ecg_mask_ratio", "text_mask_ratio"):
            if not 0.0 <= getattr(self, ratio) < 1.0:
                raise ValueError(f"{ratio} must be in [0, 1), got {getattr(self, ratio)}")
        if self.ecg_targets not in TARGET_NORMALISATIONS:
            raise ValueError(f"ecg_targets must be one of {', '.join(TARGET_NORMALISATIONS)}, got {self.ecg_targets!r}")
        if self.decoder_width % self.decoder_heads:
            raise ValueError(f"decoder_width {self.decoder_width} must divide by decoder_heads {self.decoder_heads}")
        if self.n3s_candidates < 1 or self.n3s_bank_size < 0:
            raise ValueError(
                f"n3s_candidates must be at least 1 and n3s_bank_size at least 0, got {self.n3s_candidates}, {self.n3s_bank_size}"
            )


class ECGTextMatching(nn.Module):
    """ECG-text matching: fusion layers in which report tokens self-attend and cross-attend to the ECG
    tokens (projected to the text width), and a 2-way linear head on the fused report, pooled as the
    text tower pools ("cls", "mean" or "last"). Not always the first token, as ALBEF's head reads:
    sentence encoders such as all-MiniLM-L6-v2 are trained mean-pooled, and on the tiny config
    (seeds 0-9) ITM falls below 0.5 ln 2 after 60-110 steps mean-pooled, 70-200+ from the first token.
    """

    def __init__(self, text_width: int, ecg_width: int, layers: int, pooling: str) -> None:
        super().__init__()
        self.fusion = TextOverECG(text_width, ecg_width, layers)
        self.head = nn.Linear(text_width, 2)
        self.pooling = pooling

    def forward(
        self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, ecg_tokens: torch.Tensor
    ) -> torch.Tensor:
        """text_tokens [M, L, H], attention_mask [M, L], ecg_tokens [M, N, W] → logits [M, 2] (1 = a pair)."""
        fused = self.fusion(text_tokens, attention_mask == 0, ecg_tokens)  # [M, L, H]
        return self.head(pool_tokens(fused, attention_mask, self.pooling))  # [M, 2]


@register
class CmeltObjective(Objective):
    """C-MELT: mem_weight · MEM + mlm_weight · MLM + itm_weight · ITM (N3S) + contrastive_weight · SigLIP.

    The contrastive and matching terms see the whole ECG (one forward through the tower: its pooled
    embedding is projected and normalised as `encode_ecg` does, its tokens feed the fusion layers)
    and the unmasked report; MEM and MLM see their own masked copies. In training, each step's
    reports (of every rank) then enter the N3S report bank.
    """

    name = "cmelt"
    config_class = CmeltConfig
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
        ecg = model_config.ecg
        self.config = config
        self.ecg_decoder = MaskedECGDecoder(
            ecg.width,
            config.decoder_width,
            config.decoder_depth,
            config.decoder_heads,
            ecg.n_patches,
            ecg.n_leads * ecg.patch_size,
        )
        self.mlm_head = MaskedLMHead(text.hidden_size, text.vocab_size)
        self.matching = ECGTextMatching(text.hidden_size, ecg.width, config.fusion_layers, model_config.text.pooling)
        self.report_bank = ReportBank(
            config.n3s_bank_size,
            config.embed_dim,
            model_config.text.max_length,
            text.pad_token_id,
            text.tokenizer.padding_side,
        )
        self.logit_scale = LogitScale(1 / config.siglip_init_scale, config.max_logit_scale, config.learn_temperature)
        self.logit_bias = nn.Parameter(torch.full((1,), float(config.siglip_init_bias)))  # [1]: see LogitScale
        self.siglip = SigLipLoss()

    def matching_loss(
        self,
        text: TextTower,
        text_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        report_embeddings: torch.Tensor,
        ecg_tokens: torch.Tensor,
    ) -> torch.Tensor:
        """ITM in both directions (ALBEF): cross-entropy of the matching head over the B positives
        (ECG i, report i), the pairs (ECG i, an N3S report of the batch or the bank) and the pairs
        (the ECG of an N3S report of the batch, report i), wherever N3S finds a report of another text.

        text_tokens [B, L, H], input_ids and attention_mask [B, L], report_embeddings [B, D] (the
        reports' normalised embeddings, which rank the candidates), ecg_tokens [B, N, W]. The B
        negative reports of the first kind are encoded here, in one text-tower call on every step
        and rank (as ZeRO-3's parameter gathering needs), whether they come from the batch or the bank.
        """
        bank, n_candidates = self.report_bank, self.config.n3s_candidates
        batch_size = len(input_ids)
        pool, pool_ids, pool_mask = bank.with_batch(report_embeddings, input_ids, attention_mask)  # [B + K, …]
        report, has_report = n3s_negatives(report_embeddings, pool_ids[:batch_size], pool, pool_ids, n_candidates)
        ecg, has_ecg = n3s_negatives(report_embeddings, input_ids, report_embeddings, input_ids, n_candidates)
        negative_ids, negative_mask = drop_padding_columns(pool_ids[report], pool_mask[report])  # [B, L']
        negative_tokens = text(negative_ids, negative_mask).tokens  # [B, L', H]
        rows = torch.arange(batch_size, device=input_ids.device)  # [B]
        text_rows, ecg_rows = torch.cat([rows, rows[has_ecg]]), torch.cat([rows, ecg[has_ecg]])  # [B + B']
        logits = torch.cat(
            [
                self.matching(text_tokens[text_rows], attention_mask[text_rows], ecg_tokens[ecg_rows]),
                self.matching(negative_tokens, negative_mask, ecg_tokens)[has_report],
            ]
        )  # [B + B' + B'', 2]
        labels = (torch.arange(len(logits), device=logits.device) < batch_size).long()  # 1 = a pair
        return F.cross_entropy(logits, labels)

    def forward(self, model: ECGTextModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        config = self.config
        signal, lead_mask = batch["signal"], batch["lead_mask"]
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        mem = masked_ecg_loss(
            model.ecg, self.ecg_decoder, signal, lead_mask, config.ecg_mask_ratio, config.ecg_targets
        )
        mlm = masked_lm_loss(model.text, self.mlm_head, input_ids, attention_mask, config.text_mask_ratio)
        ecg_out = model.ecg(signal, lead_mask)
        text_out = model.text(input_ids, attention_mask)
        ecg = F.normalize(model.ecg_projection(ecg_out.pooled), dim=-1)  # [B, D]
        text = F.normalize(model.text_projection(text_out.pooled), dim=-1)  # [B, D]
        itm = self.matching_loss(model.text, text_out.tokens, input_ids, attention_mask, text, ecg_out.tokens)
        contrastive = self.siglip(ecg, text, self.logit_scale(), self.logit_bias)
        if self.training:
            self.report_bank.add(text, input_ids, attention_mask)
        total = (
            config.mem_weight * mem
            + config.mlm_weight * mlm
            + config.itm_weight * itm
            + config.contrastive_weight * contrastive
        )
        return {"mem_loss": mem, "mlm_loss": mlm, "itm_loss": itm, "contrastive_loss": contrastive, "loss": total}
