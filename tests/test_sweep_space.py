"""Sweep search spaces and resource planning: pure logic, no Ray cluster."""

from __future__ import annotations

import json

import pytest
from ray import tune

from models.factory import resolve_config
from models.objectives import objective_class
from pipelines.training.config import TrainConfig
from pipelines.training.overrides import parse_overrides
from tune.space import load_space, swept_fields, to_param_space
from tune.sweep import as_grid, plan_resources, search_algorithm, trial_train_config


@pytest.mark.parametrize("objective", ["melp", "cmelt", "mets"])
def test_default_spaces_name_real_config_fields_and_sample_valid_configs(objective):
    space = load_space(objective)
    assert {"train.lr", "ecg.lead_drop_prob", "objective.learn_temperature"} <= set(space)
    overrides = {field: to_param_space(space)["overrides"][field].sample() for field in space}
    parsed = parse_overrides(overrides)
    config = resolve_config("tiny", objective, parsed.model)  # raises on an unknown field
    assert set(parsed.train) == {"lr"} and config.objective.name == objective


def test_every_loss_weight_and_masking_ratio_is_swept():
    assert {"objective.rhythm_weight", "objective.token_weight", "objective.beat_weight"} <= set(load_space("melp"))
    cmelt = set(load_space("cmelt"))
    weights = {f"objective.{term}_weight" for term in ("mem", "mlm", "itm", "contrastive")}
    assert weights | {"objective.ecg_mask_ratio", "objective.text_mask_ratio"} <= cmelt


def test_space_file_overrides_field_by_field(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("train.lr:\n  grid: [0.001, 0.002]\nobjective.beat_weight:\n  fixed: 0.5\n")
    space = load_space("melp", path)
    assert space["train.lr"] == {"grid": [0.001, 0.002]}
    assert "objective.beat_weight" not in swept_fields(space)
    assert to_param_space(space)["overrides"]["objective.beat_weight"] == 0.5
    assert space["objective.token_weight"] == objective_class("melp").sweep_space["objective.token_weight"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"lr": {"uniform": [0, 1]}}, "not a section.field"),
        ({"train.lr": {"uniform": [1, 0]}}, "low < high"),
        ({"train.lr": {"loguniform": [0, 1]}}, "positive low bound"),
        ({"train.lr": {"normal": [0, 1]}}, "unknown kind 'normal'"),
        ({"train.lr": {"choice": []}}, "non-empty list"),
    ],
)
def test_bad_space_files_fail_naming_the_field(tmp_path, content, message):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=message):
        load_space("melp", path)


def test_grid_search_covers_choices_and_range_ends_and_middles():
    grid = as_grid({"a": {"loguniform": [0.01, 1.0]}, "b": {"choice": [True, False]}, "c": {"fixed": 3}})
    assert grid == {"a": {"grid": [0.01, 0.1, 1.0]}, "b": {"grid": [True, False]}, "c": {"fixed": 3}}
    assert to_param_space(grid)["overrides"]["a"] == tune.grid_search([0.01, 0.1, 1.0])


def test_optuna_refuses_grid_fields():
    with pytest.raises(ValueError, match="grid"):
        search_algorithm("optuna", {"a": {"grid": [1, 2]}})


@pytest.mark.parametrize(
    ("cpus", "workers", "per_worker", "cap", "expected"),
    [
        (2, 1, 0.0, None, (1, 0.9)),  # this machine: one trial, one worker, 0.9 CPU, one CPU for Ray Data
        (2, 2, 0.0, None, (1, 0.45)),
        (33, 4, 0.0, None, (7, 1.0)),  # a 32-CPU node + head: 7 trials × 4 workers × 1 CPU + drivers
        (33, 4, 0.0, 3, (3, 1.0)),
        (17, 2, 2.0, None, (3, 2.0)),
    ],
)
def test_concurrency_leaves_one_cpu_to_ray_data(cpus, workers, per_worker, cap, expected):
    concurrent, cpus_per_worker = plan_resources(cpus, workers, per_worker, cap)
    assert (concurrent, cpus_per_worker) == expected
    assert concurrent * (workers * cpus_per_worker + 0.1) <= cpus - 1 + 1e-9


def test_max_concurrent_is_not_capped_by_the_cluster_at_start():
    """An autoscaling cluster starts small: 4 trials asked on 5 CPUs (1 fits now) stay 4, to wait for nodes."""
    assert plan_resources(5, 2, 1.0, 4) == (4, 1.0)
    assert plan_resources(5, 2, 1.0, None) == (1, 1.0)


def test_gpu_trials_are_bounded_by_the_gpus_too():
    assert plan_resources(65, 2, 0.0, None, cluster_gpus=8) == (4, 1.0)


def test_trials_that_run_at_once_share_the_object_store_budget_of_one_run():
    base = TrainConfig(data_cache_fraction=0.25)
    trial = trial_train_config(base, concurrent=4, cpus_per_worker=1.0)
    assert trial.data_cache_fraction == 0.0625 and trial.cpus_per_worker == 1.0
    assert trial_train_config(base, concurrent=1, cpus_per_worker=0.9).data_cache_fraction == 0.25
