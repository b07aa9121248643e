"""Data errors that name the file, line and field at fault: goracs.errors.DataError (the package's one class)."""

from goracs.errors import DataError

__all__ = ["DataError"]
