"""Signal preprocessing: the one code path that prepare, serve and score all run.

A `Recording` (any lead set, rate and length, physical units) becomes model input: 12 leads in
standard order, `fs` Hz, `seconds` long, normalised, float16. Defaults follow MELP/MERL so published
numbers stay comparable: 500 Hz, 10 s (crop or zero-pad), per-record min-max, no band-pass.

Policy for damaged signals, each decision a flag on the kept row or a `RecordRejected` reason:
- invalid samples (NaN, ±Inf, WFDB's invalid value): runs up to `max_gap_seconds` are linearly
  interpolated and flagged; a longer run rejects the record; a lead with no valid sample is masked;
- a flat lead (peak-to-peak under `flat_mv`) is masked and zero-filled, as a missing lead is;
- fewer than `min_leads` usable leads, a rate outside [`min_fs`, `max_fs`], or a record shorter
  than `min_seconds` rejects the record.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Literal

import numpy as np
from scipy import signal as scipy_signal

from pipelines.data.leads import STANDARD_LEADS, arrange_leads
from pipelines.data.rejection import RecordRejected
from pipelines.data.wfdb_io import Recording


@dataclass(frozen=True)
class PreprocessConfig:
    """How every record is turned into model input."""

    fs: int = 500
    """Output sampling rate in Hz; records at other rates are resampled (polyphase, anti-aliased)."""
    seconds: float = 10.0
    """Output length; longer records are cropped from the start, shorter ones zero-padded."""
    normalize: Literal["minmax", "zscore", "none"] = "minmax"
    """minmax: per record over its real leads to [0, 1] (MERL); zscore: per lead; none: mV."""
    bandpass: tuple[float, float] | None = None
    """Optional zero-phase Butterworth band-pass in Hz, e.g. (0.5, 40.0)."""
    long_records: Literal["crop", "windows"] = "crop"
    """crop: one row from the first `seconds`; windows: one row per full non-overlapping window."""
    min_seconds: float = 5.0
    """Records shorter than this (after resampling) are rejected rather than mostly padding."""
    min_leads: int = 1
    """Records with fewer usable standard leads are rejected."""
    max_gap_seconds: float = 0.05
    """Longest run of invalid samples that is interpolated; a longer one rejects the record."""
    flat_mv: float = 1e-3
    """A lead whose peak-to-peak amplitude is below this (mV) is treated as missing."""
    min_fs: float = 50.0
    max_fs: float = 20_000.0

    def __post_init__(self) -> None:
        if self.fs <= 0 or self.seconds <= 0:
            raise ValueError(f"fs and seconds must be positive, got fs={self.fs}, seconds={self.seconds}")
        if self.normalize not in ("minmax", "zscore", "none"):
            raise ValueError(f"normalize must be minmax, zscore or none, got {self.normalize!r}")
        if self.long_records not in ("crop", "windows"):
            raise ValueError(f"long_records must be crop or windows, got {self.long_records!r}")
        if self.bandpass is not None:
            low, high = self.bandpass
            if not 0 < low < high < self.fs / 2:
                raise ValueError(f"bandpass {self.bandpass} must satisfy 0 < low < high < fs/2 = {self.fs / 2}")
        if not 1 <= self.min_leads <= len(STANDARD_LEADS):
            raise ValueError(f"min_leads must be in 1..12, got {self.min_leads}")

    @property
    def n_samples(self) -> int:
        return int(round(self.fs * self.seconds))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedSignal:
    """Model input for one ECG (or one window of it).

    signal: float16 [12, n_samples], leads in `STANDARD_LEADS` order, absent leads zero.
    lead_mask: bool [12], True where the lead is real.
    flags: repairs applied, as "kind: detail" ("invalid samples interpolated: 12 in lead V2",
    "padded: from 8.00 s"), so the manifest counts repairs by kind.
    """

    signal: np.ndarray
    lead_mask: np.ndarray
    flags: list[str]


CROP_KEEPS_WINDOWS = 2
"""Cropping reads only the first this-many windows of a record (the one scored, and as much again so
resampling and band-pass filtering meet no edge inside it): a record up to that length is prepared
exactly as if it were read whole, and a long one costs no more than that."""


def preprocess(recording: Recording, config: PreprocessConfig) -> PreparedSignal:
    """One ECG → model input, cropped to the configured length; raises `RecordRejected`."""
    signal, mask, flags = _clean(recording, config, crop=True)
    return _finish(_fit_length(signal, config, flags), mask, config, flags)


def preprocess_windows(recording: Recording, config: PreprocessConfig) -> list[PreparedSignal]:
    """Model inputs per `config.long_records`: one cropped row, or one per full window."""
    signal, mask, flags = _clean(recording, config, crop=config.long_records == "crop")
    n = config.n_samples
    if config.long_records == "crop" or signal.shape[1] < 2 * n:
        return [_finish(_fit_length(signal, config, flags), mask, config, flags)]
    return [
        _finish(signal[:, start : start + n], mask, config, flags)
        for start in range(0, signal.shape[1] - n + 1, n)
    ]


def _clean(
    recording: Recording, config: PreprocessConfig, crop: bool
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Leads arranged, invalid samples repaired, flat leads masked, resampled and filtered; with `crop`,
    only the first `CROP_KEEPS_WINDOWS` windows of the record, cut before any of that work.

    Returns (signal float32 [12, T'] at config.fs, lead_mask bool [12], flags).
    """
    if not config.min_fs <= recording.fs <= config.max_fs:
        raise RecordRejected(f"implausible sampling rate: {recording.fs:g} Hz in header")
    raw = recording.signal
    if crop:
        raw = raw[:, : math.ceil(CROP_KEEPS_WINDOWS * config.seconds * recording.fs)]
    signal, mask, ignored = arrange_leads(raw, recording.lead_names)
    flags = list(recording.flags) + ([f"ignored non-standard leads: {', '.join(ignored)}"] if ignored else [])
    if not mask.any():
        raise RecordRejected(f"no standard leads: none among {', '.join(recording.lead_names) or 'no leads'}")
    _repair_invalid(signal, mask, recording.fs, config, flags)
    _mask_flat(signal, mask, config, flags)
    usable = int(mask.sum())
    if usable < config.min_leads:
        raise RecordRejected(f"too few leads: only {usable} usable leads; {config.min_leads} required")
    signal = _resample(signal, mask, recording.fs, config.fs)
    if config.bandpass is not None:
        sos = scipy_signal.butter(3, config.bandpass, btype="bandpass", fs=config.fs, output="sos")
        signal[mask] = scipy_signal.sosfiltfilt(sos, signal[mask], axis=1)
    seconds = signal.shape[1] / config.fs
    if seconds < config.min_seconds:
        raise RecordRejected(f"too short: {seconds:.2f} s, minimum {config.min_seconds:g} s")
    return signal, mask, flags


