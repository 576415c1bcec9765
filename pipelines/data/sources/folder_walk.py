"""Walking a folder tree of WFDB records so that nothing in it is passed over without a word.

Every header (`.hea`) is an entry to read. Signal files (`.dat`, `.mat`) with no header of the same
name beside them (CPSC2018's own `.mat` + `REFERENCE.csv` layout, a header lost in a copy) become
entries with a reason, as do links to nothing and folders that cannot be walked. Symlinked folders
are followed once each: a link whose target was already walked (a loop back to an ancestor, a second
link to one folder) becomes an entry with a reason instead of listing the same records twice, or
forever. A signal file named in another record's header under a different stem counts as an orphan:
headers are not opened while listing, which stays cheap on 800k-record trees.

A tree in an object store has no links and no folders of its own: its keys are listed by prefix, each
top-level prefix in a thread of its own, and the same rules make its entries.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipelines.storage import Location

SIGNAL_SUFFIXES = (".dat", ".mat")
LISTING_THREADS = 16
"""Prefixes of a bucket archive listed at once."""


@dataclass(frozen=True)
class TreeEntry:
    """A header to read (reason None), or a file or folder that cannot become a record, with why.

    path: relative to the walked root, '/'-separated, through the links followed ("g1/A0001.hea").
    """

    path: str
    reason: str | None = None


def walk_records(root: Location) -> list[TreeEntry]:
    """Every entry under `root`, sorted by path; the real tree is walked before symlinked folders."""
    if not root.is_local:
        return _list_keys(root)
    top = os.path.join(root.path, "")
    walked: dict[str, str] = {}  # real path of each folder walked → the path it was listed under
    links: list[str] = []
    entries: list[TreeEntry] = []
    _walk_folder(top, top, walked, links, entries)
    for link in links:  # grows while linked folders are walked
        target = os.path.realpath(link)
        if target in walked:
            shown, first = _relative(link, top), _relative(walked[target], top) or "."
            entries.append(
                TreeEntry(shown, f"symlinked folder not followed: {shown} → {target} is already listed as {first}")
            )
        else:
            _walk_folder(link, top, walked, links, entries)
    return sorted(entries, key=lambda entry: entry.path.split("/"))


def _walk_folder(folder: str, top: str, walked: dict[str, str], links: list[str], entries: list[TreeEntry]) -> None:
    """Walk `folder` (under the root `top`) without following links: headers, orphan signal files, broken
    links and unreadable folders into `entries`, symlinked subfolders into `links`. One `scandir` per
    folder and no call per file beyond it (file types come with the listing), and strings rather than
    `Path`s: trees of 800k records list in seconds."""
    pending = [folder]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in walked:  # reached again through a linked ancestor: listed once already
            continue
        walked[real] = folder
        try:
            with os.scandir(folder) as listing:
                items = sorted(listing, key=lambda item: item.name)
        except OSError as error:
            entries.append(
                TreeEntry(_relative(folder, top), f"unreadable folder: {_relative(folder, top)}: {error.strerror}")
            )
            continue
        names = {item.name for item in items}
        subfolders = []
        for item in items:
            relative = _relative(item.path, top)
            stem, suffix = os.path.splitext(item.name)
            if item.is_dir():
                (links if item.is_symlink() else subfolders).append(item.path)
            elif item.is_symlink() and not os.path.exists(item.path):
                entries.append(
                    TreeEntry(relative, f"broken link: {relative} → {os.path.realpath(item.path)} does not exist")
                )
            elif suffix == ".hea":
                entries.append(TreeEntry(relative))
            elif suffix in SIGNAL_SUFFIXES and f"{stem}.hea" not in names:
                entries.append(
                    TreeEntry(relative, f"no header: orphan signal file {relative} (no {stem}.hea beside it)")
                )
        pending.extend(reversed(subfolders))  # walked in name order


def _list_keys(root: Location) -> list[TreeEntry]:
    """The entries of an archive in an object store: its keys listed by prefix in parallel (the top level
    first, then every top-level prefix recursively, `LISTING_THREADS` at once)."""
    filesystem = root.filesystem

    def listed(path: str, recursive: bool) -> list[pafs.FileInfo]:
        return filesystem.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))

    top = listed(root.path, recursive=False)
    files = [info.path for info in top if info.type == pafs.FileType.File]
    prefixes = [info.path for info in top if info.type == pafs.FileType.Directory]
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        for infos in pool.map(lambda prefix: listed(prefix, recursive=True), prefixes):
            files += [info.path for info in infos if info.type == pafs.FileType.File]
    keys = {path[len(root.path) + 1 :] for path in files}
    entries = []
    for relative in keys:
        stem, suffix = posixpath.splitext(relative)
        if suffix == ".hea":
            entries.append(TreeEntry(relative))
        elif suffix in SIGNAL_SUFFIXES and f"{stem}.hea" not in keys:
            header = posixpath.basename(stem) + ".hea"
            entries.append(TreeEntry(relative, f"no header: orphan signal file {relative} (no {header} beside it)"))
    return sorted(entries, key=lambda entry: entry.path.split("/"))


def _relative(path: str, top: str) -> str:
    """`path` (under `top`, which ends in a separator) relative to it, '/'-separated."""
    return path[len(top) :].replace(os.sep, "/")
