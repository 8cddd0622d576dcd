"""Several processes: where this process runs, and inference shared between the ranks.

Under ``accelerate launch`` (or ``torchrun``) every process runs the whole pipeline; training is
shared by the transformers ``Trainer`` (DDP, DeepSpeed, FSDP), and inference is shared here: the
batches a call plans are dealt to the ranks in turn (batch ``i`` to rank ``i % world``), every
rank computes its own, and an all-gather after each round of ``world`` batches gives every rank
every result. The plan is the same on every rank (the same texts, sorted by length), so the
results are those of one process, computed ``world`` times faster.

One process (no launcher) runs everything itself and never touches ``torch.distributed``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .errors import ScpoError

__all__ = ["default_device", "has_accelerator", "init_distributed", "is_main_process", "map_batches",
           "rank_and_world", "resolve_device", "union_mask"]


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment; (0, 1) for a single process."""
    return int(os.environ.get("RANK", "0")), max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_main_process() -> bool:
    """Rank 0, or a single process: the one that writes results, reports and shared caches."""
    return rank_and_world()[0] == 0


def default_device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` on a GPU machine, else MPS or XPU, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return torch.device("xpu", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def resolve_device(name: str | None) -> torch.device:
    """The one device picker: ``auto``/None -> :func:`default_device`, else that torch device,
    checked to exist here (:class:`~scpo.errors.ScpoError` naming it otherwise)."""
    if name in (None, "auto"):
        return default_device()
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ScpoError(f"--device {name!r}: not a torch device ({e})") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "xpu": getattr(torch, "xpu", None) is not None and torch.xpu.is_available()}
    if not available.get(device.type, False):
        raise ScpoError(f"--device {name!r}: no {device.type} device on this machine (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ScpoError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def has_accelerator() -> bool:
    """True when torch sees a GPU (CUDA/ROCm), Apple MPS or Intel XPU."""
    return default_device().type != "cpu"


def init_distributed() -> bool:
    """Join the launcher's process group if there is one (gloo on CPU, the accelerator's backend else).

    Done through accelerate's ``PartialState``, the same state the ``Trainer`` uses later. Returns
    True when ``torch.distributed`` is initialised with more than one process.
    """
    _, world = rank_and_world()
    if world <= 1:
        return False
    import torch.distributed as dist  # only under a launcher: a single process never needs it

    if not dist.is_initialized():
        from accelerate import PartialState  # start-up time: accelerate loads only under a launcher

        PartialState(cpu=not has_accelerator())
    return dist.is_initialized() and dist.get_world_size() > 1


def _gather_device() -> torch.device:
    import torch.distributed as dist  # only under a launcher: a single process never needs it

    return default_device() if dist.get_backend() == "nccl" else torch.device("cpu")


def union_mask(mask: np.ndarray) -> np.ndarray:
    """The element-wise OR of a boolean mask over every rank (the mask itself for one process).

    Ranks that must plan the same work (texts to compute) agree on it this way, even when their
    views of a shared cache differ for a moment.
    """
    if not init_distributed():
        return mask
    import torch.distributed as dist  # only under a launcher: a single process never needs it

    t = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.uint8)).to(_gather_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().numpy().astype(bool)


def map_batches(
    batches: Sequence[np.ndarray],
    fn: Callable[[np.ndarray], np.ndarray],
    width: int,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(i, fn(batches[i]))`` for every planned batch, each computed by one rank only.

    ``fn`` maps a batch (an array of row indices) to float32 results ``[len(batch), width]``. With
    one process this is a plain loop. With several, batch ``i`` is computed by rank
    ``i % world`` and shared by an all-gather after each round of ``world`` batches, so every
    rank yields every batch's results, in the same order. Every rank must call it with the same
    plan (``len(batches)`` and each batch's length).
    """
    if not init_distributed():
        for i, b in enumerate(batches):
            yield i, fn(b)
        return
    import torch.distributed as dist  # only under a launcher: a single process never needs it

    rank, world = dist.get_rank(), dist.get_world_size()
    device = _gather_device()
    rows = max((len(b) for b in batches), default=0)
    for start in range(0, len(batches), world):
        mine = start + rank
        buf = torch.zeros((rows, width), dtype=torch.float32)
        if mine < len(batches):
            out = np.asarray(fn(batches[mine]), dtype=np.float32).reshape(len(batches[mine]), width)
            buf[: len(out)] = torch.from_numpy(out)
        parts = [torch.empty((rows, width), dtype=torch.float32, device=device) for _ in range(world)]
        dist.all_gather(parts, buf.to(device))
        for r in range(world):
            i = start + r
            if i < len(batches):
                yield i, parts[r][: len(batches[i])].cpu().numpy()
