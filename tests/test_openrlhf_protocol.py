"""``POST /get_reward``: OpenRLHF's remote reward protocol (issue 13, item 2), and ``/score`` with many items.

OpenRLHF's client (``openrlhf/utils/remote_rm_utils.py``: ``request_api_wrapper`` / ``remote_rm_fn_ray``)
posts ``requests.post(url, json={"query": queries, "prompts": prompts, "labels": labels},
headers={"Content-Type": "application/json"}, timeout=180)`` and reads ``response.json()``: the
experience maker takes ``torch.as_tensor(info["rewards"])`` and, when present, ``info["scores"]``.
``queries`` are the decoded prompt + response tokens (``skip_special_tokens=False``: a BOS before the
prompt, an EOS after the response), ``prompts`` the prompt texts, ``labels`` the dataset's labels
("" without ``--label_key``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from scpo.serve import split_query
from scpo.steer import SteerableRewardModel
from test_serve import PROMPT, RESPONSES, running_server, tiny_artifact

GROUP, STRENGTH, MAX_ITEMS = "group-b", 0.75, 8
PROMPTS = [PROMPT, "What should I bring to a dinner party?", "How do I address my elders?"]
ANSWERS = [RESPONSES[0], "A bottle of wine or flowers.", "With their title and family name."]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def local(artifact: Path) -> SteerableRewardModel:
    return SteerableRewardModel.from_pretrained(artifact, device="cpu")


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("serve-rlhf") / "server.log"
    with running_server(artifact, log_path, "--group", GROUP, "--strength", str(STRENGTH), "--max-items", str(MAX_ITEMS),
                        "--threads", "1", "--batch-wait-ms", "10") as url:
        yield url


def openrlhf_post(url: str, queries: list[str], prompts: list[str], labels: list[Any]) -> httpx.Response:
    """Byte for byte what ``requests.post(url, json=data, headers=...)`` sends (requests: json.dumps, allow_nan=False)."""
    data = {"query": queries, "prompts": prompts, "labels": labels}
    body = json.dumps(data, allow_nan=False).encode("utf-8")
    return httpx.post(url + "/get_reward", content=body, headers={"Content-Type": "application/json"}, timeout=180)


def test_openrlhf_round_trip(server: str, local: SteerableRewardModel) -> None:
    queries = ["<s>" + p + r + "</s>" for p, r in zip(PROMPTS, ANSWERS)]  # as a Llama tokenizer decodes them
    r = openrlhf_post(server, queries, PROMPTS, ["", "", ""])
    assert r.status_code == 200, r.text
    info = r.json()
    expected = local.score(PROMPTS, ANSWERS, group=GROUP, strength=STRENGTH)
    np.testing.assert_allclose(info["rewards"], expected, atol=1e-5)
    assert info["scores"] == info["rewards"] and info["group"] == GROUP and info["strength"] == STRENGTH
    # what OpenRLHF's update_samples_with_rewards does with the answer
    rewards = torch.cat([torch.as_tensor(i["rewards"]) for i in [info, info]], dim=0).split([3, 3])
    assert len(rewards) == 2 and rewards[0].shape == (3,)
    # chat-template special tokens at the end are cut; labels of any JSON type are accepted and ignored
    q2 = [p + r + "<|im_end|><|endoftext|>" for p, r in zip(PROMPTS, ANSWERS)]
    r2 = openrlhf_post(server, q2, PROMPTS, [{"answer": 1}, None, "x"])
    np.testing.assert_allclose(r2.json()["rewards"], expected, atol=1e-5)
    # per request steering overrides the server's
    r3 = httpx.post(server + "/get_reward", json={"query": queries, "prompts": PROMPTS, "group": "group-a", "strength": 0.2})
    np.testing.assert_allclose(r3.json()["rewards"], local.score(PROMPTS, ANSWERS, group="group-a", strength=0.2), atol=1e-5)
    r4 = httpx.post(server + "/get_reward", json={"query": queries, "prompts": PROMPTS, "group": None})
    np.testing.assert_allclose(r4.json()["rewards"], local.score(PROMPTS, ANSWERS), atol=1e-5)
    # no prompts: the whole query is the response to an empty prompt
    r5 = httpx.post(server + "/get_reward", json={"query": ANSWERS})
    np.testing.assert_allclose(r5.json()["rewards"], local.score([""] * 3, ANSWERS, group=GROUP, strength=STRENGTH), atol=1e-5)
    # unknown fields some OpenRLHF versions add are ignored; an empty batch is an empty answer
    r6 = httpx.post(server + "/get_reward", json={"query": queries, "prompts": PROMPTS, "labels": [""] * 3,
                                                   "datasources": ["a", "b", "c"]})
    np.testing.assert_allclose(r6.json()["rewards"], expected, atol=1e-5)
    assert httpx.post(server + "/get_reward", json={"query": [], "prompts": [], "labels": []}).json()["rewards"] == []


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"query": ["a b"], "prompts": ["a", "b"]}, 422, "1 queries but 2 prompts"),
    ({"query": ["a b"], "prompts": ["a"], "labels": []}, 422, "1 queries but 0 labels"),
    ({"query": ["hello"], "prompts": ["bye"]}, 422, "query 0 does not contain its prompt"),
    ({"query": ["x"] * (MAX_ITEMS + 1)}, 413, f"limit of {MAX_ITEMS}"),
    ({"query": "p r"}, 422, "query"),
    ({"query": [3]}, 422, "query.0"),
    ({"prompts": ["p"]}, 422, "missing field 'query'"),
    ({"query": ["p r"], "prompts": ["p"], "group": "nope"}, 422, "unknown group 'nope'"),
    ({"query": ["p r"], "prompts": ["p"], "strength": 1.5}, 422, "strength"),
])
def test_get_reward_errors(server: str, body: Any, status: int, text: str) -> None:
    r = httpx.post(server + "/get_reward", json=body, timeout=60)
    assert r.status_code == status, r.text
    assert text in r.json()["error"], r.json()


def test_split_query() -> None:
    assert split_query("<s>Q: hi A: yo</s>", "Q: hi") == ("Q: hi", " A: yo")
    assert split_query("Q: hi A: yo<|eot_id|><|end_of_text|>", "Q: hi ") == ("Q: hi ", "A: yo")
    assert split_query("hi</s>", None) == ("", "hi")
    assert split_query("hi</s>", "hi", strip_suffixes=()) == ("hi", "</s>")
    assert split_query("abc", "x") is None


def test_score_takes_many_items(server: str, local: SteerableRewardModel) -> None:
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ANSWERS)]
    r = httpx.post(server + "/score", json={"items": items, "group": "group-c", "strength": 0.4}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["rewards"], local.score(PROMPTS, ANSWERS, group="group-c", strength=0.4), atol=1e-5)
    for body, text in (({"items": items, "prompt": "p"}, "not both"), ({"items": []}, "at least one item"),
                       ({"items": [{"prompt": "p"}]}, "items.0.response"),
                       ({"items": [{"prompt": "p", "response": "r", "x": 1}]}, "unknown field 'items.0.x'"),
                       ({"items": items * 3}, f"limit of {MAX_ITEMS}")):
        e = httpx.post(server + "/score", json=body, timeout=60)
        assert e.status_code in (413, 422) and text in e.json()["error"], e.text


def _untyped(schema: Any, comps: dict[str, Any], seen: set[str], path: str) -> list[str]:
    """Places in a response schema with no type: ``{}`` or an object without properties/additionalProperties."""
    if not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return []
        seen.add(name)
        return _untyped(comps[name], comps, seen, name)
    bad = []
    if not schema or (set(schema) <= {"title", "description", "default"}):
        bad.append(path)
    if schema.get("type") == "object" and "properties" not in schema and not isinstance(schema.get("additionalProperties"), dict):
        bad.append(path)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for k, sub in enumerate(schema.get(key, [])):
            bad += _untyped(sub, comps, seen, f"{path}.{key}[{k}]")
    for name, sub in (schema.get("properties") or {}).items():
        bad += _untyped(sub, comps, seen, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            bad += _untyped(schema[key], comps, seen, f"{path}.{key}")
    return bad


def test_every_response_has_a_typed_schema(server: str) -> None:
    spec = httpx.get(server + "/openapi.json").json()
    comps = spec["components"]["schemas"]
    assert {"/score", "/compare", "/get_reward", "/groups", "/health"} <= set(spec["paths"])
    for path, ops in spec["paths"].items():
        for verb, op in ops.items():
            for code, resp in op["responses"].items():
                schema = resp.get("content", {}).get("application/json", {}).get("schema")
                assert schema, f"{verb} {path} {code}: no schema"
                assert _untyped(schema, comps, set(), f"{verb} {path} {code}") == []
    assert set(comps["RewardResponse"]["required"]) >= {"rewards", "scores"}
