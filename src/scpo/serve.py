"""``scpo serve``: steerable reward models over HTTP (FastAPI + uvicorn), with micro-batching.

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``):

* ``POST /score`` — ``{"prompt": str, "responses": [str, ...] | "response": str, "group": null | str |
  {group: weight}, "strength": 0..1}`` -> ``{"rewards": [...], ...}``;
* ``POST /compare`` — ``{"prompt", "a", "b", "group", "strength"}`` -> ``{"p_a": P(a preferred), ...}``;
* ``GET /groups`` — the groups, mode, method and per-group accuracies;
* ``GET /health`` — status and counters: requests, items, batches and model **forward passes**
  (``forward_passes / requests`` well below 1 under concurrent load shows batching works).

Errors are JSON ``{"error": message, "status": code}`` with a 4xx status: 400 malformed JSON,
413 over a limit (body bytes, items per request, characters per text), 422 invalid fields (missing
or unknown fields, unknown group, strength outside [0, 1], bad mixture weights), 404/405 unknown
routes, 429 when the queue is full. 500 only for a failure of the model itself.

**Micro-batching.** Requests are validated, then queued. One background task takes the first
queued request, collects whatever else arrives within ``batch_wait_ms`` (or until
``max_batch_items`` texts), and scores them together with
:meth:`~scpo.steer.SteerableRewardModel.score_requests` in a worker thread: one forward pass per
batch of distinct texts (per model needed, for lora/full), whatever the mix of groups and strengths.
While it runs, new requests queue up and form the next batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from .errors import InputError, ScpoError
from .steer import ScoreRequest, SteerableRewardModel, bt_probability

log = logging.getLogger("scpo.serve")

__all__ = ["MicroBatcher", "ServeLimits", "create_app", "serve"]


@dataclass
class ServeLimits:
    """Request limits and batching settings of the server."""

    max_items: int = 64
    """Responses per ``/score`` request."""
    max_chars: int = 20_000
    """Characters per text (prompt or response)."""
    max_body_bytes: int = 4_000_000
    """Bytes of a request body."""
    max_batch_items: int = 256
    """Texts scored together in one micro-batch (split into forward passes of the model's batch size)."""
    batch_wait_ms: float = 2.0
    """How long a micro-batch waits for more requests after its first."""
    max_pending: int = 8192
    """Texts queued before new requests get 429."""

    def __post_init__(self) -> None:
        for name in ("max_items", "max_chars", "max_body_bytes", "max_batch_items", "max_pending"):
            if int(getattr(self, name)) < 1:
                raise ScpoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise ScpoError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")


class HTTPError(Exception):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Job:
    request: ScoreRequest
    future: asyncio.Future


class MicroBatcher:
    """Collects concurrent scoring requests and scores them together in a worker thread."""

    def __init__(self, model: SteerableRewardModel, limits: ServeLimits):
        self.model, self.limits = model, limits
        self.queue: asyncio.Queue[_Job] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scpo-score")
        self.pending = 0
        self.stats = {"requests": 0, "items": 0, "batches": 0, "batch_items_max": 0, "failed_batches": 0}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="scpo-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: ScoreRequest) -> np.ndarray:
        """Score one (validated) request as part of the next micro-batch."""
        n = len(request.responses)
        if self.queue is None:
            raise HTTPError(503, "server is not started")
        if self.pending + n > self.limits.max_pending:
            raise HTTPError(429, f"too many texts queued ({self.pending}); retry later")
        fut = asyncio.get_running_loop().create_future()
        self.pending += n
        try:
            self.queue.put_nowait(_Job(request, fut))
            return await fut
        finally:
            self.pending -= n

    def _score(self, jobs: list[_Job]) -> list[np.ndarray | BaseException]:
        reqs = [j.request for j in jobs]
        try:
            return list(self.model.score_requests(reqs))
        except Exception:  # noqa: BLE001 - isolate the failing request: score each alone
            self.stats["failed_batches"] += 1
            out: list[np.ndarray | BaseException] = []
            for r in reqs:
                try:
                    out.append(self.model.score_requests([r])[0])
                except Exception as e:  # noqa: BLE001 - reported to that request only
                    out.append(e)
            return out

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        wait = self.limits.batch_wait_ms / 1000.0
        while True:
            first = await self.queue.get()
            jobs = [first]
            n = len(first.request.responses)
            deadline = loop.time() + wait
            while n < self.limits.max_batch_items:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                jobs.append(job)
                n += len(job.request.responses)
            live = [j for j in jobs if not j.future.done()]  # cancelled: the client left
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._score, live)
            except Exception as e:  # noqa: BLE001 - never let the batcher die: fail this batch only
                results = [e] * len(live)
            self.stats["batches"] += 1
            self.stats["batch_items_max"] = max(self.stats["batch_items_max"], n)
            for j, res in zip(live, results):
                if j.future.done():
                    continue
                if isinstance(res, BaseException):
                    j.future.set_exception(res)
                else:
                    self.stats["requests"] += 1
                    self.stats["items"] += len(j.request.responses)
                    j.future.set_result(res)


