"""C-MELT's N3S corpus index for a run (`models.n3s.CorpusIndex`): built once by the driver from the unique
reports of the train split, embedded by the run's text tower as every worker initialises it (same seed), kept
in the run directory beside the checkpoints (`n3s/`), reused when the run resumes, and loaded by each worker.

    build_run_index(run, train, model_config, seed)   # driver, before the workers start
    attach_run_index(model, run)                      # worker, after building the model

The authors embed with a separate frozen LM (flan-t5-small, mean-pooled); here the run's own text tower at
initialisation, pooled as the tower pools, so no second language model is needed. It runs on the driver in
batches; a corpus of millions of reports would want Ray Data's map_batches (not done).
"""

from __future__ import annotations

import logging
import time

import ray
import torch

from models.config import ModelConfig
from models.model import ECGTextModel
from models.n3s import EMBEDDINGS_FILE, REPORTS_FILE, CorpusIndex
from pipelines.training.run_directory import RunDirectory
from pipelines.training.run_model import build_model

INDEX_DIR = "n3s"
log = logging.getLogger(__name__)


def build_run_index(run: RunDirectory, train: ray.data.Dataset, model_config: ModelConfig, seed: int) -> None:
    """Write `n3s/` into the run directory, unless a resumed run has it already."""
    if run.location.child(INDEX_DIR, REPORTS_FILE).is_file():
        log.info("pretrain: N3S index kept from the run directory")
        return
    started = time.perf_counter()
    reports = train.unique("report")
    torch.manual_seed(seed)  # the text tower as the workers initialise it
    text = build_model(model_config).eval().text

    def embed(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return text(**text.tokenize(texts)).pooled

    index = CorpusIndex.build(reports, embed)
    index.save(run.local / INDEX_DIR)
    run.sync(INDEX_DIR)
    log.info("pretrain: N3S index of %s unique train reports built in %.0f s", f"{len(index.reports):,}",
             time.perf_counter() - started)


def attach_run_index(model: ECGTextModel, run: RunDirectory) -> None:
    """Give the model's objective the run's index, fetched into this worker's scratch folder."""
    run.resume(f"{INDEX_DIR}/{EMBEDDINGS_FILE}", f"{INDEX_DIR}/{REPORTS_FILE}")
    model.objective.n3s_index = CorpusIndex.load(run.local / INDEX_DIR)
