"""Property-based fuzzing of every endpoint (issue 15): whatever the payload, the server never answers 5xx.

Hypothesis, derandomised (the same examples every run), small ``max_examples``; the app runs
in-process (``TestClient``: the same ASGI stack as ``scpo serve``, the edge middleware included).
Payloads: arbitrary JSON (Unicode with lone surrogates, huge integers, NaN and infinities,
nesting), near-valid bodies with each field replaced by such a value, and raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scpo.serve import ServeLimits, create_app
from scpo.steer import SteerableRewardModel
from test_serve import PROMPT, RESPONSES, tiny_artifact

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
GROUPS = ["group-a", "group-b", "group-c"]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    art: Path = tiny_artifact(tmp_path_factory)
    model = SteerableRewardModel.from_pretrained(art, device="cpu")
    app = create_app(model, ServeLimits(max_items=16, max_chars=2000, max_body_bytes=200_000, batch_wait_ms=0))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
    torch.set_num_threads(n)


# text with any code point, lone surrogates included
texts = st.text(st.characters(exclude_categories=()), max_size=40) | st.sampled_from(["", "\ud800", "x\udfffy", "\x00", "\u2028"])
numbers = (st.integers() | st.integers(min_value=10**300, max_value=10**400) | st.integers(max_value=-(10**300))
           | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e308, -0.0, 5e-324, 1.7976931348623157e308]))
scalars = st.none() | st.booleans() | numbers | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=12)
groups = (st.none() | st.sampled_from(GROUPS) | texts
          | st.dictionaries(st.sampled_from(GROUPS) | texts, numbers | json_values, max_size=4) | json_values)
strengths = st.floats(min_value=0, max_value=1) | numbers | json_values
prompts = st.sampled_from([PROMPT, *RESPONSES]) | texts


def maybe(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A body with any subset of ``fields``, each either plausible or an arbitrary JSON value, plus stray keys."""
    return st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()}).flatmap(
        lambda d: st.dictionaries(texts, json_values, max_size=2).map(lambda extra: {**extra, **d}))


score_bodies = maybe({"prompt": prompts, "responses": st.lists(prompts, max_size=5), "response": prompts,
                      "items": st.lists(st.fixed_dictionaries({"prompt": prompts, "response": prompts}), max_size=4),
                      "group": groups, "strength": strengths})
compare_bodies = maybe({"prompt": prompts, "a": prompts, "b": prompts, "group": groups, "strength": strengths})
plausible_compare = st.fixed_dictionaries({"prompt": prompts, "a": prompts, "b": prompts},
                                          optional={"group": groups, "strength": st.floats(0, 1) | numbers})
reward_bodies = maybe({"query": st.lists(prompts, max_size=5), "prompts": st.lists(prompts, max_size=5),
                       "labels": st.lists(json_values, max_size=5), "group": groups, "strength": strengths})

# near-valid: the right fields with plausible or extreme values (reaching the batcher)
mixtures = st.dictionaries(st.sampled_from(GROUPS), numbers, min_size=1, max_size=3)
steer = {"group": st.none() | st.sampled_from(GROUPS) | mixtures, "strength": st.floats(0, 1) | numbers}
plausible_score = st.fixed_dictionaries({"prompt": prompts, "responses": st.lists(prompts, min_size=1, max_size=4)},
                                        optional=steer)
plausible_items = st.fixed_dictionaries(
    {"items": st.lists(st.fixed_dictionaries({"prompt": prompts, "response": prompts}), min_size=1, max_size=4)},
    optional=steer)
plausible_reward = st.lists(st.tuples(prompts, prompts), min_size=1, max_size=4).flatmap(
    lambda pr: st.fixed_dictionaries({"query": st.just([p + r for p, r in pr]), "prompts": st.just([p for p, _ in pr]),
                                      "labels": st.lists(json_values, min_size=len(pr), max_size=len(pr))}, optional=steer))


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True, ensure_ascii=True).encode()


def check(client: Any, method: str, path: str, content: bytes | None = None,
          content_type: str = "application/json") -> None:
    r = client.request(method, path, content=content, headers={"Content-Type": content_type})
    assert r.status_code < 500, (method, path, content[:300] if content else None, r.status_code, r.text[:300])
    body = r.json()  # always JSON, always ASCII
    r.content.decode("ascii")
    if r.status_code >= 400:
        assert body["status"] == r.status_code and isinstance(body["error"], str)


@SETTINGS
@given(body=score_bodies | plausible_score | plausible_items)
def test_fuzz_score(client: Any, body: dict) -> None:
    check(client, "POST", "/score", encode(body))


@SETTINGS
@given(body=compare_bodies | plausible_compare)
def test_fuzz_compare(client: Any, body: dict) -> None:
    check(client, "POST", "/compare", encode(body))


@SETTINGS
@given(body=reward_bodies | plausible_reward)
def test_fuzz_get_reward(client: Any, body: dict) -> None:
    check(client, "POST", "/get_reward", encode(body))


@SETTINGS
@given(path=st.sampled_from(["/score", "/compare", "/get_reward", "/groups", "/health", "/nowhere", "/score/x"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
       payload=json_values.map(encode) | st.binary(max_size=200) | st.just(b"[" * 5000 + b"]" * 5000),
       content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_fuzz_any_request(client: Any, path: str, method: str, payload: bytes, content_type: str) -> None:
    if method == "HEAD":
        r = client.request(method, path)
        assert r.status_code < 500
        return
    check(client, method, path, payload, content_type)
