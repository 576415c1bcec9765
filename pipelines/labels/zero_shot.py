"""Zero-shot scoring of ECG embeddings against a task's class prompts: shared by validation during
pretraining and `pipelines.evaluate`."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models.zero_shot import classifier_from_prompts, zero_shot_scores
from pipelines.labels.metrics import auroc_per_class
from pipelines.labels.tasks import Task


def task_classifier(model, task: Task, codes: Sequence[str]) -> torch.Tensor:
    """Class weights [D, C] for `codes` of `task`, from `model.encode_reports` (run by every rank
    together under ZeRO-3: it runs the text tower)."""
    return classifier_from_prompts(model.encode_reports, [task.prompts_of(code) for code in codes])


def task_scores(model, task: Task, codes: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
    """Cosine scores [n, C] of ECG embeddings [n, D] (from `model.encode_ecg`) against the classes `codes`."""
    classifier = task_classifier(model, task, codes)
    return zero_shot_scores(torch.from_numpy(embeddings).float(), classifier.float().cpu()).numpy()


def zero_shot_auroc(
    model, embeddings: np.ndarray, labels: Sequence[Sequence[str]], codes: Sequence[str], task: Task
) -> dict[str, float]:
    """AUROC per class code of `embeddings` [n, D] scored against the prompts of `codes` (classes of
    `task`), `labels` each row's raw codes; codes without a positive and a negative are left out."""
    return auroc_per_class(
        task_scores(model, task, codes, embeddings), task.targets(labels)[:, _columns(task, codes)], codes
    )


def _columns(task: Task, codes: Sequence[str]) -> list[int]:
    return [task.codes.index(code) for code in codes]
