"""Shared fixtures, each made once per session: a local Ray cluster, a 3-node one (`tests/ray_cluster.py`), an
S3 server with a bucket per module (`tests/object_store.py`), a batch of synthetic shard rows, prepared shards,
exports, and the real PTB-XL subset when CI provides it. The session writes only under its own folder and
fails if it leaves a process, mount or folder behind (`tests/housekeeping.py`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import housekeeping
from tests.object_store import object_store, s3_server, session_env  # noqa: F401 (fixtures)
from tests.ray_cluster import API_SERVER_ENV, free_ports, session_cluster

SHARED_PTBXL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl-500"

# Set before Ray starts: no usage reporting, no token auth for the local test cluster. And before
# transformers is imported: tests never reach for a model hub (the default text tower ships in a package).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Ray Train: notice finished workers quickly, no preemption watcher (cuts each fit's teardown to ~1 s).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster shared by every test that needs one."""
    import ray
    from ray.data import DataContext

    # The dashboard stays on: without it, a Tune trial that ASHA stops mid-fit leaks its workers' placement
    # group and later trials wait for resources forever. Workers reach it by its address: Ray Train's
    # placement-group cleaner asks the state API whether its controller lives, and with another Ray on this
    # machine (the 3-node cluster) "auto" finds two and fails, so a stopped trial's group would never go.
    # Workers see the AWS_* variables of the session's S3 server (tests/object_store.py), whenever it starts.
    (dashboard_port,) = free_ports(1)
    ray.init(
        num_cpus=2,
        object_store_memory=512 * 2**20,
        include_dashboard=True,
        dashboard_port=dashboard_port,
        log_to_driver=False,
        runtime_env={"env_vars": {**session_env(), API_SERVER_ENV: f"http://127.0.0.1:{dashboard_port}",
                                  # A replica whose constructor refuses (a foreign index) fails its deployment
                                  # at the first try, not the third: its refusal is deterministic.
                                  "RAY_SERVE_MAX_PER_REPLICA_RETRY_COUNT": "1"}},
    )
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster):
    """Serve's HTTP proxy on the session's cluster, started once: the port every test's app is served on in
    turn (`tests.served.served`)."""
    import ray
    from ray import serve

    from tests.served import start_proxy

    yield start_proxy()
    if ray.is_initialized():  # not stopped already for the multi-node tests (Serve would start a Ray to stop)
        serve.shutdown()


@pytest.fixture(scope="session")
def multinode_cluster():
    """The session's 3-node cluster (`tests.ray_cluster.session_cluster`). Its tests run last (see
    `pytest_collection_modifyitems`), so the session's local Ray and Serve are stopped first: no later test needs
    them, and their idle raylet, controller and proxy would take CPU the cluster's nodes wait for."""
    import ray

    if ray.is_initialized():
        from ray import serve

        serve.shutdown()
        ray.shutdown()
    yield from session_cluster()


@pytest.fixture
def restore_logging():
    """main() of a command adds logging handlers (a file under its output, a console on the test's captured
    stderr); take them off after the test."""
    yield
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_ecg_fm", False)]:
        root.removeHandler(handler)
        handler.close()


@pytest.fixture(scope="session")
def minilm():
    """The offline default text tower (all-MiniLM-L6-v2 from its PyPI package), in eval mode."""
    from models.config import TextTowerConfig
    from models.text_tower import TextTower

    return TextTower(TextTowerConfig()).eval()


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """`tiny_export(objective)` → the folder of a freshly initialised tiny export (seed 0) of that objective,
    made once per session: what tests that load, serve or score an untrained model share."""
    from models.factory import create_model

    made: dict[str, Path] = {}

    def export(objective: str = "melp") -> Path:
        import torch

        if objective not in made:
            torch.manual_seed(0)
            made[objective] = tmp_path_factory.mktemp(f"tiny-{objective}-export")
            create_model("tiny", objective=objective)[0].save_pretrained(made[objective])
        return made[objective]

    return export


@pytest.fixture(scope="session")
def ptbxl_dir() -> Path:
    """`../shared/data/ptbxl-500` beside the checkout (CI always has it; a user's clone may not)."""
    if not (SHARED_PTBXL / "ptbxl_database.csv").is_file():
        pytest.skip(f"real PTB-XL subset not found at {SHARED_PTBXL} (it sits beside the checkout in CI)")
    return SHARED_PTBXL


@pytest.fixture(scope="session")
def shard_batch():
    """8 synthetic ECGs with distinct reports (identical texts cannot be told apart by a contrastive
    loss), preprocessed as the prepare stage writes them into shards: (signal, lead_mask, reports)."""
    import numpy as np

    from pipelines.data.leads import STANDARD_LEADS
    from pipelines.data.preprocess import PreprocessConfig, preprocess
    from pipelines.data.wfdb_io import Recording
    from pipelines.synthetic import SyntheticConfig, generate_batch

    signals, metadata = generate_batch(64, np.random.default_rng(0), SyntheticConfig(n=64))
    first_of_report = {m["report"]: i for i, m in reversed(list(enumerate(metadata)))}
    chosen = sorted(first_of_report.values())[:8]
    prepared = [
        preprocess(Recording(f"s{i}", signals[i], 500, list(STANDARD_LEADS)), PreprocessConfig()) for i in chosen
    ]
    return (
        np.stack([p.signal for p in prepared]),  # float16 [8, 12, 5000]
        np.stack([p.lead_mask for p in prepared]),  # bool [8, 12]
        [metadata[i]["report"] for i in chosen],
    )


