"""``scpo serve``: steerable reward models over HTTP (FastAPI + uvicorn), with micro-batching.

Endpoints (OpenAPI docs at ``/docs``, schema at ``/openapi.json``; every request and response has
a typed schema there):

* ``POST /score`` — ``{"prompt": str, "responses": [str, ...] | "response": str, "group": null | str |
  {group: weight}, "strength": 0..1}``, or many prompts at once with ``{"items": [{"prompt", "response"},
  ...], "group", "strength"}`` -> ``{"rewards": [...], "group", "strength", "method"}``;
* ``POST /compare`` — ``{"prompt", "a", "b", "group", "strength"}`` -> ``{"p_a": P(a preferred), ...}``;
* ``POST /get_reward`` — OpenRLHF's remote reward protocol (``--remote_rm_url http://HOST:PORT/get_reward``):
  ``{"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [...]}`` ->
  ``{"rewards": [...], "scores": [...]}``; group and strength from ``scpo serve --group G --strength A``
  or the request's own ``group`` / ``strength``. See :func:`split_query` for how a query is split;
* ``GET /groups`` — the groups, mode, method and per-group accuracies;
* ``GET /health`` — status and counters: requests, items, batches and model **forward passes**
  (``forward_passes / requests`` well below 1 under concurrent load shows batching works). It is
  answered by the outermost middleware, never queued behind scoring.

Errors are JSON ``{"error": message, "status": code}`` with a 4xx status: 400 malformed JSON,
408 a client too slow to send its headers or body, 413 over a limit (body bytes, items per request,
characters per text), 415 not JSON, 422 invalid fields (missing or unknown fields, unknown group,
strength outside [0, 1], bad mixture weights, texts that are not valid Unicode), 404/405 unknown
routes, 429 when the queue is full. Every field is validated before a request is queued, so a bad
item fails its own request only and never the micro-batch it would have joined. 500 only for a
failure of the model itself.

The modules behind it: :mod:`scpo.serve_api` (limits, the OpenRLHF protocol, schemas),
:mod:`scpo.microbatch` (the batcher), :mod:`scpo.http_edge` (health fast path, body and header
timeouts).

**Timeouts** (``ServeLimits``): a connection must send its request headers within
``header_timeout_s`` (default 10 s) of opening or of its previous response, and its body within
``body_timeout_s`` (default 30 s) of its headers, else it gets 408 and is closed; an idle keep-alive
connection is closed after ``keep_alive_s`` (default 5 s).

**Micro-batching.** Requests are validated, then queued. One background task takes the first
queued request, collects whatever else arrives within ``batch_wait_ms`` (or until
``max_batch_items`` texts), and scores them together with
:meth:`~scpo.steer.SteerableRewardModel.score_requests` in a worker thread (at a lower CPU priority
than the event loop, so the server keeps answering while it computes): one forward pass per batch
of distinct texts (per model needed, for lora/full), whatever the mix of groups and strengths.
While it runs, new requests queue up and form the next batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .errors import InputError, ScpoError
from .http_edge import Edge, header_timeout_protocol, json_bytes
from .microbatch import HTTPError, MicroBatcher
from .serve_api import (
    ERRORS,
    CalibrationInfo,
    CompareBody,
    CompareResponse,
    GroupsResponse,
    HealthResponse,
    RewardBody,
    RewardProtocol,
    RewardResponse,
    ScoreBody,
    ScoreResponse,
    ServeLimits,
    error_message,
    split_query,
)
from .steer import GroupSpec, ScoreRequest, SteerableRewardModel, bt_probability

log = logging.getLogger("scpo.serve")

__all__ = ["MicroBatcher", "RewardProtocol", "ServeLimits", "create_app", "serve", "split_query"]


def create_app(model: SteerableRewardModel, limits: ServeLimits | None = None,
               reward: RewardProtocol | None = None) -> Any:
    """The FastAPI app serving ``model`` under ``limits`` (batching starts with the app's lifespan).

    ``reward``: the steering of ``/get_reward`` requests that name none (default: the global model).
    """
    class SafeJSON(JSONResponse):
        def render(self, content: Any) -> bytes:
            return json_bytes(content)

    limits = limits or ServeLimits()
    reward = reward or RewardProtocol()
    model.coefficients(reward.group, reward.strength)  # a bad --group / --strength fails at start
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
                  default_response_class=SafeJSON,
                  description="Steerable cultural reward models (SCPO): rewards per group and strength.")
    app.state.batcher = batcher
    app.state.model = model
    app.state.limits = limits

    def health_payload() -> dict[str, Any]:
        s = batcher.stats
        return {"status": "ok", "mode": model.mode, "groups": len(model.groups), "forward_passes": model.forward_passes,
                "device": str(model.device), "threads": torch.get_num_threads(),
                **s, "pending": batcher.pending, "truncated": model.truncated, "uptime_s": time.time() - started,
                "limits": asdict(limits)}

    app.add_middleware(Edge, max_bytes=limits.max_body_bytes, body_timeout=limits.body_timeout_s, health=health_payload)

    def err(status: int, message: str) -> SafeJSON:
        return SafeJSON({"error": message, "status": status}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> SafeJSON:
        errors = list(exc.errors())
        status, message = error_message(errors)
        # no "input" echo: it may be large, or NaN (not JSON)
        detail = jsonable_encoder([{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in errors][:20])
        return SafeJSON({"error": message, "status": status, "detail": detail}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, exc: StarletteHTTPException) -> SafeJSON:
        return err(exc.status_code, str(exc.detail))

    @app.exception_handler(HTTPError)
    async def _ours(_req: Request, exc: HTTPError) -> SafeJSON:
        return err(exc.status, exc.message)

    @app.exception_handler(InputError)
    async def _input(_req: Request, exc: InputError) -> SafeJSON:
        return err(422, str(exc)[:2000])

    @app.exception_handler(Exception)
    async def _internal(_req: Request, exc: Exception) -> SafeJSON:
        log.exception("scoring failed")
        return err(500, f"internal error: {type(exc).__name__}")

    def check_texts(texts: Sequence[str], what: str = "a text", limit: int | None = None) -> None:
        limit = limits.max_chars if limit is None else limit
        for t in texts:
            if len(t) > limit:
                raise HTTPError(413, f"{what} has {len(t)} characters, over the limit of {limit}")
        for t in texts:
            try:
                t.encode("utf-8")
            except UnicodeEncodeError as e:
                raise HTTPError(422, f"{what} holds a lone surrogate (U+{ord(t[e.start]):04X} at character {e.start}): "
                                     "texts must be valid Unicode") from None

    def check_count(n: int) -> None:
        if n > limits.max_items:
            raise HTTPError(413, f"{n} items, over the limit of {limits.max_items} per request")

    def steering(group: Any, strength: float) -> tuple[GroupSpec, GroupSpec, float]:
        """(group to score with, group to echo, strength), validated here: no bad value reaches a batch."""
        if isinstance(group, Mapping):
            check_count(len(group))
            weights: dict[str, float] = {}
            for g, w in group.items():
                try:
                    weights[g] = float(w)
                except OverflowError:
                    raise HTTPError(422, f"mixture weight of {g[:100]!r} must be a finite number >= 0, "
                                         f"got an integer of {len(str(abs(w)))} digits") from None
            finite = [w for w in weights.values() if math.isfinite(w)]
            top = max(finite, default=0.0)
            # normalise by the largest weight first: the sum of {a: 1e308, b: 1e308} overflows to inf
            scaled = ({g: (w / top if math.isfinite(w) else w) for g, w in weights.items()}
                      if len(finite) == len(weights) and top > 0 else weights)
            model.coefficients(scaled, strength)  # unknown group / bad weights -> InputError -> 422
            return scaled, weights, float(strength)
        model.coefficients(group, strength)
        return group, group, float(strength)

    def finite(rewards: np.ndarray) -> list[float]:
        if not np.all(np.isfinite(rewards)):
            raise HTTPError(500, "the model produced non-finite rewards")
        return [float(x) for x in rewards]

    @app.post("/score", summary="rewards of (prompt, response) pairs for a group and strength", responses=ERRORS)
    async def score(body: ScoreBody) -> ScoreResponse:
        if body.items is not None:
            if body.prompt is not None or body.responses is not None or body.response is not None:
                raise HTTPError(422, "give either 'items' or 'prompt' with 'responses' / 'response', not both")
            if not body.items:
                raise HTTPError(422, "'items' must hold at least one item")
            check_count(len(body.items))
            prompts, responses = [it.prompt for it in body.items], [it.response for it in body.items]
        else:
            if body.prompt is None:
                raise HTTPError(422, "missing field 'prompt' (or give 'items')")
            if (body.responses is None) == (body.response is None):
                raise HTTPError(422, "give exactly one of 'responses' (a list) and 'response'")
            responses = body.responses if body.responses is not None else [body.response]
            if not responses:
                raise HTTPError(422, "'responses' must hold at least one response")
            check_count(len(responses))
            prompts = [body.prompt] * len(responses)
        check_texts([*dict.fromkeys(prompts), *responses])
        group, echo, strength = steering(body.group, body.strength)
        rewards = await batcher.submit(ScoreRequest(prompts, list(responses), group, strength))
        return ScoreResponse(rewards=finite(rewards), group=echo, strength=strength, method=model.method)

    @app.post("/compare", summary="Bradley-Terry probability that response a is preferred to b", responses=ERRORS)
    async def compare(body: CompareBody) -> CompareResponse:
        check_texts([body.prompt, body.a, body.b])
        group, echo, strength = steering(body.group, body.strength)
        r = finite(await batcher.submit(ScoreRequest([body.prompt] * 2, [body.a, body.b], group, strength)))
        p = float(bt_probability(r[0] - r[1]))
        return CompareResponse(p_a=p, reward_a=r[0], reward_b=r[1], group=echo, strength=strength)

    @app.post("/get_reward", summary="OpenRLHF's remote reward protocol: rewards of queries (prompt + response)",
              responses=ERRORS)
    async def get_reward(body: RewardBody) -> RewardResponse:
        n = len(body.query)
        check_count(n)
        if body.prompts is not None and len(body.prompts) != n:
            raise HTTPError(422, f"{n} queries but {len(body.prompts)} prompts")
        if body.labels is not None and len(body.labels) != n:
            raise HTTPError(422, f"{n} queries but {len(body.labels)} labels")
        check_texts(body.query, "a query", 2 * limits.max_chars)  # prompt + response
        if body.prompts is not None:
            check_texts(body.prompts, "a prompt")
        prompts, responses = [], []
        for i, q in enumerate(body.query):
            pair = split_query(q, body.prompts[i] if body.prompts is not None else None, reward.strip_suffixes)
            if pair is None:
                raise HTTPError(422, f"query {i} does not contain its prompt (prompts[{i}]): cannot tell the response apart")
            prompts.append(pair[0])
            responses.append(pair[1])
        check_texts(responses, "a response")
        given = "group" in body.model_fields_set
        group, echo, strength = steering(body.group if given else reward.group,
                                         reward.strength if body.strength is None else body.strength)
        rewards = finite(await batcher.submit(ScoreRequest(prompts, responses, group, strength))) if n else []
        return RewardResponse(rewards=rewards, scores=list(rewards), group=echo, strength=strength)

    @app.get("/groups", summary="the groups this model is steerable to")
    async def groups() -> GroupsResponse:
        acc = model.manifest.get("accuracy") or {}

        def num(x: Any) -> float | None:
            return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None

        return GroupsResponse(
            groups=model.groups, mode=model.mode, method=model.method,
            accuracy={g: {m: num(e.get("all") if isinstance(e, dict) else e) for m, e in acc.get(g, {}).items()}
                      for g in model.groups if isinstance(acc.get(g), dict)},
            calibration=CalibrationInfo(**{k: v for k, v in model.calibration_info.items() if k in ("method", "n", "common_std")}))

    @app.get("/health", summary="status and counters (forward passes, requests, batches); never queued")
    async def health() -> HealthResponse:  # answered by Edge; here for the schema and for apps mounted without it
        return HealthResponse(**health_payload())

    return app


def serve(model: SteerableRewardModel, *, host: str = "127.0.0.1", port: int = 8000, limits: ServeLimits | None = None,
          reward: RewardProtocol | None = None, log_level: str = "warning") -> None:
    """Serve ``model`` over HTTP with uvicorn until interrupted (:func:`create_app`; header and keep-alive timeouts)."""
    import uvicorn  # start-up time: the server loads only when serving

    if not 0 <= port <= 65535:
        raise ScpoError(f"port must be in 0..65535, got {port}")
    limits = limits or ServeLimits()
    uvicorn.run(create_app(model, limits, reward), host=host, port=port, log_level=log_level, access_log=False,
                http=header_timeout_protocol(limits.header_timeout_s), timeout_keep_alive=limits.keep_alive_s)
