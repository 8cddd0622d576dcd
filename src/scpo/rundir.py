"""The run directory: atomic writes, its lock and its work log.

* **Atomic writes** (:func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_write_bytes`):
  a temporary name in the same folder, ``fsync``, then a rename, so a reader never sees a
  half-written file, whatever kills the writer. Every file scpo writes for others goes through them.
* **The run lock** (:class:`RunLock`): ``RUN_DIR/.lock`` held with ``fcntl.flock`` while a run
  writes into its directory; a second run into the same directory fails at once with
  :class:`~scpo.errors.RunLockedError` (exit 2 on the CLI). The kernel drops the lock when the
  holder dies, even by SIGKILL, so a killed run never leaves a stale lock behind.
* **The work log** (:func:`log_work`, :func:`work_summary`): ``RUN_DIR/work.jsonl``, one line per
  unit of work (a scoring forward pass, a training step, an evaluation forward pass, a job skipped
  or resumed) written by the process that holds the run lock. It survives a SIGKILL, so the work
  of an interrupted attempt and of the attempt that resumed it can be counted and compared.

Test-only kill points live in :mod:`scpo.instrument`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunLockedError

__all__ = [
    "RunLock",
    "active_run_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "log_work",
    "read_work",
    "remove_stale_temporaries",
    "work_summary",
]

WORK_LOG = "work.jsonl"
"""File name of the work log inside a run directory."""


# ---------------------------------------------------------------------------------------------
# atomic writes


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, ``fsync`` and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete temporary files (``*.tmp<pid>``) left in ``folder`` by writers that no longer run."""
    n = 0
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    for p in folder.glob("*.tmp*"):
        pid = p.name.rpartition(".tmp")[2]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        try:
            p.unlink()
            n += 1
        except OSError:
            pass
    return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# the run lock and the work log

_ACTIVE: dict[str, Any] = {"run_dir": None, "attempt": None}


def active_run_dir() -> Path | None:
    """The run directory whose lock this process holds (``None`` outside a locked run)."""
    return _ACTIVE["run_dir"]


class RunLock:
    """An exclusive lock on a run directory (``.lock`` file, ``fcntl.flock``).

    While held, :func:`log_work` appends to the directory's work log; entering logs the start of
    an attempt and a clean exit its end (an attempt without an end was interrupted).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            self._fh = None
            holder = ""
            try:
                pid = self.path.read_text().strip()
                holder = f" (pid {pid})" if pid.isdigit() else ""
            except OSError:
                pass
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by another scpo process{holder}; "
                "wait for it to finish or choose another --output-dir"
            ) from None
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        _ACTIVE["run_dir"] = self.path.parent
        _ACTIVE["attempt"] = f"{os.getpid()}-{time.time_ns()}"
        log_work("start")
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self._fh is not None:
            log_work("end" if exc_type is None else "error", error=None if exc_type is None else exc_type.__name__)
            _ACTIVE["run_dir"] = _ACTIVE["attempt"] = None
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def log_work(kind: str, n: int = 1, **extra: Any) -> None:
    """Append ``{"attempt", "pid", "kind", "n", ...}`` to the locked run's work log (no-op otherwise).

    Kinds written by scpo: ``start``/``end``/``error`` (an attempt), ``scoring_forward_passes``,
    ``eval_forward_passes``, ``training_steps``, ``job_skipped``, ``job_resumed``, ``job_trained``.
    A line is appended and flushed (no fsync: it must survive the process, not the machine).
    """
    run_dir = _ACTIVE["run_dir"]
    if run_dir is None:
        return
    rec = {"attempt": _ACTIVE["attempt"], "pid": os.getpid(), "kind": kind, "n": int(n)}
    rec.update({k: v for k, v in extra.items() if v is not None})
    try:
        with open(Path(run_dir) / WORK_LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, default=_json_default) + "\n")
    except OSError:  # accounting must never break a run
        pass


def read_work(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's work log (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / WORK_LOG
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def work_summary(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per attempt, in order: ``{"attempt", "pid", "finished", "counts": {kind: total}, "jobs": {...}}``.

    ``finished`` is False for an attempt that was killed (no ``end`` record). ``jobs`` maps each
    job key to what the attempt did with it (``skipped``, ``resumed`` with its step, ``trained``).
    """
    attempts: dict[str, dict[str, Any]] = {}
    for rec in read_work(run_dir):
        a = attempts.setdefault(
            rec.get("attempt"), {"attempt": rec.get("attempt"), "pid": rec.get("pid"), "finished": False,
                                 "counts": {}, "jobs": {}}
        )
        kind = rec.get("kind")
        if kind == "end":
            a["finished"] = True
        elif kind in ("start", "error"):
            continue
        elif kind in ("job_skipped", "job_resumed", "job_trained"):
            a["jobs"][rec.get("job")] = {k: v for k, v in rec.items() if k not in ("attempt", "pid", "n", "job")}
        else:
            a["counts"][kind] = a["counts"].get(kind, 0) + int(rec.get("n", 0))
    return list(attempts.values())
