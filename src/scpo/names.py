"""Names from the data meeting the file system: one safe, collision-free encoding, and guarded deletes.

A group name comes from a user's file and may be anything (``../../victim``, ``a/b``, ``CON``, a
thousand characters, a lone surrogate). It never becomes a path component as it is: every folder
or file named after a group goes through :func:`path_component`, and every delete of a folder that
might hold one goes through :func:`rmtree_inside`, which refuses a path outside its root.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

__all__ = ["is_inside", "path_component", "rmtree_inside"]

_KEEP = re.compile(r"[A-Za-z0-9_-]")
_MAX_READABLE = 64
"""Characters of the escaped name kept before the hash (file names stay well under 255 bytes)."""


def path_component(name: str) -> str:
    """A folder or file name for ``name``: readable, safe on every file system, and collision-free.

    ASCII letters, digits, ``_`` and ``-`` stay; every other character (``/``, ``.``, ``%``, spaces,
    non-ASCII) becomes ``%XX`` of its UTF-8 bytes. The escaped text is cut to 64 characters and a
    hash of the whole name follows, so two names never share a folder -- not even on a
    case-insensitive file system, nor when the cut makes their readable parts equal.

    >>> path_component("South Africa")
    'South%20Africa-f46fc0d1b1'
    >>> path_component("../../victim").startswith("%2E%2E%2F")
    True
    """
    raw = name.encode("utf-8", "surrogatepass")
    escaped = "".join(ch if _KEEP.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
                      for ch in name)
    digest = hashlib.sha256(raw).hexdigest()[:10]
    return f"{escaped[:_MAX_READABLE]}-{digest}"


def is_inside(path: str | Path, root: str | Path) -> bool:
    """Whether ``path`` resolves (links followed) to ``root`` itself or somewhere below it."""
    p, r = Path(path).resolve(), Path(root).resolve()
    return p == r or r in p.parents


def rmtree_inside(path: str | Path, root: str | Path) -> None:
    """``shutil.rmtree(path)``, missing paths ignored, but only where ``path`` lies strictly inside ``root``.

    Raises ``ValueError`` for anything else: a delete that a name from the data steered outside the
    run directory is a bug to stop, never to carry out. A symbolic link is unlinked, not followed.
    """
    p = Path(path)
    r = Path(root).resolve()
    target = p.parent.resolve() / p.name  # the folder itself is not followed if it is a link
    if p.name in ("", ".", "..") or r not in target.parents:
        raise ValueError(f"refusing to delete {p}: it is not inside {root}")
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        shutil.rmtree(target, ignore_errors=True)
