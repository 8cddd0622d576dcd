"""``scpo serve`` as a real process on loopback: every endpoint, every error case, micro-batching."""

from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from scpo.cli import main
from scpo.export import export_artifact
from scpo.serve import ServeLimits
from scpo.serve_api import error_message as _error_message
from scpo.steer import SteerableRewardModel

MAX_ITEMS, MAX_CHARS, MAX_BODY = 4, 300, 4096
PROMPT = "How should I greet my new neighbour?"
RESPONSES = ["Say hello and smile.", "Bring a small gift and bow politely.", "Ignore them."]


def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny preset run exported once per session (the same directories as test_steer.py's)."""
    from scpo import RunConfig, run

    base = tmp_path_factory.getbasetemp()
    run_dir, out = base / "scpo-tiny-run", base / "scpo-tiny-artifact"
    with open(base / "scpo-tiny.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "results.json").is_file():
            cfg = RunConfig().replace(synthetic_preset="tiny", steps=[20], output_dir=str(run_dir),
                                      cache_dir=str(base / "scpo-cache"), plots=False)
            run(cfg, progress=False)
        if not (out / "README.md").is_file():
            export_artifact(run_dir, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Small batches: one intra-op thread is as fast, and does not thrash a CPU shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def local(artifact: Path) -> SteerableRewardModel:
    return SteerableRewardModel.from_pretrained(artifact, device="cpu")


@contextmanager
def running_server(artifact: Path, log_path: Path, *args: str) -> Iterator[str]:
    """``scpo serve --model artifact *args`` as a subprocess on a free loopback port; yields its base URL.

    On exit: the server never crashed and never logged a traceback (no 500).
    """
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for _attempt in range(3):  # the free port may be taken between choosing and binding it
        port = free_port()
        cmd = [sys.executable, "-m", "scpo", "serve", "--model", str(artifact), "--host", "127.0.0.1", "--port", str(port),
               "--device", "cpu", *args]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        if proc.poll() is None:
            break
    else:
        pytest.fail(f"server did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    # the server never crashed and never answered 500
    assert proc.returncode in (0, -15), log_path.read_text(errors="replace")[-3000:]
    assert "Traceback" not in log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``scpo serve`` started as a subprocess on a free loopback port; yields its base URL."""
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    with running_server(artifact, log_path, "--max-items", str(MAX_ITEMS), "--max-chars", str(MAX_CHARS),
                        "--max-body-bytes", str(MAX_BODY), "--batch-wait-ms", "20", "--threads", "1") as url:
        yield url


def post(url: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
    if body is not None:
        kw["json"] = body
    return httpx.post(url + path, timeout=60, **kw)


def assert_error(resp: httpx.Response, status: int, text: str) -> None:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert body["status"] == status and text in body["error"], body


# ---------------------------------------------------------------------------------------------
# endpoints


def test_health_groups_docs(server: str, local: SteerableRewardModel) -> None:
    h = httpx.get(server + "/health").json()
    assert h["status"] == "ok" and h["mode"] == "head" and h["groups"] == 3
    assert h["device"] == "cpu" and h["threads"] == 1
    assert {"forward_passes", "requests", "batches", "items"} <= set(h)
    assert h["limits"]["max_items"] == MAX_ITEMS and h["limits"]["max_chars"] == MAX_CHARS
    g = httpx.get(server + "/groups").json()
    assert g["groups"] == local.groups and g["method"] == "scpo" and g["mode"] == "head"
    assert g["accuracy"]["group-a"]["scpo"] == local.manifest["accuracy"]["group-a"]["scpo"]["all"]
    docs = httpx.get(server + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(server + "/openapi.json").json()
    assert {"/score", "/compare", "/groups", "/health"} <= set(spec["paths"])


def test_score_equals_the_python_api(server: str, local: SteerableRewardModel) -> None:
    for group, strength in ((None, 1.0), ("group-a", 1.0), ("group-b", 0.25), ({"group-a": 0.7, "group-c": 0.3}, 0.6)):
        r = post(server, "/score", {"prompt": PROMPT, "responses": RESPONSES, "group": group, "strength": strength})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["group"] == group and body["strength"] == strength and body["method"] == "scpo"
        np.testing.assert_allclose(body["rewards"], local.score(PROMPT, RESPONSES, group=group, strength=strength), atol=1e-5)
    one = post(server, "/score", {"prompt": PROMPT, "response": RESPONSES[0], "group": "group-c"}).json()
    assert one["rewards"] == pytest.approx([local.score(PROMPT, RESPONSES[:1], group="group-c")[0]], abs=1e-5)
    assert one["strength"] == 1.0
    # strength 0 is the global model whatever the group
    g0 = post(server, "/score", {"prompt": PROMPT, "responses": RESPONSES, "group": "group-a", "strength": 0}).json()
    glob = post(server, "/score", {"prompt": PROMPT, "responses": RESPONSES}).json()
    np.testing.assert_allclose(g0["rewards"], glob["rewards"], atol=1e-9)


def test_compare_equals_the_python_api(server: str, local: SteerableRewardModel) -> None:
    r = post(server, "/compare", {"prompt": PROMPT, "a": RESPONSES[1], "b": RESPONSES[2], "group": "group-b", "strength": 0.5})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = local.compare(PROMPT, RESPONSES[1], RESPONSES[2], group="group-b", strength=0.5)
    assert body["p_a"] == pytest.approx(expected, abs=1e-5)
    assert body["p_a"] == pytest.approx(1 / (1 + math.exp(body["reward_b"] - body["reward_a"])), abs=1e-12)
    same = post(server, "/compare", {"prompt": PROMPT, "a": RESPONSES[0], "b": RESPONSES[0]}).json()
    assert same["p_a"] == pytest.approx(0.5)


def test_concurrent_requests_are_batched(server: str, local: SteerableRewardModel) -> None:
    n = 16
    before = httpx.get(server + "/health").json()
    results: dict[int, httpx.Response] = {}
    start = threading.Barrier(n)

    def call(i: int) -> None:
        start.wait()
        results[i] = post(server, "/score", {"prompt": PROMPT, "response": f"Say hello, neighbour number {i}.",
                                             "group": ["group-a", "group-b", "group-c", None][i % 4], "strength": 0.5})

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = httpx.get(server + "/health").json()
    assert all(r.status_code == 200 for r in results.values()), [r.text for r in results.values() if r.status_code != 200]
    assert after["requests"] - before["requests"] == n
    passes = after["forward_passes"] - before["forward_passes"]
    assert passes <= n // 2, f"{passes} forward passes for {n} concurrent requests: not batched"
    for i in (0, 5):
        expected = local.score(PROMPT, [f"Say hello, neighbour number {i}."], group=["group-a", "group-b"][i % 4], strength=0.5)
        assert results[i].json()["rewards"][0] == pytest.approx(expected[0], abs=1e-5)


# ---------------------------------------------------------------------------------------------
# errors: always a 4xx JSON answer, never a 500, never a crash

BAD_SCORE = [
    ({"prompt": PROMPT, "response": "x", "group": "group-x"}, 422, "unknown group 'group-x'"),
    ({"prompt": PROMPT, "response": "x", "group": {"group-x": 1}}, 422, "unknown group"),
    ({"prompt": PROMPT, "response": "x", "group": {"group-a": -1}}, 422, ">= 0"),
    ({"prompt": PROMPT, "response": "x", "group": {"group-a": 0}}, 422, "must not all be 0"),
    ({"prompt": PROMPT, "response": "x", "group": {}}, 422, "at least one group"),
    ({"prompt": PROMPT, "response": "x", "group": {"group-a": "much"}}, 422, "group must be"),
    ({"prompt": PROMPT, "response": "x", "group": {"group-a": True}}, 422, "group must be"),
    ({"prompt": PROMPT, "response": "x", "group": 3}, 422, "group must be"),
    ({"prompt": PROMPT, "response": "x", "strength": 1.5}, 422, "strength"),
    ({"prompt": PROMPT, "response": "x", "strength": -0.1}, 422, "strength"),
    ({"prompt": PROMPT, "response": "x", "strength": "0.5"}, 422, "strength"),
    ({"prompt": PROMPT, "response": "x", "strength": None}, 422, "strength"),
    ({"response": "x"}, 422, "missing field 'prompt'"),
    ({"prompt": PROMPT}, 422, "exactly one of 'responses'"),
    ({"prompt": PROMPT, "response": "x", "responses": ["y"]}, 422, "exactly one of 'responses'"),
    ({"prompt": PROMPT, "responses": []}, 422, "at least one response"),
    ({"prompt": PROMPT, "responses": "x"}, 422, "responses"),
    ({"prompt": PROMPT, "responses": ["x", 3]}, 422, "responses.1"),
    ({"prompt": 3, "response": "x"}, 422, "prompt"),
    ({"prompt": PROMPT, "response": "x", "strenght": 1}, 422, "unknown field 'strenght'"),
    ({"prompt": PROMPT, "responses": ["x"] * (MAX_ITEMS + 1)}, 413, f"limit of {MAX_ITEMS}"),
    ({"prompt": "p" * (MAX_CHARS + 1), "response": "x"}, 413, f"limit of {MAX_CHARS}"),
    ({"prompt": PROMPT, "response": "x" * (MAX_CHARS + 1)}, 413, f"limit of {MAX_CHARS}"),
    ([PROMPT, "x"], 422, "must be a JSON object"),
    ("just text", 422, "must be a JSON object"),
]


@pytest.mark.parametrize(("body", "status", "text"), BAD_SCORE)
def test_score_errors(server: str, body: Any, status: int, text: str) -> None:
    assert_error(post(server, "/score", body), status, text)


BAD_COMPARE = [
    ({"prompt": PROMPT, "a": "x", "b": "y", "group": "nope"}, 422, "unknown group 'nope'"),
    ({"prompt": PROMPT, "a": "x", "b": "y", "strength": 2}, 422, "strength"),
    ({"prompt": PROMPT, "a": "x"}, 422, "missing field 'b'"),
    ({"prompt": PROMPT, "a": "x", "b": "y", "c": "z"}, 422, "unknown field 'c'"),
    ({"prompt": PROMPT, "a": "x" * (MAX_CHARS + 1), "b": "y"}, 413, f"limit of {MAX_CHARS}"),
    ({"prompt": PROMPT, "a": ["x"], "b": "y"}, 422, "a:"),
]


@pytest.mark.parametrize(("body", "status", "text"), BAD_COMPARE)
def test_compare_errors(server: str, body: Any, status: int, text: str) -> None:
    assert_error(post(server, "/compare", body), status, text)


def test_protocol_errors(server: str) -> None:
    hdr = {"Content-Type": "application/json"}
    assert_error(post(server, "/score", content=b'{"prompt": "p", "response": ', headers=hdr), 400, "malformed JSON")
    assert_error(post(server, "/compare", content=b"{not json}", headers=hdr), 400, "malformed JSON")
    assert_error(post(server, "/score", content=b"", headers=hdr), 422, "")
    nan = b'{"prompt": "p", "response": "x", "strength": NaN}'
    assert_error(post(server, "/score", content=nan, headers=hdr), 422, "strength")
    inf_weight = b'{"prompt": "p", "response": "x", "group": {"group-a": Infinity}}'
    assert_error(post(server, "/score", content=inf_weight, headers=hdr), 422, "finite")
    assert_error(post(server, "/score", content=b'{"prompt": "p", "response": "x"}',
                      headers={"Content-Type": "text/plain"}), 415, "must be JSON")
    big = json.dumps({"prompt": PROMPT, "response": "x" * (MAX_BODY + 10)}).encode()
    assert_error(post(server, "/score", content=big, headers=hdr), 413, f"limit of {MAX_BODY} bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies to what arrives
        for _ in range(10):
            yield b" " * 1000

    assert_error(post(server, "/score", content=chunks(), headers=hdr), 413, "bytes")
    assert_error(httpx.get(server + "/nowhere"), 404, "Not Found")
    assert_error(httpx.get(server + "/score"), 405, "Method Not Allowed")
    assert_error(httpx.delete(server + "/groups"), 405, "Method Not Allowed")
    # still alive and answering after every error
    assert httpx.get(server + "/health").json()["status"] == "ok"
    r = post(server, "/score", {"prompt": PROMPT, "response": RESPONSES[0]})
    assert r.status_code == 200 and len(r.json()["rewards"]) == 1


# ---------------------------------------------------------------------------------------------
# configuration


def test_limits_and_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(Exception, match="max-items"):
        ServeLimits(max_items=0)
    with pytest.raises(Exception, match="batch-wait-ms"):
        ServeLimits(batch_wait_ms=-1)
    assert main(["serve", "--model", str(tmp_path)]) == 2
    assert "not a steerable reward model" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--port", "70000"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", "--model", str(tmp_path), "--threads", "0"]) == 2
    assert "--threads" in capsys.readouterr().err
    assert _error_message([{"type": "json_invalid", "loc": ["body", 1], "ctx": {"error": "bad"}}]) == (400, "malformed JSON: bad")
