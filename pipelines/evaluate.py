"""Evaluate: what a pretrained export is worth on a labelled task, with baselines and a report.

    python -m pipelines.evaluate --model runs/tiny/export --data data/synthetic --output runs/tiny/eval
    python -m pipelines.evaluate --model runs/ptbxl/export --data data/ptbxl --task ptbxl-super \\
        --mode zero-shot linear-probe finetune --output runs/ptbxl/eval-super --workers 2 train.epochs=20
    python -m pipelines.evaluate --model s3://bucket/runs/x/export --data s3://bucket/shards --output s3://bucket/runs/x/eval

Tasks: ptbxl-super, ptbxl-sub, ptbxl-form, ptbxl-rhythm, cinc, synthetic, or a class table (JSON or
CSV) by path; `--prompts FILE` replaces the prompts of any classes it names. Modes: zero-shot (the
default), linear-probe (logistic regression on frozen embeddings, 1 / 10 / 100 % of the train split),
finetune (the ECG tower + a linear head on Ray Train and DeepSpeed; `train.field=value` overrides its
TrainConfig), report (draft each ECG's report with a MELP export's caption decoder, `--num-beams` /
`--max-tokens`: BLEU-4, ROUGE-L and clinical-efficacy F1 beside the nearest-training-report and
most-frequent-report baselines), retrieval (Recall@1/5/10 ECG→report and report→ECG, beside random
weights), faithfulness (on fresh synthetic ECGs whose abnormality the generator locates: does deleting the
top-attributed 10 % lower the score more than a random 10 %, does the top segment land on the abnormality;
deletion curves in faithfulness.png). Writes OUTPUT/metrics.json (`macro_auroc` and `per_class_auroc` of the headline mode,
every mode and baseline beside them), OUTPUT/report.md and its PNG plots. `--explain N` (with zero-shot)
draws, per class, the N test ECGs with the class that score highest on it, on ECG paper with the
integrated-gradients evidence for the score (OUTPUT/explain/, report.md's Evidence section).

`--model`, `--data` and `--output` may be URIs (s3://…; credentials from the standard variables). The
export is loaded from a cached copy on each node that needs it. An output URI is written in a local
temporary folder (fine-tuning's checkpoints too: multi-node fine-tuning needs a local --output on a
shared filesystem) and uploaded when the evaluation has finished; a failed run uploads nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from models.report_generation import DraftOptions
from pipelines.evaluation.evidence_figures import MAX_EXPLAINED_PER_CLASS, check_explain
from pipelines.evaluation.finetune import FINETUNE_DEFAULTS
from pipelines.evaluation.report import write_report
from pipelines.evaluation.suite import MODES, check_split, evaluate_export
from pipelines.labels.tasks import TASK_NAMES, load_task
from pipelines.logs import init_ray, setup_logging
from pipelines.outputs import OutputRefused, add_shared_mount_argument, refuse_node_local
from pipelines.storage import Location
from pipelines.training.overrides import parse_overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder (RUN_DIR/export), or its URI (s3://…)")
    parser.add_argument("--data", required=True, help="prepared shards with a labels column (a folder or URI)")
    parser.add_argument(
        "--task", help=f"{', '.join(TASK_NAMES)}, or a class table file (default: the task the export was validated on)"
    )
    parser.add_argument("--mode", nargs="+", default=["zero-shot"], choices=MODES, help="what to measure")
    parser.add_argument(
        "--output",
        required=True,
        help="folder or URI for metrics.json, report.md and plots (a URI: uploaded when the evaluation has finished)",
    )
    parser.add_argument(
        "--split",
        default="test",
        help="the split scored: train, val or test, several joined by commas (val,test), or all (an external "
        "archive none of which was trained on)",
    )
    parser.add_argument("--prompts", help="JSON {code: [prompt, ...]} replacing those classes' prompts")
    parser.add_argument("--no-baselines", action="store_true", help="skip the random-weights and report-text runs")
    parser.add_argument("--num-beams", type=int, default=1, help="report mode: beam width (1: greedy)")
    parser.add_argument(
        "--max-tokens", type=int, default=0, help="report mode: most tokens per draft (0: the longest trained report)"
    )
    parser.add_argument(
        "--explain",
        type=int,
        default=0,
        metavar="N",
        help=f"zero-shot: explain and draw the N (at most {MAX_EXPLAINED_PER_CLASS}) best-scored test ECGs of each "
        "class (OUTPUT/explain/CODE-k.png, report.md's Evidence section)",
    )
    parser.add_argument("--workers", type=int, help="Ray Train workers for finetune")
    parser.add_argument("--address", help="Ray cluster address for finetune (default: local)")
    add_shared_mount_argument(parser)  # finetune's Ray Train checkpoints are written under --output
    parser.add_argument("overrides", nargs="*", metavar="train.field=value", help="fine-tuning config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.task:
            load_task(args.task)  # a bad name or table fails here, before anything runs
        finetune_config = FINETUNE_DEFAULTS.with_overrides(
            {**parse_overrides(args.overrides, sections=("train",)).train, **_flags(args)}
        )
        draft_options = DraftOptions(max_tokens=args.max_tokens, num_beams=args.num_beams)
        check_explain(args.explain, args.mode)
        check_split(args.split, args.mode)
    except ValueError as error:
        parser.error(str(error))
    output = Location.of(args.output)
    if "finetune" in args.mode:
        init_ray(args.address)
        try:
            refuse_node_local(output, shared_mount=args.shared_mount)
        except OutputRefused as error:
            parser.error(str(error))
    with _written_locally(output) as local:
        setup_logging(local / "logs" / "evaluate.log")
        try:
            results, curves = evaluate_export(
                args.model,
                args.data,
                args.task,
                args.mode,
                local,
                prompts=args.prompts,
                split=args.split,
                baselines=not args.no_baselines,
                finetune_config=finetune_config,
                draft_options=draft_options,
                explain=args.explain,
                train_storage=output.uri,  # a bucket output: fine-tuning workers on any node write there
            )
        except ValueError as error:  # the export, the shards or the task do not fit together
            parser.error(str(error))
        (local / "metrics.json").write_text(json.dumps(results, indent=2))
        write_report(results, curves, local)
    _print_headline(results)
    print(f"report: {output.child('report.md')}")
    return 0


@contextmanager
def _written_locally(output: Location) -> Iterator[Path]:
    """A local folder to write `output` in: the folder itself, or for a URI a temporary folder uploaded
    to it when the block completes."""
    if output.is_local:
        yield Path(output.path)
        return
    with tempfile.TemporaryDirectory(prefix="ecg-fm-evaluate-") as local:
        yield Path(local)
        output.upload_from(local)


def _flags(args: argparse.Namespace) -> dict:
    return {"workers": args.workers} if args.workers is not None else {}


def _print_headline(results: dict) -> None:
    print(f"{results['task']} on the {results['split']} split ({results['rows']:,} ECGs), {results['headline']}:")
    if "macro_auroc" in results:
        _print_aurocs(results)
    if "report" in results:
        report = results["report"]
        for name, figures in {"drafts": report, **report["baselines"]}.items():
            print(
                f"  report {name}: CE macro F1 {figures['ce_macro_f1']:.3f}, micro F1 {figures['ce_micro_f1']:.3f}, "
                f"BLEU-4 {figures['bleu4']:.3f}, ROUGE-L {figures['rougeL']:.3f}"
            )
    if "retrieval" in results:
        retrieval = results["retrieval"]
        print(f"  retrieval over {retrieval['rows']:,} ECGs, {retrieval['distinct_reports']:,} distinct reports:")
        methods = {"model": retrieval, **retrieval.get("baselines", {}), "chance": retrieval["chance"]}
        for name, figures in methods.items():
            ecg, text = ("/".join(f"{v:.3f}" for v in figures[d].values()) for d in ("ecg_to_report", "report_to_ecg"))
            print(f"    {name}: R@1/5/10 ECG→report {ecg}, report→ECG {text}")


def _print_aurocs(results: dict) -> None:
    names = results["class_names"]
    for code, value in results["per_class_auroc"].items():
        print(f"  {code:<10} {names[code]:<55} {value:.3f}")
    print(f"  macro AUROC {results['macro_auroc']:.3f}")
    for mode in ("zero_shot", "finetune"):
        if mode in results and mode != results["headline"]:
            print(f"  {mode.replace('_', '-')} macro AUROC {results[mode]['macro_auroc']:.3f}")
    for fraction, probe in results.get("linear_probe", {}).items():
        print(f"  linear probe {fraction}: {probe['macro_auroc_mean']:.3f} ± {probe['macro_auroc_std']:.3f}")
    for name, baseline in results["baselines"].items():
        for mode, figures in baseline.items():
            value = figures["macro_auroc"] if "macro_auroc" in figures else figures["100%"]["macro_auroc_mean"]
            print(f"  baseline {name} {mode.replace('_', '-')}: {value:.3f}")
    for code, reason in results["absent_classes"].items():
        print(f"  absent: {code} ({reason})")


if __name__ == "__main__":
    sys.exit(main())
