"""The loop every Ray Train worker runs: DeepSpeed engine, streamed batches, validation, checkpoints.

`train_loop_per_worker(loop_config)` gets a `LoopSpec` as a dict (everything the driver resolved):
the model and training configs, the planned number of optimizer steps, the zero-shot validation
task and classes, what the data was prepared with, where the run directory is, and the console relay
through which rank 0's progress lines and epoch summaries reach the driver (each worker's own log
goes to RUN_DIR/logs/worker-<rank>.log, rank 0's TensorBoard files to RUN_DIR/tensorboard/; when RUN_DIR
is a URI, through a local scratch folder uploaded at every checkpoint and at the end). A worker that was
restarted after a failure, or a run resubmitted into the same run directory, starts from Ray Train's
latest checkpoint; a restored epoch restarts its pass over the data, and the run still stops at the
planned step.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from models.config import ModelConfig
from pipelines.labels.tasks import Task
from pipelines.logs import file_handler
from pipelines.storage import Location
from pipelines.training.checkpoints import report_with_checkpoint, restore_latest
from pipelines.training.config import TrainConfig
from pipelines.training.data import collate_batch
from pipelines.training.engine import DTYPES, initialize_engine, optimizer_step, resolve_precision
from pipelines.training.export_check import probe_embeddings, save_probe, take_probe
from pipelines.training.meter import StepMeter
from pipelines.training.n3s_index import attach_run_index
from pipelines.training.run_directory import RunDirectory
from pipelines.training.run_model import build_model
from pipelines.training.validation import validate

log = logging.getLogger(__name__)

VAL_BATCH_SIZE = 64
FAULT_MARKER = "fault-injected"


@dataclass(frozen=True)
class FaultInjection:
    """Test switch: rank `rank` exits abruptly at optimizer step `step`, once per run directory."""

    step: int
    rank: int = 1


@dataclass(frozen=True)
class LoopSpec:
    model: dict
    train: dict
    total_steps: int
    steps_per_epoch: int
    val_task: Task
    val_codes: list[str]
    run_dir: str
    trained_with: dict
    """`TrainedWith.to_dict()`: written into every checkpoint's config.json."""
    console: object
    """The driver's `ConsoleRelay` actor handle."""
    fault: dict | None = None
    tensorboard: bool = True

    def to_dict(self) -> dict:
        """A dict for `train_loop_config` (the task and the actor handle kept as they are)."""
        return {**asdict(self), "val_task": self.val_task, "console": self.console}


