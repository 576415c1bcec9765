"""C-MELT: masked ECG modelling, masked language modelling, ECG-text matching with N3S negatives and a
sigmoid contrastive loss, trained together.

    losses = model(batch)   # {"mem_loss", "mlm_loss", "itm_loss", "contrastive_loss", "loss"}

Each term is a small piece here: `masked_ecg_loss` (MAE with a light `MaskedECGDecoder`), the text
tower's masked-LM loss (models.masked_language_modeling), `ECGTextMatching` (fusion layers and a
matching head) on positives and N3S negatives both ways (models.n3s: the batch and a bank of recent
reports), and SigLIP (models.losses). "loss" is their weighted sum.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig, ObjectiveConfig
from models.cross_attention import TextOverECG
from models.ecg_tower import ECGTower, sincos_position_embedding
from models.losses import LogitScale, SigLipLoss
from models.masked_language_modeling import MaskedLMHead, masked_lm_loss
from models.n3s import ReportBank, drop_padding_columns, n3s_negatives
from models.text_tower import TextTower, pool_tokens

if TYPE_CHECKING:
    from models.model import ECGTextModel

PATCH_NORM_EPS = 1e-6
DECODER_HEAD_WIDTH = 32
"""Channels per attention head of the ECG decoder (MAE's decoder: 512 wide, 16 heads)."""


def normalize_patches(patches: torch.Tensor) -> torch.Tensor:
    """Per-patch normalised reconstruction targets (MAE's norm_pix_loss).

    patches [B, N, 12 * P] → [B, N, 12 * P]: each patch minus its mean over its 12 * P values, divided
    by sqrt(var + 1e-6), var being the unbiased variance over the same values (as MAE).
    """
    mean = patches.mean(dim=-1, keepdim=True)  # [B, N, 1]
    variance = patches.var(dim=-1, keepdim=True)  # [B, N, 1]
    return (patches - mean) / (variance + PATCH_NORM_EPS).sqrt()


def masked_patch_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE on the removed patches only: prediction, target [B, N, 12 * P]; mask [B, N], 1 = removed.

    Returns the scalar mean over removed patches of each patch's mean squared error; kept patches'
    predictions and targets are never read into the result.
    """
    removed = mask.bool()  # [B, N]
    return (prediction[removed] - target[removed]).pow(2).mean()


class MaskedECGDecoder(nn.Module):
    """MAE's light decoder: encoded kept patches, a shared mask token at every removed position, fixed
    sin-cos positions, a few pre-norm transformer blocks, and a linear map to each patch's 12 * P values."""

    def __init__(self, ecg_width: int, width: int, depth: int, n_patches: int, patch_dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(ecg_width, width)
        self.mask_token = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.register_buffer("position_embedding", sincos_position_embedding(n_patches, width), persistent=False)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width,
                max(1, width // DECODER_HEAD_WIDTH),
                4 * width,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.prediction = nn.Linear(width, patch_dim)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """latent [B, N_keep, W] (the encoded kept patches), ids_restore [B, N] from `random_masking`
        → predicted patches [B, N, 12 * P] in the original order."""
        tokens = self.embed(latent)  # [B, N_keep, Wd]
        batch, n_keep, width = tokens.shape
        fillers = self.mask_token.expand(batch, ids_restore.shape[1] - n_keep, width)  # [B, N - N_keep, Wd]
        tokens = torch.cat([tokens, fillers], dim=1)  # [B, N, Wd], kept first
        tokens = tokens.gather(1, ids_restore.unsqueeze(-1).expand(-1, -1, width)) + self.position_embedding
        for block in self.blocks:
            tokens = block(tokens)  # [B, N, Wd]
        return self.prediction(self.norm(tokens))  # [B, N, 12 * P]


def masked_ecg_loss(
    tower: ECGTower, decoder: MaskedECGDecoder, signal: torch.Tensor, lead_mask: torch.Tensor, mask_ratio: float
) -> torch.Tensor:
    """MEM: encode a random (1 - mask_ratio) of the patches, reconstruct all, score the removed ones.

    signal [B, 12, T], lead_mask [B, 12] bool. Leads are dropped at random in training (`drop_leads`)
    on the input only. Targets are the present leads centred over time, as `embed` sees them, cut
    into patches and normalised per patch. Returns the scalar `masked_patch_loss`.
    """
    tokens = tower.embed(signal, tower.drop_leads(lead_mask))  # [B, N, W]
    kept, mask, ids_restore = tower.random_masking(tokens, mask_ratio)  # [B, N_keep, W], [B, N], [B, N]
    prediction = decoder(tower.encode(kept), ids_restore)  # [B, N, 12 * P]
    present = signal.to(prediction.dtype).masked_fill(~lead_mask.unsqueeze(-1), 0.0)  # [B, 12, T]
    target = normalize_patches(tower.patchify(present - present.mean(dim=-1, keepdim=True)))  # [B, N, 12 * P]
    return masked_patch_loss(prediction, target, mask)


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


class CmeltObjective(nn.Module):
    """C-MELT: mem_weight · MEM + mlm_weight · MLM + itm_weight · ITM (N3S) + contrastive_weight · SigLIP.

    The contrastive and matching terms see the whole ECG (one forward through the tower: its pooled
    embedding is projected and normalised as `encode_ecg` does, its tokens feed the fusion layers)
    and the unmasked report; MEM and MLM see their own masked copies. In training, each step's
    reports (of every rank) then enter the N3S report bank.
    """

    def __init__(self, config: ObjectiveConfig, model_config: ModelConfig, text: TextTower) -> None:
        super().__init__()
        ecg = model_config.ecg
        self.config = config
        self.ecg_decoder = MaskedECGDecoder(
            ecg.width, config.decoder_width, config.decoder_depth, ecg.n_patches, ecg.n_leads * ecg.patch_size
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

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        return text.tokenize(reports)

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
        mem = masked_ecg_loss(model.ecg, self.ecg_decoder, signal, lead_mask, config.ecg_mask_ratio)
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
