"""One Tune trial: a whole pretraining run (`pipelines.training.launch.pretrain`, a `TorchTrainer` with
DeepSpeed inside) with the trial's sampled overrides, its validation reports forwarded to Tune.

Ray Tune with Train V2 takes a function that builds the trainer per trial; `TuneReportCallback`
forwards every `ray.train.report` of the trainer (val macro AUROC per epoch) to Tune, where ASHA
reads it. Each trial's run directory is `SWEEP_DIR/trials/<trial id>/` on the sweep's own storage
(a bucket, or a disk every node of a cluster shares), so a restored sweep resumes an unfinished trial from its last
checkpoint, as a resubmitted pretraining job does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from models.factory import resolve_config
from pipelines.storage import Location
from pipelines.training.config import TrainConfig
from pipelines.training.launch import pretrain
from pipelines.training.overrides import parse_overrides


@dataclass(frozen=True)
class SweepSpec:
    """What every trial shares: data, base model config and objective, base training config."""

    data: list[str]
    config: str
    objective: str
    train: dict
    val_rows: int
    runs_dir: str
    """Where the trials' pretraining run directories go, one per trial id (a path or a URI)."""

    def to_dict(self) -> dict:
        return asdict(self)


def run_trial(parameters: dict, spec: dict) -> None:
    """Tune function: `parameters` is `{"overrides": {section.field: value}}` sampled by Tune."""
    spec = SweepSpec(**spec)
    overrides = parse_overrides(parameters["overrides"])
    model_config = resolve_config(spec.config, spec.objective, overrides.model)
    train_config = TrainConfig.from_dict(spec.train).with_overrides(overrides.train)
    run_dir = Location.of(spec.runs_dir).child(tune.get_context().get_trial_id())
    pretrain(spec.data, run_dir, model_config, train_config, val_rows=spec.val_rows, callbacks=[TuneReportCallback()])
