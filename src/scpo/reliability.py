"""Run-level safety: atomic writes, the run-directory lock, and test-only kill points.

``SCPO_KILL_AT=<point>[:<n>]`` (tests only) makes the process SIGKILL itself the ``n``-th time
(default 1st) it reaches the named point: ``scoring`` (after a cache shard is written),
``training`` (after a group's checkpoint is written), ``report`` (while writing the report).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from .errors import RunLockedError

_HITS: dict[str, int] = {}


def maybe_kill(point: str) -> None:
    """SIGKILL this process if ``SCPO_KILL_AT`` names ``point`` (test-only hook)."""
    spec = os.environ.get("SCPO_KILL_AT")
    if not spec:
        return
    name, _, nth = spec.partition(":")
    if name != point:
        return
    _HITS[point] = _HITS.get(point, 0) + 1
    if _HITS[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


class RunLock:
    """An exclusive lock on a run directory (``.lock`` file, ``fcntl.flock``)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            raise RunLockedError(f"run directory {self.path.parent} is in use by another scpo process") from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
