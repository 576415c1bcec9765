"""A real S3 server for tests: moto's (`python -m moto.server`) on a free 127.0.0.1 port, started once per
test session, and a bucket of each test module's own in it.

    def test_x(object_store):                      # the fixture (tests/conftest.py takes it from here)
        uri = object_store.uri("runs/x")           # s3://ecg-fm-<module>/runs/x
        ...                                        # boto3, pyarrow, Ray Data/Train reach it by the AWS_* variables

The server starts when the first module asks for a bucket and stops when the session ends; meanwhile its
AWS_* variables (`ObjectStore.env`) are set in this process, so every process it starts inherits them.
Processes that do not inherit this environment need `env` passed to them: a `ray job` as its runtime
environment's `env_vars`; the session's Ray cluster (started before the server may be) gets `session_env()`
in its runtime environment: the server listens on that one port, reserved once per session, so workers
started at any time reach it. Each module's bucket is named after the module, so no module sees another's keys.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import cache

import pytest

from tests.housekeeping import end, spawn
from tests.ray_cluster import free_ports

BUCKET = "ecg-fm-test"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ObjectStore:
    """A running S3 server: its `endpoint` URL, the `bucket` made in it, and `env`, the variables that point
    boto3, pyarrow and Ray at it."""

    endpoint: str
    bucket: str
    env: dict[str, str] = field(default_factory=dict)

    def uri(self, path: str = "") -> str:
        """`s3://<bucket>/<path>`."""
        return f"s3://{self.bucket}/{path.lstrip('/')}"

    def client(self):
        """A boto3 S3 client of this server (whatever this process's environment holds)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.env["AWS_DEFAULT_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object's key under `prefix` in the bucket, sorted (not the empty "folder/" keys pyarrow makes)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        keys = (item["Key"] for page in pages for item in page.get("Contents", []))
        return sorted(key for key in keys if not key.endswith("/"))


@cache
def session_env() -> dict[str, str]:
    """The AWS_* variables of this session's servers: a port free when first asked, test credentials."""
    (port,) = free_ports(1)
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def _wait_until_up(endpoint: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto server exited with {server.returncode} before it answered at {endpoint}")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    raise RuntimeError(f"moto server did not answer at {endpoint} within {START_TIMEOUT_S:.0f} s")


def start_object_store() -> tuple[ObjectStore, subprocess.Popen]:
    """Start moto's server at `session_env()`'s endpoint and make the bucket; the caller stops the process."""
    env = session_env()
    endpoint = env["AWS_ENDPOINT_URL"]
    port = endpoint.rsplit(":", 1)[1]
    server = spawn(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    store = ObjectStore(endpoint, BUCKET, dict(env))
    try:
        _wait_until_up(endpoint, server)
        store.client().create_bucket(Bucket=BUCKET)
    except BaseException:
        end(server)
        raise
    return store, server


def module_bucket(module_name: str) -> str:
    """`ecg-fm-<module>`: a valid bucket name (lowercase, hyphens) for a test module."""
    return f"ecg-fm-{module_name.rsplit('.', 1)[-1].replace('_', '-')}"[:63]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStore]:
    """moto's S3 server for the whole session (with the default bucket), its AWS_* variables set in this
    process until the session ends."""
    store, server = start_object_store()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in store.env.items():
            patch.setenv(name, value)
        try:
            yield store
        finally:
            end(server)


@pytest.fixture(scope="module")
def object_store(s3_server: ObjectStore, request) -> ObjectStore:
    """An empty bucket of this module's own on the session's S3 server."""
    store = replace(s3_server, bucket=module_bucket(request.module.__name__))
    store.client().create_bucket(Bucket=store.bucket)
    return store
