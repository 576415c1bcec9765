"""Folders and files on the local disk or in an object store, named by a path or a URI, one API for both.

    run = Location.of("s3://bucket/runs/x")          # or "runs/x", or "gs://…", "abfs://…"
    (run / "metrics.json").write_json({"step": 40})
    run.child("export").upload_from(local_export)    # a local folder copied in, file by file
    model_dir = cached_copy("s3://bucket/runs/x/export")   # a local folder to load from, downloaded once

Everything goes through pyarrow's file systems (`pyarrow.fs.FileSystem.from_uri`), which Ray Data and
Ray Train use too, so one set of credentials reaches all of them: for S3, the standard variables
(`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` for an
S3-compatible server such as MinIO or moto). Object stores have no folders and no rename: a "folder" is
a key prefix, it exists when a key lies under it, and writes land in place (see `pipelines.outputs`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
from filelock import FileLock

log = logging.getLogger("pipelines.storage")

CACHE_ENV = "ECG_FM_CACHE"
"""Where `cached_copy` keeps downloaded folders (default ~/.cache/ecg-fm)."""
DOWNLOAD_ATTEMPTS = 3
STALE_COPY_S = 24 * 3600
"""A cached copy of an older listing is removed once unused this long (no loader takes a day)."""


def is_uri(where: str | os.PathLike) -> bool:
    """True for `scheme://…` (s3, gs, abfs, file, …); False for a plain path."""
    return "://" in str(where)


@dataclass(frozen=True)
class Location:
    """A file or folder: `filesystem` and the `path` within it, and `uri`, how to name it to a person or
    to another library (an absolute path for local files, the URI as given otherwise)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    @classmethod
    def of(cls, where: str | os.PathLike | Location, *, unsigned: bool = False) -> Location:
        """`where` resolved; `unsigned`: an `s3://` URI read without credentials (unsigned requests: public
        buckets such as PhysioNet's), the endpoint and region still from `AWS_ENDPOINT_URL`, `AWS_DEFAULT_REGION`."""
        if isinstance(where, Location):
            return where
        where = str(where)
        if unsigned:
            return cls._unsigned(where)
        if is_uri(where):
            filesystem, path = pafs.FileSystem.from_uri(where)
            return cls(filesystem, path.rstrip("/"), where.rstrip("/"))
        absolute = str(Path(where).absolute())
        return cls(pafs.LocalFileSystem(), absolute, absolute)

    @classmethod
    def _unsigned(cls, uri: str) -> Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"{uri}: unsigned requests are for s3:// URIs")
        filesystem = pafs.S3FileSystem(
            anonymous=True,
            endpoint_override=os.environ.get("AWS_ENDPOINT_URL") or None,
            region=os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        )
        return cls(filesystem, uri.removeprefix("s3://").rstrip("/"), uri.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return isinstance(self.filesystem, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        return Location(self.filesystem, self.path.rsplit("/", 1)[0], self.uri.rsplit("/", 1)[0])

    def child(self, *names: str) -> Location:
        suffix = "/".join(name.strip("/") for name in names)
        return Location(self.filesystem, f"{self.path}/{suffix}", f"{self.uri}/{suffix}")

    __truediv__ = child

    def __str__(self) -> str:
        return self.uri

    def _info(self) -> pafs.FileInfo:
        return self.filesystem.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._info().type == pafs.FileType.Directory

    def files(self, recursive: bool = True) -> list[pafs.FileInfo]:
        """The files under this folder (none when it does not exist), sorted by path."""
        if not self.is_dir():
            return []
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        return sorted((i for i in self.filesystem.get_file_info(selector) if i.type == pafs.FileType.File), key=lambda i: i.path)

    def is_empty_or_missing(self) -> bool:
        if not self.exists():
            return True
        if not self.is_dir():
            return False
        selector = pafs.FileSelector(self.path, recursive=False, allow_not_found=True)
        return not self.filesystem.get_file_info(selector)

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.path) as stream:
            return stream.read()

    def open(self):
        """The file as a seekable binary file object (pandas reads CSVs from it)."""
        return self.filesystem.open_input_file(self.path)

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def read_json(self):
        return json.loads(self.read_bytes())

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file (parent folders made as needed)."""
        self.filesystem.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        with self.filesystem.open_output_stream(self.path) as stream:
            stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_json(self, value, **dumps) -> None:
        self.write_text(json.dumps(value, indent=2, **dumps))

    def mkdir(self) -> None:
        self.filesystem.create_dir(self.path, recursive=True)

    def delete(self) -> None:
        """Delete this folder and everything under it (or this file); nothing when absent."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.filesystem.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.filesystem.delete_file(self.path)

    def upload_from(self, local: str | os.PathLike) -> None:
        """Copy a local folder's files under this folder (what is there already under the same names is
        replaced)."""
        self.mkdir()
        pafs.copy_files(str(Path(local).absolute()), self.path, pafs.LocalFileSystem(), self.filesystem, use_threads=True)

    def download_to(self, local: str | os.PathLike) -> None:
        """Copy this folder's files under a local folder."""
        Path(local).mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self.path, str(Path(local).absolute()), self.filesystem, pafs.LocalFileSystem(), use_threads=True)