def train_loop_per_worker(loop_config: dict) -> None:
    spec = LoopSpec(**loop_config)
    train = TrainConfig.from_dict(spec.train)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    precision = resolve_precision(train.precision, train.use_gpu)
    dtype = DTYPES[precision]
    run = RunDirectory.open(spec.run_dir, f"worker-{rank}")
    own_files = [f"logs/worker-{rank}.log", *(["tensorboard"] if rank == 0 else [])]
    run.resume(own_files[0])  # a restarted or resubmitted worker appends to its log
    worker_log = _log_to_file(run.local / own_files[0])

    def say(line: str) -> None:
        log.info(line)
        if rank == 0:
            spec.console.say.remote(f"pretrain: {line}")

    torch.manual_seed(train.seed)  # identical initial weights on every rank
    model = build_model(ModelConfig.from_dict(spec.model)).to(device)
    if model.objective.uses_corpus_index:
        attach_run_index(model, run)
    engine, scheduler = initialize_engine(
        model, train, spec.total_steps, precision, model.parameters_used_outside_their_module()
    )
    restored = restore_latest(engine)  # written at another world size: repartitioned through a universal checkpoint
    state = restored.resized(world_size)
    if state.resizes != restored.resizes:
        say(f"resized {restored.world_size} → {world_size} workers at step {state.step} ({state.resizes[-1]['why']})")
    else:
        say(f"{'started' if state.step == 0 else f'resumed at step {state.step}'} on {world_size} workers")
    torch.manual_seed(train.seed + 7919 * rank + 104729 * state.step)  # masking and lead drop differ per rank

    collate = partial(collate_batch, model, dtype=dtype, device=device)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    meter = StepMeter(world_size, state.step)
    writer = _tensorboard(spec, rank, run.local)
    fault = FaultInjection(**spec.fault) if spec.fault else None
    started = last_progress = time.perf_counter()
    step, epoch = state.step, state.epoch
    checkpointed_step = step if ray.train.get_checkpoint() is not None else -1

    probe: dict = {}

    def checkpoint(epoch_done: int) -> None:
        nonlocal checkpointed_step
        metrics = {
            "step": step,
            "epoch": epoch_done,
            "restored_step": state.step,
            "world_size": world_size,
            "lr": scheduler.get_last_lr()[0],
        }
        metrics.update(meter.figures())
        val_batches = _keeping_probe(val_shard.iter_batches(batch_size=VAL_BATCH_SIZE), probe)
        metrics.update(validate(model, val_batches, spec.val_task, spec.val_codes, dtype, device))
        embeddings = probe_embeddings(model, probe, dtype, device)
        say(f"epoch {epoch_done} · step {step}/{spec.total_steps} · " + _summary(metrics, time.perf_counter() - started))
        if rank == 0:
            if writer is not None:
                for name, value in metrics.items():
                    writer.add_scalar(name, value, step)
                writer.flush()
        add_files = partial(_add_files, spec, probe, embeddings, precision) if rank == 0 else None
        saved = replace(state, step=step, epoch=epoch_done)
        report_with_checkpoint(engine, {**metrics, "resizes": list(state.resizes)}, saved, add_files)
        run.sync(*own_files)
        checkpointed_step = step

    while step < spec.total_steps:
        batches = train_shard.iter_torch_batches(
            batch_size=train.micro_batch,
            collate_fn=collate,
            drop_last=True,
            local_shuffle_buffer_size=train.shuffle_buffer or None,
            local_shuffle_seed=train.seed + 31 * epoch + rank,
            prefetch_batches=2,
        )
        steps_before = step
        waited_from = time.perf_counter()
        for batch in batches:
            computed_from = time.perf_counter()
            losses = engine(batch)
            engine.backward(losses["loss"])
            boundary = optimizer_step(engine)
            step = engine.global_steps
            meter.record_batch(
                computed_from - waited_from, time.perf_counter() - computed_from, train.micro_batch, losses
            )
            if boundary:
                if fault is not None and rank == fault.rank and step == fault.step:
                    _inject_fault(spec.run_dir, rank, step)
                if rank == 0 and time.perf_counter() - last_progress >= train.progress_every_s:
                    say(meter.line(step, spec.total_steps))
                    if writer is not None:
                        for name, value in meter.figures().items():
                            writer.add_scalar(name, value, step)
                        writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
                    last_progress = time.perf_counter()
                if train.validate_every and step % train.validate_every == 0 and step < spec.total_steps:
                    checkpoint(epoch)
                    meter.reset()
                if step >= spec.total_steps:
                    epoch = max(epoch, step // spec.steps_per_epoch)  # the last step may close an epoch
                    break
            waited_from = time.perf_counter()
        else:
            if step == steps_before:
                raise RuntimeError(f"rank {rank}: a pass over its train shard gave no optimizer step")
            epoch += 1
            if step != checkpointed_step:
                checkpoint(epoch)
                meter.reset()
    if step != checkpointed_step:
        checkpoint(epoch)
    if writer is not None:
        writer.close()
    logging.getLogger().removeHandler(worker_log)
    worker_log.close()
    run.close(*own_files)


def _add_files(spec: LoopSpec, probe: dict, embeddings: dict, precision: str, directory: str) -> None:
    """Rank 0's files in each checkpoint: the export probe, and what the model is and was trained with."""
    save_probe(directory, probe, embeddings, precision)
    record = {"model": spec.model, "trained_with": spec.trained_with, "task": spec.val_task.name}
    (Path(directory) / "config.json").write_text(json.dumps(record, indent=2))


def _log_to_file(path: Path) -> logging.Handler:
    """Every record of this worker (warnings too) into its own file under the run directory."""
    handler = file_handler(path)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(min(root.level, logging.INFO))
    logging.captureWarnings(True)
    return handler

def _keeping_probe(batches, probe: dict):
    """Pass batches through; the first time, keep the first rows of the first batch as the export probe."""
    for batch in batches:
        if not probe:
            probe.update(take_probe(batch))
        yield batch


def _tensorboard(spec: LoopSpec, rank: int, local_run_dir: Path):
    if rank != 0 or not spec.tensorboard:
        return None
    from tensorboardX import SummaryWriter

    return SummaryWriter(str(local_run_dir / "tensorboard"))


def _inject_fault(run_dir: str, rank: int, step: int) -> None:
    """Exit once per run directory: the marker goes to the run directory itself (not a scratch folder), where
    the restarted worker, on whichever node, finds it."""
    marker = Location.of(run_dir).child(FAULT_MARKER)
    if marker.exists():
        return
    marker.write_text(f"rank {rank} exited at step {step}\n")
    log.warning("fault injection: rank %d exits at step %d", rank, step)
    os._exit(1)


def _summary(metrics: dict, elapsed_s: float) -> str:
    """One epoch's line: loss terms, val macro AUROC, data wait, time so far."""
    losses = " ".join(
        f"{k.removeprefix('val_').removesuffix('_loss')} {v:.3f}"
        for k, v in sorted(metrics.items())
        if k.startswith("val_") and k.endswith("_loss") and k != "val_loss"
    )
    auroc = f" · val macro AUROC {metrics['val_macro_auroc']:.4f}" if "val_macro_auroc" in metrics else ""
    wait = metrics.get("data_wait_fraction", float("nan"))
    return (
        f"val loss {metrics.get('val_loss', float('nan')):.3f} ({losses}){auroc} · "
        f"data wait {100 * wait:.1f} % · {elapsed_s:.0f} s"
    )
