"""Reading and writing WFDB records (`.hea` header + `.dat` samples).

`read_record` has a fast path for the layout that PTB-XL, MIMIC-IV-ECG and most CinC folders use:
one segment, every signal in one format-16 file, one sample per frame. There the header is parsed
here and the samples come straight from `numpy.fromfile` (tens of times faster than `wfdb.rdsamp`,
whose cost is header parsing, not decoding). Everything else goes through `wfdb.rdrecord`.
Tests check the fast path sample for sample against wfdb's reader.

Both paths return a `Recording` in physical units (mV) and raise `RecordRejected` with a reason
that names the record and what is wrong with it. A record whose signals span several files keeps the
leads of the files present when one is missing, and says which leads went in its `flags`.

A record may live in an object store (`s3://bucket/files/p1000/…/40689238`): its files are read whole,
one request each (`RecordFiles`), and parsed from memory; what goes through `wfdb.rdrecord` is first
copied, header and the files it names (segments too), into a temporary folder of its own.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipelines.data.rejection import RecordRejected
from pipelines.storage import Location, is_uri

if TYPE_CHECKING:
    import wfdb

FORMAT16_NAN = -32768  # WFDB's invalid-sample value for format 16
WRITE_GAIN = 1000.0  # adc units per mV, as PTB-XL and MIMIC-IV-ECG store them


@dataclass
class Recording:
    """One ECG as read from disk.

    signal: float32 [n_leads, T] in mV; NaN where the file marks a sample invalid.
    lead_names: as written in the header (not yet canonicalised).
    comments: header comment lines without the leading '#'.
    flags: what reading had to leave out ("missing signal file: s0010_re.xyz (leads vx, vy, vz)"); they
        become flags of the prepared row.
    """

    name: str
    signal: np.ndarray
    fs: float
    lead_names: list[str]
    comments: list[str] = field(default_factory=list)
    flags: list[str] = field(default_factory=list)


@dataclass
class _SignalSpec:
    file_name: str
    fmt: str
    gain: float
    baseline: int
    lead_name: str


class RecordFiles:
    """The files of one record: its header and the files beside it, on a local disk or in an object store.

    `record_path` names the record without extension; `unsigned`: an s3:// record read without credentials."""

    def __init__(self, record_path: str | os.PathLike, unsigned: bool = False) -> None:
        record_path = str(record_path)
        self.remote = is_uri(record_path)
        if self.remote:
            record = Location.of(record_path, unsigned=unsigned)
            self.folder, self.name = record.parent, record.name
        else:
            path = Path(record_path)
            self.folder, self.name = path.parent, path.name

    def shown(self, file_name: str) -> str:
        """The file as a person names it: its path, or its URI."""
        return f"{self.folder.uri}/{file_name}" if self.remote else str(self.folder / file_name)

    def read(self, file_name: str) -> bytes:
        """The whole file `file_name` beside the record; FileNotFoundError when it is absent."""
        if not self.remote:
            return (self.folder / file_name).read_bytes()
        location = self.folder.child(file_name)
        try:
            return location.read_bytes()
        except OSError as error:
            if not location.exists():
                raise FileNotFoundError(self.shown(file_name)) from None
            raise error

    @contextmanager
    def on_disk(self, header_text: str) -> Iterator[Path]:
        """The record path to hand `wfdb.rdrecord`: the record itself on a local disk; for a remote record,
        a temporary copy of its header and the files that header names (a multi-segment record's segment
        headers and their files too), those that exist."""
        if not self.remote:
            yield self.folder / self.name
            return
        import wfdb

        with tempfile.TemporaryDirectory(prefix="record-") as scratch:
            (Path(scratch) / f"{self.name}.hea").write_text(header_text)
            header = wfdb.rdheader(str(Path(scratch) / self.name))
            wanted = list(getattr(header, "file_name", None) or [])  # a multi-segment header names segments
            for segment in getattr(header, "seg_name", None) or []:
                if segment != "~" and self._copy(f"{segment}.hea", scratch):
                    wanted += wfdb.rdheader(str(Path(scratch) / segment)).file_name or []
            for file_name in dict.fromkeys(wanted):
                self._copy(file_name, scratch)
            yield Path(scratch) / self.name

    def _copy(self, file_name: str, scratch: str) -> bool:
        try:
            (Path(scratch) / file_name).write_bytes(self.read(file_name))
        except FileNotFoundError:
            return False
        return True