def cached_copy(where: str | os.PathLike) -> Path:
    """A local folder holding what `where` holds: the folder itself when it is local, else a copy in the
    cache (`$ECG_FM_CACHE`, default ~/.cache/ecg-fm/copies/<uri hash>/<listing stamp>/).

    A copy is named by the remote folder's listing (names, sizes, modification times), so a changed folder
    gets a new copy beside the old one, and a copy is never replaced or deleted under a caller that loads
    from it (copies of other listings unused for `STALE_COPY_S` are removed). Callers on one node (Serve
    replicas, scoring actors starting together) take a file lock: one downloads, the others wait and reuse
    its copy; a download killed half-way leaves a `.download-*` folder that the next holder of the lock
    removes. A download is kept only if the folder's listing is the same after it as before (else it is
    repeated), so a copy never mixes two versions of a changed file. ValueError when `where` holds no file."""
    location = Location.of(where)
    if location.is_local:
        return Path(location.path)
    folder = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ecg-fm") / "copies"
    folder = folder / hashlib.sha256(location.uri.encode()).hexdigest()[:24]
    stamp = _listing_stamp(location)
    if (folder / stamp).is_dir():
        return _used(folder / stamp)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / ".lock"):
        for _ in range(DOWNLOAD_ATTEMPTS):
            if (folder / stamp).is_dir():
                return _used(folder / stamp)
            _remove_leftovers(folder, keep=stamp)
            download = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
            location.download_to(download)
            after = _listing_stamp(location)
            if after != stamp:  # a file changed while it was downloaded: the copy may mix two versions
                shutil.rmtree(download)
                stamp = after
                continue
            os.replace(download, folder / stamp)
            log.info("downloaded %s to %s", location.uri, folder / stamp)
            return folder / stamp
    raise OSError(f"{location} changed during each of {DOWNLOAD_ATTEMPTS} downloads; try again once it is written")


def _listing_stamp(location: Location) -> str:
    """A name for what `location` holds now: a hash of its files' relative names, sizes and mtimes."""
    files = location.files()
    if not files:
        raise ValueError(f"{location} holds no file (is the URI right, and are the credentials for its store set?)")
    listing = [(i.path.removeprefix(location.path), i.size, i.mtime_ns) for i in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:24]


def _remove_leftovers(folder: Path, keep: str) -> None:
    """Under the lock: killed downloads, and copies other than `keep` that no one has used for STALE_COPY_S."""
    for entry in folder.iterdir():
        if entry.name.startswith(".download-") or (
            entry.is_dir() and entry.name != keep and time.time() - entry.stat().st_mtime > STALE_COPY_S
        ):
            shutil.rmtree(entry, ignore_errors=True)


def _used(copy: Path) -> Path:
    """`copy`, marked as used now (its mtime), so `_remove_leftovers` keeps it."""
    os.utime(copy)
    return copy
