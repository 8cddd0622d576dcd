"""``scpo serve``: steerable reward models over HTTP (:mod:`scpo.serve`)."""

from __future__ import annotations

import argparse
import sys

from ..errors import ScpoError
from ..serve import ServeLimits, serve
from ..steer import SteerableRewardModel
from .common import Command, quiet_transformers


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    d = ServeLimits()
    p.add_argument("--model", required=True, metavar="DIR", help="a run directory, its models/ or an exported artifact")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--method", help="which trained model stands for a group (head mode; default scpo)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda ...")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--max-items", type=int, default=d.max_items, help=f"responses per request (default {d.max_items})")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help=f"characters per text (default {d.max_chars})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help=f"bytes per request body (default {d.max_body_bytes})")
    p.add_argument("--max-batch-items", type=int, default=d.max_batch_items,
                   help=f"texts per micro-batch (default {d.max_batch_items})")
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms,
                   help=f"how long a micro-batch waits for more requests (default {d.batch_wait_ms})")
    p.add_argument("--max-pending", type=int, default=d.max_pending, help=f"queued texts before 429 (default {d.max_pending})")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's own, one per core); "
                   "1 is often faster on a CPU shared with other jobs")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")


def _serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise ScpoError(f"--port must be in 0..65535, got {args.port}")
    if args.batch_size < 1:
        raise ScpoError(f"--batch-size must be >= 1, got {args.batch_size}")
    limits = ServeLimits(max_items=args.max_items, max_chars=args.max_chars, max_body_bytes=args.max_body_bytes,
                         max_batch_items=args.max_batch_items, batch_wait_ms=args.batch_wait_ms, max_pending=args.max_pending)
    if args.threads is not None:
        if args.threads < 1:
            raise ScpoError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    quiet_transformers()
    model = SteerableRewardModel.from_pretrained(args.model, method=args.method, device=args.device,
                                                 batch_size=args.batch_size)
    print(f"scpo: serving {model.path} (mode {model.mode}, method {model.method}, groups {', '.join(model.groups)}) "
          f"on http://{args.host}:{args.port} (docs: /docs)", file=sys.stderr, flush=True)
    serve(model, host=args.host, port=args.port, limits=limits, log_level=args.log_level)
    return 0



COMMANDS: dict[str, Command] = {
    "serve": ("serve steerable reward models over HTTP (FastAPI + uvicorn)", _add_serve_args, _serve),
}
