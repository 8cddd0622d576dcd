"""The ``scpo`` command line. Every subcommand mirrors a Python function:

* ``scpo run`` — :func:`scpo.run` (no arguments: the embedded synthetic default);
* ``scpo report RUN_DIR`` — :func:`scpo.report.rebuild`.

Bad input and bad configs print one line ``scpo: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Callable, Sequence

from .config import add_config_arguments, config_from_args
from .errors import ScpoError

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}
"""name -> (help, add_arguments, handler). Modules register their subcommands here."""


def command(name: str, help: str):
    def deco(fn: Callable[[argparse.Namespace], int]):
        def wrap(add: Callable[[argparse.ArgumentParser], None]):
            COMMANDS[name] = (help, add, fn)
            return fn

        return wrap

    return deco


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="YAML", help="config file; flags given on the command line override it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_config_arguments(p)


def _run(args: argparse.Namespace) -> int:
    from .pipeline import run

    cfg = config_from_args(args)
    results = run(cfg, progress=not args.quiet)
    _print_summary(results, cfg.output.output_dir)
    return 0


def _print_summary(results: dict, out_dir: str) -> None:
    summ = results["summary"]
    print(f"\nscpo: {results['data']['name']} ({'synthetic' if results['synthetic_data'] else 'real'} data), "
          f"mode {results['mode']}, seeds {results['seeds']}, {results['wall_time_s']:.0f} s")
    for name, rows in summ.items():
        print(f"  {name}: mean test accuracy (%)")
        for m, r in rows.items():
            extra = f"  pairs used {r['pairs_used']:.0f}" if "pairs_used" in r else ""
            print(f"    {m:<14} all {100 * r['all']:5.1f}  distinctive {100 * r['distinctive']:5.1f}  "
                  f"pooled {100 * r['pooled']:5.1f}{extra}")
    print(f"  report: {out_dir}/report.md")


def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="a finished run directory (holding results.json)")


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .report import rebuild

    if not (Path(args.run_dir) / "results.json").exists():
        raise ScpoError(f"{args.run_dir}: no results.json (not a finished run directory)")
    print(rebuild(args.run_dir))
    return 0


COMMANDS["run"] = ("run the SCPO experiment (default: the embedded synthetic benchmark)", _add_run_args, _run)
COMMANDS["report"] = ("rebuild report.md and plots of a run from its results.json", _add_report_args, _report)


COMMAND_MODULES = ("scpo.inspect", "scpo.sweep", "scpo.steer", "scpo.serve")
"""Modules that add subcommands: each defines ``register(commands)`` adding to :data:`COMMANDS`."""


def _load_command_modules() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    _load_command_modules()

    parser = argparse.ArgumentParser(prog="scpo", description="Steerable Cultural Preference Optimization of reward models")
    parser.add_argument("--version", action="version", version=f"scpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, _fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args)
    except ScpoError as e:
        print(f"scpo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
