"""Sweep: Ray Tune over the pretraining knobs the papers fixed by hand, each trial a full Ray Train +
DeepSpeed pretraining run; the best trial's export lands in `SWEEP_DIR/best/`.

    python -m tune.sweep --data data/synthetic --output runs/sweep --num-samples 8 --epochs 3
    python -m tune.sweep --data data/ptbxl --output runs/sweep-cmelt --objective cmelt --space my_space.yaml
    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- \\
        python -m tune.sweep --data s3://bucket/shards --output s3://bucket/sweep --workers-per-trial 4 train.use_gpu=true

ASHA stops weak trials after each validation (`--grace-epochs`); a trial that fails is recorded as
failed and the sweep goes on. Rerunning with the same --output resumes the sweep (`Tuner.restore`):
finished trials are not rerun, unfinished ones resume from their last checkpoint. The output's
`made_by.json` records the data, config, space and search: a rerun that differs is refused naming the
field (`--overwrite` replaces a sweep's output, and no other folder). Output:
`best/` (an export: config.json, model.safetensors, tokenizer/), `results.csv`, `results.md`,
`metric_vs_parameters.png`, `trials/<trial id>/` (each trial's pretraining run directory), Tune's
own folder `sweep/` and `logs/sweep.log`. --output may be a URI (s3://…): all of it then lives in the bucket,
and a rerun resumes from there.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from models.config import available_configs
from models.factory import resolve_config
from pipelines.data.trained_with import TrainedWith
from pipelines.logs import init_ray, setup_logging
from pipelines.outputs import add_shared_mount_argument, claim_output, refuse_node_local
from pipelines.storage import Location
from pipelines.training.config import TrainConfig
from pipelines.training.overrides import parse_overrides
from pipelines.training.run_directory import RunDirectory
from tune.results import METRIC, copy_best, plot_metric_against_parameters, trial_rows, write_tables
from tune.space import SWEEPABLE, load_space, swept_fields, to_param_space
from tune.trial import SweepSpec, run_trial

log = logging.getLogger("tune.sweep")

TUNE_DIR, TRIALS_DIR, BEST_DIR = "sweep", "trials", "best"
TRIAL_DRIVER_CPU = 0.1
"""CPU reserved for each trial's driver (the function that runs the TorchTrainer)."""
DATA_CPU = 1.0
"""CPU left free for Ray Data's read tasks."""
SEARCHES = ("random", "grid", "optuna")


def trial_train_config(base: TrainConfig, concurrent: int, cpus_per_worker: float) -> TrainConfig:
    """Each trial's training config: its workers' CPUs, and its share of the object store for holding its
    splits in memory (the run's `data_cache_fraction` divided among the trials that run at once: four trials
    taking a quarter each would claim all of it)."""
    return base.with_overrides(
        {"cpus_per_worker": cpus_per_worker, "data_cache_fraction": base.data_cache_fraction / concurrent}
    )


