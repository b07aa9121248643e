"""Reader for RecBole atomic files (`.inter`, `.item`, tab-separated with a `name:type` header, optionally gzipped)."""

from __future__ import annotations

import csv
import logging
import os

import numpy as np
import pandas as pd

from goracs.data.amazon import STREAM_ERRORS, open_text, stream_error
from goracs.data.errors import DataError

log = logging.getLogger(__name__)

TYPES = {"token", "token_seq", "float", "float_seq"}


def read_atomic(path: str | os.PathLike, what: str = "rows") -> pd.DataFrame:
    """Read an atomic file; `token` columns become strings, `float` columns floats (empty -> NaN). `what` names the
    rows in the error for a file with a header and no rows ("interactions", "items")."""
    with open_text(path) as f:
        header, lines = "", []
        try:
            header = f.readline()
            for line in f:
                lines.append(line)
        except STREAM_ERRORS as e:
            # a truncated or corrupt gzip, or a byte that is not UTF-8: name the file, the cause and the line
            raise stream_error(path, e, len(lines) + bool(header)) from e
        header = header.rstrip("\n\r")
        if not header:
            raise DataError(path, "empty file: expected a `name:type` header", line=1)
        names, kinds = [], []
        for col in header.split("\t"):
            name, sep, kind = col.partition(":")
            if not sep or kind not in TYPES:
                raise DataError(path, f"header column {col!r} is not `name:type` with type in {sorted(TYPES)}",
                                line=1)
            names.append(name)
            kinds.append(kind)
    rows = list(csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))
    del lines
    merged = 0
    for k, row in enumerate(rows):
        if len(row) != len(names) and any(row):
            # free text in a trailing sequence column may itself hold tabs (seen in the real Games .item file):
            # the extra fields belong to that column
            if len(row) > len(names) and kinds[-1] == "token_seq":
                rows[k] = row[:len(names) - 1] + ["\t".join(row[len(names) - 1:])]
                merged += 1
                continue
            raise DataError(path, f"expected {len(names)} tab-separated fields, found {len(row)}", line=k + 2)
    if merged:
        log.info("%s: %d rows had tabs inside the last column '%s'; kept them in that column", path, merged,
                 names[-1])
    rows = [r for r in rows if any(r)]
    if not rows:
        raise DataError(path, f"the file has no {what}: a header line and no rows after it")
    cols = {}
    for j, (name, kind) in enumerate(zip(names, kinds)):
        values = [r[j] for r in rows]
        if kind == "float":
            arr = np.empty(len(values), dtype=np.float64)
            for k, v in enumerate(values):
                try:
                    arr[k] = float(v) if v != "" else np.nan
                except ValueError:
                    raise DataError(path, f"not a number: {v!r}", line=k + 2, field=name) from None
            cols[name] = arr
        else:
            cols[name] = values
    return pd.DataFrame(cols)