# ---------------------------------------------------------------------------------------------
# the app


class _BodyLimit:
    """ASGI middleware: reads the whole body, answering 413 beyond ``max_bytes``."""

    def __init__(self, app: Any, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            await _send_json(send, 400, {"error": "invalid Content-Length header", "status": 400})
            return
        if too_big:
            await _send_json(send, 413, _too_big(self.max_bytes))
            return
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_json(send, 413, _too_big(self.max_bytes))
                return
            chunks.append(body)
            more = msg.get("more_body", False)
        data, sent = b"".join(chunks), False

        async def replay() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _too_big(limit: int) -> dict[str, Any]:
    return {"error": f"request body over the limit of {limit} bytes", "status": 413}


async def _send_json(send: Any, status: int, obj: dict[str, Any]) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error_message(errors: list[dict[str, Any]]) -> tuple[int, str]:
    """Status and one readable line from FastAPI's validation errors."""
    parts = []
    for e in errors:
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            return 400, f"malformed JSON: {ctx.get('error', e.get('msg', ''))}"
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if not loc and e.get("type") == "model_attributes_type":
            if isinstance(e.get("input"), (bytes, bytearray)):  # FastAPI passes a non-JSON body as bytes
                return 415, "the request body must be JSON (Content-Type: application/json)"
            return 422, "the request body must be a JSON object"
        where = ".".join(loc) if loc else "body"
        if e.get("type") == "missing":
            parts.append(f"missing field {where!r}")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif loc and loc[0] == "group":
            parts.append("group must be null, a group name or an object {group: weight} with numeric weights")
        else:
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(dict.fromkeys(parts)) or "invalid request"


# request bodies (module level: FastAPI resolves the endpoints' annotations in this module)
_Weight = StrictFloat | StrictInt
_Group = StrictStr | dict[StrictStr, _Weight] | None


class ScoreBody(BaseModel):
    """Score one prompt's responses."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    responses: list[StrictStr] | None = Field(None, description="one or more responses (or give `response`)")
    response: StrictStr | None = Field(None, description="a single response")
    group: _Group = Field(None, description="null = the global model; a group; or a mixture {group: weight}")
    strength: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False, strict=True, description="0 = the global model ... 1 = the group's")


class CompareBody(BaseModel):
    """Compare two responses to one prompt."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    a: StrictStr
    b: StrictStr
    group: _Group = Field(None, description="null = the global model; a group; or a mixture {group: weight}")
    strength: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False, strict=True, description="0 = the global model ... 1 = the group's")