def read_record(record_path: str | os.PathLike, *, unsigned: bool = False) -> Recording:
    """Read `record_path` (no extension; a path or an object-store URI) into a `Recording`; raise
    `RecordRejected` if unusable."""
    files = RecordFiles(record_path, unsigned)
    header_name = f"{files.name}.hea"
    try:
        header_text = decode_header(files.read(header_name))
    except FileNotFoundError:
        raise RecordRejected(f"missing record: no header file {files.shown(header_name)}") from None
    except OSError as error:
        raise RecordRejected(f"unreadable header: {files.shown(header_name)}: {error}") from None
    try:
        fast = _parse_fast_header(header_text)
    except (ValueError, IndexError) as error:
        raise RecordRejected(f"unreadable header: {files.shown(header_name)}: {error}") from None
    if fast is None:
        with files.on_disk(header_text) as on_disk:
            return _read_with_wfdb(on_disk, header_comments(header_text), shown=files.shown(files.name))
    fs, sig_len, specs, comments = fast
    return _read_format16(files, fs, sig_len, specs, comments)


def decode_header(raw: bytes) -> str:
    """Header bytes as text: UTF-8 (what current writers produce, and what reports in German, say, need),
    latin-1 for older files that are not valid UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def header_comments(header_text: str) -> list[str]:
    """The header's comment lines without the leading '#'."""
    lines = (line.strip() for line in header_text.splitlines())
    return [line[1:].strip() for line in lines if line.startswith("#")]


def _parse_fast_header(text: str) -> tuple[float, int, list[_SignalSpec], list[str]] | None:
    """Parse a header whose signals the fast path can read; None when wfdb must handle it."""
    lines = [line.strip() for line in text.splitlines()]
    comments = header_comments(text)
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError("empty header")
    record_fields = lines[0].split()
    if "/" in record_fields[0]:
        return None  # multi-segment record
    n_sig = int(record_fields[1])
    if n_sig < 1 or len(record_fields) < 4:
        return None  # no signals, or no declared length: let wfdb decide
    fs = float(record_fields[2].split("/")[0])
    sig_len = int(record_fields[3])
    if len(lines) - 1 < n_sig:
        raise ValueError(f"header declares {n_sig} signals but describes {len(lines) - 1}")
    specs = []
    for line in lines[1 : 1 + n_sig]:
        parts = line.split(maxsplit=8)
        if len(parts) < 9 or parts[1] != "16":
            return None  # other format, skew, byte offset, or unnamed signals
        gain_field = parts[2].split("/")[0]
        gain_text, _, baseline_text = gain_field.partition("(")
        gain = float(gain_text)
        if gain == 0:
            return None  # uncalibrated: wfdb applies its default gain
        baseline = int(baseline_text.rstrip(")")) if baseline_text else int(parts[4])
        specs.append(_SignalSpec(parts[0], parts[1], gain, baseline, parts[8].strip()))
    if len({spec.file_name for spec in specs}) != 1:
        return None
    return fs, sig_len, specs, comments


