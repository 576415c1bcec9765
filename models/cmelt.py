"""C-MELT: masked ECG modelling, masked language modelling, ECG-text matching with N3S negatives and a
sigmoid contrastive loss, trained together.

    losses = model(batch)   # {"mem_loss", "mlm_loss", "itm_loss", "contrastive_loss", "loss"}

Each term is a small piece here: `masked_ecg_loss` (MAE with a light `MaskedECGDecoder`), the text
tower's masked-LM loss (models.masked_language_modeling), `ECGTextMatching` (fusion layers and a
matching head) fed by `n3s_negatives`, and SigLIP (models.losses). "loss" is their weighted sum.
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

if TYPE_CHECKING:
    from models.model import ECGTextModel
    from models.text_tower import TextTower

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


def n3s_negatives(
    text_embeddings: torch.Tensor, input_ids: torch.Tensor, n_candidates: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """N3S negative sampling within the batch: for ECG i, a report least similar to report i.

    text_embeddings [B, D] (detached here); input_ids [B, L], the padded tokenized reports: rows with
    the same ids are the same report text. The candidates for row i are the n_candidates nearest
    neighbours, by cosine, of the negated embedding of report i (its least similar reports), never
    report i itself nor a report with its text; one is drawn uniformly. Candidates come from this
    batch only: a corpus-level bank of report embeddings, as C-MELT searches, is future work.

    Returns negative [B] long (the report index paired with ECG i) and has_negative [B] bool (False
    where every report in the batch has report i's text; negative is then meaningless).
    """
    with torch.no_grad():
        unit = F.normalize(text_embeddings.detach(), dim=-1)  # [B, D]
        closeness_to_opposite = -unit @ unit.T  # [B, B]: cosine of report j with the negation of report i
        same_text = (input_ids.unsqueeze(1) == input_ids.unsqueeze(0)).all(dim=-1)  # [B, B], diagonal True
        scores = closeness_to_opposite.masked_fill(same_text, float("-inf"))
        rank = scores.argsort(dim=1, descending=True).argsort(dim=1)  # [B, B]: 0 = least similar report
        candidates = ~same_text & (rank < n_candidates)  # [B, B]
        draw = torch.rand(candidates.shape, device=candidates.device).masked_fill(~candidates, -1.0)
        return draw.argmax(dim=1), candidates.any(dim=1)


class ECGTextMatching(nn.Module):
    """ECG-text matching: fusion layers in which report tokens self-attend and cross-attend to the ECG
    tokens (projected to the text width), and a 2-way linear head on the fused first token."""

    def __init__(self, text_width: int, ecg_width: int, layers: int) -> None:
        super().__init__()
        self.fusion = TextOverECG(text_width, ecg_width, layers)
        self.head = nn.Linear(text_width, 2)

    def match_logits(
        self, text_tokens: torch.Tensor, attention_mask: torch.Tensor, ecg_tokens: torch.Tensor
    ) -> torch.Tensor:
        """text_tokens [M, L, H], attention_mask [M, L], ecg_tokens [M, N, W] → logits [M, 2] (1 = a pair)."""
        fused = self.fusion(text_tokens, attention_mask == 0, ecg_tokens)  # [M, L, H]
        return self.head(fused[:, 0])

    def forward(
        self,
        text_tokens: torch.Tensor,
        attention_mask: torch.Tensor,
        ecg_tokens: torch.Tensor,
        negative: torch.Tensor,
        has_negative: torch.Tensor,
    ) -> torch.Tensor:
        """Scalar cross-entropy over B positives (ECG i, report i) and the negatives (ECG i, report
        negative[i]) where has_negative[i]. text_tokens [B, L, H], attention_mask [B, L], ecg_tokens [B, N, W]."""
        negative = negative[has_negative]  # [B']
        logits = self.match_logits(
            torch.cat([text_tokens, text_tokens[negative]]),  # [B + B', L, H]
            torch.cat([attention_mask, attention_mask[negative]]),  # [B + B', L]
            torch.cat([ecg_tokens, ecg_tokens[has_negative]]),  # [B + B', N, W]
        )  # [B + B', 2]
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        labels[: text_tokens.shape[0]] = 1
        return F.cross_entropy(logits, labels)


class CmeltObjective(nn.Module):
    """C-MELT: mem_weight · MEM + mlm_weight · MLM + itm_weight · ITM (N3S) + contrastive_weight · SigLIP.

    The contrastive and matching terms see the whole ECG (one forward through the tower: its pooled
    embedding is projected and normalised as `encode_ecg` does, its tokens feed the fusion layers)
    and the unmasked report; MEM and MLM see their own masked copies.
    """

    def __init__(self, config: ObjectiveConfig, model_config: ModelConfig, text_width: int) -> None:
        super().__init__()
        ecg = model_config.ecg
        self.config = config
        self.ecg_decoder = MaskedECGDecoder(
            ecg.width, config.decoder_width, config.decoder_depth, ecg.n_patches, ecg.n_leads * ecg.patch_size
        )
        self.mlm_head = MaskedLMHead(text_width)
        self.matching = ECGTextMatching(text_width, ecg.width, config.fusion_layers)
        self.logit_scale = LogitScale(1 / config.siglip_init_scale, config.max_logit_scale, config.learn_temperature)
        self.logit_bias = nn.Parameter(torch.tensor(float(config.siglip_init_bias)))
        self.siglip = SigLipLoss()

    def text_inputs(self, reports: list[str], text: TextTower) -> dict[str, torch.Tensor]:
        return text.tokenize(reports)

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
        negative, has_negative = n3s_negatives(text, input_ids, config.n3s_candidates)
        itm = self.matching(text_out.tokens, attention_mask, ecg_out.tokens, negative, has_negative)
        contrastive = self.siglip(ecg, text, self.logit_scale(), self.logit_bias)
        total = (
            config.mem_weight * mem
            + config.mlm_weight * mlm
            + config.itm_weight * itm
            + config.contrastive_weight * contrastive
        )
        return {"mem_loss": mem, "mlm_loss": mlm, "itm_loss": itm, "contrastive_loss": contrastive, "loss": total}
