"""Zero-shot AUROC of ECG embeddings against class prompts: shared by validation during pretraining and
by `pipelines.evaluate`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.zero_shot import build_zero_shot_classifier, zero_shot_scores
from pipelines.evaluation.classes import LABEL_TABLE, REPORT_TEMPLATES
from pipelines.evaluation.metrics import auroc_per_class, targets_matrix


def zero_shot_auroc(
    model, embeddings: np.ndarray, labels: Sequence[Sequence[str]], codes: Sequence[str]
) -> dict[str, float]:
    """AUROC per code of `embeddings` [n, D] (from `model.encode_ecg`) scored against the prompts of
    `codes` (in the reports' own phrasing, `REPORT_TEMPLATES`), with `labels` the codes of each row; codes without a positive and a negative are left out.
    Every rank of a ZeRO-3 run must call this together (it runs the text tower)."""
    classifier = build_zero_shot_classifier(
        model.encode_reports, [LABEL_TABLE[code] for code in codes], REPORT_TEMPLATES
    )
    scores = zero_shot_scores(torch.from_numpy(embeddings).float(), classifier.float().cpu()).numpy()
    return auroc_per_class(scores, targets_matrix(labels, codes), codes)
