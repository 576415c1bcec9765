"""Serve: zero-shot scoring over HTTP with Ray Serve (FastAPI ingress, requests batched with `@serve.batch`).

    python -m pipelines.serve --model runs/sweep/best [--port 8000] [--replicas 2] [--cpus-per-replica 4] [--task ptbxl-super]
    python -m pipelines.serve --model s3://bucket/runs/x/export     # each replica loads a cached copy on its node
    serve run cluster/serve.yaml

Routes: `POST /v1/score` (per-label scores and the top labels per ECG), `POST /v1/embed`, `GET /healthz`
(readiness from a forward run at start, and the model's identity), the OpenAPI page at `/docs`. Bodies
are JSON or a `.npy` file (`pipelines.serving.requests`). Set `ECG_FM_API_TOKEN` to require
`Authorization: Bearer <token>` on every route but `/healthz`; off loopback it is required
(`pipelines.serving.guard`). ECGs go through the prepare stage's
preprocessing and the evaluation's zero-shot classifier (`pipelines.serving.scorer.Scorer`), so a score
here equals the same ECG's score in batch scoring and evaluation. Decoding, preprocessing and the model
run in threads, off the replica's event loop.
"""

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve

from models.model import export_fingerprint
from pipelines.data.preprocess import PreparedSignal
from pipelines.data.rejection import RecordRejected
from pipelines.logs import init_ray, setup_logging
from pipelines.serving.guard import BODY_TIMEOUT_S, MAX_BODY_BYTES, TOKEN_ENV, RequestGuard, require_token
from pipelines.serving.requests import (
    JSON,
    MAX_DURATION_FACTOR,
    MAX_ECGS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    NPY,
    ECGOptions,
    ECGRequest,
    RequestProblem,
    ScoreOptions,
    ScoreRequest,
    check_response_size,
    parse,
    recordings,
    validation_problem,
)
from pipelines.serving.scorer import Scorer
from pipelines.storage import Location

MAX_BATCH_SIZE = 32

BOUNDS = (
    f"Bounds: bodies up to {MAX_BODY_BYTES // 2**20} MiB (413), sent within {BODY_TIMEOUT_S:g} s (408, "
    f"connection closed); up to {MAX_ECGS} ECGs per request, each at most {MAX_DURATION_FACTOR} × the model's "
    f"window long (60 s for 10 s windows; only the first window is scored; 413); up to {MAX_LABELS} labels "
    f"of up to {MAX_LABEL_CHARS} characters. Types are strict (422 naming the field)."
)
app = FastAPI(title="ecg-fm", description=f"Zero-shot ECG classification from text prompts. {BOUNDS}")
app.add_middleware(RequestGuard)


@app.exception_handler(RequestProblem)
async def request_problem(_: Request, problem: RequestProblem) -> JSONResponse:
    return JSONResponse({"detail": str(problem), "field": problem.field}, status_code=problem.status)


@app.exception_handler(RequestValidationError)
async def request_invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation (paths, queries): named fields, without the input echoed back."""
    return await request_problem(_, validation_problem(error.errors()))


def _body_doc(request_class: type[ECGRequest], options_class: type[ECGOptions]) -> dict:
    """The OpenAPI request body and query parameters of a route that reads its body itself."""
    query = [
        {"name": name, "in": "query", "required": False, "schema": schema, "description": "with a .npy body only"}
        for name, schema in options_class.model_json_schema()["properties"].items()
    ]
    return {
        "parameters": query,
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": _inlined(request_class.model_json_schema())},
                NPY: {"schema": {"type": "string", "format": "binary", "description": "a .npy file (numpy.save)"}},
            },
        },
    }


def _inlined(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` references replaced by the definitions (OpenAPI's
    components do not hold them)."""
    definitions = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        return [resolve(item) for item in node] if isinstance(node, list) else node

    return resolve(schema)


