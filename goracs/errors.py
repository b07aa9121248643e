"""The package's one data error: input that cannot be used, named in the message."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. `DataError(message)`: samples, catalogues, coresets (the message names them);
    `DataError(path, message, line=None, field=None)`: a file, the message prefixed with `path[:line]:` and
    ` field 'name':`, the parts kept as the attributes path, line and field (None for the one-argument form)."""

    def __init__(self, path_or_message, message: str | None = None, line: int | None = None,
                 field: str | None = None):
        if message is None:
            super().__init__(str(path_or_message))
            self.path = self.line = self.field = None
            return
        where = str(path_or_message) + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")
        self.path, self.line, self.field = str(path_or_message), line, field
