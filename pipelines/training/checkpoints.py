"""DeepSpeed checkpoints as Ray Train checkpoints, and their export to a plain `save_pretrained` folder.

    state = restore_latest(engine)                                               # on every rank, at start
    report_with_checkpoint(engine, metrics, replace(state, step=120, epoch=1))   # on every rank
    state = state.resized(world_size)                                            # records a change of size
    export_checkpoint(best_checkpoint, model_config, "runs/x/export")           # on the driver

Each rank writes its own ZeRO shards into a local folder, all ranks meet at a barrier, then every
rank reports; Ray Train gathers the folders into one checkpoint directory under the run's storage, named
`checkpoint-step{step}-{attempt}`. The attempt is each start of the training loop (a restart after a
failure, a resize, a resubmission): a restarted attempt may report a step again (the earlier attempt's
folder of that step was partly uploaded but never registered), and must not write into that folder.
How many ranks wrote a folder is read from DeepSpeed's own record in it (`written_by`), never from the
shard files that lie there.

A checkpoint written at another world size (an elastic run that lost or regained workers) is converted
to DeepSpeed's universal checkpoint (`deepspeed.checkpoint.ds_to_universal`: one folder per parameter
holding its fp32 weights and optimizer moments, unpartitioned) in a temporary folder on each rank, and
loaded from there: ZeRO 1-3 partitions repartition to the new world size, the optimizer state carries.

DeepSpeed unpickles its `.pt` files with `weights_only=False`, so a planted file would run its code on
resume or export. Every folder is first read by `scan_checkpoint` with `torch.load(weights_only=True)`,
which admits tensors, plain containers and the few DeepSpeed classes its checkpoints hold, and nothing
else; only then is it handed to DeepSpeed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import pickle
import re
import tempfile
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from models.config import ModelConfig
from models.model import ECGTextModel
from pipelines.data.trained_with import TrainedWith
from pipelines.training.export_check import check_export
from pipelines.training.run_model import build_model

log = logging.getLogger(__name__)

TAG = "state"
"""DeepSpeed's tag (sub-folder) for the one state a Ray checkpoint holds."""


@dataclass(frozen=True)
class TrainingState:
    """Where the loop stands, saved beside the DeepSpeed state."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Passes over the train split finished."""
    world_size: int = 0
    """Workers that wrote the checkpoint (0: none yet, or a checkpoint from before elastic runs)."""
    resizes: tuple[dict, ...] = ()
    """Every change of world size so far, oldest first: {"step", "old_world_size", "new_world_size", "why"}."""
    attempt: str = ""
    """The start of the training loop that holds this state (`new_attempt`); its checkpoints carry the name."""

    def resized(self, world_size: int) -> TrainingState:
        """This state going on at `world_size` workers, with a resize record when the checkpoint was written at
        another size. Why is inferred: fewer workers mean one was lost (its process or its node), more that
        the cluster has room again."""
        if self.world_size in (0, world_size):
            return replace(self, world_size=world_size)
        why = "worker or node lost" if world_size < self.world_size else "capacity came back"
        record = {"step": self.step, "old_world_size": self.world_size, "new_world_size": world_size, "why": why}
        return replace(self, world_size=world_size, resizes=(*self.resizes, record))


def report_with_checkpoint(
    engine, metrics: dict, state: TrainingState, add_files: Callable[[str], None] | None = None
) -> None:
    """Save this rank's DeepSpeed state (and whatever `add_files` writes into the folder), wait for every
    rank, report metrics + checkpoint to Ray Train, named by the state's step and attempt."""
    if not state.attempt:
        raise ValueError("a checkpoint is named by its attempt: take the state from restore_latest")
    with tempfile.TemporaryDirectory(prefix="ecg-fm-checkpoint-") as directory:
        engine.save_checkpoint(directory, tag=TAG, client_state={"training_state": asdict(state)})
        if add_files is not None:
            add_files(directory)
        if dist.is_initialized():
            dist.barrier()
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"checkpoint-step{state.step:08d}-{state.attempt}",
        )


def restore_latest(engine) -> TrainingState:
    """Load the latest checkpoint Ray Train holds for this run (after a worker failure or when a run is
    resubmitted into the same run directory), at whatever world size wrote it; a fresh state when there is
    none. Either way the state belongs to a new attempt."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainingState(attempt=new_attempt())
    with checkpoint.as_directory() as directory:
        return replace(load_training_state(engine, directory), attempt=new_attempt())


def new_attempt() -> str:
    """A new name for this start of the training loop, the same on every rank (rank 0's, broadcast)."""
    name = [uuid.uuid4().hex[:8]]
    if dist.is_initialized():
        dist.broadcast_object_list(name, src=0)
    return name[0]


def load_training_state(engine, directory: str | Path) -> TrainingState:
    """Load a checkpoint folder into the DeepSpeed engine, once `scan_checkpoint` has passed it; one whose
    ZeRO optimizer shards were written by another number of ranks than the engine's is loaded through a
    universal checkpoint (`to_universal`, scanned in turn). Returns the state as saved."""
    scan_checkpoint(directory)
    world_size, zero_stage = written_by(directory)
    if zero_stage == 0 or world_size == dist.get_world_size():  # ZeRO-0 keeps one unpartitioned optimizer state
        _, client_state = engine.load_checkpoint(str(directory), tag=TAG)
    else:
        with tempfile.TemporaryDirectory(prefix="ecg-fm-universal-") as universal:
            to_universal(directory, universal)
            scan_checkpoint(universal)
            client_state = _load_universal(engine, universal)
    return TrainingState(**client_state["training_state"])


def written_by(directory: str | Path) -> tuple[int, int]:
    """(world size, ZeRO stage) of the ranks that wrote a checkpoint folder, from DeepSpeed's record in rank 0's
    model states (`dp_world_size`, `ds_config`), not from the shard files that lie in the folder."""
    states = Path(directory) / TAG / "mp_rank_00_model_states.pt"  # ZeRO 0-2; ZeRO-3 keeps one per rank
    record = load_restricted(states if states.is_file() else states.with_name(f"zero_pp_rank_0_{states.name}"))
    return int(record["dp_world_size"]), int(record.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0))


