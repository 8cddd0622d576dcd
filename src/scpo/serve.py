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

import argparse
import asyncio
import concurrent.futures
import json
import logging
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from .errors import InputError, ScpoError
from .steer import GroupSpec, ScoreRequest, SteerableRewardModel, bt_probability

log = logging.getLogger("scpo.serve")

__all__ = ["MicroBatcher", "RewardProtocol", "ServeLimits", "create_app", "register", "split_query"]


@dataclass
class ServeLimits:
    """Request limits, timeouts and batching settings of the server."""

    max_items: int = 1024
    """(prompt, response) items per request (``/score`` and ``/get_reward``)."""
    max_chars: int = 20_000
    """Characters per text (prompt or response)."""
    max_body_bytes: int = 16_000_000
    """Bytes of a request body."""
    max_batch_items: int = 256
    """Texts scored together in one micro-batch (split into forward passes of the model's batch size)."""
    batch_wait_ms: float = 2.0
    """How long a micro-batch waits for more requests after its first."""
    max_pending: int = 16384
    """Texts queued before new requests get 429."""
    header_timeout_s: float = 10.0
    """Seconds a connection has to send its request headers (from opening, or from its previous response)."""
    body_timeout_s: float = 30.0
    """Seconds a request has to send its whole body once its headers are in."""
    keep_alive_s: float = 5.0
    """Seconds an idle keep-alive connection stays open."""

    def __post_init__(self) -> None:
        for name in ("max_items", "max_chars", "max_body_bytes", "max_batch_items", "max_pending"):
            if int(getattr(self, name)) < 1:
                raise ScpoError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.batch_wait_ms) and self.batch_wait_ms >= 0):
            raise ScpoError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ScpoError(f"--{name[:-2].replace('_', '-')} must be a number of seconds > 0, got {v}")


DEFAULT_STRIP = ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<eos>", "<|end|>",
                 "<end_of_turn>", "[SEP]")
"""End-of-sequence markers cut from the end of a ``/get_reward`` response (OpenRLHF decodes with them)."""


@dataclass
class RewardProtocol:
    """``/get_reward`` settings: the steering used when a request names none, and the split of queries."""

    group: GroupSpec = None
    strength: float = 1.0
    strip_suffixes: tuple[str, ...] = field(default=DEFAULT_STRIP)


def split_query(query: str, prompt: str | None, strip_suffixes: Sequence[str] = DEFAULT_STRIP) -> tuple[str, str] | None:
    """(prompt, response) of an OpenRLHF query, or None when the query does not hold its prompt.

    OpenRLHF sends ``query`` = the decoded prompt + response tokens (special tokens kept) and
    ``prompts`` = the prompt text it generated from. The response is what follows the first
    occurrence of the prompt in the query (decoding may put a BOS token such as ``<s>`` before
    it); end-of-sequence markers in ``strip_suffixes`` are cut from its end. Without a prompt the
    whole query is the response to an empty prompt.
    """
    if not prompt:
        response = query
        prompt = ""
    else:
        at = query.find(prompt)
        if at < 0:
            return None
        response = query[at + len(prompt):]
    cut = True
    while cut:
        cut = False
        for suffix in strip_suffixes:
            if suffix and response.endswith(suffix):
                response = response[: -len(suffix)]
                cut = True
    return prompt, response


class HTTPError(Exception):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Job:
    request: ScoreRequest
    future: asyncio.Future


