"""``scpo serve`` under hostile clients (issue 15, item 7): no client input yields a 5xx, slow clients time out,
``/health`` answers within 100 ms while the batcher is saturated."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from scpo.steer import SteerableRewardModel
from test_serve import PROMPT, RESPONSES, running_server, tiny_artifact

TIMEOUT = 1.0  # --header-timeout and --body-timeout of the server under test


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_artifact(tmp_path_factory)


@pytest.fixture(scope="module")
def local(artifact: Path) -> SteerableRewardModel:
    return SteerableRewardModel.from_pretrained(artifact, device="cpu")


@pytest.fixture(scope="module")
def server(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_path = tmp_path_factory.mktemp("serve-hard") / "server.log"
    with running_server(artifact, log_path, "--batch-wait-ms", "30", "--threads", "1", "--header-timeout", str(TIMEOUT),
                        "--body-timeout", str(TIMEOUT), "--keep-alive", "2") as url:
        yield url


def post_raw(url: str, path: str, body: bytes) -> httpx.Response:
    return httpx.post(url + path, content=body, headers={"Content-Type": "application/json"}, timeout=60)


# ---------------------------------------------------------------------------------------------
# the inputs that gave 500 or wrong 200s


def test_huge_integer_weight_is_a_422(server: str) -> None:
    big = "1" + "0" * 400
    for body in (f'{{"prompt": "p", "response": "x", "group": {{"group-a": {big}}}}}',
                 f'{{"prompt": "p", "a": "x", "b": "y", "group": {{"group-a": 1, "group-b": {big}}}}}'):
        path = "/score" if '"response"' in body else "/compare"
        r = post_raw(server, path, body.encode())
        assert r.status_code == 422, r.text
        assert "finite number" in r.json()["error"] and "401 digits" in r.json()["error"]
    r = post_raw(server, "/score", f'{{"prompt": "p", "response": "x", "strength": {big}}}'.encode())
    assert r.status_code == 422 and "strength" in r.json()["error"]


def test_overflowing_mixture_is_normalised_safely(server: str, local: SteerableRewardModel) -> None:
    expected = local.score(PROMPT, RESPONSES, group={"group-a": 1, "group-b": 1}, strength=0.8)
    for w in (1e308, 1.7976931348623157e308, 5e-324):
        r = httpx.post(server + "/score", json={"prompt": PROMPT, "responses": RESPONSES,
                                                 "group": {"group-a": w, "group-b": w}, "strength": 0.8}, timeout=60)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["rewards"], expected, atol=1e-5)
        assert r.json()["group"] == {"group-a": w, "group-b": w}
    r = httpx.post(server + "/score", json={"prompt": PROMPT, "responses": RESPONSES,
                                             "group": {"group-a": 1e308, "group-b": 0}}, timeout=60)
    np.testing.assert_allclose(r.json()["rewards"], local.score(PROMPT, RESPONSES, group="group-a"), atol=1e-5)


SURROGATE_BODIES = [
    ("/score", b'{"prompt": "p\\ud800", "response": "x"}'),
    ("/score", b'{"prompt": "p", "responses": ["ok", "bad \\udfff"]}'),
    ("/score", b'{"items": [{"prompt": "p", "response": "ok"}, {"prompt": "\\ud83d", "response": "x"}]}'),
    ("/compare", b'{"prompt": "p", "a": "x", "b": "\\ud800y"}'),
    ("/get_reward", b'{"query": ["p\\udc00x"], "prompts": ["p"], "labels": [""]}'),
    ("/score", b'{"prompt": "p", "response": "x", "group": "\\ud800"}'),
    ("/score", b'{"prompt": "p", "response": "x", "group": {"\\ud800": 1}}'),
]


def test_lone_surrogates_fail_their_own_request_only(server: str) -> None:
    """Bad texts are refused before queueing: sent together with good requests, the micro-batch is not re-scored."""
    before = httpx.get(server + "/health").json()
    results: dict[int, httpx.Response] = {}
    start = threading.Barrier(len(SURROGATE_BODIES) + 4)

    def bad(i: int) -> None:
        start.wait()
        results[i] = post_raw(server, *SURROGATE_BODIES[i])

    def good(i: int) -> None:
        start.wait()
        results[100 + i] = httpx.post(server + "/score", json={"prompt": PROMPT, "response": f"{RESPONSES[0]} {i}"},
                                      timeout=60)

    threads = [threading.Thread(target=bad, args=(i,)) for i in range(len(SURROGATE_BODIES))]
    threads += [threading.Thread(target=good, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(len(SURROGATE_BODIES)):
        r = results[i]
        assert r.status_code == 422, (SURROGATE_BODIES[i], r.text)
        r.content.decode("ascii")  # the error echoes no raw surrogate
    assert all(results[100 + i].status_code == 200 for i in range(4))
    after = httpx.get(server + "/health").json()
    assert after["failed_batches"] == before["failed_batches"] == 0
    assert after["requests"] - before["requests"] == 4


# ---------------------------------------------------------------------------------------------
# slow clients


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.settimeout(TIMEOUT + 8)
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            raise AssertionError(f"connection still open {TIMEOUT + 8:.0f} s later; got {out[:200]!r}") from None
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def test_slow_headers_and_bodies_time_out(server: str) -> None:
    port = int(server.rsplit(":", 1)[1])
    n = 40
    idle = [_connect(port) for _ in range(5)]  # connect and send nothing
    partial_headers = [_connect(port) for _ in range(n)]
    for s in partial_headers:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
    partial_body = [_connect(port) for _ in range(n)]
    for s in partial_body:
        s.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"prompt\": ")
    # a slowloris: one header byte at a time, every 0.2 s, keeps the connection busy but never finishes
    drip = _connect(port)
    t0 = time.perf_counter()
    stop = threading.Event()

    def dribble() -> None:
        for ch in b"GET /health HTTP/1.1\r\nX-Slow: " + b"a" * 1000:
            if stop.is_set():
                return
            try:
                drip.send(bytes([ch]))
            except OSError:
                return
            time.sleep(0.2)

    th = threading.Thread(target=dribble, daemon=True)
    th.start()
    try:
        # meanwhile the server answers others
        assert httpx.get(server + "/health", timeout=5).status_code == 200
        for s in partial_headers:
            got = _read_all(s)
            assert got.startswith(b"HTTP/1.1 408") and b"headers not received" in got, got[:200]
        for s in partial_body:
            got = _read_all(s)
            assert got.startswith(b"HTTP/1.1 408") and b"body not received" in got, got[:200]
        assert _read_all(drip).startswith(b"HTTP/1.1 408")
        for s in idle:  # closed, with a 408 (or silently by the keep-alive timeout)
            got = _read_all(s)
            assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]
        elapsed = time.perf_counter() - t0
        assert elapsed < TIMEOUT + 6, f"slow clients held {elapsed:.1f} s"
    finally:
        stop.set()
        for s in [*idle, *partial_headers, *partial_body, drip]:
            s.close()
    # keep-alive: a finished request's connection takes a new request, and an idle one is closed
    s = _connect(port)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        s.sendall(b"GET /groups HTTP/1.1\r\nHost: x\r\n\r\n")
        got = _read_all(s)
        assert got.count(b"HTTP/1.1 200") == 2
    finally:
        s.close()
    assert httpx.get(server + "/health", timeout=5).json()["status"] == "ok"


# ---------------------------------------------------------------------------------------------
# /health under load


def test_health_answers_fast_while_the_batcher_is_saturated(server: str) -> None:
    """16 clients keep the batcher busy (8 long responses each) for ~6 s; /health is probed every 50 ms."""
    stop = threading.Event()
    long = [" ".join([r] * 20) for r in RESPONSES]
    counts = {"ok": 0, "other": 0}
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(timeout=120) as c:
            k = 0
            while not stop.is_set():
                k += 1
                r = c.post(server + "/score", json={"prompt": PROMPT, "group": "group-a", "strength": 0.5,
                                                    "responses": [f"{long[j % 3]} {i}.{k}.{j}" for j in range(8)]})
                with lock:
                    counts["ok" if r.status_code == 200 else "other"] += 1

    clients = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(16)]
    for t in clients:
        t.start()
    time.sleep(1.0)  # let the queue fill
    lat = []
    with httpx.Client(timeout=10) as c:
        t_end = time.perf_counter() + 5.0
        while time.perf_counter() < t_end:
            t = time.perf_counter()
            h = c.get(server + "/health").json()
            lat.append((time.perf_counter() - t) * 1000)
            time.sleep(0.05)
        busy = h["pending"]
    stop.set()
    for t in clients:
        t.join(timeout=120)
    lat_a = np.array(lat)
    summary = (f"/health over {len(lat)} probes under load: p50 {np.percentile(lat_a, 50):.1f} ms, "
               f"p95 {np.percentile(lat_a, 95):.1f} ms, max {lat_a.max():.1f} ms; {counts}; pending at the end {busy}")
    print(summary)
    assert counts["other"] == 0 and counts["ok"] > 0
    assert busy > 0, "the batcher was not saturated: " + summary
    # 100 ms is the promise; on a CPU shared with other jobs allow the odd probe a scheduler hiccup
    assert np.percentile(lat_a, 95) < 100, summary
    assert lat_a.max() < 1000, summary


def test_json_is_ascii_and_finite(server: str) -> None:
    r = httpx.post(server + "/score", json={"prompt": "héllo ☃", "response": "naïve 🙂"}, timeout=60)
    assert r.status_code == 200
    r.content.decode("ascii")
    assert json.loads(r.content)["rewards"][0] == pytest.approx(r.json()["rewards"][0])
