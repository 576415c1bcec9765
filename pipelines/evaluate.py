"""Evaluate: zero-shot AUROC of an exported model on a split of prepared shards.

    python -m pipelines.evaluate --model runs/tiny/export --data data/synthetic --output runs/tiny/eval

The test split's ECGs are embedded with `encode_ecg`, each class of the task becomes prompts
(`pipelines.evaluation.classes`), and per-class and macro AUROC are printed and written to
`OUTPUT/metrics.json` (`macro_auroc`, `per_class_auroc`, `absent_classes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.dataset
import torch

from models.model import ECGTextModel
from pipelines.data.schema import lead_masks_of, signals_of
from pipelines.evaluation.classes import LABEL_TABLE, present_classes
from pipelines.evaluation.metrics import macro_auroc
from pipelines.evaluation.zero_shot import zero_shot_auroc

BATCH_SIZE = 64


@torch.no_grad()
def embed_split(model: ECGTextModel, data: str, split: str) -> tuple[np.ndarray, list[list[str]]]:
    """ECG embeddings [n, D] and label lists of one split, read in batches straight from the shards."""
    dataset = pyarrow.dataset.dataset(data, format="parquet", exclude_invalid_files=True)
    scanner = dataset.scanner(
        columns=["signal", "lead_mask", "labels"],
        filter=pyarrow.dataset.field("split") == split,
        batch_size=BATCH_SIZE,
    )
    embeddings, labels = [], []
    for batch in scanner.to_batches():
        if batch.num_rows == 0:
            continue
        table = pyarrow.Table.from_batches([batch])
        signal = torch.from_numpy(signals_of(table).astype(np.float32))
        lead_mask = torch.from_numpy(lead_masks_of(table))
        embeddings.append(model.encode_ecg(signal, lead_mask).numpy())
        labels.extend(table["labels"].to_pylist())
    if not embeddings:
        raise ValueError(f"{data} has no rows in the {split!r} split")
    return np.concatenate(embeddings), labels


def evaluate_zero_shot(model_dir: str, data: str, split: str = "test") -> dict:
    model = ECGTextModel.from_pretrained(model_dir).eval()
    embeddings, labels = embed_split(model, data, split)
    codes = present_classes(labels)
    per_class = zero_shot_auroc(model, embeddings, labels, codes)
    return {
        "task": "synthetic",
        "mode": "zero-shot",
        "split": split,
        "rows": len(labels),
        "macro_auroc": macro_auroc(per_class),
        "per_class_auroc": per_class,
        "absent_classes": {code: _why_absent(code, labels) for code in LABEL_TABLE if code not in per_class},
    }


def _why_absent(code: str, labels: list[list[str]]) -> str:
    positives = sum(code in row for row in labels)
    return "no positive in the split" if positives == 0 else "no negative in the split"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder (RUN_DIR/export)")
    parser.add_argument("--data", required=True, help="folder of prepared shards")
    parser.add_argument("--split", default="test")
    parser.add_argument("--output", required=True, help="folder for metrics.json")
    args = parser.parse_args(argv)
    try:
        result = evaluate_zero_shot(args.model, args.data, args.split)
    except ValueError as error:
        parser.error(str(error))
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(result, indent=2))
    names = {code: cls.name for code, cls in LABEL_TABLE.items()}
    print(f"zero-shot AUROC on the {args.split} split ({result['rows']:,} ECGs):")
    for code, value in result["per_class_auroc"].items():
        print(f"  {code:<6} {names[code]:<55} {value:.3f}")
    print(f"  macro AUROC {result['macro_auroc']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
