"""The HTTP API's request bodies, their bounds, and their checked conversion into `Recording`s.

Two bodies carry the same request:
- JSON (`application/json`): `ecg` is one ECG as a leads × samples nested list, several as
  n × leads × samples, or `{"b64": …, "shape": [...], "dtype": "float32"}` (little-endian bytes, base64),
  beside `fs`, `leads`, `ids` (and for scoring `labels`, `top_k`, `explain`; for explaining one ECG's score
  `labels` (one) and `format`; for drafting `max_tokens`, `num_beams`; for searching `k`, and `text` in place
  of `ecg`). Types are strict: `"fs": "500"`, `true` or numbers as strings are refused, as are unknown fields.
- `.npy` (`application/octet-stream`): the array as `numpy.save` writes it (float32, float64 or int16;
  [leads, samples] or [n, leads, samples]), the other fields in the query string
  (`?fs=500&leads=I&leads=II&labels=AFIB`).
`leads` names the rows (any subset of the 12 standard leads; default all 12 in standard order); values
are in mV at `fs` Hz. Every problem becomes a `RequestProblem` naming the field, answered with a 4xx
that never echoes the input back.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.data.leads import STANDARD_LEADS, lead_index
from pipelines.data.preprocess import PreprocessConfig
from pipelines.data.wfdb_io import Recording
from pipelines.retrieval import MAX_K, MAX_QUERY_CHARS

MAX_ECGS = 256
"""ECGs in one request."""
MAX_DURATION_FACTOR = 6
"""An ECG may last at most this many times the model's window (`seconds` of its preprocessing: 60 s for
10 s windows); only the first window is scored."""
MAX_LABELS, MAX_LABEL_CHARS = 256, 512
MAX_EXPLAIN_LABELS = 5
"""Labels explained per ECG (each costs an integrated-gradients pass of 32 forwards and backwards)."""
MAX_EXPLAINED_ECGS = 16
"""ECGs per request with explain (16 × 5 labels: ~6 s of CPU for the tiny config, more for larger ones)."""
MAX_SCORES = 2**14
"""ECGs × labels in one response."""
MAX_ID_CHARS = 256
MAX_BEAMS = 8
"""Beams of a drafted report (each costs a decoder row per step)."""
MAX_PROBLEMS_LISTED = 5
"""Validation errors named in one response."""
JSON, NPY = "application/json", "application/octet-stream"
DTYPES = {"float32": "<f4", "float64": "<f8", "int16": "<i2"}

Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS, pattern=r"\S")]
EcgId = Annotated[str, Field(max_length=MAX_ID_CHARS)]
LeadName = Annotated[str, Field(max_length=8)]
Size = Annotated[int, Field(ge=1, le=2**31)]
QueryText = Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, pattern=r"\S")]


class EncodedArray(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    b64: str = Field(description="little-endian array bytes, base64")
    shape: list[Size] = Field(min_length=2, max_length=3, description="[leads, samples] or [n, leads, samples]")
    dtype: Literal["float32", "float64", "int16"] = "float32"


class ECGOptions(BaseModel):
    """What comes with the ECGs (in the JSON body, or in the query string beside a `.npy` body)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    fs: float = Field(500.0, description="sampling rate in Hz (a number; not a string, not a boolean)")
    leads: list[LeadName] | None = Field(
        None, min_length=1, max_length=len(STANDARD_LEADS), description="names of the rows; default the 12 in order"
    )
    ids: list[EcgId] | None = Field(
        None, max_length=MAX_ECGS, description="an id per ECG, echoed back (default ecg-0, ecg-1, …)"
    )


class ScoreOptions(ECGOptions):
    labels: list[Label] | None = Field(
        None,
        min_length=1,
        max_length=MAX_LABELS,
        description=f"class codes of the served task, or free-text prompts (at most {MAX_LABELS}, "
        f"{MAX_LABEL_CHARS} characters each); absent or null: every class of the task; [] is refused",
    )
    top_k: int = Field(3, ge=1, le=MAX_LABELS, description="labels listed per ECG, best first")
    explain: bool = Field(
        False,
        description=f"evidence per ECG (leads and time segments, by integrated gradients) for each of `labels` "
        f"or, without labels, for its `top_k` best; at most {MAX_EXPLAIN_LABELS} labels explained",
    )


class ExplainOptions(ECGOptions):
    labels: list[Label] = Field(
        min_length=1,
        max_length=1,
        description="the one label explained: a class code of the served task or a free-text prompt, as a "
        "one-item list (the body of a /v1/score request for one ECG and one label)",
    )
    format: Literal["png", "json"] = Field(
        "png",
        description="png: the ECG on paper (3 × 4 + lead-II rhythm strip) with the evidence drawn over it, the "
        "label and its score in the title; json: the evidence as /v1/score's `explain` gives it",
    )


class ECGRequest(ECGOptions):
    ecg: list | EncodedArray = Field(description="leads × samples, n × leads × samples, or an encoded array")


