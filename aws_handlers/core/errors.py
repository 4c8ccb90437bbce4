"""Data errors that people can act on: file, physical line, column, value, expectation, contract."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MAX_VALUE_CHARS = 60


def shorten(value: str, limit: int = MAX_VALUE_CHARS) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


@dataclass(frozen=True)
class RowError:
    file: str
    line: int | None
    column: str | None
    message: str
    kind: str
    value: str | None = None
    contract: str | None = None
    byte_offset: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f" line {self.line}"
        if self.column is not None:
            where += f", column {self.column}"
        text = f"{where}: {self.message}"
        if self.contract:
            text += f" (contract {self.contract})"
        return text

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["text"] = str(self)
        return out


class DataError(Exception):
    """The input does not satisfy its contract. Carries every error found (up to a limit)."""

    def __init__(self, errors: list[RowError]):
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors[:5]) + (f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""))
