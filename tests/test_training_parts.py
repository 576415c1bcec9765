"""The pieces of the training loop that need no cluster: config checks, objectives' optimiser recipes,
schedules, DeepSpeed config, AUROC helpers, validation classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.factory import create_model
from pipelines.labels.metrics import auroc_per_class, macro_auroc, targets_matrix
from pipelines.labels.tasks import load_task
from pipelines.pretrain import build_parser, configs
from pipelines.training.config import TrainConfig
from pipelines.training.engine import deepspeed_config
from pipelines.training.optimization import build_optimizer, build_scheduler, cosine_restarts, warmup_cosine


def test_micro_batch_is_global_batch_over_workers_and_accumulation():
    config = TrainConfig(workers=2, batch_size=64, grad_accum=4)
    assert config.micro_batch == 8
    ds = deepspeed_config(config, "bf16", 2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        64,
        8,
        4,
    )
    assert ds["bf16"]["enabled"] and not ds["fp16"]["enabled"] and ds["zero_optimization"]["stage"] == 2


def test_elastic_runs_keep_the_global_batch_and_plan_in_samples():
    config = TrainConfig.from_dict({"workers": "2-3", "batch_size": 48, "grad_accum": 2})
    assert (config.min_workers, config.workers, config.num_workers, config.workers_range) == (2, 3, (2, 3), "2-3")
    assert config.micro_batch == 8  # fixed: 48 / (3 workers × 2)
    assert {w: config.grad_accum_at(w) for w in config.world_sizes} == {2: 3, 3: 2}
    for w in config.world_sizes:  # DeepSpeed's identity holds at every size: batch = world × micro × accumulation
        ds = deepspeed_config(config, "fp32", w)
        assert ds["train_batch_size"] == 48 == w * ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"]
    # 1,000 rows: at 3 workers 333 each → 41 micro-batches → 20 steps; at 2, 500 → 62 → 20
    assert config.steps_per_epoch(1000) == 20
    with pytest.raises(ValueError, match="outside this run's workers 2-3"):
        config.grad_accum_at(1)
    fixed = TrainConfig.from_dict({"workers": "2", "min_workers": 1, "batch_size": 32})
    assert (fixed.min_workers, fixed.num_workers, fixed.workers_range, fixed.steps_per_epoch(1000)) == (0, 2, "2", 31)


def test_a_batch_that_some_world_size_cannot_split_is_refused_naming_the_sizes():
    with pytest.raises(ValueError, match=r"at world size 2 of 2-3 \(grad_accum a multiple of 2 splits it at every size\)"):
        TrainConfig.from_dict({"workers": "2-3", "batch_size": 48})
    with pytest.raises(ValueError, match="at world size 4, 5 of 3-6"):
        TrainConfig.from_dict({"workers": "3-6", "batch_size": 48})
    with pytest.raises(ValueError, match="workers must be N or MIN-MAX"):
        TrainConfig.from_dict({"workers": "two"})
    with pytest.raises(ValueError, match=r"min_workers must be 0 \(fixed\) or 1 to workers \(2\), got 3"):
        TrainConfig.from_dict({"workers": "3-2"})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"zero_stage": 5}, "zero_stage must be 0, 1, 2 or 3"),
        ({"workers": 3, "batch_size": 32}, "not divisible by workers × grad_accum = 3 × 1"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"lr": 0}, "lr must be positive"),
        ({"max_steps": -1}, "max_steps must not be negative"),
    ],
)
def test_bad_training_values_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)
    with pytest.raises(ValueError, match="unknown train config fields: lr_max"):
        TrainConfig.from_dict({"lr_max": 1})


def test_warmup_then_cosine_to_the_floor():
    assert warmup_cosine(0, 10, 100, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(9, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(10, 10, 100, 0.1) == pytest.approx(1.0)
    assert warmup_cosine(55, 10, 100, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_cosine_restarts_is_torchs_cosine_annealing_with_warm_restarts_at_half_the_run():
    """MELP's schedule: CosineAnnealingWarmRestarts(T_0 = half the run, T_mult 1, eta_min 1e-8), no warm-up."""
    config = TrainConfig.for_objective("melp")
    total = 40
    parameter = torch.nn.Parameter(torch.zeros(1))
    ours = build_scheduler(torch.optim.AdamW([parameter], lr=config.lr), config, total)
    torchs_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.lr)
    torchs = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(torchs_optimizer, T_0=total // 2, eta_min=1e-8)
    for _ in range(total):
        assert ours.get_last_lr()[0] == pytest.approx(torchs.get_last_lr()[0], rel=1e-9, abs=1e-15)
        ours.optimizer.step(), ours.step(), torchs_optimizer.step(), torchs.step()
    assert cosine_restarts(20, 0, 40, 0.1) == 1.0 and cosine_restarts(0, 4, 40, 0.1) == pytest.approx(0.25)


def test_melp_trains_with_its_authors_optimiser_and_overrides_still_win():
    melp = TrainConfig.for_objective("melp")
    assert (melp.lr, melp.betas, melp.weight_decay, melp.warmup_steps) == (2e-4, (0.9, 0.95), 0.2, 0)
    assert melp.schedule == "cosine-restarts" and melp.decay_every_parameter and melp.lr * melp.min_lr_ratio == 1e-8
    assert TrainConfig.for_objective("melp", {"lr": 1e-3, "schedule": "warmup-cosine"}).lr == 1e-3
    for objective in ("cmelt", "mets", "melp-lm"):  # no published optimiser: the project's defaults
        assert TrainConfig.for_objective(objective) == TrainConfig()
    project = TrainConfig.for_objective("melp", {"recipe": "project"})  # the old optimiser: one switch
    assert project == TrainConfig(recipe="project")
    assert TrainConfig.for_objective("melp", {"recipe": "project", "lr": 5e-4}).lr == 5e-4
    with pytest.raises(ValueError, match="recipe must be authors or project, got 'mine'"):
        TrainConfig.for_objective("melp", {"recipe": "mine"})

    model, _ = create_model("tiny", objective="melp")
    groups = build_optimizer(model, melp).param_groups
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert [len(g["params"]) for g in groups] == [len(trainable)] and groups[0]["weight_decay"] == 0.2
    plain = build_optimizer(model, TrainConfig()).param_groups
    assert all(p.ndim >= 2 for p in plain[0]["params"]) and all(p.ndim < 2 for p in plain[1]["params"])


def test_the_pretrain_command_resolves_the_objectives_recipe_under_its_overrides():
    command = ["--data", "d", "--output", "o", "--workers", "1", "train.betas=[0.9,0.99]"]
    _, train = configs(build_parser().parse_args([*command, "--objective", "melp"]))
    assert (train.lr, train.betas, train.schedule, train.workers) == (2e-4, (0.9, 0.99), "cosine-restarts", 1)
    _, train = configs(build_parser().parse_args([*command, "--objective", "cmelt"]))
    assert (train.lr, train.betas, train.schedule) == (1e-3, (0.9, 0.99), "warmup-cosine")


def test_auroc_matches_a_hand_count_and_skips_one_sided_classes():
    labels = [["A"], ["A", "B"], [], ["B"]]
    codes = ["A", "B", "C"]
    targets = targets_matrix(labels, codes)
    scores = np.array([[0.9, 0.1, 0.0], [0.4, 0.8, 0.0], [0.5, 0.3, 0.0], [0.2, 0.7, 0.0]])
    per_class = auroc_per_class(scores, targets, codes)
    # A: positives {0.9, 0.4} vs negatives {0.5, 0.2}: pairs won 1+1+0+1 = 3 of 4.
    # B: positives {0.8, 0.7} vs negatives {0.1, 0.3}: all 4 won. C has no positive: left out.
    assert per_class == {"A": 0.75, "B": 1.0}
    assert macro_auroc(per_class) == pytest.approx(0.875)


def test_validation_classes_need_a_positive_and_a_negative():
    labels = [["SR", "NORM"], ["SR"], ["AFIB"], ["SR", "PVC"]]
    assert load_task("synthetic").present_codes(labels) == ["SR", "AFIB", "PVC", "NORM"]
    assert load_task("synthetic").present_codes([["SR"], ["SR"]]) == []


def test_report_history_keeps_every_report_and_a_resumed_runs_earlier_ones(tmp_path):
    from pipelines.training.history import ReportHistory, read_history

    where = tmp_path / "train" / "history.json"
    first = ReportHistory(where)
    for step in (10, 20, 30):
        first.after_report(None, [{"step": step, "data_wait_fraction": step / 100, "note": "text"}, {"step": step}], None)
    assert read_history(where) == [{"step": s, "data_wait_fraction": s / 100} for s in (10, 20, 30)]
    resumed = ReportHistory(str(where))  # a resubmitted run that restored the checkpoint of step 20
    resumed.after_report(None, [{"step": 25}], None)
    assert [r["step"] for r in read_history(where)] == [10, 20, 25]
    assert read_history(tmp_path / "none.json") == []
