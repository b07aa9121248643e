"""Damaged input files (issue 14): a truncated or corrupt gzip, a byte that is not UTF-8, metadata without a title for
any reviewed item, a RecBole file with no rows, and the counts that dataset.skip_bad_lines reports. Each error names
the file (and the line where one is known) and the cause. Corrupted copies are written into tmp_path; the real
fixtures are never modified."""

from __future__ import annotations

import gzip
import json
import logging
import re
import zlib

import numpy as np
import pandas as pd
import pytest

from goracs.cache import StageCache
from goracs.data.amazon import read_meta, read_reviews
from goracs.data.datasets import load_interactions
from goracs.data.errors import DataError
from goracs.data.prepare import prepare
from goracs.data.recbole import read_atomic
from goracs.data.samples import build_samples
from goracs.data.splits import SplitError, split_samples
from tests.conftest import shared_file

AMAZON_LOG = "goracs.data.amazon"


def review(u: int, i: int, rating: float = 5.0, t: int = 0) -> dict:
    return {"reviewerID": f"U{u}", "asin": f"B{i:05d}", "overall": rating, "unixReviewTime": 1_400_000_000 + t,
            "reviewText": f"review {u}-{i} " + "words " * ((u * 7 + i) % 40)}


def review_lines(n_users: int = 300, per_user: int = 6) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [json.dumps(review(u, int(rng.integers(0, 400)), float(rng.integers(1, 6)), u * 10 + k)).encode()
            for u in range(n_users) for k in range(per_user)]


def write_gz(path, lines: list[bytes]) -> bytes:
    data = gzip.compress(b"\n".join(lines) + b"\n", mtime=0)
    path.write_bytes(data)
    return data


def complete_lines(gz_prefix: bytes) -> int:
    """How many whole lines a gzip prefix decompresses to (what a reader can read before the damage)."""
    return zlib.decompressobj(wbits=31).decompress(gz_prefix).count(b"\n")


def raw_cfg(tmp_path, reviews: str, meta: str, **kw) -> dict:
    return {"name": "t", "format": "raw2018", "root": str(tmp_path), "reviews_file": reviews, "meta_file": meta,
            "min_title_len": 2, "min_history": 1, **kw}


# --- truncated or corrupt gzip ------------------------------------------------------------------------------------


@pytest.mark.parametrize("skip_bad", [False, True])
def test_truncated_gzip_names_file_lines_read_and_cause(tmp_path, skip_bad):
    data = write_gz(tmp_path / "full.json.gz", review_lines())
    cut = data[:len(data) // 2]
    p = tmp_path / "Cut_5.json.gz"
    p.write_bytes(cut)
    n = complete_lines(cut)
    assert 0 < n < 1800
    with pytest.raises(DataError, match=rf"Cut_5\.json\.gz: truncated gzip file: .*; {n} lines were read before "
                                        r"it, and a damaged file cannot be skipped past") as e:
        read_reviews(p, skip_bad=skip_bad, progress=False)
    assert e.value.path == str(p)


def test_truncated_gzip_real_movies_reviews_and_metadata_reader(tmp_path):
    data = shared_file("amazon-movies-2018/Movies_and_TV_5.stratified-sample.json.gz").read_bytes()
    p = tmp_path / "Movies_and_TV_5.json.gz"
    p.write_bytes(data[:int(len(data) * 0.7)])
    n = complete_lines(p.read_bytes())
    for read in (lambda: read_reviews(p, progress=False), lambda: read_reviews(p, skip_bad=True, progress=False),
                 lambda: read_meta(p, progress=False)):
        with pytest.raises(DataError, match=rf"Movies_and_TV_5\.json\.gz: truncated gzip file.*; {n} lines were "
                                            r"read before it"):
            read()


def test_gzip_cut_inside_its_header(tmp_path):
    data = write_gz(tmp_path / "full.json.gz", review_lines(5))
    p = tmp_path / "Tiny_5.json.gz"
    p.write_bytes(data[:12])
    with pytest.raises(DataError, match=r"Tiny_5\.json\.gz: truncated gzip file.*0 lines were read before it"):
        read_reviews(p, progress=False)


def test_bad_crc_names_file_and_cause(tmp_path):
    data = bytearray(write_gz(tmp_path / "full.json.gz", review_lines()))
    data[-8] ^= 0xFF  # the CRC-32 in the trailer: every line reads, the check at the end fails
    p = tmp_path / "Crc_5.json.gz"
    p.write_bytes(bytes(data))
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=r"Crc_5\.json\.gz: corrupt gzip data \(BadGzipFile: CRC check failed"
                                            r".*\); 1800 lines were read before it"):
            read_reviews(p, skip_bad=skip_bad, progress=False)


