"""Serve: zero-shot scoring over HTTP with Ray Serve (FastAPI ingress, requests batched with `@serve.batch`).

    python -m pipelines.serve --model runs/sweep/best [--port 8000] [--replicas 2] [--cpus-per-replica 4] [--task ptbxl-super]
    serve run cluster/serve.yaml

Routes: `POST /v1/score` (per-label scores and the top labels per ECG), `POST /v1/embed`, `GET /healthz`,
the OpenAPI page at `/docs`. Set `ECG_FM_API_TOKEN` to require `Authorization: Bearer <token>` on every
route but `/healthz`. ECGs go through the prepare stage's preprocessing and the evaluation's zero-shot
classifier (`pipelines.serving.scorer.Scorer`), so a score here equals the same ECG's score in batch
scoring and evaluation.
"""

import argparse
import asyncio
import hmac
import os
import sys
from collections.abc import Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from pipelines.data.rejection import RecordRejected
from pipelines.logs import init_ray, setup_logging
from pipelines.serving.requests import ECGRequest, RequestProblem, ScoreRequest, recordings
from pipelines.serving.scorer import Scorer

TOKEN_ENV = "ECG_FM_API_TOKEN"
MAX_BODY_BYTES = 32 * 2**20
"""Requests larger than this are refused with 413 before they are parsed."""
MAX_ECGS = 256
MAX_BATCH_SIZE = 32

app = FastAPI(title="ecg-fm", description="Zero-shot ECG classification from text prompts.")


class RequestGuard:
    """ASGI middleware: the bearer token (when configured) on every route but /healthz, and the body-size
    limit, checked from the headers before the body is read. (A plain ASGI class: Starlette's
    `BaseHTTPMiddleware` costs a task group and a stream per request.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(scope)
            if problem is not None:
                status, detail = problem
                return await JSONResponse({"detail": detail}, status_code=status)(scope, receive, send)
        await self.app(scope, receive, send)

    @staticmethod
    def _problem(scope: Scope) -> tuple[int, str] | None:
        settings = scope["app"].state
        headers = Headers(scope=scope)
        if scope["path"] != "/healthz" and settings.token:
            supplied = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(supplied.encode(), settings.token.encode()):
                return 401, "authorization: a valid bearer token is required"
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_body_bytes:
            return 413, f"body: {int(length):,} bytes; the limit is {settings.max_body_bytes:,}"
        return None


app.add_middleware(RequestGuard)


@app.exception_handler(RequestProblem)
async def request_problem(_: Request, problem: RequestProblem) -> JSONResponse:
    return JSONResponse({"detail": str(problem), "field": problem.field}, status_code=problem.status)


@serve.deployment(max_ongoing_requests=2 * MAX_BATCH_SIZE, health_check_period_s=10)
@serve.ingress(app)
class ScoringService:
    """One replica: the export loaded once, ECGs of concurrent requests embedded together."""

    def __init__(
        self, model_dir: str, task: str | None = None, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self.scorer = Scorer(model_dir, task)
        app.state.token = token
        app.state.max_body_bytes = max_body_bytes

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=0.005)
    async def _embed(self, inputs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """inputs: (signal [12, T], lead_mask [12]) per ECG, from any requests → embedding [D] each."""
        embeddings = self.scorer.embed(np.stack([s for s, _ in inputs]), np.stack([m for _, m in inputs]))
        return list(embeddings)

    async def _embed_request(self, body: ECGRequest) -> tuple[list[str], np.ndarray, list[list[str]]]:
        prepared = []
        for index, recording in enumerate(recordings(body, MAX_ECGS, self.scorer.preprocess_config)):
            try:
                prepared.append(self.scorer.prepare(recording))
            except RecordRejected as rejected:
                raise RequestProblem(422, f"ecg[{index}]", str(rejected)) from None
        embeddings = await asyncio.gather(*(self._embed((p.signal, p.lead_mask)) for p in prepared))
        ids = body.ids or [f"ecg-{i}" for i in range(len(prepared))]
        return ids, np.stack(embeddings), [p.flags for p in prepared]

    @app.post("/v1/score")
    async def score(self, body: ScoreRequest) -> dict:
        labels = list(dict.fromkeys(body.labels)) if body.labels else list(self.scorer.default_labels)
        if not labels or any(not label.strip() for label in labels):
            raise RequestProblem(422, "labels", "labels must be non-empty strings")
        ids, embeddings, flags = await self._embed_request(body)
        scores = self.scorer.scores(embeddings, labels)  # [n, C]
        names = self.scorer.label_names(labels)
        results = []
        for ecg_id, row, row_flags in zip(ids, scores, flags):
            top = np.argsort(-row)[: body.top_k]
            results.append(
                {
                    "id": ecg_id,
                    "scores": {label: float(value) for label, value in zip(labels, row)},
                    "top": [{"label": labels[i], "name": names[i], "score": float(row[i])} for i in top],
                    "flags": row_flags,
                }
            )
        return {"labels": labels, "names": names, "results": results}

    @app.post("/v1/embed")
    async def embed(self, body: ECGRequest) -> dict:
        ids, embeddings, flags = await self._embed_request(body)
        return {"results": [{"id": i, "embedding": e.tolist(), "flags": f} for i, e, f in zip(ids, embeddings, flags)]}

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok", "task": self.scorer.task.name, "labels": len(self.scorer.default_labels)}


def app_builder(args: dict) -> serve.Application:
    """`serve run` entry (cluster/serve.yaml): args model, task (default: the export's), replicas,
    cpus_per_replica (torch's threads in each replica; default 1), gpus_per_replica; the token from the
    environment."""
    options = {"num_cpus": float(args.get("cpus_per_replica", 1)), "num_gpus": float(args.get("gpus_per_replica", 0))}
    return ScoringService.options(num_replicas=int(args.get("replicas", 1)), ray_actor_options=options).bind(
        args["model"], args.get("task"), args.get("token") or os.environ.get(TOKEN_ENV) or None
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="an export folder (RUN_DIR/export or SWEEP_DIR/best)")
    parser.add_argument(
        "--task", help="the label set served by default, a task name or table (default: the export's validation task)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to listen on every interface")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--cpus-per-replica", type=int, default=1, help="CPUs (and torch threads) per replica")
    parser.add_argument("--address", help="Ray cluster address (default: a local one)")
    args = parser.parse_args(argv)
    setup_logging()
    init_ray(args.address)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(
        app_builder(
            {
                "model": os.path.abspath(args.model),
                "task": args.task,
                "replicas": args.replicas,
                "cpus_per_replica": args.cpus_per_replica,
            }
        ),
        name="ecg-fm",
        route_prefix="/",
        blocking=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