def _lower_priority() -> None:
    """Scoring threads run at a lower CPU priority than the event loop (Linux: per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority
        pass


class MicroBatcher:
    """Collects concurrent scoring requests and scores them together in a worker thread."""

    def __init__(self, model: SteerableRewardModel, limits: ServeLimits):
        self.model, self.limits = model, limits
        self.queue: asyncio.Queue[_Job] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scpo-score",
                                                              initializer=_lower_priority)
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
# the edge: health fast path, body limit and body timeout, header timeout


def _json_bytes(obj: Any) -> bytes:
    """JSON that any client can read: ASCII-escaped (a lone surrogate cannot break encoding), no NaN."""
    return json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _Edge:
    """Outermost ASGI middleware.

    ``GET /health`` is answered here, before routing, validation and the batcher. Every other
    request's body is read whole (413 beyond ``max_bytes``; 408 when it has not all arrived within
    ``body_timeout`` seconds of the headers) and replayed to the app.
    """

    def __init__(self, app: Any, max_bytes: int, body_timeout: float, health: Any = None):
        self.app, self.max_bytes, self.body_timeout, self.health = app, max_bytes, body_timeout, health

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.health is not None and scope.get("path") == "/health" and scope.get("method") in ("GET", "HEAD"):
            await _send_json(send, 200, self.health())
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            await _send_json(send, 400, {"error": "invalid Content-Length header", "status": 400})
            return
        if too_big:
            await _send_json(send, 413, _too_big(self.max_bytes), close=True)
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        chunks, size, more = [], 0, True
        while more:
            try:
                msg = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            except asyncio.TimeoutError:
                await _send_json(send, 408, {"error": f"request body not received within {self.body_timeout:g} s",
                                             "status": 408}, close=True)
                return
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await _send_json(send, 413, _too_big(self.max_bytes), close=True)
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


async def _send_json(send: Any, status: int, obj: dict[str, Any], close: bool = False) -> None:
    body = _json_bytes(obj)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of the body will not be read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header_timeout_protocol(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a header timeout: 408 and close when a request's headers take longer.

    The clock starts when the connection opens and again after each response; it stops when
    h11 has the complete request head (uvicorn has only a keep-alive timeout, which the first
    byte of a request cancels).
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    message = _json_bytes({"error": f"request headers not received within {header_timeout:g} s", "status": 408})
    response = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message)

    class HeaderTimeoutH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(header_timeout, self._header_timed_out)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self._cancel_header_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            self.transport.write(response)
            self.transport.close()

    return HeaderTimeoutH11Protocol


# ---------------------------------------------------------------------------------------------
# request and response schemas (module level: FastAPI resolves the endpoints' annotations here)


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
        where = ".".join(loc)[:200] if loc else "body"
        if e.get("type") == "missing":
            parts.append(f"missing field {where!r}")
        elif e.get("type") == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif loc and loc[0] == "group":
            parts.append("group must be null, a group name or an object {group: weight} with numeric weights")
        else:
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return 422, "; ".join(dict.fromkeys(parts)) or "invalid request"


_Weight = StrictFloat | StrictInt
_Group = StrictStr | dict[StrictStr, _Weight] | None
_GroupOut = str | dict[str, float] | None
_STRENGTH = "0 = the global model ... 1 = the group's"
_GROUP = "null = the global model; a group; or a mixture {group: weight}"


class Item(BaseModel):
    """One (prompt, response) pair."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    response: StrictStr


class ScoreBody(BaseModel):
    """Score one prompt's responses (``prompt`` with ``responses`` or ``response``), or many ``items``."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr | None = Field(None, description="the prompt of `responses` / `response`")
    responses: list[StrictStr] | None = Field(None, description="one or more responses (or give `response`)")
    response: StrictStr | None = Field(None, description="a single response")
    items: list[Item] | None = Field(None, description="(prompt, response) pairs, instead of prompt + responses")
    group: _Group = Field(None, description=_GROUP)
    strength: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False, strict=True, description=_STRENGTH)


class CompareBody(BaseModel):
    """Compare two responses to one prompt."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr
    a: StrictStr
    b: StrictStr
    group: _Group = Field(None, description=_GROUP)
    strength: float = Field(1.0, ge=0.0, le=1.0, allow_inf_nan=False, strict=True, description=_STRENGTH)


