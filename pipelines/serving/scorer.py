"""Zero-shot scoring, report drafting and text embedding with an export: the one code path behind the Serve
app and batch scoring.

    scorer = Scorer("runs/sweep/best")          # the export's preprocessing and label task; task= overrides
    scorer = Scorer("s3://bucket/runs/x/export")    # an export in an object store: loaded from a local cached copy
    prepared = scorer.prepare(Recording("ecg-1", signal_mv, 500, ["I", "II", "V1"]))   # as its shards were
    embeddings = scorer.embed(np.stack([prepared.signal]), np.stack([prepared.lead_mask]))   # [n, D]
    scores = scorer.scores(embeddings, ["AFIB", "sinus rhythm with a long pr interval"])    # [n, C]
    drafts = scorer.draft(signals, lead_masks, DraftOptions(num_beams=4))   # a DraftedReport per ECG
    queries = scorer.embed_text(["atrial fibrillation"])                     # [n, D], as reports are embedded
    evidence = scorer.explain(signals, lead_masks, ["AFIB"])   # per ECG, an Evidence per label (integrated gradients)

Labels are class codes of the scorer's task (prompted as evaluation prompts them) or any other text,
taken as its own prompt. The text side of a label set is computed once and cached.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from models.evidence import Evidence, explain_score
from models.model import ECGTextModel
from models.report_generation import DraftedReport, DraftOptions, NoCaptionDecoder, caption_decoder_of, draft_limit
from models.zero_shot import classifier_from_prompts, zero_shot_scores
from pipelines.data.preprocess import PreparedSignal, PreprocessConfig, preprocess
from pipelines.data.trained_with import TrainedWith
from pipelines.data.wfdb_io import Recording
from pipelines.labels.tasks import Task, load_task
from pipelines.storage import cached_copy

CLASSIFIER_CACHE = 256
"""Label sets whose class weights are kept."""


class DraftRefused(ValueError):
    """Drafting an export cannot do: `field` is "model" (no caption decoder) or "max_tokens" (over its limit)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def check_draft(model: ECGTextModel, options: DraftOptions) -> None:
    """DraftRefused unless `model` drafts reports and `options.max_tokens` is within its text length - 1."""
    try:
        caption_decoder_of(model)
    except NoCaptionDecoder as missing:
        raise DraftRefused("model", str(missing)) from None
    limit = draft_limit(model)
    if options.max_tokens > limit:
        raise DraftRefused("max_tokens", f"{options.max_tokens} is over this model's limit of {limit} tokens")


def check_export_drafts(export_dir: str | os.PathLike, options: DraftOptions) -> None:
    """`check_draft` against a local export's architecture alone (built on the meta device: no weights read)."""
    with torch.device("meta"):
        skeleton = ECGTextModel.from_pretrained(export_dir, load_weights=False)
    check_draft(skeleton, options)


class Scorer:
    """An export loaded once, with its preprocessing and a cache of zero-shot classifiers. An export given
    as a URI is downloaded into this node's cache first (`pipelines.storage.cached_copy`); `export_dir` is
    the local folder it was loaded from."""

    def __init__(
        self, model_dir: str | os.PathLike, task: str | Task | None = None, threads: int | None = None
    ) -> None:
        """`task`: the label set served by default and the meaning of class codes (default: the task the
        export's validation used)."""
        if threads:
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.export_dir = cached_copy(model_dir)
        self.model = ECGTextModel.from_pretrained(self.export_dir).eval().to(self.device)
        self.trained_with = TrainedWith.of_model(self.model)
        self.preprocess_config: PreprocessConfig = self.trained_with.preprocessing
        self.task = task if isinstance(task, Task) else load_task(task or self.trained_with.task)
        self.classifier = lru_cache(maxsize=CLASSIFIER_CACHE)(self._classifier)

    @property
    def default_labels(self) -> tuple[str, ...]:
        return tuple(self.task.codes)

    def prepare(self, recording: Recording) -> PreparedSignal:
        """Raw ECG (mV, any rate, any standard leads) → model input; raises `RecordRejected`."""
        return preprocess(recording, self.preprocess_config)

    @torch.no_grad()
    def embed(self, signals: np.ndarray, lead_masks: np.ndarray) -> np.ndarray:
        """signals [n, 12, T] (float16/32), lead_masks [n, 12] bool → L2-normalised embeddings [n, D]."""
        signal = torch.from_numpy(np.asarray(signals, dtype=np.float32)).to(self.device)
        lead_mask = torch.from_numpy(np.asarray(lead_masks, dtype=bool)).to(self.device)
        return self.model.encode_ecg(signal, lead_mask).cpu().numpy()

    def scores(self, embeddings: np.ndarray, labels: Sequence[str]) -> np.ndarray:
        """Cosine scores [n, C] of embeddings [n, D] against the labels (codes or free text)."""
        classifier = self.classifier(tuple(labels))  # [D, C] on the CPU
        return zero_shot_scores(torch.from_numpy(embeddings).float(), classifier).numpy()

    @torch.no_grad()
    def draft(self, signals: np.ndarray, lead_masks: np.ndarray, options: DraftOptions) -> list[DraftedReport]:
        """signals [n, 12, T], lead_masks [n, 12] bool → a drafted report per ECG, in order (DraftRefused
        when the export cannot draft with `options`)."""
        check_draft(self.model, options)
        signal = torch.from_numpy(np.asarray(signals, dtype=np.float32)).to(self.device)
        lead_mask = torch.from_numpy(np.asarray(lead_masks, dtype=bool)).to(self.device)
        return self.model.generate_reports(signal, lead_mask, options)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> np.ndarray:
        """Texts → L2-normalised embeddings [n, D], as reports (and zero-shot prompts) are embedded."""
        return self.model.encode_reports(list(texts)).float().cpu().numpy()

    def explain(self, signals: np.ndarray, lead_masks: np.ndarray, labels: Sequence[str]) -> list[list[Evidence]]:
        """signals [n, 12, T], lead_masks [n, 12] bool → per ECG, an `Evidence` per label in order (integrated
        gradients of its score, `models.evidence.explain_score`; segment times at the preprocessing's rate)."""
        class_vectors = self.classifier(tuple(labels)).T.to(self.device)  # [C, D]
        signal = torch.from_numpy(np.asarray(signals, dtype=np.float32)).to(self.device)
        lead_mask = torch.from_numpy(np.asarray(lead_masks, dtype=bool)).to(self.device)
        evidence = explain_score(
            self.model, signal, lead_mask, class_vectors, seconds_per_sample=1 / self.preprocess_config.fs
        )
        return [evidence[b * len(labels) : (b + 1) * len(labels)] for b in range(len(signal))]

    def label_names(self, labels: Sequence[str]) -> list[str]:
        """A readable name per label: the class name of a task code, the text itself otherwise."""
        return [self.task.classes[label].name if label in self.task.classes else label for label in labels]

    @torch.no_grad()
    def _classifier(self, labels: tuple[str, ...]) -> torch.Tensor:
        prompts = [self.task.prompts_of(label) if label in self.task.classes else [label] for label in labels]
        return classifier_from_prompts(self.model.encode_reports, prompts).float().cpu()
