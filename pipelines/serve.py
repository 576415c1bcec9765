"""Serve: zero-shot scoring, report drafting and ECG search over HTTP with Ray Serve (FastAPI ingress,
ECGs of concurrent requests batched with `@serve.batch`).

    python -m pipelines.serve --model runs/sweep/best [--port 8000] [--replicas 2] [--cpus-per-replica 4] [--task ptbxl-super]
    python -m pipelines.serve --model s3://bucket/runs/x/export     # each replica loads a cached copy on its node
    python -m pipelines.serve --model runs/sweep/best --index runs/scores/index     # also answers /v1/search
    python -m pipelines.serve --model runs/sweep/best --explainers 2 --explain-queue 4 --explain-deadline-s 60
    kill -TERM <pid>     # requests in flight finish (--grace-period-s, 30 s), Serve and Ray stop, exit 0
    serve run cluster/serve.yaml

Routes: `POST /v1/score` (per-label scores and the top labels per ECG; with `explain`, the leads and time
segments behind up to 5 labels' scores, by integrated gradients), `POST /v1/explain` (one ECG, one label: the
ECG on paper with that evidence drawn over it as a PNG, or `format=json`), `POST /v1/embed`, `POST /v1/report`
(a drafted report per ECG, from a MELP export's caption decoder), `POST /v1/search` (the nearest ECGs of the
index given at start, for a sentence or for ECGs), `GET /healthz` (readiness from a forward run at start,
the model's identity, whether it drafts, the index), the OpenAPI page at `/docs`. Bodies are JSON or a
`.npy` file (`pipelines.serving.requests`). Set `ECG_FM_API_TOKEN` to require
`Authorization: Bearer <token>` on every route but `/healthz`; off loopback it is required
(`pipelines.serving.guard`). ECGs go through the prepare stage's preprocessing and the evaluation's
zero-shot classifier (`pipelines.serving.scorer.Scorer`), so a score here equals the same ECG's score in
batch scoring and evaluation, and a draft equals `pipelines.score --reports`'s. Decoding, preprocessing
and the model run in threads, off the replica's event loop. Explanations run in their own deployment
(`pipelines.serving.explainer`): one at a time per explainer replica, a short queue, a deadline, and a 503
with `Retry-After` beyond them, so explaining clients cannot take scoring's CPUs.
"""

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.config import AutoscalingConfig
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from models.evidence import Evidence
from models.model import export_fingerprint
from models.report_generation import DraftedReport, DraftOptions
from pipelines.data.preprocess import PreparedSignal
from pipelines.data.rejection import RecordRejected
from pipelines.logs import init_ray, setup_logging
from pipelines.retrieval import MAX_K, MAX_QUERY_CHARS, EmbeddingIndex
from pipelines.serving.batch_scoring import ExplainedLabels
from pipelines.serving.explainer import ExplainBounds, ExplainDeadlinePassed, Explainer
from pipelines.serving.guard import BODY_TIMEOUT_S, MAX_BODY_BYTES, TOKEN_ENV, RequestGuard, require_token
from pipelines.serving.openapi import body_doc
from pipelines.serving.requests import (
    MAX_BEAMS,
    MAX_DURATION_FACTOR,
    MAX_ECGS,
    MAX_EXPLAIN_LABELS,
    MAX_EXPLAINED_ECGS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    ECGOptions,
    ECGRequest,
    ExplainOptions,
    ExplainRequest,
    ReportOptions,
    ReportRequest,
    RequestProblem,
    ScoreOptions,
    ScoreRequest,
    SearchOptions,
    SearchRequest,
    check_explain,
    check_response_size,
    parse,
    recordings,
    validation_problem,
)
from pipelines.serving.responses import (
    explain_body,
    reports_body,
    score_labels,
    scores_body,
    search_body,
)
from pipelines.serving.scorer import DraftRefused, Scorer, check_draft
from pipelines.storage import Location, cached_copy

