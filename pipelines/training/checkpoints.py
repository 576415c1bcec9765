"""DeepSpeed checkpoints as Ray Train checkpoints, and their export to a plain `save_pretrained` folder.

    report_with_checkpoint(engine, metrics, TrainingState(step=120, epoch=1))   # on every rank
    state = restore_latest(engine)                                               # on every rank, at start
    export_checkpoint(best_checkpoint, model_config, "runs/x/export")           # on the driver

Each rank writes its own ZeRO shards into a local folder, all ranks meet at a barrier, then every
rank reports; Ray Train gathers the folders into one checkpoint directory under the run's storage.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from models.config import ModelConfig
from models.model import ECGTextModel
from pipelines.data.trained_with import TrainedWith
from pipelines.training.export_check import check_export

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


def report_with_checkpoint(
    engine, metrics: dict, state: TrainingState, add_files: Callable[[str], None] | None = None
) -> None:
    """Save this rank's DeepSpeed state (and whatever `add_files` writes into the folder), wait for every
    rank, report metrics + checkpoint to Ray Train."""
    with tempfile.TemporaryDirectory(prefix="ecg-fm-checkpoint-") as directory:
        engine.save_checkpoint(directory, tag=TAG, client_state={"training_state": asdict(state)})
        if add_files is not None:
            add_files(directory)
        if dist.is_initialized():
            dist.barrier()
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(directory),
            checkpoint_dir_name=f"checkpoint-step{state.step:08d}",
        )


def restore_latest(engine) -> TrainingState:
    """Load the latest checkpoint Ray Train holds for this run (after a worker failure or when a run is
    resubmitted into the same run directory); a fresh state when there is none."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return TrainingState()
    with checkpoint.as_directory() as directory:
        _, client_state = engine.load_checkpoint(directory, tag=TAG)
    return TrainingState(**client_state["training_state"])


def consolidated_state_dict(directory: str | Path) -> dict[str, torch.Tensor]:
    """Full fp32 weights from a checkpoint folder of any ZeRO stage (shards merged). What DeepSpeed prints
    meanwhile (messages on stdout, tqdm bars on stderr) goes to the log instead of the console."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        state = _consolidate(Path(directory))
    for line in printed.getvalue().splitlines():
        log.debug("deepspeed: %s", line)
    return state


def _consolidate(directory: Path) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    model_states = directory / TAG / "mp_rank_00_model_states.pt"
    if model_states.is_file():
        saved = torch.load(model_states, map_location="cpu", weights_only=False)
        if saved.get("ds_config", {}).get("zero_optimization", {}).get("stage", 0) == 0:
            return {name: tensor.float() for name, tensor in saved["module"].items()}
    return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=TAG)


def export_checkpoint(
    checkpoint: ray.train.Checkpoint, config: ModelConfig, trained_with: TrainedWith, output: str | Path
) -> tuple[ECGTextModel, float]:
    """Rebuild the model from a training checkpoint, `save_pretrained` it to `output` with what it was
    trained with, and check that the export reproduces the live model's probe embeddings. Returns the
    model and that largest difference."""
    model = ECGTextModel(config)
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