def _read_format16(
    files: RecordFiles, fs: float, sig_len: int, specs: list[_SignalSpec], comments: list[str]
) -> Recording:
    data_name = specs[0].file_name
    n_sig = len(specs)
    try:
        data = files.read(data_name)
    except FileNotFoundError:
        raise RecordRejected(f"missing record: no data file {files.shown(data_name)}") from None
    except OSError as error:
        raise RecordRejected(f"unreadable data file: {files.shown(data_name)}: {error}") from None
    samples = np.frombuffer(data, dtype="<i2", count=len(data) // 2)
    expected = n_sig * sig_len
    if samples.size < expected:
        raise RecordRejected(
            f"truncated signal: {data_name} holds {samples.size // n_sig} of {sig_len} "
            f"samples per lead for {n_sig} leads"
        )
    if samples.size > expected:
        raise RecordRejected(
            f"header disagrees with data: {data_name} holds {samples.size} samples, "
            f"header declares {n_sig} leads x {sig_len} = {expected}"
        )
    digital = samples.reshape(sig_len, n_sig).T  # [n_sig, T]
    gain = np.array([spec.gain for spec in specs], dtype=np.float32)[:, None]
    baseline = np.array([spec.baseline for spec in specs], dtype=np.float32)[:, None]
    signal = (digital.astype(np.float32) - baseline) / gain
    signal[digital == FORMAT16_NAN] = np.nan
    return Recording(
        name=files.name,
        signal=signal,
        fs=fs,
        lead_names=[spec.lead_name for spec in specs],
        comments=comments,
    )


def _read_with_wfdb(record_path: Path, comments: list[str], shown: str) -> Recording:
    """wfdb's reader for the formats the fast path does not take (`record_path` on a local disk; `shown`, the
    record as reasons name it); the comments come from our own decoding of the header (wfdb reads latin-1)."""
    try:
        record, flags = _read_present_signal_files(record_path, shown)
    except RecordRejected:
        raise
    except Exception as error:  # wfdb raises many types for damaged files
        message = str(error).replace(str(record_path.parent), shown.rsplit("/", 1)[0])
        raise RecordRejected(f"unreadable record: {shown}: {type(error).__name__}: {message}") from None
    if record.p_signal is None or record.p_signal.size == 0:
        raise RecordRejected(f"empty record: {shown} has no samples")
    if record.sig_len and record.p_signal.shape[0] < record.sig_len:
        raise RecordRejected(
            f"truncated signal: {record_path.name} holds {record.p_signal.shape[0]} of "
            f"{record.sig_len} samples per lead"
        )
    return Recording(
        name=record_path.name,
        signal=np.ascontiguousarray(record.p_signal.T, dtype=np.float32),
        fs=float(record.fs),
        lead_names=list(record.sig_name),
        comments=comments,
        flags=flags,
    )


def _read_present_signal_files(record_path: Path, shown: str) -> tuple[wfdb.Record, list[str]]:
    """(wfdb record, flags): the whole record, or, when some of its signal files are missing (a
    multi-file record whose `.xyz` was not copied), the signals of the files present and a flag per
    missing file. No file present rejects the record."""
    import wfdb

    try:
        return wfdb.rdrecord(str(record_path)), []
    except FileNotFoundError:
        header = wfdb.rdheader(str(record_path))
    folder = shown.rsplit("/", 1)[0]
    segments = [name for name in getattr(header, "seg_name", None) or [] if name != "~"]  # a multi-segment record
    for segment in segments:
        if not (record_path.parent / f"{segment}.hea").is_file():
            raise RecordRejected(f"missing segment: no header file {folder}/{segment}.hea ({len(segments)} segments named)")
    files = getattr(header, "file_name", None) or []
    missing = [name for name in dict.fromkeys(files) if not (record_path.parent / name).is_file()]
    if not missing:
        return wfdb.rdrecord(str(record_path)), []  # another file was missing: raises again, with its name
    present = [channel for channel, name in enumerate(files) if name not in missing]
    if not present:
        raise RecordRejected(f"missing record: no data file {folder}/{missing[0]}")
    flags = [
        f"missing signal file: {name} (leads {', '.join(lead for lead, f in zip(header.sig_name, files) if f == name)})"
        for name in missing
    ]
    return wfdb.rdrecord(str(record_path), channels=present), flags


def write_record(
    record_path: str | os.PathLike,
    signal_mv: np.ndarray,
    fs: int,
    lead_names: Sequence[str],
    comments: Sequence[str] = (),
) -> None:
    """Write `signal_mv` [n_leads, T] (mV) as a format-16 WFDB record at `record_path` (no extension).

    Gain 1000 adc/mV, baseline 0, as PTB-XL stores records; NaN becomes WFDB's invalid sample and
    values beyond ±32.767 mV are clipped. Produces what `wfdb.wrsamp` would, much faster.
    """
    record_path = Path(record_path)
    n_leads, sig_len = signal_mv.shape
    if len(lead_names) != n_leads:
        raise ValueError(f"{len(lead_names)} lead names for {n_leads} leads")
    scaled = signal_mv * WRITE_GAIN
    invalid = np.isnan(scaled)
    has_invalid = invalid.any()
    if has_invalid:
        scaled = np.where(invalid, 0.0, scaled)
    digital = np.clip(np.rint(scaled), -32767, 32767).astype("<i2")
    if has_invalid:
        digital[invalid] = FORMAT16_NAN
    record_path.parent.mkdir(parents=True, exist_ok=True)
    # Samples interleave by lead on disk: [T, n_leads] in C order (a strided tofile is ~10x slower).
    np.ascontiguousarray(digital.T).tofile(record_path.with_name(record_path.name + ".dat"))
    checksums = digital.sum(axis=1, dtype=np.int64) % 65536
    checksums = np.where(checksums > 32767, checksums - 65536, checksums)
    dat_name = record_path.name + ".dat"
    lines = [f"{record_path.name} {n_leads} {fs} {sig_len}"]
    for lead, first, checksum in zip(lead_names, digital[:, 0], checksums):
        lines.append(f"{dat_name} 16 {WRITE_GAIN}(0)/mV 16 0 {first} {checksum} 0 {lead}")
    lines.extend(f"# {comment}" for comment in comments)
    record_path.with_name(record_path.name + ".hea").write_text("\n".join(lines) + "\n")