class RewardBody(BaseModel):
    """OpenRLHF's remote reward request. Unknown fields are ignored (OpenRLHF versions add their own)."""

    model_config = ConfigDict(extra="ignore")
    query: list[StrictStr] = Field(description="prompt + response, as OpenRLHF decodes them")
    prompts: list[StrictStr] | None = Field(None, description="the prompt of each query")
    labels: list[Any] | None = Field(None, description="OpenRLHF's labels (ignored)")
    group: _Group = Field(None, description="default: the server's --group")
    strength: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False, strict=True,
                                   description="default: the server's --strength")


class ScoreResponse(BaseModel):
    rewards: list[float] = Field(description="steered rewards, in the order of the request's responses / items")
    group: _GroupOut
    strength: float
    method: str


class CompareResponse(BaseModel):
    p_a: float = Field(description="Bradley-Terry probability that a is preferred to b")
    reward_a: float
    reward_b: float
    group: _GroupOut
    strength: float


class RewardResponse(BaseModel):
    rewards: list[float] = Field(description="steered reward of each query")
    scores: list[float] = Field(description="the same values (OpenRLHF reads `scores` for filtering and logs)")
    group: _GroupOut
    strength: float


class CalibrationInfo(BaseModel):
    method: str | None = None
    n: int | None = None
    common_std: float | None = None


class GroupsResponse(BaseModel):
    groups: list[str]
    mode: str
    method: str
    accuracy: dict[str, dict[str, float | None]] = Field(description="group -> model -> test accuracy")
    calibration: CalibrationInfo


class LimitsInfo(BaseModel):
    max_items: int
    max_chars: int
    max_body_bytes: int
    max_batch_items: int
    batch_wait_ms: float
    max_pending: int
    header_timeout_s: float
    body_timeout_s: float
    keep_alive_s: float


class HealthResponse(BaseModel):
    status: str
    mode: str
    groups: int
    forward_passes: int
    device: str
    threads: int
    requests: int
    items: int
    batches: int
    batch_items_max: int
    failed_batches: int
    pending: int
    truncated: int
    uptime_s: float
    limits: LimitsInfo


class ErrorResponse(BaseModel):
    error: str
    status: int
    detail: list[dict[str, str | int | list[str | int]]] | None = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in ((400, "malformed JSON"), (408, "too slow"), (413, "over a limit"), (415, "not JSON"),
                       (422, "invalid fields"), (429, "queue full"))
}


# ---------------------------------------------------------------------------------------------
# the app


def create_app(model: SteerableRewardModel, limits: ServeLimits | None = None,
               reward: RewardProtocol | None = None) -> Any:
    """The FastAPI app serving ``model`` under ``limits`` (batching starts with the app's lifespan).

    ``reward``: the steering of ``/get_reward`` requests that name none (default: the global model).
    """
    import torch
    from fastapi import FastAPI, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from . import __version__

    class SafeJSON(JSONResponse):
        def render(self, content: Any) -> bytes:
            return _json_bytes(content)

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

    app.add_middleware(_Edge, max_bytes=limits.max_body_bytes, body_timeout=limits.body_timeout_s, health=health_payload)

    def err(status: int, message: str) -> SafeJSON:
        return SafeJSON({"error": message, "status": status}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_req: Request, exc: RequestValidationError) -> SafeJSON:
        errors = list(exc.errors())
        status, message = _error_message(errors)
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

    @app.post("/score", summary="rewards of (prompt, response) pairs for a group and strength", responses=_ERRORS)
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

    @app.post("/compare", summary="Bradley-Terry probability that response a is preferred to b", responses=_ERRORS)
    async def compare(body: CompareBody) -> CompareResponse:
        check_texts([body.prompt, body.a, body.b])
        group, echo, strength = steering(body.group, body.strength)
        r = finite(await batcher.submit(ScoreRequest([body.prompt] * 2, [body.a, body.b], group, strength)))
        p = float(bt_probability(r[0] - r[1]))
        return CompareResponse(p_a=p, reward_a=r[0], reward_b=r[1], group=echo, strength=strength)

    @app.post("/get_reward", summary="OpenRLHF's remote reward protocol: rewards of queries (prompt + response)",
              responses=_ERRORS)
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
    async def health() -> HealthResponse:  # answered by _Edge; here for the schema and for apps mounted without it
        return HealthResponse(**health_payload())

    return app


