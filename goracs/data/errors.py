"""Data errors that name the file, line and field at fault."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file, the line and the field."""

    def __init__(self, path, message: str, line: int | None = None, field: str | None = None):
        where = str(path) + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path, self.line, self.field = str(path), line, field