def create_app(model: SteerableRewardModel, limits: ServeLimits | None = None) -> Any:
    """The FastAPI app serving ``model`` under ``limits`` (batching starts with the app's lifespan)."""
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__

    limits = limits or ServeLimits()
    batcher = MicroBatcher(model, limits)
    started = time.time()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="scpo steerable reward model", version=__version__, lifespan=lifespan,
                  description="Steerable cultural reward models (SCPO): rewards per group and strength.")
    app.state.batcher = batcher
    app.state.model = model
    app.state.limits = limits
    app.add_middleware(_BodyLimit, max_bytes=limits.max_body_bytes)

    def err(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        status, message = _error_message(errors)
        # no "input" echo: it may be large, or NaN (not JSON)
        detail = jsonable_encoder([{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in errors])
        return JSONResponse({"error": message, "status": status, "detail": detail}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        return err(exc.status_code, str(exc.detail))

    @app.exception_handler(HTTPError)
    async def _ours(_req: Request, exc: HTTPError) -> JSONResponse:
        return err(exc.status, exc.message)

    @app.exception_handler(InputError)
    async def _input(_req: Request, exc: InputError) -> JSONResponse:
        return err(422, str(exc))

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception) -> JSONResponse:
        log.exception("scoring failed")
        return err(500, f"internal error: {type(exc).__name__}")

    def check_texts(texts: list[str]) -> None:
        for t in texts:
            if len(t) > limits.max_chars:
                raise HTTPError(413, f"a text has {len(t)} characters, over the limit of {limits.max_chars}")

    def steering(body: Any) -> tuple[Any, float]:
        group = body.group
        model.coefficients(group, body.strength)  # unknown group / bad weights -> InputError -> 422
        return group, float(body.strength)

    @app.post("/score", summary="rewards of one prompt's responses for a group and strength")
    async def score(body: ScoreBody) -> dict[str, Any]:
        if (body.responses is None) == (body.response is None):
            raise HTTPError(422, "give exactly one of 'responses' (a list) and 'response'")
        responses = body.responses if body.responses is not None else [body.response]
        if not responses:
            raise HTTPError(422, "'responses' must hold at least one response")
        if len(responses) > limits.max_items:
            raise HTTPError(413, f"{len(responses)} responses, over the limit of {limits.max_items} per request")
        check_texts([body.prompt, *responses])
        group, strength = steering(body)
        rewards = await batcher.submit(ScoreRequest([body.prompt] * len(responses), list(responses), group, strength))
        return {"rewards": [float(x) for x in rewards], "group": group, "strength": strength, "method": model.method}

    @app.post("/compare", summary="Bradley-Terry probability that response a is preferred to b")
    async def compare(body: CompareBody) -> dict[str, Any]:
        check_texts([body.prompt, body.a, body.b])
        group, strength = steering(body)
        r = await batcher.submit(ScoreRequest([body.prompt] * 2, [body.a, body.b], group, strength))
        p = float(bt_probability(float(r[0]) - float(r[1])))
        return {"p_a": p, "reward_a": float(r[0]), "reward_b": float(r[1]), "group": group, "strength": strength}

    @app.get("/groups", summary="the groups this model is steerable to")
    async def groups() -> dict[str, Any]:
        acc = model.manifest.get("accuracy") or {}
        return {"groups": model.groups, "mode": model.mode, "method": model.method,
                "accuracy": {g: {m: (e.get("all") if isinstance(e, dict) else e) for m, e in acc.get(g, {}).items()}
                             for g in model.groups if g in acc},
                "calibration": {k: v for k, v in model.calibration_info.items() if k in ("method", "n", "common_std")}}

    @app.get("/health", summary="status and counters (forward passes, requests, batches)")
    async def health() -> dict[str, Any]:
        import torch

        s = batcher.stats
        return {"status": "ok", "mode": model.mode, "groups": len(model.groups), "forward_passes": model.forward_passes,
                "device": str(model.device), "threads": torch.get_num_threads(),
                **s, "pending": batcher.pending, "truncated": model.truncated, "uptime_s": time.time() - started,
                "limits": asdict(limits)}

    return app


def serve(model: SteerableRewardModel, *, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          log_level: str = "warning") -> None:
    """Serve ``model`` over HTTP with uvicorn until interrupted (:func:`create_app`)."""
    import uvicorn  # start-up time: the server loads only when serving

    if not 0 <= port <= 65535:
        raise ScpoError(f"port must be in 0..65535, got {port}")
    app = create_app(model, limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