class ScoreRequest(ScoreOptions, ECGRequest):
    pass


class ExplainRequest(ExplainOptions, ECGRequest):
    pass


class ReportOptions(ECGOptions):
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="tokens a draft may hold, its end included (absent or null: the model's limit, "
        "its text length - 1, which is also the most allowed)",
    )
    num_beams: int = Field(1, ge=1, le=MAX_BEAMS, description=f"1: greedy; 2-{MAX_BEAMS}: beam search")


class ReportRequest(ReportOptions, ECGRequest):
    pass


class SearchOptions(ECGOptions):
    k: int = Field(10, ge=1, le=MAX_K, description=f"hits per query, best first (at most {MAX_K})")


class SearchRequest(SearchOptions):
    """A text query (`text`) or ECG queries (`ecg`, as for /v1/embed): exactly one of the two."""

    text: QueryText | None = Field(
        None, description=f"a sentence to find ECGs for (1-{MAX_QUERY_CHARS} characters); not with `ecg`"
    )
    ecg: list | EncodedArray | None = Field(
        None, description="leads × samples, n × leads × samples, or an encoded array; not with `text`"
    )


class RequestProblem(ValueError):
    """A request that cannot be answered: `status` (4xx, or 503 when the service is full), a message naming
    the field, and any headers of the answer (`Retry-After`)."""

    def __init__(self, status: int, field: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.headers = status, field, headers


QUERY_OPTIONS = {
    ECGRequest: ECGOptions,
    ScoreRequest: ScoreOptions,
    ExplainRequest: ExplainOptions,
    ReportRequest: ReportOptions,
    SearchRequest: SearchOptions,
}
"""The options a `.npy` body takes in its query string, per JSON request class."""
LIST_FIELDS = ("leads", "ids", "labels")
"""Options that a query string repeats (`?leads=I&leads=II`)."""


def parse(
    request_class: type[ECGOptions], content_type: str, body: bytes, query: Mapping[str, list[str]]
) -> tuple[ECGOptions, np.ndarray | None]:
    """A request body of `request_class` (one of `QUERY_OPTIONS`) → (its options, the ECGs as an array of
    any shape, not yet checked; None for a text search): JSON validated strictly, or a `.npy` body with its
    options from the query string (strings there, so read as numbers where numbers are due)."""
    media_type = content_type.split(";")[0].strip().lower()
    if media_type == NPY:
        fields = {name: values if name in LIST_FIELDS else values[-1] for name, values in query.items()}
        return _validated(QUERY_OPTIONS[request_class], fields, strict=False), _decode_npy(body)
    if media_type not in (JSON, ""):
        raise RequestProblem(415, "content-type", f"{media_type[:64]!r}; send {JSON} or {NPY} (a .npy file)")
    if query:
        raise RequestProblem(422, "query", f"with a JSON body every field goes in the body ({', '.join(query)[:200]})")
    request = _validated(request_class, body, strict=True)
    if isinstance(request, SearchRequest):
        _check_search(request)
        if request.text is not None:
            return request, None
    return request, _decode(request.ecg)


def recordings(
    options: ECGOptions, array: np.ndarray, max_ecgs: int, preprocessing: PreprocessConfig
) -> list[Recording]:
    """The request's ECGs as `Recording`s (signal float32 [leads, samples] in mV), checked against the
    bounds: the rate within `preprocessing`'s (what prepare accepts), at most `max_ecgs`, each at most
    `MAX_DURATION_FACTOR` × its window long."""
    low, high = preprocessing.min_fs, preprocessing.max_fs
    if not math.isfinite(options.fs) or not low <= options.fs <= high:
        raise RequestProblem(422, "fs", f"{options.fs:g} Hz is outside {low:g}-{high:g} Hz")
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or 0 in array.shape:
        raise RequestProblem(
            422, "ecg", f"expected leads × samples or n × leads × samples, got shape {list(array.shape)}"
        )
    if len(array) > max_ecgs:
        raise RequestProblem(413, "ecg", f"{len(array)} ECGs in one request; the limit is {max_ecgs}")
    max_seconds = MAX_DURATION_FACTOR * preprocessing.seconds
    if array.shape[2] > max_seconds * options.fs:
        raise RequestProblem(
            413,
            "ecg",
            f"{array.shape[2]:,} samples at {options.fs:g} Hz ({array.shape[2] / options.fs:,.0f} s); "
            f"the limit is {max_seconds:g} s ({MAX_DURATION_FACTOR} × the model's {preprocessing.seconds:g} s window)",
        )
    if not np.isfinite(array).all():
        raise RequestProblem(422, "ecg", "contains NaN or Inf values")
    leads = _leads(options.leads, array.shape[1])
    ids = options.ids or [f"ecg-{i}" for i in range(len(array))]
    if len(ids) != len(array):
        raise RequestProblem(422, "ids", f"{len(ids)} ids for {len(array)} ECGs")
    return [Recording(ecg_id, signal, options.fs, leads) for ecg_id, signal in zip(ids, array.astype(np.float32))]


def check_response_size(n_ecgs: int, n_labels: int) -> None:
    if n_ecgs * n_labels > MAX_SCORES:
        raise RequestProblem(
            413, "labels", f"{n_ecgs} ECGs × {n_labels} labels; the limit is {MAX_SCORES:,} scores per request"
        )


def check_explain(options: ScoreOptions, n_ecgs: int) -> None:
    """With `explain`, at most `MAX_EXPLAIN_LABELS` distinct labels, or without labels a `top_k` that small,
    and at most `MAX_EXPLAINED_ECGS` ECGs (each explanation costs ~50 forwards)."""
    if not options.explain:
        return
    if n_ecgs > MAX_EXPLAINED_ECGS:
        raise RequestProblem(
            413, "ecg", f"{n_ecgs} ECGs to explain in one request; the limit with explain is {MAX_EXPLAINED_ECGS}"
        )
    if options.labels and len(set(options.labels)) > MAX_EXPLAIN_LABELS:
        raise RequestProblem(
            422, "labels", f"{len(set(options.labels))} labels to explain; the limit is {MAX_EXPLAIN_LABELS}"
        )
    if not options.labels and options.top_k > MAX_EXPLAIN_LABELS:
        raise RequestProblem(
            422, "top_k", f"{options.top_k} best labels to explain; the limit is {MAX_EXPLAIN_LABELS} (labels)"
        )


def validation_problem(errors: Sequence[dict]) -> RequestProblem:
    """Pydantic's (or FastAPI's) errors as one 422 naming the first field, listing the first few as
    field: message (type), never the input."""
    if not errors:
        return RequestProblem(422, "body", "invalid request")
    fields = [".".join(str(part) for part in error["loc"]) or "body" for error in errors]
    listed = [f"{error['msg']} ({error['type']})" for error in errors[:MAX_PROBLEMS_LISTED]]
    listed[1:] = [f"{field}: {text}" for field, text in zip(fields[1:], listed[1:])]
    more = [f"and {len(errors) - MAX_PROBLEMS_LISTED} more"] if len(errors) > MAX_PROBLEMS_LISTED else []
    return RequestProblem(422, fields[0], "; ".join(listed + more))


def _check_search(request: SearchRequest) -> None:
    """Exactly one of `text` and `ecg`; the ECG fields only with `ecg`, one id for a text."""
    if (request.text is None) == (request.ecg is None):
        given = "both were given" if request.text is not None else "neither was given"
        raise RequestProblem(422, "text", f"give either text (a sentence) or ecg (ECGs), not both; {given}")
    if request.text is not None and request.leads is not None:
        raise RequestProblem(422, "leads", "names the rows of `ecg`; a text query has none")
    if request.text is not None and request.ids is not None and len(request.ids) != 1:
        raise RequestProblem(422, "ids", f"{len(request.ids)} ids for one text query")


def _validated(model: type[ECGOptions], data: bytes | dict, strict: bool) -> ECGOptions:
    try:
        if isinstance(data, dict):
            return model.model_validate(data, strict=strict)
        return model.model_validate_json(data, strict=strict)
    except ValidationError as error:
        raise validation_problem(error.errors(include_url=False, include_input=False, include_context=False)) from None


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
        array = np.array(ecg)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.dtype.kind not in "iuf":
        raise RequestProblem(
            422, "ecg", "must be a rectangular nested list of numbers (rows of equal length, float64 range)"
        )
    return array


def _decode_npy(body: bytes) -> np.ndarray:
    """A `.npy` file's bytes → its array (a view of `body`), reading the header before allocating anything."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in read_header:
            raise ValueError(f"npy format version {version} is not read here; use 1.0 or 2.0")
        shape, fortran_order, dtype = read_header[version](stream)
    except (ValueError, SyntaxError, TypeError) as error:
        raise RequestProblem(422, "body", f"not a .npy file: {error}") from None
    if dtype.newbyteorder("<").str not in DTYPES.values() or dtype.byteorder == ">":
        raise RequestProblem(422, "body", f"dtype {dtype}; send little-endian {', '.join(DTYPES)}")
    if len(shape) not in (2, 3) or not all(1 <= size <= 2**31 for size in shape):
        raise RequestProblem(422, "body", f"shape {list(shape)}; expected [leads, samples] or [n, leads, samples]")
    expected = math.prod(shape) * dtype.itemsize
    if len(body) - stream.tell() != expected:
        raise RequestProblem(
            422, "body", f"{len(body) - stream.tell()} data bytes; shape {list(shape)} of {dtype} needs {expected}"
        )
    array = np.frombuffer(body, dtype=dtype, offset=stream.tell())
    return array.reshape(shape[::-1]).T if fortran_order else array.reshape(shape)


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
