"""MELP's beat level: report sentences aligned with learned beat embeddings, GLoRIA style."""

from __future__ import annotations

import torch
import torch.nn.functional as F

SENTENCE_AGGREGATION = 5.0  # GLoRIA's temperature for log-sum-exp over a report's sentences
PAIR_SCALE = 10.0  # GLoRIA's scale of the pair scores in the batch cross-entropy


def beat_alignment_loss(
    sentences: torch.Tensor, sentence_mask: torch.Tensor, beats: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Local contrastive loss between report sentences and ECG beats, both directions.

    sentences: [B, S, D] L2-normalised sentence embeddings of each report; sentence_mask: [B, S]
    bool (True = a real sentence); beats: [B, K, D] L2-normalised beat embeddings of each ECG.
    For every (ECG i, report j), each sentence of j attends over the beats of i (softmax of cosine
    / temperature); its score is the cosine with that attended context; a report's score is the
    log-sum-exp over its sentences. Cross-entropy over the batch in both directions picks the pair.
    Rows whose report has no sentence ("", "...") leave the term: their score would be -inf, and the
    loss NaN. With none left, the term is a zero that keeps every input in the graph.
    """
    with_sentences = sentence_mask.any(dim=1)  # [B]
    if not with_sentences.any():
        return (sentences.sum() + beats.sum()) * 0.0
    if not with_sentences.all():
        sentences, sentence_mask, beats = sentences[with_sentences], sentence_mask[with_sentences], beats[with_sentences]
    similarity = torch.einsum("jsd,ikd->ijsk", sentences, beats)  # [B_ecg, B_text, S, K]
    attention = torch.softmax(similarity / temperature, dim=-1)
    context = F.normalize(torch.einsum("ijsk,ikd->ijsd", attention, beats), dim=-1)  # [B, B, S, D]
    local = torch.einsum("jsd,ijsd->ijs", sentences, context)  # [B, B, S]
    local = local.masked_fill(~sentence_mask[None], float("-inf"))
    scores = torch.logsumexp(SENTENCE_AGGREGATION * local, dim=-1) / SENTENCE_AGGREGATION  # [B, B]
    labels = torch.arange(scores.shape[0], device=scores.device)
    return (F.cross_entropy(PAIR_SCALE * scores, labels) + F.cross_entropy(PAIR_SCALE * scores.T, labels)) / 2