def to_universal(directory: str | Path, output: str | Path) -> None:
    """Convert the DeepSpeed checkpoint in `directory` (any ZeRO stage 1-3, any world size) to a universal one
    in `output` (same TAG), serially, DeepSpeed's printing sent to the log. Run it on folders that
    `scan_checkpoint` has passed: the converter unpickles them unrestricted."""
    from deepspeed.checkpoint.ds_to_universal import main

    args = argparse.Namespace(
        input_folder=str(Path(directory) / TAG),
        output_folder=str(Path(output) / TAG),
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,  # DeepSpeed records the universal info only for tensor/pipeline parallel models
    )
    with _printing_to_log():
        main(args)


def _load_universal(engine, directory: str) -> dict:
    """Load a universal checkpoint into a built engine; its client state. DeepSpeed reads the
    `checkpoint.load_universal` setting only while loading, so it is switched on for this load alone and the
    engine is built the same whatever it resumes from."""
    config = engine._config
    config.load_universal_checkpoint = True
    try:
        _, client_state = engine.load_checkpoint(directory, tag=TAG)
    finally:
        config.load_universal_checkpoint = False
    if engine.zero_optimization_stage() == 3:
        _repair_zero3_universal_load(engine.optimizer.optimizer, Path(directory) / TAG / "zero" / "optimizer_state.pt")
    return client_state


def _repair_zero3_universal_load(optimizer: torch.optim.Optimizer, optimizer_state: Path) -> None:
    """Undo two slips of DeepSpeed 0.19.8's ZeRO-3 universal load: it gives every parameter group the first
    group's hyperparameters (biases and norms would get the matrices' weight decay), and one shared `step`
    tensor to every group's AdamW state, which each group's update then advances (Adam's bias correction
    would run ahead by one per group and step)."""
    saved = load_restricted(optimizer_state)["param_groups"]
    for group, hyperparameters in zip(optimizer.param_groups, saved, strict=True):
        group.update({k: v for k, v in hyperparameters.items() if k != "params"})
    for state in optimizer.state.values():
        if torch.is_tensor(state.get("step")):
            state["step"] = state["step"].clone()


def scan_checkpoint(directory: str | Path) -> None:
    """Read every `.pt` file of a checkpoint folder with the restricted loader (memory-mapped: the pickled
    structure is read, the tensors' bytes are not); ValueError naming the first file that holds anything
    but data."""
    for path in sorted(Path(directory).rglob("*.pt")):
        load_restricted(path)


def load_restricted(path: Path) -> dict:
    """`torch.load(weights_only=True)` admitting, besides tensors and plain containers, exactly the DeepSpeed
    classes its checkpoints pickle; a pickle that would build or call anything else is refused unrun."""
    with torch.serialization.safe_globals(_deepspeed_checkpoint_classes()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as error:
            unsupported = re.search(r"Unsupported global: GLOBAL [\w.]+", str(error))
            reason = unsupported.group(0) if unsupported else str(error)[:300]
            refusal = f"{path} holds more than a checkpoint's data; refused before any of it ran: {reason}"
            raise ValueError(refusal) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path} is damaged or not a checkpoint file: {error}") from None


def _deepspeed_checkpoint_classes() -> list[type]:
    """What DeepSpeed's ZeRO 0-3 checkpoints pickle beside tensors (fp32, bf16; listed with
    `torch.serialization.get_unsafe_globals_in_checkpoint`): the optimizer's loss scaler (LossScaler;
    DynamicLossScaler under fp16), the ZeRO stage enum, and ZeRO-1/2's address of each parameter
    in its flat partition."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def consolidated_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint folder of any ZeRO stage (shards merged), once `scan_checkpoint`
    has passed it; DeepSpeed's printing goes to the log instead of the console."""
    scan_checkpoint(directory)
    with _printing_to_log():
        return _consolidate(Path(directory))


@contextlib.contextmanager
def _printing_to_log() -> Iterator[None]:
    """What DeepSpeed prints meanwhile (messages on stdout, tqdm bars on stderr) goes to the log at debug."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    finally:
        for line in printed.getvalue().splitlines():
            log.debug("deepspeed: %s", line)


def _consolidate(directory: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if written_by(directory)[1] == 0:
        saved = load_restricted(directory / TAG / "mp_rank_00_model_states.pt")
        return {name: tensor.float() for name, tensor in saved["module"].items()}
    return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=TAG)


def export_checkpoint(
    checkpoint: ray.train.Checkpoint, config: ModelConfig, trained_with: TrainedWith, output: str | Path
) -> tuple[ECGTextModel, float]:
    """Rebuild the model from a training checkpoint, `save_pretrained` it to `output` with what it was
    trained with, and check that the export reproduces the live model's probe embeddings. Returns the
    model and that largest difference."""
    model = build_model(config)
    model.trained_with = trained_with.to_dict()
    with checkpoint.as_directory() as directory:
        state = consolidated_state_dict(directory)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {checkpoint.path} does not match the run's model config: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        model.save_pretrained(output)
        max_diff = check_export(output, directory)
    return model, max_diff
