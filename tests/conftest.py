"""Shared fixtures: one Ray cluster per session, and the real PTB-XL subset when CI provides it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_PTBXL = Path(__file__).resolve().parents[2] / "shared" / "data" / "ptbxl-500"

# Set before Ray starts: no usage reporting, no token auth for the local test cluster. And before
# transformers is imported: tests never reach for a model hub (the default text tower ships in a package).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster shared by every test that needs one."""
    import ray
    from ray.data import DataContext

    ray.init(num_cpus=2, object_store_memory=512 * 2**20, include_dashboard=False, log_to_driver=False)
    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def minilm():
    """The offline default text tower (all-MiniLM-L6-v2 from its PyPI package), in eval mode."""
    from models.config import TextTowerConfig
    from models.text_tower import TextTower

    return TextTower(TextTowerConfig()).eval()


@pytest.fixture(scope="session")
def ptbxl_dir() -> Path:
    """`../shared/data/ptbxl-500` beside the checkout (CI always has it; a user's clone may not)."""
    if not (SHARED_PTBXL / "ptbxl_database.csv").is_file():
        pytest.skip(f"real PTB-XL subset not found at {SHARED_PTBXL} (it sits beside the checkout in CI)")
    return SHARED_PTBXL
