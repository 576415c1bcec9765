"""A report's sentences, found in the one tokenization of the whole report, and their embeddings.

MELP embeds a sentence as the mean of its tokens' states inside the full-report forward pass (the authors'
`aggregate_sentence_emb`, HKU-MedAI/MELP src/melp/models/melp_model.py), not by encoding it alone. A
sentence is the text up to and including its '.', special tokens excluded. Unlike the authors' code, text
after the last '.' is a sentence too, a piece without a word ("...", "- -") is none, and a '.' before a digit
("QTc 0.45 s.") ends no sentence.

    index = token_sentence_index(reports, offsets, special)   # [B, L]: sentence of each token, -1 for none
    sentences, mask = sentence_means(text_states, index)        # [B, S, H], [B, S]
"""

from __future__ import annotations

import re

import numpy as np
import torch
import torch.nn.functional as F

_PIECE = re.compile(r"(?:[^.]|\.(?=\d))*\.?")  # up to a '.' that no digit follows
_WORD = re.compile(r"\w")


def sentence_spans(report: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of a report's sentences, each ending after its '.' (or at the end of the
    text): "sinus rhythm. left axis deviation." → [(0, 13), (13, 34)]. A piece with no word in it is none."""
    return [match.span() for match in _PIECE.finditer(report) if _WORD.search(match.group())]


def token_sentence_index(reports: list[str], offsets: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
    """Which sentence each token belongs to: [B, L] long, -1 for special and padding tokens and for tokens
    of pieces that are no sentence. offsets: [B, L, 2] character spans of the tokens (a fast tokenizer's
    offset_mapping); special: [B, L], 1 for special and padding tokens."""
    index = torch.full(special.shape, -1, dtype=torch.long)
    for row, report in enumerate(reports):
        spans = sentence_spans(report)
        if not spans:
            continue
        starts, ends = np.array(spans).T
        token_starts = offsets[row, :, 0].numpy()
        which = np.searchsorted(ends, token_starts, side="right")  # the first sentence ending after the token starts
        inside = (which < len(spans)) & (starts[np.minimum(which, len(spans) - 1)] <= token_starts)
        inside &= special[row].numpy() == 0
        index[row] = torch.from_numpy(np.where(inside, which, -1))
    return index


def sentence_means(states: torch.Tensor, sentence_index: torch.Tensor, n_sentences: int) -> tuple[torch.Tensor, torch.Tensor]:
    """states [B, L, H], sentence_index [B, L] (-1: in no sentence) → the mean state of each sentence
    [B, S, H] (S = n_sentences; zero where a row has fewer) and the mask of real sentences [B, S] bool."""
    members = F.one_hot(sentence_index + 1, n_sentences + 1)[..., 1:].to(states.dtype)  # [B, L, S]
    counts = members.sum(dim=1)  # [B, S]
    sums = members.transpose(1, 2) @ states  # [B, S, H]
    return sums / counts.clamp(min=1.0).unsqueeze(-1), counts > 0
