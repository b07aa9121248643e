"""Streaming readers for the raw Amazon review files: 2014 (`reviews_<Cat>_5.json`, metadata as Python dict
literals) and 2018 (`<Cat>_5.json`, metadata as JSON lines), plain or gzipped."""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from goracs.data.errors import DataError

log = logging.getLogger(__name__)

REVIEW_FIELDS = {"user": "reviewerID", "item": "asin", "rating": "overall", "timestamp": "unixReviewTime"}


def open_text(path: str | os.PathLike):
    """Open a text file, transparently gunzipping `.gz`; a missing or unreadable file names itself."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        if path.suffix == ".gz":
            f = gzip.open(path, "rt", encoding="utf-8")
            f.read(1)  # fail now, not mid-stream, if it is not gzip
            f.seek(0)
            return f
        return open(path, "r", encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"cannot read file ({e})") from e


def iter_records(path: str | os.PathLike, literal: bool | None = None,
                 skip_bad: bool = False, stats: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) from a JSON-lines file; `literal` parses Python dict literals (2014 metadata),
    None tries JSON first and falls back to literals line by line."""
    bad = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                if literal:
                    rec = ast.literal_eval(line)
                else:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        if literal is None:
                            rec = ast.literal_eval(line)
                        else:
                            raise
                if not isinstance(rec, dict):
                    raise ValueError(f"expected an object, got {type(rec).__name__}")
            except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
                if skip_bad:
                    bad += 1
                    continue
                raise DataError(path, f"malformed line ({type(e).__name__}: {str(e)[:120]})", line=lineno) from e
            yield lineno, rec
    if stats is not None:
        stats["bad_lines"] = stats.get("bad_lines", 0) + bad
    if bad:
        log.warning("%s: skipped %d malformed lines", path, bad)


def read_reviews(path: str | os.PathLike, skip_bad: bool = False, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read a 5-core review file into (user, item, rating, timestamp) columns, streaming: ids are interned to
    integer codes as lines arrive, so memory holds arrays, not one dict per review."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u_codes, i_codes, ratings, times = [], [], [], []
    stats = {"bad_lines": 0, "missing_field": 0}
    it = iter_records(path, literal=False, skip_bad=skip_bad, stats=stats)
    for lineno, rec in tqdm(it, desc=f"reviews {Path(path).name}", unit=" lines", disable=not progress,
                            mininterval=2.0):
        try:
            u = rec[REVIEW_FIELDS["user"]]
            i = rec[REVIEW_FIELDS["item"]]
            r = rec[REVIEW_FIELDS["rating"]]
            t = rec[REVIEW_FIELDS["timestamp"]]
        except KeyError as e:
            if skip_bad:
                stats["missing_field"] += 1
                continue
            raise DataError(path, "missing", line=lineno, field=e.args[0]) from None
        try:
            r = float(r)
            t = int(t)
        except (TypeError, ValueError):
            if skip_bad:
                stats["bad_lines"] += 1
                continue
            field = "overall" if not _is_number(r) else "unixReviewTime"
            raise DataError(path, f"not a number: {rec.get(field)!r}", line=lineno, field=field) from None
        u_codes.append(users.setdefault(u, len(users)))
        i_codes.append(items.setdefault(i, len(items)))
        ratings.append(r)
        times.append(t)
    if not u_codes:
        raise DataError(path, "no reviews found")
    user_cat = pd.Categorical.from_codes(np.asarray(u_codes, dtype=np.int32), categories=list(users))
    item_cat = pd.Categorical.from_codes(np.asarray(i_codes, dtype=np.int32), categories=list(items))
    df = pd.DataFrame({"user": user_cat, "item": item_cat, "rating": np.asarray(ratings, dtype=np.float32),
                       "timestamp": np.asarray(times, dtype=np.int64)})
    return df, stats


def _is_number(x) -> bool:
    try:
        float(x)
        return True
    except (TypeError, ValueError):
        return False


def read_meta(path: str | os.PathLike, with_brand: bool = False, min_title_len: int = 2,
              literal: bool | None = None, skip_bad: bool = False, keep: set | None = None,
              progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read item metadata into (item_id, title); items whose title (plus " - brand" when `with_brand`) is shorter
    than `min_title_len` characters are dropped, as in the paper's preprocessing."""
    ids, titles = [], []
    stats = {"bad_lines": 0, "no_title": 0, "short_title": 0}
    it = iter_records(path, literal=literal, skip_bad=skip_bad, stats=stats)
    for lineno, rec in tqdm(it, desc=f"metadata {Path(path).name}", unit=" lines", disable=not progress,
                            mininterval=2.0):
        asin = rec.get("asin")
        if asin is None:
            if skip_bad:
                stats["bad_lines"] += 1
                continue
            raise DataError(path, "missing", line=lineno, field="asin")
        if keep is not None and asin not in keep:
            continue
        title = rec.get("title")
        if not isinstance(title, str) or not title.strip():
            stats["no_title"] += 1
            continue
        title = " ".join(title.split())
        brand = rec.get("brand")
        if with_brand and isinstance(brand, str) and brand.strip():
            title = f"{title} - {' '.join(brand.split())}"
        if len(title) < min_title_len:
            stats["short_title"] += 1
            continue
        ids.append(asin)
        titles.append(title)
    df = pd.DataFrame({"item_id": ids, "title": titles}).drop_duplicates("item_id", keep="first")
    return df, stats
