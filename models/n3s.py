"""N3S, C-MELT's nearest-neighbour negative sampling, as its authors build it (manhph2211/D-BETA
datasets/n3s.py, datasets/ecg_text_dataset.py `collator`): a fixed index of the training corpus's report
embeddings, built once per run; in each batch, half the reports (drawn at random) are each replaced by a report
drawn uniformly from the 64 nearest neighbours of its negated embedding (the corpus's least similar reports),
and that pair's matching label becomes 0. Unlike the authors' collator, which rebuilds the texts from the
originals after the replacement, the replaced texts are what the towers read.

    index = CorpusIndex.build(train_reports, embed)              # unique texts, unit embeddings [N, D]
    reports, aligned = index.replace_half(batch_reports, rng)   # list[str], [B] bool
    index.save(folder); CorpusIndex.load(folder)                 # embeddings.npy + reports.json
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPLACED_SHARE = 0.5
"""Of a batch's reports, this share on average is replaced by an N3S negative (the authors' int(B / 2 + U))."""
EMBEDDINGS_FILE, REPORTS_FILE = "embeddings.npy", "reports.json"


class CorpusIndex:
    """The unique reports of a corpus and their L2-normalised embeddings [N, D], row for row."""

    def __init__(self, reports: list[str], embeddings: torch.Tensor) -> None:
        if len(reports) != len(embeddings) or len(set(reports)) != len(reports):
            raise ValueError(f"an N3S index holds each report once, with one embedding: {len(reports)} reports, "
                             f"{len(set(reports))} unique, {len(embeddings)} embeddings")
        self.reports = reports
        self.embeddings = F.normalize(embeddings.float(), dim=-1)
        self._row = {report: row for row, report in enumerate(reports)}

    @classmethod
    @torch.no_grad()
    def build(
        cls, reports: Iterable[str], embed: Callable[[list[str]], torch.Tensor], batch_size: int = 256
    ) -> CorpusIndex:
        """The unique reports (sorted, so the same corpus gives the same index) embedded by `embed`
        (texts → [n, D]) in batches."""
        unique = sorted(set(reports))
        if not unique:
            raise ValueError("an N3S index needs at least one report")
        parts = [embed(unique[start : start + batch_size]).float().cpu() for start in range(0, len(unique), batch_size)]
        return cls(unique, torch.cat(parts))

    def opposite_neighbours(self, rows: torch.Tensor, k: int) -> torch.Tensor:
        """rows [c] of the index → the rows [c, min(k, N - 1)] nearest to each one's negated embedding (its least
        similar reports, the most dissimilar first), never the row itself."""
        closeness = -(self.embeddings[rows] @ self.embeddings.T)  # [c, N]
        closeness[torch.arange(len(rows)), rows] = -torch.inf
        return closeness.topk(min(k, len(self.reports) - 1), dim=1).indices

    def replace_half(self, reports: list[str], rng: np.random.Generator, k: int = 64) -> tuple[list[str], torch.Tensor]:
        """The batch with int(B / 2 + U[0, 1)) reports, drawn at random, each replaced by one drawn uniformly from
        its `k` opposite neighbours, and aligned [B] bool (False where replaced). A report the index lacks, or
        any report of a one-report corpus, stays as it is, aligned."""
        replaced, aligned = list(reports), torch.ones(len(reports), dtype=torch.bool)
        count = int(len(reports) * REPLACED_SHARE + rng.random())
        chosen = [int(i) for i in rng.choice(len(reports), size=count, replace=False) if reports[i] in self._row]
        if not chosen or len(self.reports) < 2:
            return replaced, aligned
        neighbours = self.opposite_neighbours(torch.tensor([self._row[reports[i]] for i in chosen]), k)  # [c, k']
        picks = rng.integers(neighbours.shape[1], size=len(chosen))
        for i, row in zip(chosen, neighbours[torch.arange(len(chosen)), torch.from_numpy(picks)].tolist(), strict=True):
            replaced[i], aligned[i] = self.reports[row], False
        return replaced, aligned

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / EMBEDDINGS_FILE, self.embeddings.numpy())
        (folder / REPORTS_FILE).write_text(json.dumps(self.reports))

    @classmethod
    def load(cls, folder: Path) -> CorpusIndex:
        return cls(json.loads((folder / REPORTS_FILE).read_text()), torch.from_numpy(np.load(folder / EMBEDDINGS_FILE)))
