"""A process that loads one export from a bucket through `cached_copy`, as a Serve replica or a scoring actor
does, for tests of loaders that start together.

    python -m tests.export_loader s3://bucket/runs/x/export ROUNDS

Each round takes the cached copy, waits a moment (a model takes a while to load), then reads the weights
file from it; it prints one JSON line per round: the copy's folder and the set of values in the weights
(one value for a whole file of one version). `pipelines.storage` logs each download it makes to stderr.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from safetensors.numpy import load_file

from pipelines.storage import cached_copy

WEIGHTS = "model.safetensors"

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    uri, rounds = sys.argv[1], int(sys.argv[2])
    for _ in range(rounds):
        copy = cached_copy(uri)
        time.sleep(0.2)
        weights = load_file(copy / WEIGHTS)["weight"]
        print(json.dumps({"copy": str(copy), "values": sorted({float(v) for v in weights.ravel()})}), flush=True)
