"""A job for tests/test_share_nothing.py: what each node of the cluster sees.

    python -m tests.cluster_probe NODE [NODE ...]

A task on the first node writes /tmp/ecg-fm-probe and ~/ecg-fm-probe; then a task on each node, and the driver
(on the head), say whether they see those files, and where their Python found `pipelines`. Prints one JSON
object, `{where: {"tmp": bool, "home": bool, "pipelines": path or null}}`, where is a node's name or "driver".
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import ray

NAME = "ecg-fm-probe"


def written() -> list[Path]:
    return [Path("/tmp") / NAME, Path.home() / NAME]


def write() -> None:
    for path in written():
        path.write_text("written on one node")


def look() -> dict:
    tmp, home = (path.exists() for path in written())
    spec = importlib.util.find_spec("pipelines")
    return {"tmp": tmp, "home": home, "pipelines": spec.origin if spec else None}


def main(nodes: list[str]) -> None:
    ray.init()
    on = {node: {"num_cpus": 0, "resources": {node: 0.01}} for node in nodes}
    ray.get(ray.remote(write).options(**on[nodes[0]]).remote())
    seen = {node: ray.get(ray.remote(look).options(**on[node]).remote()) for node in nodes}
    print(json.dumps({**seen, "driver": look()}))


if __name__ == "__main__":
    main(sys.argv[1:])