@pytest.mark.parametrize("where,width", [(0.03, 1), (0.05, 1), (0.3, 16), (0.5, 16), (0.6, 16), (0.8, 16)])
@pytest.mark.parametrize("skip_bad", [False, True])
def test_corrupt_gzip_is_reported_as_such(tmp_path, where, width, skip_bad):
    """Flipped bytes inside the deflate data: whatever surfaces first (a zlib error, garbage that is not JSON, not
    UTF-8 or lacks a field, or the CRC check), the error names the file and says the gzip data is corrupt."""
    data = bytearray(write_gz(tmp_path / "full.json.gz", review_lines()))
    k = int(len(data) * where)
    for j in range(k, k + width):
        data[j] ^= 0x5A if width > 1 else 0xFF
    p = tmp_path / "Flip_5.json.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"Flip_5\.json\.gz(:\d+)?: .*corrupt gzip data \((BadGzipFile|zlib\.error): "):
        read_reviews(p, skip_bad=skip_bad, progress=False)


def test_invalid_deflate_block_names_file_and_cause(tmp_path):
    data = bytearray(write_gz(tmp_path / "full.json.gz", review_lines()))
    data[10] |= 0b110  # the first deflate block's type bits: 11 is invalid
    p = tmp_path / "Block_5.json.gz"
    p.write_bytes(bytes(data))
    for read in (lambda: read_reviews(p, progress=False), lambda: read_reviews(p, skip_bad=True, progress=False),
                 lambda: read_atomic(p)):
        with pytest.raises(DataError, match=r"Block_5\.json\.gz: corrupt gzip data \(zlib\.error: .*invalid block "
                                            r"type\); 0 lines were read before it"):
            read()


def test_corrupt_real_movies_gzip_not_a_misleading_json_error(tmp_path):
    """The real fixture with 40 flipped bytes decompresses to garbage that used to surface as a JSON error at some
    line; the error now says the gzip file is damaged."""
    data = bytearray(shared_file("amazon-movies-2018/Movies_and_TV_5.stratified-sample.json.gz").read_bytes())
    for j in range(len(data) // 2, len(data) // 2 + 40):
        data[j] ^= 0x55
    p = tmp_path / "Movies_and_TV_5.json.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"Movies_and_TV_5\.json\.gz:\d+: malformed line, because the gzip file is "
                                        r"damaged: corrupt gzip data \(BadGzipFile: CRC check failed"):
        read_reviews(p, progress=False)
    with pytest.raises(DataError, match=r"Movies_and_TV_5\.json\.gz: corrupt gzip data \(BadGzipFile: CRC check "
                                        r"failed.*\); 634 lines were read before it \(\d+ lines before it were "
                                        r"skipped as malformed or not UTF-8"):
        read_reviews(p, skip_bad=True, progress=False)


def test_truncated_gzip_through_load_interactions(tmp_path):
    data = write_gz(tmp_path / "full.json.gz", review_lines())
    (tmp_path / "R_5.json.gz").write_bytes(data[:len(data) // 3])
    (tmp_path / "meta_R.json").write_text(json.dumps({"asin": "B00001", "title": "A title"}) + "\n")
    for skip in (False, True):
        with pytest.raises(DataError, match=r"R_5\.json\.gz: truncated gzip file"):
            load_interactions(raw_cfg(tmp_path, "R_5.json.gz", "meta_R.json", skip_bad_lines=skip), progress=False)


# --- bytes that are not UTF-8 -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_non_utf8_line_named_or_skipped_and_counted(tmp_path, gz, caplog):
    lines = review_lines(400)
    lines[1500] = lines[1500].replace(b"review ", b"r\xe9view ", 1)  # a Latin-1 e-acute
    p = tmp_path / ("Latin_5.json.gz" if gz else "Latin_5.json")
    if gz:
        write_gz(p, lines)
    else:
        p.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError, match=r"Latin_5\.json(\.gz)?:1501: not UTF-8: cannot decode byte\(s\) b'\\xe9' "
                                        r"\(invalid continuation byte\); the file must be UTF-8; "
                                        r"dataset.skip_bad_lines=true skips and counts such lines"):
        read_reviews(p, progress=False)
    with caplog.at_level(logging.WARNING, logger=AMAZON_LOG):
        df, stats = read_reviews(p, skip_bad=True, progress=False)
    assert len(df) == len(lines) - 1 and stats["not_utf8"] == 1 and stats["bad_lines"] == 0
    assert "skipped 1 lines: 0 malformed (bad JSON), 1 not UTF-8," in caplog.text


def test_non_utf8_in_first_block_names_the_line(tmp_path):
    """A bad byte in the first block used to fail at open as 'cannot read file' with no line."""
    p = tmp_path / "Head_5.json.gz"
    write_gz(p, [json.dumps(review(1, 1)).encode(), b'{"reviewerID": "U\xff", "asin": "B1", "overall": 5, '
                                                     b'"unixReviewTime": 1}'])
    with pytest.raises(DataError, match=r"Head_5\.json\.gz:2: not UTF-8: cannot decode byte\(s\) b'\\xff' "
                                        r"\(invalid start byte\)"):
        read_reviews(p, progress=False)


def test_non_utf8_real_food_2014_reviews_and_metadata(tmp_path):
    raw = gzip.decompress(shared_file("amazon-food-2014/reviews_Grocery_and_Gourmet_Food_5.sample.json.gz")
                          .read_bytes()).split(b"\n")
    raw[40] = raw[40].replace(b'"reviewText": "', b'"reviewText": "Caf\xe9 ', 1)
    assert b"\xe9" in raw[40]
    p = tmp_path / "reviews_Grocery_and_Gourmet_Food_5.json.gz"
    write_gz(p, raw)
    with pytest.raises(DataError, match=r"reviews_Grocery_and_Gourmet_Food_5\.json\.gz:41: not UTF-8"):
        read_reviews(p, progress=False)
    df, stats = read_reviews(p, skip_bad=True, progress=False)
    assert stats["not_utf8"] == 1 and len(df) == sum(1 for line in raw if line.strip()) - 1
    # 2014 metadata (Python dict literals) with a Latin-1 title
    meta = tmp_path / "meta_Grocery_and_Gourmet_Food.json.gz"
    write_gz(meta, [b"{'asin': 'A1', 'title': 'Earl Grey'}", b"{'asin': 'A2', 'title': 'Cr\xe8me br\xfbl\xe9e'}",
                    b"{'asin': 'A3', 'title': 'Dark Chocolate'}"])
    with pytest.raises(DataError, match=r"meta_Grocery_and_Gourmet_Food\.json\.gz:2: not UTF-8"):
        read_meta(meta, literal=True, progress=False)
    mdf, mstats = read_meta(meta, literal=True, skip_bad=True, progress=False)
    assert mdf["item_id"].tolist() == ["A1", "A3"] and mstats["not_utf8"] == 1


# --- RecBole atomic files -----------------------------------------------------------------------------------------


def test_recbole_truncated_gzip_names_file_and_lines(tmp_path):
    rows = [b"user_id:token\titem_id:token\trating:float"] + [f"u{k}\ti{k % 97}\t{k % 5 + 1}".encode()
                                                              for k in range(30000)]
    data = write_gz(tmp_path / "full.inter.gz", rows)
    cut = data[:len(data) // 2]
    p = tmp_path / "x.inter.gz"
    p.write_bytes(cut)
    n = complete_lines(cut)
    with pytest.raises(DataError, match=rf"x\.inter\.gz: truncated gzip file: .*; {n} lines were read before it"):
        read_atomic(p)


def test_recbole_truncated_real_games_inter(tmp_path):
    data = shared_file("amazon-games-2018/amazon-games-2018.inter.gz").read_bytes()
    p = tmp_path / "amazon-games-2018.inter.gz"
    p.write_bytes(data[:len(data) // 3])
    n = complete_lines(p.read_bytes())
    with pytest.raises(DataError, match=rf"amazon-games-2018\.inter\.gz: truncated gzip file.*; {n} lines were "
                                        r"read before it"):
        read_atomic(p)
    bad = bytearray(data)
    bad[-2] ^= 0xFF  # the stored length in the trailer
    p.write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"amazon-games-2018\.inter\.gz: corrupt gzip data \(BadGzipFile: "
                                        r"Incorrect length"):
        read_atomic(p)


def test_recbole_non_utf8_names_line(tmp_path):
    p = tmp_path / "x.item"
    p.write_bytes(b"item_id:token\ttitle:token_seq\ni1\tEarl Grey\ni2\tCr\xe8me br\xfbl\xe9e\n")
    with pytest.raises(DataError, match=r"x\.item:3: not UTF-8: cannot decode byte\(s\) b'\\xe8' "
                                        r"\(invalid continuation byte\); the file must be UTF-8$"):
        read_atomic(p)
    gz = tmp_path / "x.item.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    with pytest.raises(DataError, match=r"x\.item\.gz:3: not UTF-8"):
        read_atomic(gz)


def test_recbole_header_without_rows(tmp_path):
    (tmp_path / "x.inter").write_text("user_id:token\titem_id:token\trating:float\n")
    with pytest.raises(DataError, match=r"x\.inter: the file has no rows: a header line and no rows after it"):
        read_atomic(tmp_path / "x.inter")
    cfg = {"name": "r", "format": "recbole", "root": str(tmp_path), "inter_file": "x.inter"}
    with pytest.raises(DataError, match=r"x\.inter: the file has no interactions"):
        load_interactions(cfg, progress=False)
    (tmp_path / "y.inter").write_text("user_id:token\titem_id:token\nu1\ti1\nu1\ti2\n")
    (tmp_path / "y.item").write_text("item_id:token\ttitle:token_seq\n\n")
    cfg = {"name": "r", "format": "recbole", "root": str(tmp_path), "inter_file": "y.inter", "item_file": "y.item"}
    with pytest.raises(DataError, match=r"y\.item: the file has no items"):
        load_interactions(cfg, progress=False)


# --- no title for any reviewed item -------------------------------------------------------------------------------


def write_small_raw(tmp_path, meta_lines: list[str]) -> dict:
    recs = [review(u, (u + k) % 7, 1 + (u * k) % 5, u * 10 + k) for u in range(6) for k in range(5)]
    (tmp_path / "R_5.json").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (tmp_path / "meta_R.json").write_text("".join(line + "\n" for line in meta_lines))
    return raw_cfg(tmp_path, "R_5.json", "meta_R.json", split={"method": "temporal", "n_valid": 1, "n_test": 1})


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_metadata_asins_that_do_not_match(tmp_path, task):
    cfg = write_small_raw(tmp_path, [json.dumps({"asin": f"X{i}", "title": f"title {i}"}) for i in range(9)])
    msg = (r"meta_R\.json: no reviewed item has a title in this metadata file: 0 of the 7 items reviewed in "
           r".*R_5\.json have one \(its records: 9 for items that are not in the reviews, 0 reviewed items without "
           r"a title, 0 with a title shorter than dataset.min_title_len=2; do its 'asin' values match those of "
           r"R_5\.json\?\)")
    with pytest.raises(DataError, match=msg):
        load_interactions(cfg, progress=False)
    # the stage: not "temporal needs timestamps ... use loo" (SeqRec) nor an IndexError (CTR)
    with pytest.raises(DataError, match=msg):
        prepare(cfg, {"name": task, "max_history": 10, "n_negatives": 2}, StageCache(tmp_path / "cache"),
                progress=False)


def test_metadata_empty_or_untitled(tmp_path):
    cfg = write_small_raw(tmp_path, [])
    with pytest.raises(DataError, match=r"meta_R\.json: no reviewed item has a title in this metadata file: 0 of "
                                        r"the 7 items .*\(its records: 0 for items that are not in the reviews, 0 "
                                        r"reviewed items without a title, 0 with a title shorter"):
        load_interactions(cfg, progress=False)
    cfg = write_small_raw(tmp_path, [json.dumps({"asin": f"B{i:05d}", "title": "x" if i % 2 else ""})
                                     for i in range(7)])
    with pytest.raises(DataError, match=r"0 of the 7 items reviewed in .*R_5\.json have one \(its records: 0 for "
                                        r"items that are not in the reviews, 4 reviewed items without a title, 3 "
                                        r"with a title shorter than dataset.min_title_len=2\)$"):
        load_interactions(cfg, progress=False)


def test_metadata_some_titles_are_counted(tmp_path, caplog):
    cfg = write_small_raw(tmp_path, [json.dumps({"asin": f"B{i:05d}", "title": f"title {i}"}) for i in range(3)])
    with caplog.at_level(logging.INFO, logger="goracs.data.datasets"):
        _, titles, stats = load_interactions(cfg, progress=False)
    assert stats["titled_items"] == 3 and stats["meta_read"]["other_items"] == 0
    assert "meta_R.json: 3 of the 7 items with interactions have a title" in caplog.text


def test_recbole_titles_that_do_not_match(tmp_path):
    (tmp_path / "y.inter").write_text("user_id:token\titem_id:token\nu1\ti1\nu1\ti2\n")
    (tmp_path / "y.item").write_text("item_id:token\ttitle:token_seq\nj1\tEarl Grey\n")
    cfg = {"name": "r", "format": "recbole", "root": str(tmp_path), "inter_file": "y.inter", "item_file": "y.item"}
    with pytest.raises(DataError, match=r"y\.item: no item with interactions has a title in this item file: 0 of "
                                        r"the 2 items in .*y\.inter have one"):
        load_interactions(cfg, progress=False)
    cfg = {"name": "r", "format": "recbole", "root": str(tmp_path), "inter_file": "y.inter"}
    with pytest.raises(DataError, match=r"y\.inter: no item titles: 0 of the 2 items have one, as the dataset has "
                                        r"no item_file; set dataset.item_file, or dataset.title_fallback=id"):
        load_interactions(cfg, progress=False)


@pytest.mark.parametrize("task", ["seqrec", "ctr"])
def test_samples_and_split_say_why_nothing_is_left(task):
    inter = pd.DataFrame({"user": ["u1"] * 4 + ["u2"] * 4, "item": list("abcdabcd"), "rating": [5., 1, 4, 2] * 2,
                          "label": [1., 0, 1, 0] * 2, "timestamp": np.arange(8.)})
    with pytest.raises(ValueError, match=r"no item with interactions has a title: 0 of the 4 items \(in 8 "
                                         r"interactions\) are among the 1 titled items"):
        build_samples(inter, {"x": "X"}, task, progress=False)
    samples, stats = build_samples(inter, {"a": "A", "b": "B"}, task, min_history=5, max_history=10,
                                   progress=False)
    assert len(samples) == 0 and stats["short_history_skipped"] == 2
    for method in ("temporal", "loo", "auto"):
        with pytest.raises(SplitError, match=r"there are no samples to split \(see the sample statistics"):
            split_samples(samples, method=method, n_valid=1, n_test=1)


# --- skip_bad_lines reports every kind ----------------------------------------------------------------------------


def test_skip_bad_lines_counts_every_kind(tmp_path, caplog):
    good = [json.dumps(review(u, u)).encode() for u in range(5)]
    bad = [b"{not json", b'{"reviewerID": "U\xff", "asin": "B1", "overall": 5, "unixReviewTime": 1}',
           json.dumps({"reviewerID": "U9", "asin": "B9", "unixReviewTime": 1}).encode(),
           json.dumps({"reviewerID": "U9", "asin": "B9", "overall": "five", "unixReviewTime": 1}).encode(),
           json.dumps({"reviewerID": "U9", "asin": "B9", "overall": 4, "unixReviewTime": "noon"}).encode()]
    p = tmp_path / "Mixed_5.json.gz"
    write_gz(p, good[:2] + bad + good[2:])
    with caplog.at_level(logging.WARNING, logger=AMAZON_LOG):
        df, stats = read_reviews(p, skip_bad=True, progress=False)
    assert len(df) == 5
    assert stats == {"bad_lines": 1, "not_utf8": 1, "missing_field": 1, "not_numeric": 2}
    assert ("Mixed_5.json.gz: dataset.skip_bad_lines skipped 5 lines: 1 malformed (bad JSON), 1 not UTF-8, "
            "1 missing a field, 2 with a non-numeric rating or time") in caplog.text
    # each kind stops a strict read at its line, with the hint
    for line, match in zip(bad, [r"malformed line", r"not UTF-8", r"field 'overall': missing",
                                 r"field 'overall': not a number", r"field 'unixReviewTime': not a number"]):
        write_gz(p, good[:2] + [line])
        with pytest.raises(DataError, match=re.escape(p.name) + ":3: " + match + r".*dataset.skip_bad_lines=true "
                                            r"skips"):
            read_reviews(p, progress=False)


def test_skip_bad_lines_counts_every_kind_in_metadata(tmp_path, caplog):
    p = tmp_path / "meta_M.json"
    p.write_bytes(b"\n".join([b"{'asin': 'A1', 'title': 'Earl Grey'}", b"{'asin': 'A2', 'title': ",
                              b"{'asin': 'A3', 'title': 'Cr\xe8me'}", b"{'title': 'no asin'}",
                              b"{'asin': 'A5', 'title': 'Dark Chocolate'}"]) + b"\n")
    with caplog.at_level(logging.WARNING, logger=AMAZON_LOG):
        df, stats = read_meta(p, literal=True, skip_bad=True, progress=False)
    assert df["item_id"].tolist() == ["A1", "A5"]
    assert (stats["bad_lines"], stats["not_utf8"], stats["missing_field"]) == (1, 1, 1)
    assert ("meta_M.json: dataset.skip_bad_lines skipped 3 lines: 1 malformed (bad JSON or dict literal), "
            "1 not UTF-8, 1 missing the 'asin' field") in caplog.text


def test_skip_bad_lines_through_load_interactions(tmp_path, caplog):
    lines = [json.dumps(review(u, (u + k) % 7, 5, k)).encode() for u in range(4) for k in range(4)]
    lines[3] = b"{oops"
    lines[6] = lines[6].replace(b"review ", b"r\xe9view ", 1)
    lines[9] = json.dumps({"reviewerID": "U1", "asin": "B1", "overall": None, "unixReviewTime": 1}).encode()
    write_gz(tmp_path / "R_5.json.gz", lines)
    (tmp_path / "meta_R.json").write_text("".join(json.dumps({"asin": f"B{i:05d}", "title": f"title {i}"}) + "\n"
                                                  for i in range(7)))
    with caplog.at_level(logging.WARNING, logger=AMAZON_LOG):
        _, _, stats = load_interactions(raw_cfg(tmp_path, "R_5.json.gz", "meta_R.json", skip_bad_lines=True),
                                        progress=False)
    assert stats["review_read"] == {"bad_lines": 1, "not_utf8": 1, "missing_field": 0, "not_numeric": 1}
    assert "skipped 3 lines: 1 malformed (bad JSON), 1 not UTF-8, 0 missing a field, 1 with a non-numeric" \
           in caplog.text
