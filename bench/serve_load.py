"""Load test of ``scpo serve``: a real server process on loopback, 1, 8 and 32 concurrent clients.

Starts ``python -m scpo serve`` on 127.0.0.1 and a free port, sends ``POST /score`` requests from
N client threads (keep-alive connections, stdlib ``http.client``), bounded by a request count and a
time limit per level, and prints per level: requests, failed requests, requests per second, p50 and
p99 latency, the latency of ``GET /health`` probed every 50 ms meanwhile (p50, p99, max: it must stay
under 100 ms while the batcher is saturated), and model forward passes per request (from ``GET /health``; well below 1 at 32 clients
when the server's micro-batching works). Every request's texts are distinct (a unique suffix), so
batching cannot be helped by repeated texts.

Without ``--model`` it trains the tiny synthetic preset (packaged encoder, head mode) into a
temporary directory and exports it first::

    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve_load.py --model runs/default --clients 1,8,32 --requests 256

Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port: int, path: str, timeout: float = 10.0) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return json.loads(resp.read())
    finally:
        conn.close()


def make_model(workdir: Path) -> Path:
    """Train the tiny synthetic preset (head mode, packaged encoder) and export its models in place."""
    from scpo import RunConfig, run
    from scpo.export import export_artifact

    run_dir = workdir / "run"
    cfg = RunConfig().replace(synthetic_preset="tiny", steps=[20], output_dir=str(run_dir),
                              cache_dir=str(workdir / "cache"), plots=False)
    run(cfg, progress=False)
    return export_artifact(run_dir)


def start_server(model: Path, port: int, extra: list[str], log_path: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "scpo", "serve", "--model", str(model), "--host", "127.0.0.1", "--port", str(port), *extra]
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(proc: subprocess.Popen, port: int, timeout: float, log_path: Path) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-3000:]}")
        try:
            if get_json(port, "/health", timeout=2).get("status") == "ok":
                return
        except (OSError, ValueError, http.client.HTTPException):
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


def load_level(port: int, clients: int, n_requests: int, max_seconds: float, texts: list[tuple[str, str]],
               responses: int, group: str | None, strength: float, seq: list[int]) -> dict[str, Any]:
    """Run one concurrency level; returns its figures."""
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    counter = {"next": 0}
    deadline = time.perf_counter() + max_seconds

    def body(i: int) -> bytes:
        k = seq[0] + i
        prompt = texts[k % len(texts)][0]
        rs = [f"{texts[(k + j) % len(texts)][1]} [{k}.{j}]" for j in range(responses)]
        return json.dumps({"prompt": prompt, "responses": rs, "group": group, "strength": strength}).encode()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while True:
                with lock:
                    i = counter["next"]
                    if i >= n_requests or time.perf_counter() > deadline:
                        return
                    counter["next"] += 1
                data = body(i)
                t = time.perf_counter()
                try:
                    conn.request("POST", "/score", body=data, headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    payload = resp.read()
                    ok = resp.status == 200 and len(json.loads(payload)["rewards"]) == responses
                    err = "" if ok else f"HTTP {resp.status}: {payload[:200]!r}"
                except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
                    ok, err = False, f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                dt = time.perf_counter() - t
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        failures.append(err)
        finally:
            conn.close()

    health_ms: list[float] = []
    stop = threading.Event()

    def prober() -> None:  # /health on its own keep-alive connection, every 50 ms
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while not stop.wait(0.05):
                t = time.perf_counter()
                try:
                    conn.request("GET", "/health")
                    conn.getresponse().read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    continue
                health_ms.append((time.perf_counter() - t) * 1000)
        finally:
            conn.close()

    before = get_json(port, "/health")
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    probe = threading.Thread(target=prober, daemon=True)
    t0 = time.perf_counter()
    probe.start()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    stop.set()
    probe.join()
    hms = np.array(health_ms) if health_ms else np.array([np.nan])
    after = get_json(port, "/health")
    seq[0] += counter["next"]
    done = len(latencies) + len(failures)
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    passes = after["forward_passes"] - before["forward_passes"]
    served = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    return {
        "clients": clients, "requests": done, "failed": len(failures), "wall_s": wall,
        "req_per_s": done / wall if wall > 0 else float("nan"), "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)), "forward_passes": passes,
        "passes_per_request": passes / served if served else float("nan"),
        "requests_per_batch": served / batches if batches else float("nan"), "failures": failures[:5],
        "health_probes": len(health_ms), "health_p50_ms": float(np.percentile(hms, 50)),
        "health_p99_ms": float(np.percentile(hms, 99)), "health_max_ms": float(np.max(hms)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="artifact / run directory (default: train the tiny preset into a temporary directory)")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels (default 1,8,32)")
    ap.add_argument("--requests", type=int, default=160, help="requests per level at most (default 160)")
    ap.add_argument("--max-seconds", type=float, default=40.0, help="time limit per level (default 40)")
    ap.add_argument("--responses", type=int, default=1, help="responses per request (default 1)")
    ap.add_argument("--group", default="group-a", help="group to score for (default group-a; 'global' for none)")
    ap.add_argument("--strength", type=float, default=0.5, help="strength (default 0.5)")
    ap.add_argument("--warmup", type=int, default=4, help="warm-up requests before the levels (default 4)")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for scpo serve (repeatable, e.g. --server-arg=--batch-wait-ms=5)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.clients.split(",") if x.strip()]
    tmp = tempfile.TemporaryDirectory(prefix="scpo-bench-")
    work = Path(tmp.name)
    if args.model:
        model = Path(args.model)
    else:
        print("training the tiny synthetic preset (packaged encoder) ...", file=sys.stderr, flush=True)
        model = make_model(work)
    from scpo.artifact import read_reference, resolve_artifact

    prompts, responses, _ = read_reference(resolve_artifact(model))
    texts = list(zip(prompts, responses)) or [("How do I greet my neighbour?", "Say hello and smile.")]
    port = free_port()
    log_path = work / "server.log"
    t_start = time.time()
    proc = start_server(model, port, args.server_arg, log_path)
    results = []
    try:
        wait_ready(proc, port, 180, log_path)
        startup = time.time() - t_start
        group = None if args.group == "global" else args.group
        seq = [10**6]
        load_level(port, 1, args.warmup, 60, texts, args.responses, group, args.strength, seq)
        for c in levels:
            results.append(load_level(port, c, args.requests, args.max_seconds, texts, args.responses, group,
                                      args.strength, seq))
        health = get_json(port, "/health")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    ntok = np.mean([len(p) + len(r) for p, r in texts])
    print(f"\nscpo serve load test: {model} (mode {health['mode']}), {args.responses} response(s)/request, group "
          f"{args.group} at strength {args.strength}; texts from reference.jsonl (~{ntok:.0f} characters each, distinct); "
          f"server startup {startup:.1f} s; server on {health['device']} with {health['threads']} torch threads; "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'clients':>7} {'requests':>8} {'failed':>6} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'passes/req':>10} "
          f"{'req/batch':>9} {'health p50/p99/max ms':>22}")
    for r in results:
        print(f"{r['clients']:>7} {r['requests']:>8} {r['failed']:>6} {r['req_per_s']:>7.1f} {r['p50_ms']:>8.0f} "
              f"{r['p99_ms']:>8.0f} {r['passes_per_request']:>10.3f} {r['requests_per_batch']:>9.1f} "
              f"{r['health_p50_ms']:>8.1f}/{r['health_p99_ms']:.1f}/{r['health_max_ms']:.1f}")
        for f in r["failures"]:
            print(f"        failure: {f}")
    failed = sum(r["failed"] for r in results)
    print(f"failed requests: {failed}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": str(model), "results": results, "startup_s": startup}, indent=2))
    tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
