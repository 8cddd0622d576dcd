"""Test instrumentation, kept out of the hot paths: named kill points and event counters.

Production code marks a place with :func:`point` (``point("scoring")`` after a cache shard is
written) and counts events with :func:`count` (``count("scoring_forward_passes")``); both cost a
dictionary update. Tests use them two ways:

* **Kill points**: ``SCPO_KILL_AT=<point>[:<n>]`` in the environment makes the process SIGKILL
  itself the ``n``-th time (default the 1st) it reaches the named point, to test what survives
  a kill. The points:

  ============ =================================================================================
  ``scoring``  after a feature-cache shard is written (every 20 scoring batches)
  ``training`` after a Trainer checkpoint of a full/LoRA job is written (every ``save_steps``)
  ``job``      after a finished full/LoRA job's record is written (``RUN_DIR/jobs/*.json``)
  ``report``   while the run directory is written (models and plots written, results.json not)
  ============ =================================================================================

* **Counters**: :data:`COUNTS` holds every event counted in this process (model forward passes of
  scoring, evaluation and serving), so a test can assert that a warm rerun computed nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

__all__ = ["COUNTS", "KILL_POINTS", "count", "point"]

KILL_POINTS = ("scoring", "training", "job", "report")
"""The named points ``SCPO_KILL_AT`` may name."""

COUNTS: Counter[str] = Counter()
"""Events counted in this process, by name."""

_HITS: Counter[str] = Counter()


def count(name: str, n: int = 1) -> None:
    """Add ``n`` to the process-wide counter ``name``."""
    COUNTS[name] += n


def point(name: str) -> None:
    """A named kill point: SIGKILL this process if ``SCPO_KILL_AT`` names it (and this is its n-th hit)."""
    spec = os.environ.get("SCPO_KILL_AT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target != name:
        return
    _HITS[name] += 1
    if _HITS[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
