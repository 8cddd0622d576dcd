"""The HTTP API of ``scpo serve``: its limits, the OpenRLHF reward protocol, and every request and
response schema (module level: FastAPI resolves the endpoints' annotations here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from .errors import ScpoError
from .steer import GroupSpec

__all__ = ["DEFAULT_STRIP", "ERRORS", "CalibrationInfo", "ErrorResponse", "HealthResponse", "RewardProtocol", "ServeLimits", "error_message",
           "split_query"]


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


def error_message(errors: list[dict[str, Any]]) -> tuple[int, str]:
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


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in ((400, "malformed JSON"), (408, "too slow"), (413, "over a limit"), (415, "not JSON"),
                       (422, "invalid fields"), (429, "queue full"))
}
