"""The server's micro-batcher: queued scoring requests scored together in a worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from dataclasses import dataclass

import numpy as np

from .serve_api import ServeLimits
from .steer import ScoreRequest, SteerableRewardModel

log = logging.getLogger("scpo.serve")

__all__ = ["HTTPError", "MicroBatcher"]


class HTTPError(Exception):
    """An error answered as JSON ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class _Job:
    request: ScoreRequest
    future: asyncio.Future


def _lower_priority() -> None:
    """Scoring threads run at a lower CPU priority than the event loop (Linux: per-thread nice)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority
        pass


class MicroBatcher:
    """Collects concurrent scoring requests and scores them together in a worker thread."""

    def __init__(self, model: SteerableRewardModel, limits: ServeLimits):
        self.model, self.limits = model, limits
        self.queue: asyncio.Queue[_Job] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="scpo-score",
                                                              initializer=_lower_priority)
        self.pending = 0
        self.stats = {"requests": 0, "items": 0, "batches": 0, "batch_items_max": 0, "failed_batches": 0}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="scpo-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, request: ScoreRequest) -> np.ndarray:
        """Score one (validated) request as part of the next micro-batch."""
        n = len(request.responses)
        if self.queue is None:
            raise HTTPError(503, "server is not started")
        if self.pending + n > self.limits.max_pending:
            raise HTTPError(429, f"too many texts queued ({self.pending}); retry later")
        fut = asyncio.get_running_loop().create_future()
        self.pending += n
        try:
            self.queue.put_nowait(_Job(request, fut))
            return await fut
        finally:
            self.pending -= n

    def _score(self, jobs: list[_Job]) -> list[np.ndarray | BaseException]:
        reqs = [j.request for j in jobs]
        try:
            return list(self.model.score_requests(reqs))
        except Exception:  # noqa: BLE001 - isolate the failing request: score each alone
            self.stats["failed_batches"] += 1
            out: list[np.ndarray | BaseException] = []
            for r in reqs:
                try:
                    out.append(self.model.score_requests([r])[0])
                except Exception as e:  # noqa: BLE001 - reported to that request only
                    out.append(e)
            return out

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        wait = self.limits.batch_wait_ms / 1000.0
        while True:
            first = await self.queue.get()
            jobs = [first]
            n = len(first.request.responses)
            deadline = loop.time() + wait
            while n < self.limits.max_batch_items:
                try:
                    job = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self.queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                jobs.append(job)
                n += len(job.request.responses)
            live = [j for j in jobs if not j.future.done()]  # cancelled: the client left
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self._score, live)
            except Exception as e:  # noqa: BLE001 - never let the batcher die: fail this batch only
                results = [e] * len(live)
            self.stats["batches"] += 1
            self.stats["batch_items_max"] = max(self.stats["batch_items_max"], n)
            for j, res in zip(live, results):
                if j.future.done():
                    continue
                if isinstance(res, BaseException):
                    j.future.set_exception(res)
                else:
                    self.stats["requests"] += 1
                    self.stats["items"] += len(j.request.responses)
                    j.future.set_result(res)
