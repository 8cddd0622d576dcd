"""Errors scpo raises for bad input. The CLI turns each into a one-line message and exit 2."""

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