@pytest.fixture(scope="session")
def synthetic_shards(ray_cluster, tmp_path_factory) -> Path:
    """240 synthetic ECGs prepared into shards (train / val / test), shared by the training tests."""
    from pipelines.data.sources import SourceOptions
    from pipelines.prepare import prepare

    output = tmp_path_factory.mktemp("synthetic-shards")
    root = tmp_path_factory.mktemp("synthetic-wfdb")
    from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout

    generate_ptbxl_layout(root, SyntheticConfig(n=240, seed=1))
    prepare("synthetic", SourceOptions(input=root), str(output))
    return output


@pytest.fixture(scope="session")
def ptbxl_shards(ray_cluster, ptbxl_dir, tmp_path_factory) -> Path:
    """The real PTB-XL-500 subset prepared into shards (evaluation-style: every record kept)."""
    from pipelines.data.records import RecordOptions
    from pipelines.data.sources import SourceOptions
    from pipelines.prepare import prepare

    output = tmp_path_factory.mktemp("ptbxl-shards")
    prepare("ptbxl", SourceOptions(input=ptbxl_dir), str(output), records=RecordOptions(min_report_words=0))
    return output


@pytest.fixture(scope="session")
def ptbxl_melp_run(ptbxl_shards, tmp_path_factory) -> tuple[Path, dict]:
    """(run directory, metrics) of MELP pretrained 20 steps on PTB-XL-500 by 2 Ray Train workers under ZeRO-2:
    the run test_pretrain checks and the export test_evaluate evaluates, trained once."""
    from models.factory import resolve_config
    from pipelines.training.config import TrainConfig
    from pipelines.training.launch import pretrain

    run_dir = tmp_path_factory.mktemp("ptbxl-melp-run")
    train = TrainConfig(
        workers=2, batch_size=16, warmup_steps=2, max_steps=20, zero_stage=2, checkpoints_to_keep=1,
        progress_every_s=0.0,
    )  # fmt: skip
    return run_dir, pretrain(str(ptbxl_shards), run_dir, resolve_config("tiny", "melp"), train, val_rows=64)


@dataclass(frozen=True)
class KilledRun:
    """A pretraining run whose worker was killed, on shards unlike the defaults (`preprocessing`), and what it
    was trained from: the raw archive, its shards, the run directory and the run's metrics."""

    archive: Path
    shards: Path
    run_dir: Path
    metrics: dict
    preprocessing: object  # a PreprocessConfig (imported in the fixture: nothing heavy before pytest_configure)


@pytest.fixture(scope="session")
def zero3_run_at_100hz(ray_cluster, tmp_path_factory) -> KilledRun:
    """METS pretrained 6 steps by 2 Ray Train workers under ZeRO-3 on 160 synthetic ECGs prepared at 100 Hz,
    z-scored and band-passed (nothing like the 500 Hz min-max defaults), validated on task ptbxl-rhythm, rank 1
    exiting at step 5 once: the run test_pretrain checks for its restart from a checkpoint and test_trained_with
    for the preprocessing and task its export carries, trained once."""
    from models.factory import resolve_config
    from pipelines.data.preprocess import PreprocessConfig
    from pipelines.data.records import RecordOptions
    from pipelines.data.sources import SourceOptions
    from pipelines.prepare import prepare
    from pipelines.synthetic import SyntheticConfig, generate_ptbxl_layout
    from pipelines.training.config import TrainConfig
    from pipelines.training.launch import FAULT_ENV, pretrain

    preprocessing = PreprocessConfig(fs=100, seconds=10.0, normalize="zscore", bandpass=(0.5, 40.0))
    archive, shards = tmp_path_factory.mktemp("archive-100hz"), tmp_path_factory.mktemp("shards-100hz")
    generate_ptbxl_layout(archive, SyntheticConfig(n=160, seed=11))
    options = SourceOptions(input=archive, fs=preprocessing.fs, report="raw", source_name="synthetic")
    prepare("ptbxl", options, str(shards), preprocess=preprocessing, records=RecordOptions(min_report_words=0))
    run_dir = tmp_path_factory.mktemp("run-100hz") / "run"
    config = resolve_config("tiny", "mets", {"ecg.n_samples": 1000})
    train = TrainConfig(
        workers=2, batch_size=8, warmup_steps=1, progress_every_s=0.0, checkpoints_to_keep=1, zero_stage=3,
        max_steps=6, validate_every=2, max_failures=1,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(FAULT_ENV, "5:1")  # rank 1 exits at step 5, once
        metrics = pretrain(str(shards), run_dir, config, train, task="ptbxl-rhythm", val_rows=64)
    return KilledRun(archive, shards, run_dir, metrics, preprocessing)


def pytest_configure(config: pytest.Config) -> None:
    """Before any test module is imported (torch, Ray): the session's TMPDIR (`tests/housekeeping.py`)."""
    housekeeping.use_session_tmp()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on the 3-node cluster run last: the cluster starts when they begin and idles through no other test
    (its raylets, agents and dashboard take CPU the rest of the suite would wait for), and the local Ray is
    stopped when it starts. A test may not ask for both."""
    items.sort(key=lambda item: "multinode_cluster" in getattr(item, "fixturenames", ()))
    both = [item.nodeid for item in items if {"multinode_cluster", "ray_cluster"} <= set(getattr(item, "fixturenames", ()))]
    if both:
        raise pytest.UsageError(f"tests ask for the local Ray and the 3-node cluster at once: {both}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """After every fixture has been torn down: fail the session if it left a process, a mount or a folder
    behind (listed), end those processes, and remove the session's folder."""
    left = housekeeping.leftovers()
    if left:
        housekeeping.end_leftovers()
    housekeeping.remove_root()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        reporter.write_sep("!", f"left behind by the test session: {len(left)}", red=True)
        for thing in left:
            reporter.write_line(f"  {thing}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
