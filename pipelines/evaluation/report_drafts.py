"""`pipelines.evaluate --mode report`: draft the split's reports with the caption decoder and score them.

    figures = report_figures(model, "data/synthetic", "test", task, test_x, train_x, train_reports, DraftOptions())

Scores (each over the split's rows that have a reference report; rows without one are counted and left
out): BLEU-4 (sacrebleu's corpus BLEU, 0-1, over `word_tokens`: a draft decoded from word pieces, "t - waves",
counts as its reference's "t-waves"), ROUGE-L F1 (rouge-score, mean over rows) and clinical
efficacy: the task classes a draft mentions (`LabelMentions`) against the row's labels, precision / recall /
F1 per class, micro and macro F1 over the classes with a positive in the split. Baselines, scored the same
way: `nearest-training-report` (the report of the training ECG nearest by embedding, cosine) and
`most-frequent-training-report`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import f1_score, precision_recall_fscore_support

from models.model import ECGTextModel
from models.report_generation import DraftOptions
from pipelines.evaluation.predict import model_inputs, split_tables
from pipelines.labels.mentions import LabelMentions, word_tokens
from pipelines.labels.tasks import Task

EXAMPLES = 5
DRAFT_BATCH = 32
NEAREST, MOST_FREQUENT = "nearest-training-report", "most-frequent-training-report"


def report_figures(
    model: ECGTextModel,
    data: str,
    split: str,
    task: Task,
    test_x: np.ndarray,
    train_x: np.ndarray,
    train_reports: Sequence[str],
    options: DraftOptions,
) -> dict:
    """What metrics.json's "report" holds. test_x [n, D] are the split's ECG embeddings in shard order,
    train_x [t, D] and `train_reports` the training split's ("" where a row has no report)."""
    started = time.perf_counter()
    rows, ecg_ids, references, labels, drafts = _draft_split(model, data, split, options)
    seconds = time.perf_counter() - started
    targets = task.targets(labels)  # [n, C]
    present = [c for c in range(len(task.codes)) if targets[:, c].any()]
    codes, targets = [task.codes[c] for c in present], targets[:, present]
    mentions = LabelMentions(task)

    def figures(texts: Sequence[str]) -> dict:
        return score_texts(texts, references, targets, mentions, codes)

    nearest = _nearest_reports(test_x[rows], train_x, train_reports)
    most_frequent = Counter(r for r in train_reports if r.strip()).most_common(1)[0][0]
    texts = [draft.text for draft in drafts]
    return {
        "rows": len(rows),
        "without_report": len(test_x) - len(rows),
        "options": asdict(options),
        "drafts_per_second": len(rows) / seconds,
        "codes": codes,
        "class_names": {code: task.classes[code].name for code in codes},
        **figures(texts),
        "baselines": {
            NEAREST: figures(nearest),
            MOST_FREQUENT: {**figures([most_frequent] * len(rows)), "text": most_frequent},
        },
        "examples": [
            {
                "ecg_id": ecg_ids[i],
                "reference": references[i],
                "draft": texts[i],
                "draft_logprob": drafts[i].logprob,
                NEAREST: nearest[i],
                "labels": sorted(set(codes) & set(task.row_classes(labels[i]))),
                "mentioned": sorted(mentions.codes_in(texts[i])),
            }
            for i in np.linspace(0, len(rows) - 1, min(EXAMPLES, len(rows))).astype(int).tolist()
        ],
    }


