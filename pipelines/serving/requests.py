"""The HTTP API's request bodies, and their checked conversion into `Recording`s.

`ecg` is one ECG as a leads × samples nested list, several as n × leads × samples, or
`{"b64": …, "shape": [...], "dtype": "float32"}` (little-endian bytes, base64). `leads` names the rows
(any subset of the 12 standard leads; default all 12 in standard order); values are in mV at `fs` Hz.
Every problem becomes a `RequestProblem` naming the field, which the app answers with a 4xx.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field

from pipelines.data.leads import STANDARD_LEADS, lead_index
from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.wfdb_io import Recording

DTYPES = {"float32": "<f4", "float64": "<f8", "int16": "<i2"}


class EncodedArray(BaseModel):
    b64: str = Field(description="little-endian array bytes, base64")
    shape: list[int] = Field(description="[leads, samples] or [n, leads, samples]")
    dtype: Literal["float32", "float64", "int16"] = "float32"


class ECGRequest(BaseModel):
    ecg: list | EncodedArray = Field(description="leads × samples, n × leads × samples, or an encoded array")
    fs: float = Field(500.0, description="sampling rate in Hz")
    leads: list[str] | None = Field(None, description="names of the rows; default the 12 standard leads in order")
    ids: list[str] | None = Field(None, description="an id per ECG, echoed back (default ecg-0, ecg-1, …)")


class ScoreRequest(ECGRequest):
    labels: list[str] | None = Field(
        None, description="class codes of the served task, or free-text prompts; default every class of the task"
    )
    top_k: int = Field(3, ge=1, description="labels listed per ECG, best first")


class RequestProblem(ValueError):
    """A request that cannot be scored: `status` (4xx) and a message naming the field."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field = status, field


def recordings(request: ECGRequest, max_ecgs: int, preprocessing: PreprocessConfig) -> list[Recording]:
    """The request's ECGs as `Recording`s (signal float32 [leads, samples] in mV), checked; the rate
    within `preprocessing`'s bounds (what prepare accepts)."""
    low, high = preprocessing.min_fs, preprocessing.max_fs
    if not math.isfinite(request.fs) or not low <= request.fs <= high:
        raise RequestProblem(422, "fs", f"{request.fs:g} Hz is outside {low:g}-{high:g} Hz")
    array = _decode(request.ecg)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise RequestProblem(
            422, "ecg", f"expected leads × samples or n × leads × samples, got shape {list(array.shape)}"
        )
    if len(array) > max_ecgs:
        raise RequestProblem(413, "ecg", f"{len(array)} ECGs in one request; the limit is {max_ecgs}")
    if not np.isfinite(array).all():
        raise RequestProblem(422, "ecg", "contains NaN or Inf values")
    leads = _leads(request.leads, array.shape[1])
    ids = request.ids or [f"ecg-{i}" for i in range(len(array))]
    if len(ids) != len(array):
        raise RequestProblem(422, "ids", f"{len(ids)} ids for {len(array)} ECGs")
    return [Recording(ecg_id, signal, request.fs, leads) for ecg_id, signal in zip(ids, array.astype(np.float32))]


def _decode(ecg: list | EncodedArray) -> np.ndarray:
    if isinstance(ecg, EncodedArray):
        try:
            raw = base64.b64decode(ecg.b64, validate=True)
        except (binascii.Error, ValueError) as error:
            raise RequestProblem(422, "ecg.b64", f"not valid base64: {error}") from None
        dtype = np.dtype(DTYPES[ecg.dtype])
        expected = math.prod(ecg.shape) * dtype.itemsize
        if len(raw) != expected:
            raise RequestProblem(422, "ecg.b64", f"{len(raw)} bytes; shape {ecg.shape} of {ecg.dtype} needs {expected}")
        return np.frombuffer(raw, dtype=dtype).reshape(ecg.shape)
    try:
        array = np.asarray(ecg, dtype=np.float64)
    except (ValueError, TypeError):
        raise RequestProblem(
            422, "ecg", "must be a rectangular nested list of numbers (rows of equal length)"
        ) from None
    return array


def _leads(leads: list[str] | None, n_rows: int) -> list[str]:
    if leads is None:
        if n_rows != len(STANDARD_LEADS):
            raise RequestProblem(422, "leads", f"required when an ECG has {n_rows} rows (not all 12 standard leads)")
        return list(STANDARD_LEADS)
    if len(leads) != n_rows:
        raise RequestProblem(422, "leads", f"{len(leads)} names for {n_rows} rows")
    unknown = [name for name in leads if lead_index(name) is None]
    if unknown:
        raise RequestProblem(422, "leads", f"unknown lead(s) {', '.join(unknown)}; use {', '.join(STANDARD_LEADS)}")
    if len({lead_index(name) for name in leads}) != len(leads):
        raise RequestProblem(422, "leads", "a lead is named twice")
    return leads