@serve.deployment(max_ongoing_requests=2 * MAX_BATCH_SIZE, health_check_period_s=10)
@serve.ingress(app)
class ScoringService:
    """One replica: the export loaded once and checked by a forward, ECGs of concurrent requests embedded
    together."""

    def __init__(
        self,
        model_dir: str,
        task: str | None = None,
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        body_timeout_s: float = BODY_TIMEOUT_S,
    ) -> None:
        self.scorer = Scorer(model_dir, task)
        self.identity = {
            "name": Location.of(model_dir).name,
            "fingerprint": export_fingerprint(self.scorer.export_dir),
            "objective": self.scorer.model.config.objective.name,
            "task": self.scorer.trained_with.task,
        }
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

    async def _embed_request(
        self, request: Request, request_class: type[ECGRequest]
    ) -> tuple[ECGOptions, list[str], np.ndarray, list[list[str]]]:
        """The request read, checked and preprocessed (in a thread), then embedded with others' ECGs →
        (options, ids, embeddings [n, D], flags per ECG)."""
        if self.problem is not None:
            raise HTTPException(503, f"model: {self.problem}")
        body = await request.body()
        query = {name: request.query_params.getlist(name) for name in request.query_params}
        options, prepared = await asyncio.to_thread(
            self._prepare, request_class, request.headers.get("content-type", ""), body, query
        )
        embeddings = await asyncio.gather(*(self._embed((p.signal, p.lead_mask)) for p in prepared))
        ids = options.ids or [f"ecg-{i}" for i in range(len(prepared))]
        return options, ids, np.stack(embeddings), [p.flags for p in prepared]

    def _prepare(
        self, request_class: type[ECGRequest], content_type: str, body: bytes, query: dict[str, list[str]]
    ) -> tuple[ECGOptions, list[PreparedSignal]]:
        options, array = parse(request_class, content_type, body, query)
        listed = recordings(options, array, MAX_ECGS, self.scorer.preprocess_config)
        if isinstance(options, ScoreOptions):
            check_response_size(len(listed), len(options.labels or self.scorer.default_labels))
        prepared = []
        for index, recording in enumerate(listed):
            try:
                prepared.append(self.scorer.prepare(recording))
            except RecordRejected as rejected:
                raise RequestProblem(422, f"ecg[{index}]", str(rejected)) from None
        return options, prepared

    @app.post("/v1/score", openapi_extra=_body_doc(ScoreRequest, ScoreOptions))
    async def score(self, request: Request) -> JSONResponse:
        options, ids, embeddings, flags = await self._embed_request(request, ScoreRequest)
        return await asyncio.to_thread(self._scores_response, options, ids, embeddings, flags)

    def _scores_response(
        self, options: ScoreOptions, ids: list[str], embeddings: np.ndarray, flags: list[list[str]]
    ) -> JSONResponse:
        labels = list(dict.fromkeys(options.labels)) if options.labels else list(self.scorer.default_labels)
        scores = self.scorer.scores(embeddings, labels)  # [n, C]
        names = self.scorer.label_names(labels)
        results = []
        for ecg_id, row, row_flags in zip(ids, scores, flags):
            top = np.argsort(-row)[: options.top_k]
            results.append(
                {
                    "id": ecg_id,
                    "scores": dict(zip(labels, row.tolist())),
                    "top": [{"label": labels[i], "name": names[i], "score": float(row[i])} for i in top],
                    "flags": row_flags,
                }
            )
        return JSONResponse({"labels": labels, "names": names, "results": results})

    @app.post("/v1/embed", openapi_extra=_body_doc(ECGRequest, ECGOptions))
    async def embed(self, request: Request) -> JSONResponse:
        _, ids, embeddings, flags = await self._embed_request(request, ECGRequest)
        results = [{"id": i, "embedding": e, "flags": f} for i, e, f in zip(ids, embeddings.tolist(), flags)]
        return await asyncio.to_thread(JSONResponse, {"results": results})

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """`ready` from the forward run at start; the model's identity (export folder name, fingerprint of
        its config and weights, objective, the task its validation used); the served task and its label
        count. 503 when not ready."""
        body = {
            "status": "ok" if self.problem is None else "unhealthy",
            "ready": self.problem is None,
            "model": self.identity,
            "task": self.scorer.task.name,
            "labels": len(self.scorer.default_labels),
            **({"problem": self.problem} if self.problem else {}),
        }
        return JSONResponse(body, status_code=200 if self.problem is None else 503)


def app_builder(args: dict) -> serve.Application:
    """`serve run` entry (cluster/serve.yaml): args model (an export folder or its URI), task (default: the
    export's), replicas, cpus_per_replica (torch's threads in each replica; default 1), gpus_per_replica,
    body_timeout_s; the token from the environment, required unless allow_no_token (`require_token`)."""
    token = args.get("token") or os.environ.get(TOKEN_ENV) or None
    require_token(token, None, bool(args.get("allow_no_token", False)))
    options = {"num_cpus": float(args.get("cpus_per_replica", 1)), "num_gpus": float(args.get("gpus_per_replica", 0))}
    return ScoringService.options(num_replicas=int(args.get("replicas", 1)), ray_actor_options=options).bind(
        args["model"],
        args.get("task"),
        token,
        int(args.get("max_body_bytes", MAX_BODY_BYTES)),
        float(args.get("body_timeout_s", BODY_TIMEOUT_S)),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", required=True, help="an export folder (RUN_DIR/export or SWEEP_DIR/best), or its URI (s3://…)"
    )
    parser.add_argument(
        "--task", help="the label set served by default, a task name or table (default: the export's validation task)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--cpus-per-replica", type=int, default=1, help="CPUs (and torch threads) per replica")
    parser.add_argument(
        "--body-timeout-s", type=float, default=BODY_TIMEOUT_S, help="seconds a client has to send its body"
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
    parser.add_argument("--address", help="Ray cluster address (default: a local one)")
    args = parser.parse_args(argv)
    try:
        require_token(os.environ.get(TOKEN_ENV), args.host, args.insecure_no_token)
    except ValueError as error:
        parser.error(str(error))
    setup_logging()
    init_ray(args.address)
    serve.start(proxy_location=args.proxy_location, http_options={"host": args.host, "port": args.port})
    serve.run(
        app_builder(
            {
                "model": Location.of(args.model).uri,  # an absolute path, or the URI as given
                "task": args.task,
                "replicas": args.replicas,
                "cpus_per_replica": args.cpus_per_replica,
                "body_timeout_s": args.body_timeout_s,
                "allow_no_token": True,  # checked above, with the host this server listens on
            }
        ),
        name="ecg-fm",
        route_prefix="/",
        blocking=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
