"""What `pipelines.evaluate` runs: zero-shot, linear probe and fine-tuning of one export on one task, report
drafting (`report_drafts.py`) and ECG↔report retrieval (`retrieval.py`), with the baselines that give the
numbers meaning.

    results, curves = evaluate_export("runs/tiny/export", "data/ptbxl", load_task("ptbxl-super"),
                                      ["zero-shot", "linear-probe"], "runs/tiny/eval")

Baselines: `random-weights` is the same architecture freshly initialised (zero-shot and linear probe),
so a figure can be read against what the architecture gives untrained; `report-text` scores each
test row's own report with the export's text tower against the class prompts (text to text: how
much the reports carry, an upper reference where reports are built from the labels), run where
the split has reports. Retrieval sets the random-weights model beside the export too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.model import ECGTextModel
from models.report_generation import DraftOptions, caption_decoder_of
from pipelines.data.splits import selected_splits
from pipelines.data.trained_with import TrainedWith
from pipelines.evaluation.evidence_figures import check_explain, explain_top_rows
from pipelines.evaluation.faithfulness import faithfulness_figures
from pipelines.evaluation.finetune import FINETUNE_DEFAULTS, finetune
from pipelines.evaluation.linear_probe import linear_probe
from pipelines.evaluation.predict import predict_split, split_reports
from pipelines.evaluation.report_drafts import report_figures
from pipelines.evaluation.retrieval import retrieval_figures
from pipelines.labels.metrics import auroc_per_class, macro_auroc
from pipelines.labels.tasks import Task, load_task
from pipelines.labels.zero_shot import task_scores
from pipelines.storage import cached_copy
from pipelines.training.config import TrainConfig

MODES = ("zero-shot", "linear-probe", "finetune", "report", "retrieval", "faithfulness")


def check_split(split: str, modes: Sequence[str]) -> None:
    """ValueError for a split selection that names an unknown split, or that includes train where a mode
    fits on the train split (linear-probe, finetune): it would score rows it was fitted on."""
    if "train" in selected_splits(split) and (fitted := sorted({"linear-probe", "finetune"} & set(modes))):
        raise ValueError(
            f"split {split!r} includes train, which {' and '.join(fitted)} fit(s) on: evaluate those modes on val "
            "or test"
        )


def evaluate_export(
    model_dir: str,
    data: str,
    task: Task | str | None,
    modes: Sequence[str],
    output: str | Path,
    *,
    prompts: str | Path | None = None,
    split: str = "test",
    baselines: bool = True,
    finetune_config: TrainConfig = FINETUNE_DEFAULTS,
    draft_options: DraftOptions = DraftOptions(),
    explain: int = 0,
    train_storage: str | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Score the export (a folder or its URI) on `task` (a Task, a task name or class table, or None: the
    task the export's validation used; `prompts` replaces class prompts) over shards that must be prepared
    as the export's training data was; `draft_options` is report mode's search; `explain` N > 0 explains and
    draws zero-shot's N best-scored positives per class (`evidence_figures.py`); `train_storage` is where
    finetune's Ray Train keeps checkpoints (default `output`; on a cluster a URI every node reaches). (results, curves): `results`
    is what metrics.json holds; `curves` the test scores [n, C] per method (zero-shot, finetune, …) and
    `targets` [n, C] for the ROC plot, over `results["codes"]`."""
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise ValueError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    check_explain(explain, modes)
    check_split(split, modes)
    export = cached_copy(model_dir)  # an export named by a URI is loaded from this node's cached copy
    model = ECGTextModel.from_pretrained(export).eval()
    if "report" in modes:
        caption_decoder_of(model)  # an export that cannot draft fails before anything runs
    trained_with = TrainedWith.of_model(model)
    trained_with.check_shards([data])
    task = load_task(task or trained_with.task) if not isinstance(task, Task) else task
    if prompts is not None:
        task = task.with_prompts(prompts)
    test_x, test_labels = predict_split(model.encode_ecg, data, split)
    all_targets = task.targets(test_labels)  # [n, C_task]
    if not all_targets.any():
        seen = sorted({label for labels in test_labels for label in labels})
        raise ValueError(
            f"no label of the {split} split maps to a class of task {task.name}; labels seen: "
            f"{', '.join(seen[:20]) or 'none'}{f' (and {len(seen) - 20} more)' if len(seen) > 20 else ''}"
        )
    present = [i for i in range(len(task.codes)) if 0 < all_targets[:, i].sum() < len(all_targets)]
    codes = [task.codes[i] for i in present]
    targets = all_targets[:, present]
    if not codes:
        raise ValueError(f"no class of task {task.name} has both a positive and a negative in the {split} split")
    results: dict = {
        "task": task.name,
        "split": split,
        "rows": len(test_labels),
        "modes": list(modes),
        "codes": codes,
        "class_names": {code: task.classes[code].name for code in codes},
        "absent_classes": _absent(task, all_targets),
        "mapped_from": _mapped_from(task, test_labels),
        "published": task.published,
        "baselines": {},
    }
    curves: dict[str, np.ndarray] = {"targets": targets}
    uses_random = baselines and {"zero-shot", "linear-probe", "retrieval"} & set(modes)
    random_model = _random_like(export) if uses_random else None
    random_x = predict_split(random_model.encode_ecg, data, split)[0] if random_model is not None else None
    uses_train = {"linear-probe", "report"} & set(modes)
    train_x, train_labels = predict_split(model.encode_ecg, data, "train") if uses_train else (None, None)

    if "zero-shot" in modes:
        scores = task_scores(model, task, codes, test_x)
        results["zero_shot"] = _aurocs(scores, targets, codes)
        curves["zero-shot"] = scores
        if explain:
            fs = trained_with.preprocessing.fs
            results["explain"] = explain_top_rows(model, task, codes, data, split, scores, targets, fs, output, explain)
        if random_model is not None:
            zero_shot = _aurocs(task_scores(random_model, task, codes, random_x), targets, codes)
            results["baselines"].setdefault("random-weights", {})["zero_shot"] = zero_shot
        reports = split_reports(data, split) if baselines else []
        if any(reports):
            report_x = _encode_reports(model, reports)
            zero_shot = _aurocs(task_scores(model, task, codes, report_x), targets, codes)
            results["baselines"]["report-text"] = {"zero_shot": zero_shot}

    if "linear-probe" in modes:
        train_y = task.targets(train_labels)[:, present]
        results["linear_probe"] = linear_probe(train_x, train_y, test_x, targets, codes)
        if random_model is not None:
            random_train_x, _ = predict_split(random_model.encode_ecg, data, "train")
            probe = linear_probe(random_train_x, train_y, random_x, targets, codes)
            results["baselines"].setdefault("random-weights", {})["linear_probe"] = probe

    if "finetune" in modes:
        tuned = finetune(model_dir, data, task, train_storage or output, finetune_config)
        tuned_scores = tuned.pop("scores")[:, present]
        tuned.pop("labels")
        results["finetune"] = {**tuned, **_aurocs(tuned_scores, targets, codes)}
        curves["finetune"] = tuned_scores

    if "report" in modes:
        train_reports = split_reports(data, "train")
        results["report"] = report_figures(model, data, split, task, test_x, train_x, train_reports, draft_options)

    if "faithfulness" in modes:
        results["faithfulness"] = faithfulness_figures(model, Path(output))
    if "retrieval" in modes:
        reports = split_reports(data, split)
        results["retrieval"] = retrieval_figures(test_x, reports, lambda texts: _encode_reports(model, texts))
        if random_model is not None:
            random = retrieval_figures(random_x, reports, lambda texts: _encode_reports(random_model, texts))
            directions = ("ecg_to_report", "report_to_ecg")
            results["retrieval"]["baselines"] = {"random-weights": {key: random[key] for key in directions}}

    results.update(_headline(results))
    return results, curves


