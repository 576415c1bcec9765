"""The export check: the live model's embeddings of a few val rows travel with each checkpoint, and the
exported model must reproduce them, so a wrong ZeRO consolidation fails the run instead of shipping.

    probe = take_probe(numpy_val_batch)                # worker: the first PROBE_ROWS rows
    embeddings = probe_embeddings(model, probe, …)     # worker, every rank (ZeRO-3 forwards are collective)
    save_probe(directory, probe, embeddings)           # rank 0, into the checkpoint folder
    max_diff = check_export(export_dir, directory)     # driver, after save_pretrained
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from models.model import ECGTextModel
from pipelines.training.data import collate_batch

PROBE_ROWS = 4
PROBE_FILE = "probe.npz"
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}
"""Largest |live − exported| embedding difference accepted, by the precision the run trained in."""


def take_probe(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first rows of a numpy val batch, in arrays that `np.load` reads without pickle."""
    probe = {"report": np.array([str(r) for r in batch["report"][:PROBE_ROWS]], dtype=str)}
    if "signal" in batch:
        probe["signal"] = np.asarray(batch["signal"][:PROBE_ROWS])
        probe["lead_mask"] = np.stack(batch["lead_mask"][:PROBE_ROWS]).astype(bool)
    return probe


@torch.no_grad()
def probe_embeddings(model: ECGTextModel, probe: dict[str, np.ndarray], dtype, device) -> dict[str, np.ndarray]:
    """ECG embeddings [n, D] (when the probe has signals) and report embeddings [n, D], in eval mode."""
    was_training = model.training
    model.eval()
    inputs = collate_batch(model, probe, dtype, device)
    embeddings = {"text_embedding": model.encode_text(inputs["input_ids"], inputs["attention_mask"])}
    if "signal" in inputs:
        embeddings["ecg_embedding"] = model.encode_ecg(inputs["signal"], inputs["lead_mask"])
    model.train(was_training)
    return {name: tensor.float().cpu().numpy() for name, tensor in embeddings.items()}


def save_probe(
    directory: str | Path, probe: dict[str, np.ndarray], embeddings: dict[str, np.ndarray], precision: str
) -> None:
    np.savez(Path(directory) / PROBE_FILE, **probe, **embeddings, precision=np.array(precision))


def check_export(export_dir: str | Path, checkpoint_dir: str | Path) -> float:
    """Largest absolute difference between the exported model's probe embeddings and the live model's;
    raises when it exceeds the tolerance of the precision the run trained in."""
    with np.load(Path(checkpoint_dir) / PROBE_FILE, allow_pickle=False) as saved:
        saved = dict(saved)
    precision = str(saved["precision"])
    model = ECGTextModel.from_pretrained(export_dir).eval()
    probe = {name: saved[name] for name in ("signal", "lead_mask", "report") if name in saved}
    exported = probe_embeddings(model, probe, torch.float32, torch.device("cpu"))
    max_diff = max(float(np.abs(exported[name] - saved[name]).max()) for name in exported)
    if max_diff > TOLERANCE[precision]:
        raise RuntimeError(
            f"the export in {export_dir} does not reproduce the trained model: embeddings differ by up to "
            f"{max_diff:.3g} (tolerance {TOLERANCE[precision]:g} for {precision})"
        )
    return max_diff
