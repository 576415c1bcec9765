"""Zero-shot classification: prompts, the classifier against open_clip's per-class computation, and a real
all-MiniLM-L6-v2 tower telling obviously different ECG reports apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.text_tower import TextTower
from models.zero_shot import (
    DEFAULT_TEMPLATES,
    ZeroShotClass,
    build_zero_shot_classifier,
    class_prompts,
    zero_shot_scores,
)

CLASSES = [
    ZeroShotClass("atrial fibrillation", "irregularly irregular rhythm without p waves."),
    ZeroShotClass("sinus bradycardia", "sinus rhythm with a rate below 60 beats per minute"),
    "left bundle branch block",
    ZeroShotClass("st elevation myocardial infarction", "st segment elevation in contiguous leads"),
]
REPORTS = [  # one machine-report-style text per class, in class order
    "Atrial fibrillation with rapid ventricular response. Nonspecific ST-T changes.",
    "Sinus bradycardia. Otherwise normal ECG.",
    "Left bundle branch block. Left axis deviation.",
    "Acute anterior ST elevation MI. Consider acute infarct.",
]


def encoder_of(tower: TextTower):
    """texts → pooled text embeddings [n, H] of the tower."""
    return lambda texts: tower(**tower.tokenize(texts)).pooled


def test_prompts_fill_templates_with_name_then_description():
    prompts = class_prompts(CLASSES[0])
    assert len(prompts) == 2 * len(DEFAULT_TEMPLATES)
    assert prompts[1] == "ecg shows atrial fibrillation."
    assert prompts[len(DEFAULT_TEMPLATES)] == "irregularly irregular rhythm without p waves."
    assert class_prompts(ZeroShotClass("left bundle branch block"))[0] == "left bundle branch block."


def test_classifier_equals_per_class_reference(minilm):
    encode = encoder_of(minilm)
    batch_sizes = []

    def encode_and_count(texts: list[str]) -> torch.Tensor:
        batch_sizes.append(len(texts))
        return encode(texts)

    classifier = build_zero_shot_classifier(encode_and_count, CLASSES, batch_size=4)
    assert classifier.shape == (384, len(CLASSES)) and not classifier.requires_grad
    assert max(batch_sizes) == 4 and sum(batch_sizes) == 7 * len(DEFAULT_TEMPLATES)  # 3 described classes, 1 bare

    with torch.no_grad():
        reference = []
        for zero_shot_class in CLASSES:
            named = zero_shot_class if isinstance(zero_shot_class, ZeroShotClass) else ZeroShotClass(zero_shot_class)
            embeddings = F.normalize(encode(class_prompts(named)), dim=-1)
            reference.append(F.normalize(embeddings.mean(dim=0), dim=-1))
    torch.testing.assert_close(classifier, torch.stack(reference, dim=1), rtol=0, atol=1e-6)
    torch.testing.assert_close(classifier.norm(dim=0), torch.ones(len(CLASSES)))


def test_minilm_prompts_separate_obviously_different_reports(minilm):
    encode = encoder_of(minilm)
    classifier = build_zero_shot_classifier(encode, CLASSES)
    with torch.no_grad():
        report_embeddings = encode(REPORTS)
    scores = zero_shot_scores(report_embeddings, classifier)
    assert scores.shape == (len(REPORTS), len(CLASSES))
    assert scores.argmax(dim=1).tolist() == list(range(len(CLASSES)))
    torch.testing.assert_close(scores, F.cosine_similarity(report_embeddings[:, None], classifier.T[None], dim=-1))
    assert scores.abs().max() <= 1.0 + 1e-6
