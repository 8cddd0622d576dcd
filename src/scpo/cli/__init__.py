"""The ``scpo`` command line: the only code that knows argv. Every subcommand mirrors a Python function:

* ``scpo run`` — :func:`scpo.run` (no arguments: the embedded synthetic default); ``scpo evaluate``
  and ``scpo sweep`` are ``scpo run`` with the defaults of a full evaluation and of a τ x β sweep;
* ``scpo report RUN_DIR`` — :func:`scpo.report.rebuild`; ``scpo data inspect`` — :func:`scpo.experiment.inspect_data`;
* ``scpo export`` / ``score`` / ``rerank`` — :mod:`scpo.export` and :mod:`scpo.steer`;
* ``scpo serve`` — :func:`scpo.serve.serve`.

Bad input and bad configs print one line ``scpo: error: ...`` and exit with status 2. Every parser
refuses abbreviated options (``--learning-rate`` is not ``--learning-rates``).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import warnings
from collections.abc import Sequence

from .. import __version__
from ..errors import ScpoError
from . import models, runs, serving
from .common import Command

__all__ = ["build_parser", "main"]

MAX_ERROR_CHARS = 2000
"""An error line is cut here (it names file, row and field long before)."""

_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                       errno.EISDIR, errno.ENAMETOOLONG, errno.EMFILE, errno.ENFILE, errno.EFBIG}
"""A file system that refuses a write (a full disk, a read-only mount, a permission): one line and
exit 2, like bad input; any other ``OSError`` is a bug and keeps its traceback."""

COMMANDS: dict[str, Command] = {**runs.COMMANDS, **models.COMMANDS, **serving.COMMANDS}
"""name -> (help, add_arguments, handler)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scpo", description="Steerable Cultural Preference Optimization of reward models",
                                     allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"scpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_, add, _fn) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_, allow_abbrev=False)
        add(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*TRANSFORMERS_CACHE.*")
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # recorded in results.json (scpo.provenance.command_line)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return COMMANDS[args.command][2](args)
    except ScpoError as e:
        message = str(e)
        if len(message) > MAX_ERROR_CHARS:  # whatever a message echoes, the line stays readable
            message = message[:MAX_ERROR_CHARS] + f"... ({len(message):,} characters)"
        print(f"scpo: error: {message}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"scpo: error: {where}{e.strerror or errno.errorcode.get(e.errno, e)}"[:MAX_ERROR_CHARS], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scpo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
