"""The cluster's image, its launcher config and its KubeRay manifests install and name the versions the suite
last passed with (`constraints.txt`): a change of one without the other fails here, not on a cluster."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
CONSTRAINTS = CLUSTER.parent / "constraints.txt"
PIN = re.compile(r"(?P<name>[A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(?P<version>[^\s\"']+)")


def constraint_pins() -> dict[str, str]:
    """{package: version} of constraints.txt, names lower-cased."""
    return {m["name"].lower(): m["version"] for m in map(PIN.fullmatch, CONSTRAINTS.read_text().split()) if m}


def pins_in(text: str) -> dict[str, str]:
    return {m["name"].lower(): m["version"] for m in PIN.finditer(text)}


def test_the_image_installs_the_tested_set_on_the_tested_ray_and_python():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(?P<ray>[\d.]+)-py(?P<python>\d+)-gpu$", dockerfile, re.MULTILINE)
    python = re.search(r"\(Python (\d+)\.(\d+)", CONSTRAINTS.read_text())
    assert base and base["ray"] == constraint_pins()["ray"], "the base image's Ray is the tested one"
    assert python and base["python"] == "".join(python.groups()), "the base image's Python is the tested one"
    assert re.search(r"^COPY .*\bconstraints\.txt\b", dockerfile, re.MULTILINE)
    run = re.sub(r"\\\n", " ", dockerfile)
    installs = [part for line in run.splitlines() if line.startswith("RUN ") for part in line.split("&&")]
    installs = [part for part in installs if "pip install" in part]
    assert installs and all("-c constraints.txt" in part for part in installs), installs
    passed_with = constraint_pins()
    for name, version in pins_in(" ".join(installs)).items():
        assert passed_with[name] == version, f"the image pins {name}=={version}, the suite passed with {passed_with[name]}"


def test_the_cluster_launcher_installs_exactly_the_tested_set():
    config = yaml.safe_load((CLUSTER / "gpu-cluster.yaml").read_text())
    mounted = [remote for remote, local in config["file_mounts"].items() if local == "./constraints.txt"]
    commands = " ".join(config["setup_commands"])
    assert mounted and f"pip install -r {mounted[0]}" in commands
    assert not pins_in(commands), "no version of its own beside constraints.txt"


def test_the_kuberay_manifests_name_the_tested_ray():
    for manifest in ("rayjob-pretrain.yaml", "rayjob-sweep.yaml", "rayservice.yaml"):
        versions = re.findall(r'rayVersion: "([^"]+)"', (CLUSTER / manifest).read_text())
        assert versions == [constraint_pins()["ray"]], manifest