def plan_resources(
    cluster_cpus: float,
    workers: int,
    cpus_per_worker: float,
    max_concurrent: int | None,
    cluster_gpus: float | None = None,
):
    """(concurrent trials, CPUs per worker): `max_concurrent` when given, whatever the cluster holds now (an
    autoscaling cluster grows to it: the trials beyond what fits wait for their nodes), else as many trials at
    once as the cluster holds with one CPU left to Ray Data (and, for GPU trials, `cluster_gpus` one per
    worker); with `cpus_per_worker` 0 (auto) one CPU per worker, or what is left when a single trial does not
    fit (a small machine)."""
    per_worker = cpus_per_worker or 1.0
    budget = cluster_cpus - DATA_CPU
    fits = int(budget // (workers * per_worker + TRIAL_DRIVER_CPU))
    if cluster_gpus is not None:
        fits = min(fits, int(cluster_gpus // workers))
    concurrent = max_concurrent or max(1, fits)
    if max_concurrent and max_concurrent > fits:
        log.info(
            "sweep: %d trials at once asked, %d fit the cluster now; the others wait for it to grow",
            max_concurrent, max(fits, 0),
        )
    if fits < 1 and not cpus_per_worker:
        per_worker = math.floor(100 * (budget - TRIAL_DRIVER_CPU) / workers) / 100
        if per_worker < 0.1:
            raise ValueError(
                f"a trial of {workers} workers does not fit in {cluster_cpus:g} CPUs with one left to Ray Data"
            )
    return concurrent, per_worker


def search_algorithm(search: str, space: dict):
    """Tune's search algorithm: random sampling (grid entries crossed), a grid over every field, or Optuna."""
    if search == "optuna":
        if any("grid" in spec for spec in space.values()):
            raise ValueError("Optuna cannot sample 'grid' fields; use choice, or --search grid")
        if importlib.util.find_spec("optuna") is None:
            raise ValueError("--search optuna needs optuna installed: pip install 'ecg-fm[optuna]'")
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(metric=METRIC, mode="max")
    return None  # BasicVariantGenerator: random sampling, grid_search crossed


def as_grid(space: dict) -> dict:
    """Every field a grid: choices as they are, ranges at their ends and middle (geometric for loguniform)."""
    grid = {}
    for field, spec in space.items():
        ((kind, args),) = spec.items()
        if kind in ("uniform", "loguniform"):
            low, high = args
            middle = math.sqrt(low * high) if kind == "loguniform" else (low + high) / 2
            grid[field] = {"grid": [low, middle, high]}
        elif kind == "choice":
            grid[field] = {"grid": args}
        else:
            grid[field] = spec
    return grid


def sweep(
    data: Sequence[str],
    output: str | Path | Location,
    *,
    config: str = "tiny",
    objective: str = "melp",
    space_file: str | None = None,
    search: str = "random",
    num_samples: int = 8,
    workers_per_trial: int = 1,
    train_overrides: dict | None = None,
    grace_epochs: int = 1,
    max_concurrent: int | None = None,
    val_rows: int = 512,
    overwrite: bool = False,
    log_file: str | None = None,
) -> dict:
    """Run (or resume) the sweep; returns the summary: best trial, trials by status, concurrency. The
    inputs are checked before the output is claimed (`pipelines.outputs`); `log_file` then also logs to
    `OUTPUT/logs/<log_file>` (uploaded when the sweep ends, if OUTPUT is a URI)."""
    output = Location.of(output)
    space = load_space(objective, space_file)
    if search == "grid":
        space = as_grid(space)
    model_config = resolve_config(config, objective)  # a bad config name fails here, not in every trial
    base_train = TrainConfig.for_objective(
        model_config.objective.name, {"workers": workers_per_trial, **(train_overrides or {})}
    )
    # Trials run in their own working directories: local data folders are passed as absolute paths.
    folders = [str(Path(d).resolve()) if Path(d).exists() else str(d) for d in data]
    TrainedWith.of_shards(folders)  # every folder a prepared dataset, prepared alike
    made_with = {
        "data": folders,
        "config": config,
        "objective": objective,
        "space": space,
        "search": search,
        "num_samples": num_samples,
        "train": base_train.to_dict(),
        "grace_epochs": grace_epochs,
        "val_rows": val_rows,
    }
    claim_output(output, "sweep", made_with, overwrite=overwrite)
    run = RunDirectory.open(output, "sweep")
    logs = [f"logs/{log_file}"] if log_file else []
    run.resume(*logs)
    if log_file:
        setup_logging(run.local / logs[0])
    if not ray.is_initialized():
        ray.init()
    resources = ray.cluster_resources()
    concurrent, cpus_per_worker = plan_resources(
        resources.get("CPU", 0),
        workers_per_trial,
        base_train.cpus_per_worker,
        max_concurrent,
        resources.get("GPU", 0) if base_train.use_gpu else None,
    )
    base_train = trial_train_config(base_train, concurrent, cpus_per_worker)
    spec = SweepSpec(folders, config, objective, base_train.to_dict(), val_rows, output.child(TRIALS_DIR).uri)
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec.to_dict()), {"CPU": TRIAL_DRIVER_CPU})
    tune_path = output.child(TUNE_DIR).uri
    if tune.Tuner.can_restore(tune_path):
        log.info("sweep: resuming %s", tune_path)
        tuner = tune.Tuner.restore(tune_path, trainable=trainable, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=to_param_space(space),
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                scheduler=ASHAScheduler(
                    # One past the last epoch: ASHA stops a trial the moment it reports max_t, which would
                    # kill it before it exports its best checkpoint.
                    time_attr="epoch",
                    max_t=base_train.epochs + 1,
                    grace_period=grace_epochs,
                ),
                search_alg=search_algorithm(search, space),
                num_samples=num_samples,
                max_concurrent_trials=concurrent,
            ),
            run_config=tune.RunConfig(
                name=TUNE_DIR, storage_path=output.uri, failure_config=tune.FailureConfig(max_failures=0)
            ),
        )
    log.info(
        "sweep: %s on %s; %d trial(s) at once × %d worker(s) of %g CPU; swept: %s",
        objective,
        ", ".join(spec.data),
        concurrent,
        workers_per_trial,
        cpus_per_worker,
        ", ".join(swept_fields(space)),
    )
    try:
        result_grid = tuner.fit()
    finally:
        run.sync(*logs)
    rows = trial_rows(result_grid, swept_fields(space), output.child(TRIALS_DIR))
    write_tables(rows, output)
    plot_metric_against_parameters(rows, space, output.child("metric_vs_parameters.png"))
    best = copy_best(rows, output.child(BEST_DIR))
    run.close(*logs)
    statuses = [row["status"] for row in rows]
    return {
        "best": best,
        "trials": {status: statuses.count(status) for status in ("finished", "stopped early", "failed")},
        "concurrent_trials": concurrent,
        "cpus_per_worker": cpus_per_worker,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, nargs="+", help="folder(s) of prepared shards")
    parser.add_argument("--output", required=True, help="sweep directory (rerun with it to resume)")
    parser.add_argument("--space", help="YAML / JSON file overriding the default search space")
    parser.add_argument("--num-samples", type=int, default=8, help="trials (× the grid, where there is one)")
    parser.add_argument("--workers-per-trial", type=int, default=1, help="Ray Train workers of each trial")
    parser.add_argument("--config", default="tiny", help=f"model config ({', '.join(available_configs())}) or file")
    parser.add_argument("--objective", default="melp", choices=SWEEPABLE)
    parser.add_argument("--search", default="random", choices=SEARCHES)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (ASHA's max)")
    parser.add_argument("--grace-epochs", type=int, default=1, help="epochs before ASHA may stop a trial")
    parser.add_argument("--max-concurrent", type=int, help="cap on trials at once (default: what fits)")
    parser.add_argument("--val-rows", type=int, default=512)
    parser.add_argument("--address", help="Ray cluster address (default: the job's cluster, or a local one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in --output instead of resuming (only a sweep's own output is replaced)")
    add_shared_mount_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="train.field=value", help="base training config overrides")
    args = parser.parse_args(argv)
    try:
        train = {"epochs": args.epochs, **parse_overrides(args.overrides, sections=("train",)).train}
        objective = resolve_config(args.config, args.objective).objective.name
        TrainConfig.for_objective(objective, {"workers": args.workers_per_trial, **train})
        space = load_space(args.objective, args.space)
        search_algorithm(args.search, as_grid(space) if args.search == "grid" else space)
    except ValueError as error:
        parser.error(str(error))
    setup_logging()
    init_ray(args.address)
    try:
        refuse_node_local(args.output, shared_mount=args.shared_mount)
        summary = sweep(
            args.data,
            args.output,
            config=args.config,
            objective=args.objective,
            space_file=args.space,
            search=args.search,
            num_samples=args.num_samples,
            workers_per_trial=args.workers_per_trial,
            train_overrides=train,
            grace_epochs=args.grace_epochs,
            max_concurrent=args.max_concurrent,
            val_rows=args.val_rows,
            overwrite=args.overwrite,
            log_file="sweep.log",
        )
    except ValueError as error:  # the data or the output folder (checked before any trial starts)
        parser.error(str(error))
    print(f"trials: {summary['trials']}; {summary['concurrent_trials']} at once")
    best = summary["best"]
    if best is None:
        log.error("no trial finished: no best/ export")
        return 1
    print(f"best: {best['trial']} val macro AUROC {best['best_' + METRIC]:.4f} → {Location.of(args.output) / BEST_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
