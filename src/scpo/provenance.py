"""Provenance a reviewer can use, without the machine it ran on: portable paths, the command line, the code's commit.

Everything scpo writes for others (``results.json``, an artifact's ``manifest.json``, adapter
configs) names files by :func:`portable_path`: a relative path as the user gave it, a path below
the working directory relative to it, ``~/...`` below the home directory, and otherwise the file's
name alone -- never an absolute path of this machine. Files are identified by the sha256 of the
bytes read, not by where they lay.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["code_revision", "command_line", "portable_path"]

GIT_TIMEOUT_S = 5.0
"""A ``git`` call that takes longer than this is given up (the commit is then not recorded)."""


def portable_path(path: str | Path, cwd: str | Path | None = None) -> str:
    """``path`` as it can be shown on another machine: never absolute.

    A relative path stays as given; an absolute one becomes relative to ``cwd`` (default: the working
    directory) when it lies below it, ``~/...`` when it lies below the home directory, else its name.

    >>> portable_path("data/pairs.jsonl")
    'data/pairs.jsonl'
    >>> portable_path("/srv/corpora/pairs.jsonl", cwd="/srv")
    'corpora/pairs.jsonl'
    >>> portable_path("/mnt/x/pairs.jsonl", cwd="/srv")
    'pairs.jsonl'
    """
    p = Path(os.path.normpath(str(path)))
    if not p.is_absolute():
        return p.as_posix()
    here = Path(os.path.normpath(str(cwd if cwd is not None else Path.cwd())))
    if p == here:
        return "."
    if here != Path(here.anchor) and here in p.parents:
        return p.relative_to(here).as_posix()
    home = _home()
    if home is not None and home in p.parents:
        return "~/" + p.relative_to(home).as_posix()
    return p.name or p.as_posix()


def _home() -> Path | None:
    try:
        home = Path(os.path.normpath(str(Path.home())))
    except (RuntimeError, KeyError):  # no home directory known (a bare container user)
        return None
    return None if home == Path(home.anchor) else home


def command_line(argv: Sequence[str], program: str = "scpo") -> list[str]:
    """The command as typed, for ``results.json``: ``program`` then ``argv``, each absolute path in it
    made portable (:func:`portable_path`), in ``--flag=/abs/path`` form too."""
    out = [program]
    for a in argv:
        flag, eq, value = a.partition("=") if a.startswith("--") and "=" in a else ("", "", a)
        if os.path.isabs(value):
            value = portable_path(value)
        out.append(f"{flag}{eq}{value}" if eq else value)
    return out


def code_revision(package_dir: str | Path | None = None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout scpo runs from, or ``None``.

    Only a checkout *of scpo* counts: ``package_dir`` (default: this package) must be
    ``<top>/src/scpo`` of the repository's top level (a wheel installed into a virtualenv that lies
    inside some other repository is not that repository's code). ``dirty``: tracked files differ
    from the commit. ``None`` also when git is missing or slow.
    """
    pkg = Path(package_dir if package_dir is not None else Path(__file__).parent).resolve()

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(pkg), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                               env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if not top or Path(top).resolve() / "src" / pkg.name != pkg:
        return None
    commit = git("rev-parse", "HEAD")
    if not commit:
        return None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}
