"""Issue 27's yardstick: an objective as its authors built it (this checkout) against the code before (a git
ref), on the same data and steps, side by side in one run.

    python -m tests.benchmarks.bench_fidelity --before 29842ac --synthetic data/synthetic \\
        --ptbxl-shards data/ptbxl500 --output runs/fidelity [--objective melp|cmelt] [--epochs 10]

For each variant in turn (before: a `git worktree` of the ref, imported through PYTHONPATH; after: this
checkout), the commands a user runs:
1. the main job: `pipelines.pretrain` (tiny, the objective, 2 workers, ZeRO-2, `--epochs`) on the synthetic
   shards, then `pipelines.evaluate --mode zero-shot report retrieval` on their test split (no `report` for an
   objective without a caption decoder);
2. with `--ptbxl-shards`, PTB-XL-500 by concept: the same on PTB-XL-500 shards (folds 1-8 train, 9 val, 10
   test; `--task concepts`, `--ptbxl-epochs`).
Figures per run: zero-shot macro AUROC, the drafts' clinical-efficacy macro F1 (MELP), ECG→report Recall@10,
and the whole pretraining command's samples/s (optimizer steps × batch / its wall time). Prints a Markdown
table and writes OUTPUT/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = ["--config", "tiny", "--workers", "2", "--zero-stage", "2", "--overwrite"]


def run(command: list[str], root: Path, log: Path) -> float:
    """Run `python -m …` from `root` with `root`'s packages first on the path; returns the wall seconds."""
    environment = {**os.environ, "PYTHONPATH": str(root), "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    with log.open("w") as out:
        completed = subprocess.run([sys.executable, "-m", *command], cwd=root, env=environment, stdout=out, stderr=out)
    if completed.returncode:
        raise SystemExit(f"{' '.join(command)} failed in {root}; see {log}")
    return time.perf_counter() - started


def check_imports(root: Path) -> None:
    """The variant's own code is what runs (not the editable install's)."""
    environment = {**os.environ, "PYTHONPATH": str(root)}
    where = subprocess.run(
        [sys.executable, "-c", "import models; print(models.__file__)"],
        cwd=root, env=environment, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    if not where.startswith(str(root)):
        raise SystemExit(f"{root} imports models from {where}")


def measure(root: Path, shards: Path, run_dir: Path, epochs: int, task: str, objective: str) -> dict:
    """Pretrain, then evaluate, as the README's main job does; the figures of the table."""
    run_dir.mkdir(parents=True, exist_ok=True)
    pretrain = ["pipelines.pretrain", "--data", str(shards), "--output", str(run_dir), *PRETRAIN, "--objective", objective]
    wall = run([*pretrain, "--epochs", str(epochs), "--task", task], root, run_dir.parent / f"{run_dir.name}.pretrain.log")
    trained = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    evaluate = ["pipelines.evaluate", "--model", str(run_dir / "export"), "--data", str(shards)]
    drafts = ["report"] if objective == "melp" else []
    evaluate += ["--output", str(run_dir / "eval"), "--task", task, "--mode", "zero-shot", *drafts, "retrieval"]
    run(evaluate, root, run_dir.parent / f"{run_dir.name}.evaluate.log")
    figures = json.loads((run_dir / "eval" / "metrics.json").read_text())
    return {
        "zero_shot_macro_auroc": figures["zero_shot"]["macro_auroc"],
        "drafts_ce_macro_f1": figures["report"]["ce_macro_f1"] if drafts else float("nan"),
        "ecg_to_report_r10": figures["retrieval"]["ecg_to_report"]["R@10"],
        "samples_per_s": trained["total_steps"] * config["train"]["batch_size"] / wall,
        "pretrain_wall_s": wall,
        "steps": trained["total_steps"],
        "lr": config["train"]["lr"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="git ref of the code before issue 27")
    parser.add_argument("--synthetic", help="the main job's shards (prepare --source synthetic); without: PTB-XL only")
    parser.add_argument("--ptbxl-shards", help="PTB-XL-500 shards (--report labels); without: the main job only")
    parser.add_argument("--objective", default="melp", choices=["melp", "cmelt"])
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=10, help="the main job's epochs (the README's: 10)")
    parser.add_argument("--ptbxl-epochs", type=int, default=40)
    args = parser.parse_args()
    output = Path(args.output).resolve()
    before = output / "before-checkout"
    if not before.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before], cwd=REPO, check=True)
    variants = {"before": before, "after": REPO}
    for root in variants.values():
        check_imports(root)
    data = {"main job (synthetic)": (Path(args.synthetic).resolve(), args.epochs, "synthetic")} if args.synthetic else {}
    if args.ptbxl_shards:
        data["PTB-XL-500 by concept"] = (Path(args.ptbxl_shards).resolve(), args.ptbxl_epochs, "concepts")
    results = {}
    for name, (shards, epochs, task) in data.items():
        for variant, root in variants.items():
            run_dir = output / f"{args.objective}-{variant}-{task}"
            results[f"{name} · {args.objective} · {variant}"] = measure(root, shards, run_dir, epochs, task, args.objective)
            print(name, variant, results[f"{name} · {args.objective} · {variant}"], flush=True)
    (output / f"fidelity-{args.objective}.json").write_text(json.dumps(results, indent=2))
    print("| data · code | zero-shot macro AUROC | drafts CE macro F1 | ECG→report R@10 | samples/s | steps |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for key, r in results.items():
        print(
            f"| {key} | {r['zero_shot_macro_auroc']:.3f} | {r['drafts_ce_macro_f1']:.3f} | "
            f"{r['ecg_to_report_r10']:.3f} | {r['samples_per_s']:.1f} | {r['steps']} |"
        )
    subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=REPO, check=True)


if __name__ == "__main__":
    main()
