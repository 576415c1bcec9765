"""The Serve app's settings: every Serve config the project ships builds, a misspelt key is refused by name,
and explain bounds that make no sense are refused before anything starts."""

from pathlib import Path

import pytest
import yaml

from pipelines.serve import app_builder, main
from pipelines.serving.explainer import ExplainBounds

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


def shipped_app_args() -> list[dict]:
    """The `args` of every application in cluster/serve.yaml and cluster/rayservice.yaml."""
    serve_yaml = yaml.safe_load((CLUSTER / "serve.yaml").read_text())
    rayservice = yaml.safe_load((CLUSTER / "rayservice.yaml").read_text())
    configs = [serve_yaml, yaml.safe_load(rayservice["spec"]["serveConfigV2"])]
    return [application["args"] for config in configs for application in config["applications"]]


def test_every_shipped_serve_config_builds(monkeypatch):
    monkeypatch.setenv("ECG_FM_API_TOKEN", "a-token")
    shipped = shipped_app_args()
    assert len(shipped) == 2 and all("explainers" in args for args in shipped)
    assert shipped[0]["autoscaling"]["max_replicas"] > shipped[0]["autoscaling"]["min_replicas"]
    for args in shipped:
        assert app_builder(args) is not None


def test_a_misspelt_arg_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown serve args explain_que;"):
        app_builder({"model": "/exports/best", "allow_no_token": True, "explain_que": 2})
    with pytest.raises(ValueError, match="unknown autoscaling settings max_replica "):
        app_builder({"model": "/exports/best", "allow_no_token": True, "autoscaling": {"max_replica": 2}})


def test_autoscaling_replaces_a_fixed_replica_count_and_is_checked():
    args = {"model": "/exports/best", "allow_no_token": True}
    assert app_builder({**args, "autoscaling": {"min_replicas": 1, "max_replicas": 3}}) is not None
    with pytest.raises(ValueError, match="replicas or autoscaling, not both"):
        app_builder({**args, "replicas": 2, "autoscaling": {"max_replicas": 3}})
    with pytest.raises(ValueError):
        app_builder({**args, "autoscaling": {"min_replicas": 3, "max_replicas": 2}})


@pytest.mark.parametrize(
    "bounds", [{"replicas": -1}, {"queue": -1}, {"deadline_s": 0}, {"retry_after_s": -1}], ids=str
)
def test_explain_bounds_that_make_no_sense_are_refused(bounds):
    with pytest.raises(ValueError, match="explain"):
        ExplainBounds(**bounds)


@pytest.mark.parametrize(
    ("flags", "named"),
    [(["--explain-deadline-s", "0"], "explain deadline_s (0.0) must be positive"),
     (["--min-replicas", "3", "--max-replicas", "2"], "min_replicas")],
    ids=["deadline", "replicas"],
)
def test_the_cli_refuses_bad_bounds_before_anything_starts(capsys, tmp_path, flags, named):
    with pytest.raises(SystemExit) as exit_:
        main(["--model", str(tmp_path / "no-export-needed"), *flags])
    assert exit_.value.code == 2
    assert named in capsys.readouterr().err