# ---------------------------------------------------------------------------------------------
# command line


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    from .steer import _parse_strength

    d = ServeLimits()
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a run directory, its models/, an exported artifact or a `scpo export --group` checkpoint")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--method", help="which trained model stands for a group (head mode; default scpo)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--group", metavar="G", help="/get_reward: the group (or mixture G1=0.7,G2=0.3) of requests that "
                   "name none (default: the global model)")
    p.add_argument("--strength", type=_parse_strength, default=1.0, metavar="A",
                   help="/get_reward: the strength of requests that give none (default 1)")
    p.add_argument("--strip-suffix", action="append", metavar="TEXT",
                   help="/get_reward: an end-of-sequence marker cut from the end of each response (repeatable; "
                   f"default: {' '.join(DEFAULT_STRIP)}); --strip-suffix '' cuts none")
    p.add_argument("--max-items", type=int, default=d.max_items, help=f"items per request (default {d.max_items})")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help=f"characters per text (default {d.max_chars})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help=f"bytes per request body (default {d.max_body_bytes})")
    p.add_argument("--max-batch-items", type=int, default=d.max_batch_items,
                   help=f"texts per micro-batch (default {d.max_batch_items})")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help=f"how long a micro-batch waits for more requests (default {d.batch_wait_ms})")
    p.add_argument("--max-pending", type=int, default=d.max_pending, help=f"queued texts before 429 (default {d.max_pending})")
    p.add_argument("--header-timeout", type=float, default=d.header_timeout_s, metavar="S",
                   help=f"seconds a client has to send its request headers (default {d.header_timeout_s:g})")
    p.add_argument("--body-timeout", type=float, default=d.body_timeout_s, metavar="S",
                   help=f"seconds a client has to send its request body (default {d.body_timeout_s:g})")
    p.add_argument("--keep-alive", type=float, default=d.keep_alive_s, metavar="S",
                   help=f"seconds an idle keep-alive connection stays open (default {d.keep_alive_s:g})")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own, one per core); "
                   "1 is often faster on a CPU shared with other jobs")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")


def _serve(args: argparse.Namespace) -> int:
    import sys

    import uvicorn

    from .steer import _quiet_transformers, parse_group

    if not 0 <= args.port <= 65535:
        raise ScpoError(f"--port must be in 0..65535, got {args.port}")
    if args.batch_size < 1:
        raise ScpoError(f"--batch-size must be >= 1, got {args.batch_size}")
    limits = ServeLimits(max_items=args.max_items, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                         max_batch_items=args.max_batch_items, batch_wait_ms=args.batch_wait_ms, max_pending=args.max_pending,
                         header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout, keep_alive_s=args.keep_alive)
    if args.threads is not None:
        if args.threads < 1:
            raise ScpoError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    _quiet_transformers()
    model = SteerableRewardModel.from_pretrained(args.model, method=args.method, device=args.device,
                                                 batch_size=args.batch_size)
    strip = DEFAULT_STRIP if args.strip_suffix is None else tuple(s for s in args.strip_suffix if s)
    reward = RewardProtocol(group=parse_group(args.group, model.groups), strength=args.strength, strip_suffixes=strip)
    app = create_app(model, limits, reward)
    print(f"scpo: serving {model.path} (mode {model.mode}, method {model.method}, groups {', '.join(model.groups)}) "
          f"on http://{args.host}:{args.port} (docs: /docs)", file=sys.stderr, flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                http=header_timeout_protocol(limits.header_timeout_s), timeout_keep_alive=limits.keep_alive_s)
    return 0


def register(commands: dict) -> None:
    """Add ``scpo serve`` to the CLI."""
    commands["serve"] = ("serve steerable reward models over HTTP (FastAPI + uvicorn)", _add_serve_args, _serve)
