"""TRL's preference formats: explicit or implicit prompt, standard texts or conversational message lists.

:func:`pair_texts` turns one row into a (prompt, chosen, rejected) text triple; a conversation
becomes the last user turn of the prompt and the one assistant reply (other turns are dropped and
counted). See :mod:`.files` for how rows are read and validated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InputError
from .base import require_text

__all__ = ["IDENTICAL", "pair_texts"]


def _shared_prefix(a: Sequence[Any], b: Sequence[Any], *, text: bool) -> int:
    """Length of the shared prefix of ``chosen`` and ``rejected``, as TRL's ``extract_prompt`` cuts it
    (for text, a space just before the first difference goes with the completions)."""
    k = 0
    n = min(len(a), len(b))
    while k < n and a[k] == b[k]:
        k += 1
    if text and 0 < k < n and a[k - 1] == " ":
        k -= 1
    return k


def _messages(value: Any, *, file: str, row: int, field: str) -> list[dict[str, str]]:
    """A conversational value: a non-empty list of ``{"role": str, "content": str}``."""
    if not isinstance(value, list) or not value:
        raise InputError(f"expected a list of messages, got {type(value).__name__}", file=file, row=row, field=field)
    for k, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise InputError(f"message {k + 1}: expected {{'role': ..., 'content': ...}}, got {type(m).__name__}",
                             file=file, row=row, field=field)
        if not isinstance(m["content"], str):
            raise InputError(f"message {k + 1}: content must be text, got {type(m['content']).__name__}",
                             file=file, row=row, field=field)
    return value


def _last_user_turn(msgs: list[dict[str, str]], *, file: str, row: int, field: str) -> tuple[str, bool]:
    """(the content of the last user turn, whether other turns of the prompt were dropped)."""
    users = [i for i, m in enumerate(msgs) if m["role"] == "user"]
    if not users:
        raise InputError(f"the prompt has no user turn (roles {[m['role'] for m in msgs]})", file=file, row=row,
                         field=field)
    text = require_text(msgs[users[-1]]["content"], file=file, row=row, field=field)
    return text, len(msgs) > 1


def _reply(msgs: list[dict[str, str]], *, file: str, row: int, field: str) -> str:
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise InputError(f"expected one assistant message after the prompt, got roles {[m['role'] for m in msgs]}",
                         file=file, row=row, field=field)
    return require_text(msgs[0]["content"], file=file, row=row, field=field)


def _no_prompt(present: Sequence[str], *, file: str, row: int) -> InputError:
    return InputError(
        f"missing column 'prompt' (columns present: {', '.join(map(repr, present)) or 'none'}), and chosen and "
        "rejected share no prefix to take as the prompt (TRL's implicit prompt); map a prompt column with "
        "--columns prompt=COL",
        file=file, row=row, field="prompt",
    )


def pair_texts(rec: Mapping[str, Any], cols: Mapping[str, str | None], *, file: str, row: int,
               counts: Counter[str], present: Sequence[str] = ()) -> tuple[str, str, str]:
    """``(prompt, chosen, rejected)`` texts of one row in any of TRL's preference formats.

    Explicit prompt (a ``prompt`` column) or implicit (none: the prompt is the shared prefix of
    ``chosen`` and ``rejected``); standard (texts) or conversational (message lists). A
    conversation becomes the last user turn of the prompt and the assistant reply; other turns
    (a system message, earlier turns) are dropped and counted (``context_dropped``).
    """
    fc, fr, fp = cols["chosen"], cols["rejected"], cols["prompt"]
    c, r = rec.get(fc), rec.get(fr)
    p = rec.get(fp) if fp is not None else None
    if not (isinstance(c, list) or isinstance(r, list)):  # standard: every value must be text
        if fp is not None:
            return (require_text(p, file=file, row=row, field=fp), require_text(c, file=file, row=row, field=fc),
                    require_text(r, file=file, row=row, field=fr))
        c, r = require_text(c, file=file, row=row, field=fc), require_text(r, file=file, row=row, field=fr)
        counts["implicit_prompt_rows"] += 1
        if c == r:
            return IDENTICAL
        k = _shared_prefix(c, r, text=True)
        if not c[:k].strip():
            raise _no_prompt(present, file=file, row=row)
        return (c[:k], require_text(c[k:], file=file, row=row, field=fc),
                require_text(r[k:], file=file, row=row, field=fr))
    counts["conversational_rows"] += 1
    cm, rm = _messages(c, file=file, row=row, field=fc), _messages(r, file=file, row=row, field=fr)
    if cm == rm:
        return IDENTICAL
    if fp is None:
        k = _shared_prefix(cm, rm, text=False)
        if k == 0:
            raise _no_prompt(present, file=file, row=row)
        counts["implicit_prompt_rows"] += 1
        prompt, dropped = _last_user_turn(cm[:k], file=file, row=row, field=fc)
    else:
        if isinstance(p, list):
            prompt, dropped = _last_user_turn(_messages(p, file=file, row=row, field=fp), file=file, row=row, field=fp)
        else:
            prompt, dropped = require_text(p, file=file, row=row, field=fp), False
        # a prompt column beside whole conversations (HuggingFaceH4/ultrafeedback_binarized): the replies
        # are what follows the conversations' shared prefix
        k = _shared_prefix(cm, rm, text=False) if len(cm) > 1 or len(rm) > 1 else 0
    cm, rm = cm[k:], rm[k:]
    counts["context_dropped"] += int(dropped)
    return prompt, _reply(cm, file=file, row=row, field=fc), _reply(rm, file=file, row=row, field=fr)


IDENTICAL = ("", "", "")
"""What :func:`pair_texts` gives for a row whose chosen and rejected are identical (dropped and counted)."""
