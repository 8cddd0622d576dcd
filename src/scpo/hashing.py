"""The two kinds of hash scpo derives from its inputs: seeds of random streams, and fingerprints.

* :func:`stream_seed` -- a 32-bit seed from any parts (``stream_seed("subset", group, seed, fold)``),
  the same on every machine and Python version (CRC-32 of the parts joined by ``|``; Python's own
  ``hash`` of a string changes from process to process).
* :func:`files_fingerprint` -- a cheap fingerprint of a folder of model files: names, sizes, the
  bytes of small files, the first and last MiB of large ones.
* :func:`tensors_fingerprint` -- sha256 over a module's parameter names, shapes and bytes: what a
  model computes, whatever folder, file format or head it was saved with.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["files_fingerprint", "stream_seed", "tensors_fingerprint"]


def stream_seed(*parts: Any) -> int:
    """A deterministic 32-bit seed from ``parts`` (their ``str`` joined by ``|``, CRC-32)."""
    return zlib.crc32("|".join(map(str, parts)).encode())


def files_fingerprint(root: str | Path, skip: Callable[[Path], bool] | None = None) -> str:
    """Fingerprint of the files below ``root`` (16 hex digits); ``skip(relative_path)`` leaves files out.

    Relative names and sizes of every file, the bytes of files up to 1 MiB, the first and last MiB
    of larger ones: enough to tell checkpoints apart without reading gigabytes.
    """
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if not f.is_file() or (skip is not None and skip(rel)):
            continue
        size = f.stat().st_size
        h.update(f"{rel.as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= (1 << 20):
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(size - (1 << 20))
                h.update(fh.read())
    return h.hexdigest()[:16]


def tensors_fingerprint(module: Any, skip: Callable[[str], bool] | None = None) -> str:
    """sha256 (16 hex digits) over a torch module's parameters and buffers: names, shapes, dtypes, bytes.

    ``skip(name)`` leaves tensors out (the score layer, for a key of the features below it).
    """
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        if skip is not None and skip(name):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}\0{tuple(t.shape)}\0{t.dtype}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bits: numpy has no bfloat16
    return h.hexdigest()[:16]