def report_lines(report: dict) -> list[str]:
    """report.md's section for the "report" figures."""
    methods = {"drafts": report, **report["baselines"]}
    options = ", ".join(f"{k} {v}" for k, v in report["options"].items())
    lines = [
        "",
        "## Report drafting",
        "",
        f"{report['rows']:,} drafts (left out: {report['without_report']:,} rows without a reference report), "
        f"{report['drafts_per_second']:.1f} drafts/s; search: {options}. BLEU-4 is sacrebleu's corpus BLEU, "
        "ROUGE-L the mean F1 (rouge-score); clinical efficacy (CE) compares the task classes each text mentions "
        "with the row's labels, over the classes with a positive in the split.",
        "",
        "| method | BLEU-4 | ROUGE-L | CE micro F1 | CE macro F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[
            f"| {name} | {m['bleu4']:.3f} | {m['rougeL']:.3f} | {m['ce_micro_f1']:.3f} | {m['ce_macro_f1']:.3f} |"
            for name, m in methods.items()
        ],
        "",
        f'Most frequent training report: "{report["baselines"][MOST_FREQUENT]["text"]}"',
        "",
        "| code | class | positives | " + " | ".join(f"{name} F1" for name in methods) + " |",
        "| --- | --- | ---: |" + " ---: |" * len(methods),
    ]
    for code in report["codes"]:
        f1s = " | ".join(f"{m['per_class'][code]['f1']:.3f}" for m in methods.values())
        lines.append(f"| {code} | {report['class_names'][code]} | {report['per_class'][code]['support']} | {f1s} |")
    lines += ["", "### Example drafts", ""]
    for example in report["examples"]:
        lines += [
            f"- **{example['ecg_id']}** (labels: {', '.join(example['labels']) or 'none'}; "
            f"draft mentions: {', '.join(example['mentioned']) or 'none'})",
            f"  - reference: {example['reference']}",
            f"  - draft: {example['draft']}",
            f"  - nearest training report: {example[NEAREST]}",
        ]
    return lines


def _draft_split(
    model: ECGTextModel, data: str, split: str, options: DraftOptions
) -> tuple[list[int], list[str], list[str], list[list[str]], list]:
    """Drafts of the split's rows that have a report: (their row indices in shard order, ecg ids,
    reference reports, label lists, DraftedReports)."""
    rows, ecg_ids, references, labels, drafts = [], [], [], [], []
    offset = 0
    columns = ["ecg_id", "signal", "lead_mask", "report", "labels"]
    for table in split_tables(data, split, columns, DRAFT_BATCH):
        keep = [i for i, report in enumerate(table["report"].to_pylist()) if report and report.strip()]
        rows += [offset + i for i in keep]
        offset += table.num_rows
        if not keep:
            continue
        table = table.take(keep)
        ecg_ids += table["ecg_id"].to_pylist()
        references += table["report"].to_pylist()
        labels += table["labels"].to_pylist()
        drafts += model.generate_reports(*model_inputs(table), options)
    if not rows:
        raise ValueError(f"{data}: no row of the {split!r} split has a report to score drafts against")
    return rows, ecg_ids, references, labels, drafts


def _nearest_reports(
    query_x: np.ndarray, train_x: np.ndarray, train_reports: Sequence[str], chunk: int = 1024
) -> list[str]:
    """For each query [q, D] (L2-normalised), the report of the most cosine-similar training ECG that has one."""
    with_report = np.array([bool(r.strip()) for r in train_reports])
    if not with_report.any():
        raise ValueError("the train split has no reports: the nearest-report baseline needs them")
    gallery, reports = train_x[with_report], [r for r in train_reports if r.strip()]
    nearest = np.concatenate(
        [(query_x[start : start + chunk] @ gallery.T).argmax(axis=1) for start in range(0, len(query_x), chunk)]
    )
    return [reports[i] for i in nearest]


def score_texts(
    texts: Sequence[str],
    references: Sequence[str],
    targets: np.ndarray,
    mentions: LabelMentions,
    codes: Sequence[str],
) -> dict:
    """BLEU-4, ROUGE-L and clinical efficacy of n `texts` against n `references` and targets bool [n, C]
    over `codes` (the classes `mentions` finds in each text are its predictions)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    found = [mentions.codes_in(text) for text in texts]
    predicted = np.array([[code in row for code in codes] for row in found], dtype=bool).reshape(targets.shape)
    precision, recall, f1, support = precision_recall_fscore_support(targets, predicted, average=None, zero_division=0)
    return {
        "bleu4": _bleu4(texts, references),
        "rougeL": float(np.mean([scorer.score(r, t)["rougeL"].fmeasure for r, t in zip(references, texts)])),
        "ce_micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "ce_macro_f1": float(np.mean(f1)),
        "per_class": {
            code: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for code, p, r, f, s in zip(codes, precision, recall, f1, support)
        },
    }


def _bleu4(texts: Sequence[str], references: Sequence[str]) -> float:
    """sacrebleu's corpus BLEU-4 (0-1) over word and punctuation tokens, one reference per text."""
    hypotheses, references = [word_tokens(t) for t in texts], [word_tokens(r) for r in references]
    return sacrebleu.corpus_bleu(hypotheses, [references], tokenize="none", force=True).score / 100
