"""Zero-shot classification: classes become prompt text, prompt embeddings averaged per class (open_clip's
`build_zero_shot_classifier`), and ECG embeddings scored against them by cosine similarity.

Model-free on purpose: `encode_text` is whatever maps strings into the shared ECG-text space.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TEMPLATES = (
    "{}.",
    "ecg shows {}.",
    "the ecg is consistent with {}.",
    "12-lead ecg with {}.",
    "findings: {}.",
)
"""ECG-report-style prompts; each `{}` is filled with a class name, and with its description where it has one."""


@dataclass(frozen=True)
class ZeroShotClass:
    name: str
    """e.g. "atrial fibrillation"."""
    description: str = ""
    """A one-line clinical description, e.g. "irregularly irregular rhythm without p waves"."""


def class_prompts(zero_shot_class: ZeroShotClass, templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Every template filled with the class name, then (if there is one) every template filled with the description."""
    fillings = [zero_shot_class.name]
    if zero_shot_class.description:
        fillings.append(zero_shot_class.description.rstrip("."))
    return [template.format(filling) for filling in fillings for template in templates]


def build_zero_shot_classifier(
    encode_text: Callable[[list[str]], Tensor],
    classes: Sequence[ZeroShotClass | str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    batch_size: int = 64,
) -> Tensor:
    """Class weights [D, C]: each prompt embedding ([n, D] from `encode_text`, in batches of `batch_size`)
    L2-normalised, averaged over the class's prompts, and normalised again. Runs under torch.no_grad;
    put the model that `encode_text` uses in eval mode first."""
    classes = [c if isinstance(c, ZeroShotClass) else ZeroShotClass(c) for c in classes]
    return classifier_from_prompts(encode_text, [class_prompts(c, templates) for c in classes], batch_size)


def classifier_from_prompts(
    encode_text: Callable[[list[str]], Tensor], prompts_per_class: Sequence[Sequence[str]], batch_size: int = 64
) -> Tensor:
    """Class weights [D, C] from each class's own prompt list (what `build_zero_shot_classifier` does
    after filling the templates)."""
    prompts = [prompt for class_prompt_list in prompts_per_class for prompt in class_prompt_list]
    with torch.no_grad():
        prompt_embeddings = torch.cat(
            [F.normalize(encode_text(prompts[i : i + batch_size]), dim=-1) for i in range(0, len(prompts), batch_size)]
        )
    per_class = prompt_embeddings.split([len(p) for p in prompts_per_class])
    class_embeddings = torch.stack([embeddings.mean(dim=0) for embeddings in per_class])
    return F.normalize(class_embeddings, dim=-1).T


def zero_shot_scores(ecg_embeddings: Tensor, classifier: Tensor) -> Tensor:
    """Cosine similarity [B, C] of ECG embeddings [B, D] to the class weights [D, C] of the classifier."""
    return F.normalize(ecg_embeddings, dim=-1) @ classifier