def _aurocs(scores: np.ndarray, targets: np.ndarray, codes: Sequence[str]) -> dict:
    per_class = auroc_per_class(scores, targets, codes)
    return {"macro_auroc": macro_auroc(per_class), "per_class_auroc": per_class}


def _headline(results: dict) -> dict:
    """Top-level `macro_auroc` / `per_class_auroc`: zero-shot's where it ran, else fine-tuning's, else
    the linear probe's on all training rows. A run of report and/or retrieval only names its headline
    section ("report", else "retrieval") and has no top-level AUROC."""
    for key in ("zero_shot", "finetune"):
        if key in results:
            return {"headline": key, **{k: results[key][k] for k in ("macro_auroc", "per_class_auroc")}}
    if "linear_probe" not in results:
        return {"headline": "report" if "report" in results else "retrieval"}
    full = results["linear_probe"]["100%"]
    return {
        "headline": "linear_probe 100%",
        "macro_auroc": full["macro_auroc_mean"],
        "per_class_auroc": full["per_class_auroc"],
    }


def _absent(task: Task, targets: np.ndarray) -> dict[str, str]:
    """Task classes without an AUROC on this split, and why."""
    absent = {}
    for i, code in enumerate(task.codes):
        positives = int(targets[:, i].sum())
        if positives == 0:
            absent[code] = "no positive in the split"
        elif positives == len(targets):
            absent[code] = "no negative in the split"
    return absent


def _mapped_from(task: Task, label_lists: list[list[str]]) -> dict[str, list[str]]:
    """Task class → the raw label codes of this split that map to it (sorted), for the classes any code maps to."""
    mapped: dict[str, set[str]] = {}
    for label in {label for labels in label_lists for label in labels}:
        for code in task.label_map.get(label, ()):
            mapped.setdefault(code, set()).add(label)
    return {code: sorted(mapped[code]) for code in task.codes if code in mapped}


def _random_like(model_dir: str | Path) -> ECGTextModel:
    torch.manual_seed(0)
    return ECGTextModel.from_pretrained(model_dir, load_weights=False).eval()


@torch.no_grad()
def _encode_reports(model: ECGTextModel, reports: list[str], batch_size: int = 256) -> np.ndarray:
    """Report embeddings [n, D] in the shared space, in batches."""
    return np.concatenate(
        [model.encode_reports(reports[i : i + batch_size]).numpy() for i in range(0, len(reports), batch_size)]
    )
