"""``scpo export``, ``scpo score`` and ``scpo rerank``: steerable reward models in use from the shell."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ScpoError
from ..export import export_artifact, export_checkpoint
from ..rundir import atomic_write_text
from ..steer import SteerableRewardModel, parse_group, rerank_file, score_file
from .common import Command, quiet_transformers


def parse_strength(text: str) -> float:
    """A strength flag: a number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text!r}")
    return v


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a run directory, its models/ or an exported artifact")
    p.add_argument("--group", metavar="G", help="a group, or a mixture G1=0.7,G2=0.3 (default: the global model)")
    p.add_argument("--strength", type=parse_strength, default=1.0, metavar="A",
                   help="0 = the global model ... 1 = the group's (default 1)")
    p.add_argument("--method", help="which trained model stands for a group (head mode; default scpo)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default 64)")
    p.add_argument("--input", required=True, metavar="FILE", help="JSONL, CSV or Parquet file")
    p.add_argument("--output", metavar="FILE", help="JSONL output (default: standard output)")


def _open_model(args: argparse.Namespace) -> SteerableRewardModel:
    quiet_transformers()
    if args.batch_size < 1:
        raise ScpoError(f"--batch-size must be >= 1, got {args.batch_size}")
    return SteerableRewardModel.from_pretrained(args.model, method=args.method, device=args.device,
                                                batch_size=args.batch_size)


def _write_jsonl(rows: Sequence[dict[str, Any]], output: str | None) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(output, text)


def _add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (or its models/, or an artifact)")
    p.add_argument("--out", metavar="DIR", help="output directory (without --group: default in place, RUN_DIR/models)")
    p.add_argument("--group", metavar="G",
                   help="export one plain transformers checkpoint for this group (or mixture G1=0.7,G2=0.3); "
                        "without it the whole steerable artifact is exported")
    p.add_argument("--strength", type=parse_strength, default=1.0, metavar="A", help="with --group: strength α (default 1)")
    p.add_argument("--method", help="which trained model stands for a group (head mode; default scpo)")
    p.add_argument("--no-scale", action="store_true", help="calibration: centre only, do not rescale to the global spread")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda ...")


def _export(args: argparse.Namespace) -> int:
    quiet_transformers()
    if args.out and (Path(args.out).exists() or Path(args.out).is_symlink()) and not Path(args.out).is_dir():
        raise ScpoError(f"--out {args.out}: exists and is not a directory")
    if args.group is None:
        path = export_artifact(args.run_dir, args.out, scale=not args.no_scale, method=args.method, device=args.device)
        print(path)
        return 0
    if not args.out:
        raise ScpoError("--group needs --out DIR (where to write the checkpoint)")
    srm = SteerableRewardModel.from_pretrained(args.run_dir, method=args.method, device=args.device,
                                               scale=False if args.no_scale else None)
    print(export_checkpoint(srm, args.out, group=parse_group(args.group, srm.groups), strength=args.strength))
    return 0


def _score_cmd(args: argparse.Namespace) -> int:
    srm = _open_model(args)
    rows = score_file(srm, args.input, parse_group(args.group, srm.groups), args.strength)
    _write_jsonl(rows, args.output)
    return 0


def _add_rerank_args(p: argparse.ArgumentParser) -> None:
    _add_model_args(p)
    p.add_argument("--top-k", type=int, metavar="K", help="keep the K best candidates per prompt")


def _rerank_cmd(args: argparse.Namespace) -> int:
    if args.top_k is not None and args.top_k < 1:
        raise ScpoError(f"--top-k must be >= 1, got {args.top_k}")

    srm = _open_model(args)
    rows = rerank_file(srm, args.input, parse_group(args.group, srm.groups), args.strength, args.top_k)
    _write_jsonl(rows, args.output)
    return 0



COMMANDS: dict[str, Command] = {
    "export": ("export a run's steerable reward models (or one group's plain transformers checkpoint)",
               _add_export_args, _export),
    "score": ("score (prompt, response) rows, or pairs, with a group's reward model", _add_model_args, _score_cmd),
    "rerank": ("order candidate responses per prompt for a group (best-of-n)", _add_rerank_args, _rerank_cmd),
}
