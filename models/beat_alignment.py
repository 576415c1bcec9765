"""MELP's beat level, exactly GLoRIA: each report sentence attends over an ECG's beat embeddings.

The authors' `BeatAlignmentModule` (HKU-MedAI/MELP, src/melp/models/melp_model.py) is GLoRIA's local loss
(Huang et al. 2021) with its defaults temp1 = 4, temp2 = 5, temp3 = 10; this is that loss, batched over
ECG-report pairs and padded sentences instead of a Python loop over reports.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION_SHARPNESS = 4.0  # GLoRIA's temp1: the second softmax, over beats, reads 4 × the first one's output
SENTENCE_AGGREGATION = 5.0  # temp2: a report's score is log Σ_sentences exp(5 · cos)
PAIR_SCALE = 10.0  # temp3: pair scores enter the batch cross-entropy times 10
COSINE_EPS = 1e-8  # the product of norms is clamped to at least this, as GLoRIA's cosine_similarity does


def beat_alignment_loss(sentences: torch.Tensor, sentence_mask: torch.Tensor, beats: torch.Tensor) -> torch.Tensor:
    """GLoRIA's local contrastive loss between report sentences and ECG beats, both directions.

    sentences: [B, S, D] sentence embeddings of each report (not normalised); sentence_mask: [B, S] bool
    (True = a real sentence; the rest is padding); beats: [B, K, D] beat embeddings of each ECG (not
    normalised). For ECG i and report j, with dot products a_sk = <sentence_s, beat_k>:

        p_sk  = softmax over j's sentences s of a_sk        (for each beat, which sentence it belongs to)
        w_sk  = softmax over i's beats k of 4 · p_sk
        c_s   = Σ_k w_sk · beat_k                            (the beats sentence s reads)
        score = 10 · log Σ_s exp(5 · cos(sentence_s, c_s))

    Cross-entropy over the batch, ECGs against reports and reports against ECGs, averaged. Rows whose
    report has no sentence ("", "...") leave the term (their score would be log 0, the loss NaN); with
    none left it is a zero that keeps every input in the graph.
    """
    with_sentences = sentence_mask.any(dim=1)  # [B]
    if not with_sentences.any():
        return (sentences.sum() + beats.sum()) * 0.0
    if not with_sentences.all():
        sentences, sentence_mask, beats = sentences[with_sentences], sentence_mask[with_sentences], beats[with_sentences]
    padding = ~sentence_mask[None, :, :, None]  # [1, B_text, S, 1]
    dots = torch.einsum("jsd,ikd->ijsk", sentences, beats)  # [B_ecg, B_text, S, K]
    per_beat = torch.softmax(dots.masked_fill(padding, float("-inf")), dim=2)  # padding gets 0
    weights = torch.softmax(ATTENTION_SHARPNESS * per_beat, dim=3)  # [B_ecg, B_text, S, K]
    context = torch.einsum("ijsk,ikd->ijsd", weights, beats)  # [B_ecg, B_text, S, D]
    norms = (sentences.norm(dim=-1)[None] * context.norm(dim=-1)).clamp(min=COSINE_EPS)  # [B_ecg, B_text, S]
    cosine = torch.einsum("jsd,ijsd->ijs", sentences, context) / norms
    cosine = cosine.masked_fill(~sentence_mask[None], float("-inf"))
    scores = PAIR_SCALE * torch.logsumexp(SENTENCE_AGGREGATION * cosine, dim=-1)  # [B_ecg, B_text]
    labels = torch.arange(scores.shape[0], device=scores.device)
    return (F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)) / 2
