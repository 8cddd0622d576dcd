"""The run directory: atomic writes, its lock and its work log.

* **Atomic writes** (:func:`atomic_write_text`, :func:`atomic_write_json`, :func:`atomic_write_bytes`):
  a temporary name in the same folder, ``fsync``, then a rename, so a reader never sees a
  half-written file, whatever kills the writer. Every file scpo writes for others goes through them.
* **The run lock** (:class:`RunLock`): ``RUN_DIR/.lock`` held with ``fcntl.flock`` while a run
  writes into its directory; a second run into the same directory fails at once with
  :class:`~scpo.errors.RunLockedError` (exit 2 on the CLI). The kernel drops the lock when the
  holder dies, even by SIGKILL, so a killed run never leaves a stale lock behind.
* **One commit point** (:func:`run_fingerprint`, :func:`invalidate_other_run`): ``results.json``,
  written last, marks a finished run of exactly the config it stores the fingerprint of; a run
  into a directory holding another config's results removes them (through a trash folder,
  ``results.json`` first) before it writes anything.
* **No silent overwrite** (:func:`check_reuse`): a finished run directory is replaced only when
  asked (``--overwrite``); an interrupted one resumes (``--resume`` says so and checks there is
  something to resume).
* **The work log** (:func:`log_work`, :func:`work_summary`): ``RUN_DIR/work.jsonl``, one line per
  unit of work (a scoring forward pass, a training step, an evaluation forward pass, a job skipped
  or resumed) written by the process that holds the run lock. It survives a SIGKILL, so the work
  of an interrupted attempt and of the attempt that resumed it can be counted and compared.

Test-only kill points live in :mod:`scpo.instrument`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RunExistsError, RunLockedError, ScpoError

__all__ = [
    "RunLock",
    "active_run_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "check_directory",
    "check_reuse",
    "invalidate_other_run",
    "log_work",
    "read_work",
    "remove_stale_temporaries",
    "run_fingerprint",
    "work_summary",
]

WORK_LOG = "work.jsonl"
"""File name of the work log inside a run directory."""

RUN_OUTPUTS = ("results.json", "report.md", "full_report.json", "partial_report.json", "edited_ratios.json",
               "plots", "models", "config.yaml", "training_log.json", "tensorboard")
"""What a finished run leaves in its directory and a run of another config invalidates (``results.json``
first: it is the commit point). Job records and checkpoints carry their own fingerprints and stay."""

WHERE_NOT_WHAT = {("output", "output_dir"), ("model", "cache_dir"), ("model", "score_batch_size"), ("model", "device")}
"""Config fields that say where or how fast a run computes, not what: left out of :func:`run_fingerprint`."""


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
# one commit point per run directory


def run_fingerprint(config: Mapping[str, Any]) -> str:
    """sha256 (16 hex digits) of a resolved config's sections (``RunConfig.to_dict()`` or the
    ``config.yaml`` it wrote), without the fields that say only where or how fast (:data:`WHERE_NOT_WHAT`).

    ``results.json`` and ``models/manifest.json`` store it as ``run_fingerprint``; a run into a
    directory whose results carry another one invalidates them (:func:`invalidate_other_run`), and
    ``scpo export`` refuses an artifact whose parts disagree.
    """
    what = {sec: {k: v for k, v in (vals.items() if isinstance(vals, Mapping) else ()) if (sec, k) not in WHERE_NOT_WHAT}
            for sec, vals in config.items()}
    text = json.dumps(what, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _stored_fingerprint(results_path: Path) -> str | None:
    try:
        res = json.loads(results_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    fp = res.get("run_fingerprint") if isinstance(res, dict) else None
    return fp if isinstance(fp, str) else None


def invalidate_other_run(run_dir: str | Path, fingerprint: str) -> list[str]:
    """Remove the finished results of another config from ``run_dir`` before a run writes anything.

    When ``results.json`` is there and its ``run_fingerprint`` is not ``fingerprint`` (or it has
    none, or cannot be read), every file of :data:`RUN_OUTPUTS` is renamed into a trash folder inside
    the run directory -- ``results.json`` first, so the directory stops claiming a finished run in one
    rename -- and the trash is deleted. A trash folder left by a killed earlier attempt is deleted
    too. Returns the names invalidated (empty when the results are this config's or there are none).
    """
    run_dir = Path(run_dir)
    for old in run_dir.glob(".trash-*"):
        _remove(old)
    results = run_dir / "results.json"
    if not (results.exists() or results.is_symlink()) or _stored_fingerprint(results) == fingerprint:
        return []
    trash = run_dir / f".trash-{os.getpid()}-{time.time_ns()}"
    trash.mkdir()
    moved = []
    for name in RUN_OUTPUTS:
        p = run_dir / name
        if p.exists() or p.is_symlink():
            os.replace(p, trash / name)
            moved.append(name)
    _remove(trash)
    return moved


RUN_STATE = (WORK_LOG, "jobs", "checkpoints", ".saved", "models", "config.yaml", "splits")
"""What an interrupted run leaves for a resumed one to reuse (any of them: there is something to resume)."""


def check_reuse(run_dir: str | Path, fingerprint: str, *, overwrite: bool, resume: bool) -> None:
    """Refuse to run into ``run_dir`` where that would replace a finished run without being asked.

    * ``results.json`` there (a finished run, of this config or another): :class:`~scpo.errors.RunExistsError`
      naming ``--overwrite`` unless ``overwrite`` (then this config's finished jobs are reused and
      another config's outputs are invalidated, see :func:`invalidate_other_run`);
    * no ``results.json`` but what an interrupted run leaves (:data:`RUN_STATE`): the run resumes;
    * ``resume`` and nothing to resume: :class:`~scpo.errors.RunExistsError` (a mistyped directory
      would otherwise start from scratch).

    Read-only: a refused directory is left exactly as it was.
    """
    run_dir = Path(run_dir)
    results = run_dir / "results.json"
    if results.exists() or results.is_symlink():
        if overwrite:
            return
        stored = _stored_fingerprint(results)
        which = "this same config" if stored == fingerprint else f"another config (run {stored or 'unknown'})"
        raise RunExistsError(
            f"--output-dir {run_dir} holds a finished run of {which}; pass --overwrite to replace it"
            + (" (--resume continues only an interrupted run)" if resume else "")
            + ", or choose another --output-dir")
    if resume and not any((run_dir / name).exists() for name in RUN_STATE):
        raise RunExistsError(f"--resume: {run_dir} holds no interrupted run to resume (no {WORK_LOG}, jobs or "
                             "checkpoints); leave out --resume to start a new run there")


def _remove(p: Path) -> None:
    if p.is_symlink() or not p.is_dir():
        p.unlink(missing_ok=True)
    else:
        shutil.rmtree(p, ignore_errors=True)


def check_directory(path: str | Path, flag: str) -> None:
    """Refuse a directory option that names something other than a directory (or lies below a file)."""
    p = Path(path)
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                what = "" if q == p else f" ({q} is not a directory)"
                raise ScpoError(f"{flag} {path}: exists and is not a directory{what}")
            break


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

    ``.lock`` and ``work.jsonl`` are never written through a symbolic link: a link in their place is
    replaced by a file (the link's target is left alone); anything else that is not a regular file
    is refused. When the run fails and the lock created the directory, which then holds nothing but
    the lock and the work log, the directory (and every parent the lock created) is removed again:
    a run that failed before writing anything leaves nothing behind.
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fh = None
        self._created: Path | None = None

    def _open(self) -> Any:
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        for _ in range(2):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP and self.path.is_symlink():
                    self.path.unlink()  # the link goes, its target is never touched
                    continue
                raise ScpoError(f"{self.path}: cannot open the run lock: {e.strerror}") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise ScpoError(f"{self.path}: the run lock is not a regular file; remove it")
            return os.fdopen(fd, "r+")
        raise ScpoError(f"{self.path}: cannot replace the symbolic link of the run lock")

    def __enter__(self) -> RunLock:
        run_dir = self.path.parent
        check_directory(run_dir, "--output-dir")
        missing = [q for q in (run_dir, *run_dir.parents) if not (q.exists() or q.is_symlink())]
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ScpoError(f"--output-dir {run_dir}: cannot create it: {e.strerror}") from None
        self._created = missing[-1] if missing else None
        self._fh = self._open()
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
        log = run_dir / WORK_LOG
        if log.is_symlink():
            log.unlink()  # never append through a link
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
            if exc_type is not None and self._created is not None:
                self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """After a failed run: remove the directory this lock created if it holds only the lock and the log."""
        run_dir = self.path.parent
        try:
            if {p.name for p in run_dir.iterdir()} - {".lock", WORK_LOG}:
                return
            for name in (".lock", WORK_LOG):
                (run_dir / name).unlink(missing_ok=True)
            top = self._created
            for q in (run_dir, *run_dir.parents):
                q.rmdir()  # fails (and stops) on anything not empty
                if q == top:
                    break
        except OSError:
            pass


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


def work_summary(run_dir: str | Path, *, finishing: bool = False) -> list[dict[str, Any]]:
    """Per attempt, in order: ``{"attempt", "pid", "finished", "counts": {kind: total}, "jobs": {...}}``.

    ``finished`` is False for an attempt that was killed (no ``end`` record). ``jobs`` maps each
    job key to what the attempt did with it (``skipped``, ``resumed`` with its step, ``trained``).
    ``finishing``: the summary goes into this attempt's own ``results.json``, written as its last
    step (before its ``end`` record), so the attempt holding the lock counts as finished.
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
    if finishing and _ACTIVE["attempt"] in attempts and _ACTIVE["run_dir"] is not None \
            and Path(_ACTIVE["run_dir"]).resolve() == Path(run_dir).resolve():
        attempts[_ACTIVE["attempt"]]["finished"] = True
    return list(attempts.values())
