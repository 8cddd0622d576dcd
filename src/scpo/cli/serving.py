"""``scpo serve``: steerable reward models over HTTP (:mod:`scpo.serve`)."""

from __future__ import annotations

import argparse
import sys

import torch

from ..errors import ScpoError
from ..serve import RewardProtocol, ServeLimits, serve
from ..serve_api import DEFAULT_STRIP
from ..steer import SteerableRewardModel, parse_group
from .common import Command, quiet_transformers
from .models import parse_strength


def _add_serve_args(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--strength", type=parse_strength, default=1.0, metavar="A",
                   help="/get_reward: the strength of requests that give none (default 1)")
    p.add_argument("--strip-suffix", action="append", metavar="TEXT",
                   help="/get_reward: an end-of-sequence marker cut from the end of each response (repeatable; "
                   f"default: {' '.join(DEFAULT_STRIP)}); --strip-suffix '' cuts none")
    p.add_argument("--max-items", type=int, default=d.max_items, help=f"items per request (default {d.max_items})")
    p.add_argument("--max-chars", type=int, default=d.max_chars, help=f"characters per text (default {d.max_chars})")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help=f"bytes per request body (default {d.max_body_bytes})")
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
        torch.set_num_threads(args.threads)
    quiet_transformers()
    model = SteerableRewardModel.from_pretrained(args.model, method=args.method, device=args.device,
                                                 batch_size=args.batch_size)
    strip = DEFAULT_STRIP if args.strip_suffix is None else tuple(s for s in args.strip_suffix if s)
    reward = RewardProtocol(group=parse_group(args.group, model.groups), strength=args.strength, strip_suffixes=strip)
    print(f"scpo: serving {model.path} (mode {model.mode}, method {model.method}, groups {', '.join(model.groups)}) "
          f"on http://{args.host}:{args.port} (docs: /docs)", file=sys.stderr, flush=True)
    serve(model, host=args.host, port=args.port, limits=limits, reward=reward, log_level=args.log_level)
    return 0


COMMANDS: dict[str, Command] = {
    "serve": ("serve steerable reward models over HTTP (FastAPI + uvicorn)", _add_serve_args, _serve),
}
