"""Errors and warnings scpo raises for bad input. The CLI turns each error into a one-line message and exit 2.

Warnings are for input scpo can use after a repair it reports: a text truncated to the model's
context (:class:`TruncationWarning`), a corrupt cache shard deleted and recomputed
(:class:`CacheCorruptWarning`), a group left without pairs (:class:`DataWarning`).
"""

from __future__ import annotations


class ScpoError(Exception):
    """Base class of the errors scpo reports to the user (exit status 2 on the CLI)."""


class InputError(ScpoError, ValueError):
    """Bad input data: names the file, the row (1-based, data rows) and the field when known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        self.file, self.row, self.field, self.detail = file, row, field, message
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class ConfigError(ScpoError, ValueError):
    """A bad configuration: unknown key, out-of-range value, unreadable file."""


class RunLockedError(ScpoError):
    """Another scpo process holds the run directory's lock."""


class RunExistsError(ScpoError):
    """The run directory holds a finished run (``--overwrite`` replaces it), or ``--resume`` found nothing to resume."""


class ScpoWarning(UserWarning):
    """Base class of the warnings scpo gives about its input."""


class TruncationWarning(ScpoWarning):
    """Inputs longer than the model's context were truncated (counted in results.json ``scoring``)."""


class CacheCorruptWarning(ScpoWarning):
    """A feature-cache shard failed its checks: it was deleted and its texts recomputed."""


class DataWarning(ScpoWarning):
    """Usable data with a gap the run works around: a requested group without pairs, say."""