MAX_BATCH_SIZE = 32
APP_NAME = "ecg-fm"
GRACE_PERIOD_S = 30.0
"""On SIGTERM or SIGINT, how long requests in flight have to finish before the service stops."""

log = logging.getLogger("pipelines.serve")

BOUNDS = (
    f"Bounds: bodies up to {MAX_BODY_BYTES // 2**20} MiB (413), sent within {BODY_TIMEOUT_S:g} s (408, "
    f"connection closed); up to {MAX_ECGS} ECGs per request, each at most {MAX_DURATION_FACTOR} × the model's "
    f"window long (60 s for 10 s windows; only the first window is scored; 413); up to {MAX_LABELS} labels "
    f"of up to {MAX_LABEL_CHARS} characters, up to {MAX_EXPLAIN_LABELS} of them explained (labels, or top_k "
    f"without labels; 422) for up to {MAX_EXPLAINED_ECGS} ECGs (413); /v1/explain: one ECG (413) and one label "
    "(422); drafts of up to the model's text length - 1 tokens with up to "
    f"{MAX_BEAMS} beams (422 from an export without a caption decoder); search queries of 1-{MAX_QUERY_CHARS} "
    f"characters, k of 1-{MAX_K} (409 when serve was started without --index). Types are strict (422 naming "
    "the field)."
)
app = FastAPI(
    title="ecg-fm",
    description=f"Zero-shot ECG classification from text prompts, report drafting, ECG search. {BOUNDS}",
)
app.add_middleware(RequestGuard)


@app.exception_handler(RequestProblem)
async def request_problem(_: Request, problem: RequestProblem) -> JSONResponse:
    body = {"detail": str(problem), "field": problem.field}
    return JSONResponse(body, status_code=problem.status, headers=problem.headers)


@app.exception_handler(RequestValidationError)
async def request_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation (paths, queries): named fields, without the input echoed back."""
    return await request_problem(_, validation_problem(error.errors()))


async def _awaited(response):
    """A `DeploymentResponse` as a coroutine (for `asyncio.wait_for`)."""
    return await response


async def _answer(build, *args) -> JSONResponse:
    """`JSONResponse(build(*args))`, built and serialised in a thread, off the replica's event loop."""
    return await asyncio.to_thread(lambda: JSONResponse(build(*args)))