def _repair_invalid(signal: np.ndarray, mask: np.ndarray, fs: float, config: PreprocessConfig, flags: list[str]) -> None:
    """Interpolate short runs of invalid samples in place; mask leads with none valid."""
    invalid = ~np.isfinite(signal)
    if not invalid.any():
        return
    max_gap = int(round(config.max_gap_seconds * fs))
    for lead in np.flatnonzero(invalid.any(axis=1) & mask):
        bad = invalid[lead]
        name = STANDARD_LEADS[lead]
        if bad.all():
            signal[lead] = 0.0
            mask[lead] = False
            flags.append(f"no valid samples, masked: lead {name}")
            continue
        start, length = _longest_run(bad)
        if length > max_gap:
            raise RecordRejected(
                f"invalid-sample gap too long: run of {length} samples ({length / fs:.2f} s) in lead {name} "
                f"at {start / fs:.2f} s; at most {config.max_gap_seconds:g} s is interpolated"
            )
        positions = np.arange(bad.size)
        signal[lead, bad] = np.interp(positions[bad], positions[~bad], signal[lead, ~bad])
        flags.append(f"invalid samples interpolated: {int(bad.sum())} in lead {name}")


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """(start, length) of the longest run of True in a 1-D bool array that has at least one True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    starts, ends = edges[::2], edges[1::2]
    longest = int(np.argmax(ends - starts))
    return int(starts[longest]), int(ends[longest] - starts[longest])


def _mask_flat(signal: np.ndarray, mask: np.ndarray, config: PreprocessConfig, flags: list[str]) -> None:
    flat = mask & (np.ptp(signal, axis=1) < config.flat_mv)
    if flat.any():
        signal[flat] = 0.0
        mask[flat] = False
        names = ", ".join(STANDARD_LEADS[i] for i in np.flatnonzero(flat))
        flags.append(f"flat leads masked: {names}")
        if not mask.any():
            raise RecordRejected(f"flat signal: every lead is constant ({names})")


def _resample(signal: np.ndarray, mask: np.ndarray, fs_in: float, fs_out: int) -> np.ndarray:
    """Polyphase resampling of [12, T] from fs_in to fs_out along time, of the present leads (`mask`);
    absent ones stay zero."""
    if fs_in == fs_out:
        return signal
    ratio = Fraction(fs_out / fs_in).limit_denominator(1000)
    present = scipy_signal.resample_poly(signal[mask], ratio.numerator, ratio.denominator, axis=1)
    resampled = np.zeros((len(signal), present.shape[1]), dtype=np.float32)
    resampled[mask] = present
    return resampled


def _fit_length(signal: np.ndarray, config: PreprocessConfig, flags: list[str]) -> np.ndarray:
    """Crop [12, T] to the first n_samples, or zero-pad it at the end (flagged)."""
    n = config.n_samples
    if signal.shape[1] >= n:
        return signal[:, :n]
    flags.append(f"padded: from {signal.shape[1] / config.fs:.2f} s")
    return np.pad(signal, ((0, 0), (0, n - signal.shape[1])))


def _finish(signal: np.ndarray, mask: np.ndarray, config: PreprocessConfig, flags: list[str]) -> PreparedSignal:
    """Normalise [12, n_samples] over its real leads and cast to float16."""
    signal = signal.astype(np.float32, copy=True)
    real = signal[mask]
    if config.normalize == "minmax":
        low, high = real.min(), real.max()
        signal = (signal - low) / max(high - low, 1e-8)
    elif config.normalize == "zscore":
        mean = signal.mean(axis=1, keepdims=True)
        std = signal.std(axis=1, keepdims=True)
        signal = (signal - mean) / np.maximum(std, 1e-6)
    signal[~mask] = 0.0
    return PreparedSignal(signal=signal.astype(np.float16), lead_mask=mask.copy(), flags=list(flags))
