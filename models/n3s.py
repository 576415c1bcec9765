"""N3S (C-MELT's nearest-neighbour negative sampling): for a report, negatives are drawn from the reports
least similar to it. C-MELT searches the whole report corpus; here the batch and a bank of the last
training steps' reports (of every rank) stand in for it.

    pool, pool_ids, pool_mask = bank.with_batch(embeddings, input_ids, attention_mask)  # [B + K, …]
    negative, has_negative = n3s_negatives(embeddings, pool_ids[:B], pool, pool_ids, 8)    # [B], [B]
    ids, mask = drop_padding_columns(pool_ids[negative], pool_mask[negative])              # [B, L']
    bank.add(embeddings, input_ids, attention_mask)                                        # after the loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.distributed import gather_no_grad


def n3s_negatives(
    queries: torch.Tensor,
    query_ids: torch.Tensor,
    candidates: torch.Tensor,
    candidate_ids: torch.Tensor,
    n_candidates: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For report i, a negative drawn uniformly among the n_candidates candidate reports least similar to it.

    queries [B, D] and candidates [C, D] are report embeddings (any norm; detached here); query_ids
    [B, L] and candidate_ids [C, L] their token ids, padded alike: equal rows are the same text. The
    least similar candidates are the nearest neighbours, by cosine, of the negated query; a candidate
    with the query's text never counts. Compares [B, C, L] ids at once.

    Returns negative [B] long (a row of candidates) and has_negative [B] bool (False where every
    candidate has report i's text; negative is then meaningless).
    """
    with torch.no_grad():
        unit_queries = F.normalize(queries.detach(), dim=-1)  # [B, D]
        unit_candidates = F.normalize(candidates.detach(), dim=-1).to(unit_queries.dtype)  # [C, D]
        closeness_to_opposite = -unit_queries @ unit_candidates.T  # [B, C]
        same_text = (query_ids.unsqueeze(1) == candidate_ids.unsqueeze(0)).all(dim=-1)  # [B, C]
        scores = closeness_to_opposite.masked_fill(same_text, float("-inf"))
        top, index = scores.topk(min(n_candidates, scores.shape[1]), dim=1)  # [B, k]: least similar first
        valid = top > float("-inf")  # [B, k]
        draw = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, -1.0)
        return index.gather(1, draw.argmax(dim=1, keepdim=True)).squeeze(1), valid.any(dim=1)


def drop_padding_columns(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask [M, L] → [M, L']: without the columns that are padding in every row."""
    columns = attention_mask.any(dim=0)  # [L]
    return input_ids[:, columns], attention_mask[:, columns]


class ReportBank(nn.Module):
    """A ring buffer of the last `capacity` reports of training, from every rank: their detached
    L2-normalised embeddings [K, D] and token ids and attention masks [K, max_length].

    Rows [0, size) are filled; `add` overwrites the oldest first. The buffers are not persistent:
    state dicts and saved models do not hold them, and a resumed run starts with an empty bank.
    Embeddings are those of the step that added them (stale later, as a MoCo queue's).
    """

    def __init__(self, capacity: int, dim: int, max_length: int, pad_id: int, padding_side: str = "right") -> None:
        super().__init__()
        self.capacity, self.max_length, self.pad_id, self.padding_side = capacity, max_length, pad_id, padding_side
        self.register_buffer("embeddings", torch.zeros(capacity, dim), persistent=False)
        self.register_buffer("input_ids", torch.zeros(capacity, max_length, dtype=torch.long), persistent=False)
        self.register_buffer("attention_mask", torch.zeros(capacity, max_length, dtype=torch.long), persistent=False)
        self.size = 0
        self.next_row = 0

    def fit(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenized reports [B, L] → [B, max_length], as the bank stores them: padded (pad id, mask 0),
        or cut, on the tokenizer's padding side."""
        extra = self.max_length - input_ids.shape[1]  # negative: F.pad cuts
        widths = (0, extra) if self.padding_side == "right" else (extra, 0)
        return F.pad(input_ids, widths, value=self.pad_id), F.pad(attention_mask, widths, value=0)

    def add(self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
        """Store this step's reports of every rank (all_gather, no grad; every rank calls it with the
        same shapes): embeddings [B, D], input_ids and attention_mask [B, L] as tokenized. Of more
        reports than the capacity, the last `capacity` are kept."""
        if self.capacity == 0:
            return
        input_ids, attention_mask = self.fit(input_ids, attention_mask)  # [B, max_length]
        embeddings = gather_no_grad(F.normalize(embeddings, dim=-1))[-self.capacity :]  # [n, D]
        n = len(embeddings)
        rows = (self.next_row + torch.arange(n, device=self.embeddings.device)) % self.capacity  # [n]
        self.embeddings[rows] = embeddings.to(self.embeddings.dtype)
        self.input_ids[rows] = gather_no_grad(input_ids)[-n:].to(self.input_ids.dtype)
        self.attention_mask[rows] = gather_no_grad(attention_mask)[-n:].to(self.attention_mask.dtype)
        self.next_row = (self.next_row + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def with_batch(
        self, embeddings: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The N3S candidates: the batch's reports (embeddings [B, D], tokenized [B, L]) followed by
        the bank's. Returns embeddings [B + K, D], input_ids and attention_mask [B + K, max_length]."""
        input_ids, attention_mask = self.fit(input_ids, attention_mask)
        return (
            torch.cat([embeddings, self.embeddings[: self.size].to(embeddings.dtype)]),
            torch.cat([input_ids, self.input_ids[: self.size]]),
            torch.cat([attention_mask, self.attention_mask[: self.size]]),
        )