@serve.deployment(max_ongoing_requests=2 * MAX_BATCH_SIZE, health_check_period_s=10)
@serve.ingress(app)
class ScoringService:
    """One replica: the export loaded once and checked by a forward, ECGs of concurrent requests embedded
    (or drafted) together; the index, when given, loaded once and refused unless this export made it;
    explanations handed to `explainer` within `explain_bounds` (no explainer: `explain` is refused)."""

    def __init__(
        self,
        model_dir: str,
        task: str | None = None,
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
        index: str | None = None,
        explainer: DeploymentHandle | None = None,
        explain_bounds: ExplainBounds = ExplainBounds(),
    ) -> None:
        self.scorer = Scorer(model_dir, task)
        self.explainer, self.explain_bounds = explainer, explain_bounds
        self.identity = {
            "name": Location.of(model_dir).name,
            "fingerprint": export_fingerprint(self.scorer.export_dir),
            "objective": self.scorer.model.config.objective.name,
            "task": self.scorer.trained_with.task,
        }
        self.index = EmbeddingIndex.load(index) if index else None
        if self.index is not None:
            self.index.check_model(self.identity["fingerprint"])  # IndexModelMismatch: the deployment fails
        self.problem = self._self_check()
        app.state.token = token
        app.state.max_body_bytes = max_body_bytes
        app.state.body_timeout_s = body_timeout_s

    def _self_check(self) -> str | None:
        """A forward of one all-lead ECG and its scores against the task's labels: None when both are
        finite, else what is wrong (the replica then answers 503)."""
        n = self.scorer.preprocess_config.n_samples
        test_signal = np.tile(np.sin(np.linspace(0, 60, n, dtype=np.float32)), (1, 12, 1))  # [1, 12, n]
        embedding = self.scorer.embed(test_signal, np.ones((1, 12), dtype=bool))
        if not np.isfinite(embedding).all():
            return "the model's ECG embedding of a test signal is not finite"
        if not np.isfinite(self.scorer.scores(embedding, self.scorer.default_labels)).all():
            return "the model's scores of a test signal against its task's labels are not finite"
        return None

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.02)
    async def _embed(self, inputs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """inputs: (signal [12, T], lead_mask [12]) per ECG, from any requests → embedding [D] each."""
        signals, masks = np.stack([s for s, _ in inputs]), np.stack([m for _, m in inputs])
        return list(await asyncio.to_thread(self.scorer.embed, signals, masks))

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.02)
    async def _draft(self, inputs: list[tuple[np.ndarray, np.ndarray, DraftOptions]]) -> list[DraftedReport]:
        """inputs: (signal [12, T], lead_mask [12], options) per ECG, from any requests → a draft each."""
        return await asyncio.to_thread(self._draft_by_options, inputs)

    def _draft_by_options(self, inputs: list[tuple[np.ndarray, np.ndarray, DraftOptions]]) -> list[DraftedReport]:
        """One `Scorer.draft` per distinct options among the inputs; the drafts in input order."""
        groups: dict[DraftOptions, list[int]] = defaultdict(list)
        for position, (_, _, options) in enumerate(inputs):
            groups[options].append(position)
        drafts: list[DraftedReport | None] = [None] * len(inputs)
        for options, positions in groups.items():
            signals = np.stack([inputs[p][0] for p in positions])
            masks = np.stack([inputs[p][1] for p in positions])
            for position, draft in zip(positions, self.scorer.draft(signals, masks, options)):
                drafts[position] = draft
        return drafts

    async def _read(
        self, request: Request, request_class: type[ECGOptions]
    ) -> tuple[ECGOptions, list[str], list[PreparedSignal]]:
        """The request read, then checked and preprocessed in a thread → (options, ids, the prepared ECGs;
        none for a text search)."""
        if self.problem is not None:
            raise HTTPException(503, f"model: {self.problem}")
        body = await request.body()
        query = {name: request.query_params.getlist(name) for name in request.query_params}
        return await asyncio.to_thread(
            self._prepare, request_class, request.headers.get("content-type", ""), body, query
        )

    def _prepare(
        self, request_class: type[ECGOptions], content_type: str, body: bytes, query: dict[str, list[str]]
    ) -> tuple[ECGOptions, list[str], list[PreparedSignal]]:
        options, array = parse(request_class, content_type, body, query)
        if array is None:  # a text search
            return options, options.ids or ["text-0"], []
        max_ecgs = 1 if isinstance(options, ExplainOptions) else MAX_ECGS
        listed = recordings(options, array, max_ecgs, self.scorer.preprocess_config)
        if isinstance(options, ScoreOptions):
            check_response_size(len(listed), len(options.labels or self.scorer.default_labels))
            check_explain(options, len(listed))
        explains = isinstance(options, ExplainOptions) or (isinstance(options, ScoreOptions) and options.explain)
        if explains and self.explainer is None:
            raise RequestProblem(422, "explain", "this service was started without explainers (explainers: 0)")
        prepared = []
        for index, recording in enumerate(listed):
            try:
                prepared.append(self.scorer.prepare(recording))
            except RecordRejected as rejected:
                raise RequestProblem(422, f"ecg[{index}]", str(rejected)) from None
        return options, [recording.name for recording in listed], prepared

    async def _embedded(self, prepared: list[PreparedSignal]) -> np.ndarray:
        """The prepared ECGs embedded together with other requests' → [n, D]."""
        return np.stack(await asyncio.gather(*(self._embed((p.signal, p.lead_mask)) for p in prepared)))

    @app.post("/v1/score", openapi_extra=body_doc(ScoreRequest, ScoreOptions))
    async def score(self, request: Request) -> JSONResponse:
        options, ids, prepared = await self._read(request, ScoreRequest)
        embeddings = await self._embedded(prepared)
        evidence = await self._explain(options, prepared, embeddings) if options.explain else None
        flags = [p.flags for p in prepared]
        return await _answer(scores_body, self.scorer, options, ids, embeddings, flags, evidence)

    async def _explain(
        self, options: ScoreOptions, prepared: list[PreparedSignal], embeddings: np.ndarray
    ) -> list[list[tuple[str, Evidence]]]:
        """Per ECG, (label, evidence) for each of the request's labels or, without labels, its `top_k` best
        (as `scores_body` ranks them), each ECG explained alone by the explainer."""
        labels = score_labels(self.scorer, options)
        explained = ExplainedLabels(None if options.labels else options.top_k)
        chosen = [explained.chosen(labels, row) for row in self.scorer.scores(embeddings, labels)]  # scores [n, C]
        signals, lead_masks = np.stack([p.signal for p in prepared]), np.stack([p.lead_mask for p in prepared])
        evidence = await self._bounded("evidence", signals, lead_masks, chosen)
        return [list(zip(ecg_labels, items)) for ecg_labels, items in zip(chosen, evidence)]

    async def _bounded(self, method: str, *args):
        """The explainer's `method(*args, deadline)`, or a 503 naming `explain` with `Retry-After` when its
        queue is full or the deadline passes (the call is then cancelled)."""
        bounds = self.explain_bounds
        retry = {"Retry-After": str(math.ceil(bounds.retry_after_s))}
        response = getattr(self.explainer, method).remote(*args, time.time() + bounds.deadline_s)
        try:
            return await asyncio.wait_for(_awaited(response), bounds.deadline_s)
        except BackPressureError:
            message = f"the explainers are busy and {bounds.queue} explanations already wait; retry later"
            raise RequestProblem(503, "explain", message, retry) from None
        except (TimeoutError, ExplainDeadlinePassed):
            response.cancel()
            message = f"not explained within the deadline of {bounds.deadline_s:g} s; retry later or explain less"
            raise RequestProblem(503, "explain", message, retry) from None

    @app.post(
        "/v1/explain",
        openapi_extra=body_doc(ExplainRequest, ExplainOptions),
        responses={200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
    )
    async def explain(self, request: Request) -> Response:
        """One ECG's evidence for one label (integrated gradients of its zero-shot score, `Scorer.explain`): by
        default a PNG of the preprocessed ECG on paper (3 × 4 + lead-II rhythm strip) with the evidence over it
        and the label and score in the title; `format=json` the evidence as /v1/score's `explain` gives it.
        413 naming `ecg` for more than one ECG, 422 naming `labels` for more than one label."""
        options, (ecg_id,), (prepared,) = await self._read(request, ExplainRequest)
        (label,) = options.labels
        (name,) = self.scorer.label_names([label])
        if options.format == "json":
            [[evidence]] = await self._bounded("evidence", prepared.signal[None], prepared.lead_mask[None], [[label]])
            return await _answer(explain_body, ecg_id, label, name, evidence, prepared.flags)
        png = await self._bounded("on_paper", ecg_id, label, name, prepared)
        return Response(png, media_type="image/png")

    @app.post("/v1/embed", openapi_extra=body_doc(ECGRequest, ECGOptions))
    async def embed(self, request: Request) -> JSONResponse:
        _, ids, prepared = await self._read(request, ECGRequest)
        embeddings = (await self._embedded(prepared)).tolist()
        results = [{"id": i, "embedding": e, "flags": p.flags} for i, e, p in zip(ids, embeddings, prepared)]
        return await asyncio.to_thread(JSONResponse, {"results": results})

    @app.post("/v1/report", openapi_extra=body_doc(ReportRequest, ReportOptions))
    async def report(self, request: Request) -> JSONResponse:
        """A draft per ECG: its text, the sum of its tokens' log-probabilities (end included), its token
        count. 422 naming `model` from an export without a caption decoder, `max_tokens` over its limit."""
        options, ids, prepared = await self._read(request, ReportRequest)
        draft_options = DraftOptions(max_tokens=options.max_tokens or 0, num_beams=options.num_beams)
        try:
            check_draft(self.scorer.model, draft_options)
        except DraftRefused as refused:
            raise RequestProblem(422, refused.field, refused.message) from None
        drafts = await asyncio.gather(*(self._draft((p.signal, p.lead_mask, draft_options)) for p in prepared))
        return await _answer(reports_body, ids, drafts, [p.flags for p in prepared])

    @app.post("/v1/search", openapi_extra=body_doc(SearchRequest, SearchOptions))
    async def search(self, request: Request) -> JSONResponse:
        """The `k` nearest ECGs of the index for a sentence (`text`) or for each ECG (`ecg`), best first.
        409 naming `index` when the server was started without one."""
        if self.index is None:
            raise RequestProblem(409, "index", "no index loaded: start serve with --index DIR|URI")
        options, ids, prepared = await self._read(request, SearchRequest)
        if prepared:
            queries = await self._embedded(prepared)
        else:
            queries = await asyncio.to_thread(self.scorer.embed_text, [options.text])
        hits = await asyncio.to_thread(self.index.search, queries, options.k)
        return await _answer(search_body, ids, hits)

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """`ready` from the forward run at start; the model's identity (export folder name, fingerprint of
        its config and weights, objective, the task its validation used) and whether it drafts reports;
        the served task and its label count; the index (ECGs, kind) or null. 503 when not ready."""
        body = {
            "status": "ok" if self.problem is None else "unhealthy",
            "ready": self.problem is None,
            "model": self.identity,
            "drafts_reports": self.scorer.model.drafts_reports,
            "task": self.scorer.task.name,
            "labels": len(self.scorer.default_labels),
            "index": None if self.index is None else {k: self.index.record[k] for k in ("count", "kind")},
            **({"problem": self.problem} if self.problem else {}),
        }
        return JSONResponse(body, status_code=200 if self.problem is None else 503)


def scoring_app(
    model: str,
    task: str | None = None,
    token: str | None = None,
    *,
    index: str | None = None,
    replicas: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    body_timeout_s: float = BODY_TIMEOUT_S,
    explain: ExplainBounds = ExplainBounds(),
    grace_period_s: float = GRACE_PERIOD_S,
    autoscaling: AutoscalingConfig | None = None,
) -> serve.Application:
    """The app: `replicas` scoring replicas (each `num_cpus`, `num_gpus`; torch's threads follow num_cpus), or
    as many as Serve's `autoscaling` asks for, in front of `explain.replicas` explainers (none: `explain` is
    refused). A replica being stopped gives the requests it holds `grace_period_s` to finish."""
    explainer = None
    if explain.replicas:
        options = {**explain.deployment_options(), "graceful_shutdown_timeout_s": grace_period_s}
        explainer = Explainer.options(**options).bind(model, task)
    scale = {"autoscaling_config": autoscaling} if autoscaling else {"num_replicas": replicas}
    scoring = ScoringService.options(
        **scale,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        graceful_shutdown_timeout_s=grace_period_s,
    )
    return scoring.bind(model, task, token, max_body_bytes, body_timeout_s, index, explainer, explain)


APP_ARGS = {
    "model", "task", "token", "allow_no_token", "index", "replicas", "cpus_per_replica", "gpus_per_replica",
    "max_body_bytes", "body_timeout_s", "explainers", "cpus_per_explainer", "gpus_per_explainer", "explain_queue",
    "explain_deadline_s", "explain_retry_after_s", "grace_period_s", "autoscaling",
}  # fmt: skip
"""The keys `app_builder` takes (a Serve config's `args`)."""


def app_builder(args: dict) -> serve.Application:
    """`serve run` entry (cluster/serve.yaml): args model (an export folder or its URI), task (default: the
    export's), replicas, cpus_per_replica (torch's threads in each replica; default 1), gpus_per_replica,
    body_timeout_s, index (a folder or URI of `pipelines.search --build`'s index, made with this model; for
    /v1/search); explainers, cpus_per_explainer, gpus_per_explainer, explain_queue, explain_deadline_s,
    explain_retry_after_s (`ExplainBounds`); grace_period_s (seconds a stopped replica's requests have to
    finish); autoscaling (in place of replicas: Serve's autoscaling config, e.g. min_replicas, max_replicas,
    target_ongoing_requests); the token from the environment, required unless allow_no_token
    (`require_token`). Any other key is refused, naming it (a misspelt bound is not silently the default)."""
    unknown = sorted(set(args) - APP_ARGS)
    if unknown:
        raise ValueError(f"unknown serve args {', '.join(unknown)}; known: {', '.join(sorted(APP_ARGS))}")
    token = args.get("token") or os.environ.get(TOKEN_ENV) or None
    require_token(token, None, bool(args.get("allow_no_token", False)))
    defaults = ExplainBounds()
    explain = ExplainBounds(
        replicas=int(args.get("explainers", defaults.replicas)),
        num_cpus=float(args.get("cpus_per_explainer", defaults.num_cpus)),
        num_gpus=float(args.get("gpus_per_explainer", defaults.num_gpus)),
        queue=int(args.get("explain_queue", defaults.queue)),
        deadline_s=float(args.get("explain_deadline_s", defaults.deadline_s)),
        retry_after_s=float(args.get("explain_retry_after_s", defaults.retry_after_s)),
    )
    return scoring_app(
        args["model"],
        args.get("task"),
        token,
        index=args.get("index"),
        replicas=int(args.get("replicas", 1)),
        num_cpus=float(args.get("cpus_per_replica", 1)),
        num_gpus=float(args.get("gpus_per_replica", 0)),
        max_body_bytes=int(args.get("max_body_bytes", MAX_BODY_BYTES)),
        body_timeout_s=float(args.get("body_timeout_s", BODY_TIMEOUT_S)),
        explain=explain,
        grace_period_s=float(args.get("grace_period_s", GRACE_PERIOD_S)),
        autoscaling=autoscaling_config(args.get("autoscaling"), "replicas" in args),
    )


def autoscaling_config(settings: dict | None, replicas_given: bool) -> AutoscalingConfig | None:
    """Serve's autoscaling config from a Serve config's `autoscaling:` (or the CLI's flags); its keys checked
    by name (Serve's model ignores a misspelt one), and refused beside a fixed `replicas`."""
    if not settings:
        return None
    if replicas_given:
        raise ValueError("serve args: give replicas or autoscaling, not both")
    unknown = sorted(set(settings) - set(AutoscalingConfig.model_fields))
    if unknown:
        raise ValueError(f"unknown autoscaling settings {', '.join(unknown)} (Serve's AutoscalingConfig fields)")
    return AutoscalingConfig(**settings)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help="an export folder (RUN_DIR/export or SWEEP_DIR/best), or its URI (s3://…)"
    )
    parser.add_argument(
        "--task", help="the label set served by default, a task name or table (default: the export's validation task)"
    )
    parser.add_argument(
        "--index", help="an ECG index (a folder or URI; SCORES/index) built with this model, for /v1/search"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1, help="scoring replicas (a fixed number)")
    parser.add_argument(
        "--max-replicas",
        type=int,
        help="autoscale the scoring replicas between --min-replicas and this, by requests in flight per replica",
    )
    parser.add_argument("--min-replicas", type=int, default=1, help="with --max-replicas: the fewest replicas")
    parser.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=2.0,
        help="with --max-replicas: requests in flight per replica Serve scales towards",
    )
    parser.add_argument("--cpus-per-replica", type=int, default=1, help="CPUs (and torch threads) per replica")
    parser.add_argument(
        "--body-timeout-s", type=float, default=BODY_TIMEOUT_S, help="seconds a client has to send its body"
    )
    defaults = ExplainBounds()
    parser.add_argument(
        "--explainers", type=int, default=defaults.replicas, help="explainer replicas (0: explain is refused)"
    )
    parser.add_argument(
        "--cpus-per-explainer", type=float, default=defaults.num_cpus, help="CPUs (and torch threads) per explainer"
    )
    parser.add_argument(
        "--explain-queue",
        type=int,
        default=defaults.queue,
        help="explanations that may wait per scoring replica; more are refused with 503 and Retry-After",
    )
    parser.add_argument(
        "--explain-deadline-s",
        type=float,
        default=defaults.deadline_s,
        help="seconds an explanation may take from queueing to answer before it is cancelled and answered 503",
    )
    parser.add_argument(
        "--grace-period-s",
        type=float,
        default=GRACE_PERIOD_S,
        help="on SIGTERM or SIGINT, seconds requests in flight have to finish before the service stops",
    )
    parser.add_argument(
        "--insecure-no-token",
        action="store_true",
        help=f"serve beyond loopback without {TOKEN_ENV} (only on a network that trusted clients alone reach)",
    )
    parser.add_argument(
        "--proxy-location",
        default="EveryNode",
        choices=["EveryNode", "HeadOnly", "Disabled"],
        help="where Serve runs HTTP proxies (HeadOnly: where several nodes share one host, as in tests)",
    )
    parser.add_argument(
        "--address",
        help="Ray cluster address (default: $RAY_ADDRESS, else a Ray running on this machine, else a new one; "
        "'local' always starts a new one)",
    )
    args = parser.parse_args(argv)
    try:
        require_token(os.environ.get(TOKEN_ENV), args.host, args.insecure_no_token)
        explain = ExplainBounds(
            replicas=args.explainers,
            num_cpus=args.cpus_per_explainer,
            queue=args.explain_queue,
            deadline_s=args.explain_deadline_s,
        )
        autoscaling = None
        if args.max_replicas:
            autoscaling = autoscaling_config(
                {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas,
                 "target_ongoing_requests": args.target_ongoing_requests},
                replicas_given=False,
            )
    except ValueError as error:
        parser.error(str(error))
    if args.index:
        try:  # each replica checks it again; here a mistake is a usage error instead of a failed deployment
            EmbeddingIndex.load(args.index).check_model(export_fingerprint(cached_copy(args.model)))
        except (OSError, ValueError) as error:
            parser.error(f"--index {args.index}: {error}")
    setup_logging()
    init_ray(args.address)
    stop = _stop_on_signals()
    serve.start(proxy_location=args.proxy_location, http_options={"host": args.host, "port": args.port})
    serve.run(
        scoring_app(
            Location.of(args.model).uri,  # an absolute path, or the URI as given
            args.task,
            os.environ.get(TOKEN_ENV) or None,  # checked above, with the host this server listens on
            index=Location.of(args.index).uri if args.index else None,
            replicas=args.replicas,
            num_cpus=args.cpus_per_replica,
            body_timeout_s=args.body_timeout_s,
            explain=explain,
            grace_period_s=args.grace_period_s,
            autoscaling=autoscaling,
        ),
        name=APP_NAME,
        route_prefix="/",
    )
    log.info("serving; SIGTERM or Ctrl-C stops it, giving requests in flight %g s", args.grace_period_s)
    stop.wait()
    _drain(args.grace_period_s)
    return 0


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM (Kubernetes, systemd) or SIGINT, in place of Ray's handler, which dumps a
    stack and aborts. Installed once Ray is up (ray.init installs its own) and before the app deploys, so a
    signal during deployment stops the service too."""
    stop = threading.Event()
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, lambda number, frame: stop.set())
    return stop


def _drain(grace_period_s: float) -> None:
    """Stop as a service should: the app is deleted first, its replicas finishing the requests they hold (up
    to `grace_period_s`, the deployments' graceful shutdown) while the proxies still carry their answers back;
    then Serve and Ray shut down. A second signal ends the process at once."""
    import ray

    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_DFL)
    log.info("stopping: requests in flight have up to %g s to finish", grace_period_s)
    serve.delete(APP_NAME)
    serve.shutdown()
    ray.shutdown()
    log.info("stopped")


if __name__ == "__main__":
    sys.exit(main())
