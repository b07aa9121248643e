"""Streaming readers for the raw Amazon review files: 2014 (`reviews_<Cat>_5.json`, metadata as Python dict
literals) and 2018 (`<Cat>_5.json`, metadata as JSON lines), plain or gzipped."""

from __future__ import annotations

import ast
import gzip
import io
import json
import logging
import os
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
from tqdm import tqdm

from goracs.data.errors import DataError

log = logging.getLogger(__name__)

REVIEW_FIELDS = {"user": "reviewerID", "item": "asin", "rating": "overall", "timestamp": "unixReviewTime"}


# what a damaged stream raises while it is read: a truncated gzip (EOFError), a bad CRC, a bad header or a member
# that is not gzip (gzip.BadGzipFile, an OSError), a corrupt deflate block (zlib.error), a byte that is not UTF-8
STREAM_ERRORS = (EOFError, OSError, zlib.error, UnicodeDecodeError)
SKIP_HINT = "; dataset.skip_bad_lines=true skips and counts such lines"


def open_text(path: str | os.PathLike, errors: str = "strict"):
    """Open a text file, transparently gunzipping `.gz`; a missing or unreadable file names itself. `errors` is the
    UTF-8 decoding policy ("surrogateescape" lets a reader find and skip the lines that are not UTF-8)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    try:
        if path.suffix == ".gz":
            raw = gzip.open(path, "rb")
            try:
                raw.peek(1)  # fail now, not mid-stream, if it is not gzip
            except BaseException:
                raw.close()
                raise
            return io.TextIOWrapper(raw, encoding="utf-8", errors=errors)
        return open(path, "r", encoding="utf-8", errors=errors)
    except OSError as e:
        raise DataError(path, f"cannot read file ({e})") from e
    except (EOFError, zlib.error) as e:
        raise stream_error(path, e, 0) from e


def stream_error(path: str | os.PathLike, exc: BaseException, lines_read: int, skip_bad: bool | None = None,
                 skipped: int = 0) -> DataError:
    """The error for a stream that broke while it was read (see STREAM_ERRORS), after `lines_read` complete lines:
    it names the file, the cause, and the line where one is known. `skip_bad` is the reader's skip_bad_lines setting
    (None: the reader has none), `skipped` how many lines it skipped before the break. Only called on the way out,
    so it may reread the file."""
    path = Path(path)
    if isinstance(exc, UnicodeDecodeError):
        damage = gzip_damage(path) if path.suffix == ".gz" else None
        if damage is not None:  # the bad byte is garbage from a corrupt gzip member: report the real cause
            return stream_error(path, damage, lines_read, skip_bad, skipped)
        line = first_non_utf8_line(path, lines_read)
        bad = exc.object[exc.start:exc.end]
        return DataError(path, f"not UTF-8: cannot decode byte(s) {bad!r} ({exc.reason}); the file must be UTF-8"
                               + ("" if line is not None else f" (the bad byte comes after line {lines_read})")
                               + (SKIP_HINT if skip_bad is False else ""), line=line)
    extra = (f" ({skipped} lines before it were skipped as malformed or not UTF-8: maybe the start of the damage)"
             if skipped else "")
    return DataError(path, f"{damage_cause(exc)}; {lines_read} lines were read before it{extra}, and a damaged "
                           f"file cannot be skipped past: download or copy it again")


def garbage_check(path: str | os.PathLike, lineno: int, what: str) -> None:
    """Before reporting a bad line of a gzip file (`what` is wrong at line `lineno`), check that the gzip data is
    intact: garbage from a corrupt member must be reported as such, not as a bad line (error path only)."""
    damage = gzip_damage(path) if Path(path).suffix == ".gz" else None
    if damage is not None:
        raise DataError(path, f"{what}, because the gzip file is damaged: {damage_cause(damage)}; the lines from "
                              f"about here on are garbage: download or copy the file again", line=lineno) from damage


def damage_cause(exc: BaseException) -> str:
    """What a read error says about the file, in words."""
    if isinstance(exc, EOFError):
        return "truncated gzip file: it ends before the gzip end-of-stream marker (an incomplete download or copy?)"
    if isinstance(exc, (gzip.BadGzipFile, zlib.error)):
        return f"corrupt gzip data ({'zlib.error' if isinstance(exc, zlib.error) else 'BadGzipFile'}: {exc})"
    return f"read error ({type(exc).__name__}: {exc})"


def gzip_damage(path: str | os.PathLike) -> BaseException | None:
    """The error that decompressing the whole gzip file `path` raises, or None when it is intact (error path only:
    it reads the file to the end)."""
    try:
        with gzip.open(path, "rb") as g:
            while g.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error) as e:
        return e
    return None


def first_non_utf8_line(path: str | os.PathLike, after: int = 0) -> int | None:
    """The number of the first line after line `after` that is not valid UTF-8, or None (error path only)."""
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                if lineno > after:
                    try:
                        raw.decode("utf-8")
                    except UnicodeDecodeError:
                        return lineno
    except (EOFError, OSError, zlib.error):
        pass
    return None


def _not_utf8(line: str) -> bool:
    """Whether a line decoded with errors="surrogateescape" held bytes that are not UTF-8 (ASCII lines: O(1))."""
    if line.isascii():
        return False
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def log_skipped(path: str | os.PathLike, stats: dict, kinds: dict[str, str]) -> None:
    """Warn with the count of skipped lines of every kind in `kinds` (stats key -> description)."""
    total = sum(stats.get(k, 0) for k in kinds)
    if total:
        parts = ", ".join(f"{stats.get(k, 0)} {what}" for k, what in kinds.items())
        log.warning("%s: dataset.skip_bad_lines skipped %d lines: %s", path, total, parts)


def iter_records(path: str | os.PathLike, literal: bool | None = None,
                 skip_bad: bool = False, stats: dict | None = None) -> Iterator[tuple[int, dict]]:
    """Yield (line number, record) from a JSON-lines file; `literal` parses Python dict literals (2014 metadata),
    None tries JSON first and falls back to literals line by line. With `skip_bad`, malformed lines and lines that
    are not UTF-8 are skipped and counted in stats["bad_lines"] and stats["not_utf8"]; a damaged gzip file (truncated
    or corrupt) always fails, naming the file, the lines read before the damage and the cause."""
    bad = not_utf8 = 0
    lineno = 0
    with open_text(path, errors="surrogateescape" if skip_bad else "strict") as f:
        try:
            for lineno, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                if skip_bad and not line.isascii() and _not_utf8(line):
                    not_utf8 += 1
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
                    garbage_check(path, lineno, "malformed line")
                    raise DataError(path, f"malformed line ({type(e).__name__}: {str(e)[:120]}){SKIP_HINT}",
                                    line=lineno) from e
                yield lineno, rec
        except STREAM_ERRORS as e:
            raise stream_error(path, e, lineno, skip_bad, bad + not_utf8) from e
    if stats is not None:
        stats["bad_lines"] = stats.get("bad_lines", 0) + bad
        stats["not_utf8"] = stats.get("not_utf8", 0) + not_utf8


def read_reviews(path: str | os.PathLike, skip_bad: bool = False, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Read a 5-core review file into (user, item, rating, timestamp) columns, streaming: ids are interned to
    integer codes as lines arrive, so memory holds arrays, not one dict per review."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u_codes, i_codes, ratings, times = [], [], [], []
    stats = {"bad_lines": 0, "not_utf8": 0, "missing_field": 0, "not_numeric": 0}
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
            garbage_check(path, lineno, f"field '{e.args[0]}' missing")
            raise DataError(path, "missing" + SKIP_HINT, line=lineno, field=e.args[0]) from None
        try:
            r = float(r)
            t = int(t)
        except (TypeError, ValueError):
            if skip_bad:
                stats["not_numeric"] += 1
                continue
            field = "overall" if not _is_number(r) else "unixReviewTime"
            garbage_check(path, lineno, f"field '{field}' not a number")
            raise DataError(path, f"not a number: {rec.get(field)!r}{SKIP_HINT}", line=lineno,
                            field=field) from None
        u_codes.append(users.setdefault(u, len(users)))
        i_codes.append(items.setdefault(i, len(items)))
        ratings.append(r)
        times.append(t)
    log_skipped(path, stats, SKIPPED_REVIEW_LINES)
    if not u_codes:
        raise DataError(path, "no reviews found" + (f" (dataset.skip_bad_lines skipped {_skipped(stats)} lines)"
                                                    if _skipped(stats) else ""))
    user_cat = pd.Categorical.from_codes(np.asarray(u_codes, dtype=np.int32), categories=list(users))
    item_cat = pd.Categorical.from_codes(np.asarray(i_codes, dtype=np.int32), categories=list(items))
    df = pd.DataFrame({"user": user_cat, "item": item_cat, "rating": np.asarray(ratings, dtype=np.float32),
                       "timestamp": np.asarray(times, dtype=np.int64)})
    return df, stats


SKIPPED_REVIEW_LINES = {"bad_lines": "malformed (bad JSON)", "not_utf8": "not UTF-8",
                        "missing_field": "missing a field", "not_numeric": "with a non-numeric rating or time"}
SKIPPED_META_LINES = {"bad_lines": "malformed (bad JSON or dict literal)", "not_utf8": "not UTF-8",
                      "missing_field": "missing the 'asin' field"}


def _skipped(stats: dict) -> int:
    return sum(stats.get(k, 0) for k in SKIPPED_REVIEW_LINES)


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
    stats = {"bad_lines": 0, "not_utf8": 0, "missing_field": 0, "no_title": 0, "short_title": 0,
             "other_items": 0}
    it = iter_records(path, literal=literal, skip_bad=skip_bad, stats=stats)
    for lineno, rec in tqdm(it, desc=f"metadata {Path(path).name}", unit=" lines", disable=not progress,
                            mininterval=2.0):
        asin = rec.get("asin")
        if asin is None:
            if skip_bad:
                stats["missing_field"] += 1
                continue
            garbage_check(path, lineno, "field 'asin' missing")
            raise DataError(path, "missing" + SKIP_HINT, line=lineno, field="asin")
        if keep is not None and asin not in keep:
            stats["other_items"] += 1
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
    log_skipped(path, stats, SKIPPED_META_LINES)
    df = pd.DataFrame({"item_id": ids, "title": titles}).drop_duplicates("item_id", keep="first")
    return df, stats
