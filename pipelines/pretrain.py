"""Pretrain: Ray Train workers running DeepSpeed ZeRO on prepared shards, streamed by Ray Data.

    python -m pipelines.pretrain --data data/synthetic --output runs/tiny --config tiny --workers 2 --zero-stage 2
    python -m pipelines.pretrain --data data/ptbxl --output runs/cmelt --objective cmelt train.lr=3e-4 objective.ecg_mask_ratio=0.6
    ray job submit --address http://HEAD:8265 --runtime-env cluster/runtime_env.yaml -- \\
        python -m pipelines.pretrain --data s3://bucket/shards --output s3://bucket/runs/melp --config merl-vit-small \\
        train.use_gpu=true

Overrides are `section.field=value`: sections `ecg`, `text`, `objective` (models/config.py) and
`train` (pipelines/training/config.py). Rerunning with the same --output resumes from its latest
checkpoint (a different config is refused, naming the field); --overwrite replaces a run directory that
pretraining made (its made_by.json), never another folder, and only after --data has been checked.
`--workers MIN-MAX` makes the run elastic: it goes on from its latest checkpoint with the workers left when one
is lost, grows back when the cluster has room, keeps the global batch (gradient accumulation adapts) and
the ZeRO optimizer state (resharded through a universal checkpoint), and ends at the planned samples.
--data and --output take local paths or URIs (s3://, gs://, abfs://; credentials from the store's standard
variables, e.g. AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL): a run in a bucket needs no disk
that the nodes share.
`pipelines.pretrain_lm` is MELP's stage 1 (masked-LM on report text) on the same machinery.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from models.config import ModelConfig, available_configs
from models.factory import resolve_config
from models.objectives import objective_names
from pipelines.logs import init_ray, setup_logging
from pipelines.outputs import add_shared_mount_argument, refuse_node_local
from pipelines.training.config import TrainConfig
from pipelines.training.launch import check_run, pretrain
from pipelines.training.overrides import parse_overrides


def build_parser(description: str = __doc__, objectives: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="folder(s) or URI(s) of prepared shards (pipelines.prepare output), read as one",
    )
    parser.add_argument(
        "--output", required=True, help="run directory, a path or a URI: checkpoints, metrics, logs/, export/"
    )
    parser.add_argument(
        "--config", default="tiny", help=f"named model config ({', '.join(available_configs())}) or a JSON file"
    )
    parser.add_argument("--objective", choices=objectives or objective_names(), help="objective (default: the config's)")
    parser.add_argument("--task", default="synthetic", help="label task whose classes validation scores zero-shot")
    parser.add_argument(
        "--workers",
        help="Ray Train workers, N or MIN-MAX (elastic: goes on with fewer when workers are lost, grows back when "
        "the cluster has room; train.workers, train.min_workers)",
    )
    parser.add_argument("--zero-stage", type=int, help="DeepSpeed ZeRO stage 0-3 (train.zero_stage)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps in all (train.max_steps)")
    parser.add_argument("--epochs", type=int, help="passes over the train split (train.epochs)")
    parser.add_argument("--val-rows", type=int, default=2000,
                        help="validate on about this many val rows: the records whose ecg_id hashes lowest, the same "
                             "ones every epoch and every rerun")
    parser.add_argument("--address", help="Ray cluster address (default: the job's cluster, or a local one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace --output instead of resuming it (only a run directory pretraining made)")
    add_shared_mount_argument(parser)
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help="config overrides")
    return parser


def resolve(args: argparse.Namespace, objective: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Both configs from the command line, checked against the data; every error is a ValueError that
    names the field."""
    model_config, train_config = configs(args, objective)
    check_run(args.data, model_config, args.task)  # the configs first, then whether the data fits them
    return model_config, train_config


def configs(args: argparse.Namespace, objective: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Both configs from the command line alone: the model config with its overrides; the training
    defaults, the objective's recipe (`TrainConfig.for_objective`), then the flags and `train.*` overrides."""
    overrides = parse_overrides(args.overrides)
    flags = {"workers": args.workers, "zero_stage": args.zero_stage, "max_steps": args.max_steps, "epochs": args.epochs}
    train_overrides = {**overrides.train, **{k: v for k, v in flags.items() if v is not None}}
    model_config = resolve_config(args.config, objective or args.objective, overrides.model)
    return model_config, TrainConfig.for_objective(model_config.objective.name, train_overrides)


def run(
    parser: argparse.ArgumentParser, args: argparse.Namespace, model_config: ModelConfig, train_config: TrainConfig
) -> dict:
    """The run, logged to the console and, once the run directory is claimed, to RUN_DIR/logs/pretrain.log.
    Data that cannot train and a run directory that may not be used end the command with a usage error."""
    setup_logging()
    init_ray(args.address)
    try:
        refuse_node_local(args.output, shared_mount=args.shared_mount)
        return pretrain(
            args.data,
            args.output,
            model_config,
            train_config,
            task=args.task,
            val_rows=args.val_rows,
            overwrite=args.overwrite,
            log_file="pretrain.log",
        )
    except ValueError as error:  # checked before training: the data, the run directory
        parser.error(str(error))


def print_summary(metrics: dict) -> None:
    """The final table: the best checkpoint's figures."""
    best = metrics["best"]
    rows = [("selected by", metrics["selected_by"]), ("best checkpoint", metrics["best_checkpoint"])]
    rows += [(name, f"{best[name]:.4f}") for name in sorted(best) if name.startswith("val_") and "/" not in name]
    rows += [("steps", f"{metrics['total_steps']:,}"), ("wall time", f"{metrics['elapsed_seconds']:.0f} s")]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        model_config, train_config = resolve(args)
    except ValueError as error:
        parser.error(str(error))
    print_summary(run(parser, args, model_config, train_config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
