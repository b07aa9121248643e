"""Raw Amazon (2014 / 2018) and RecBole readers, on the real samples and on bad input."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from goracs.data.amazon import read_meta, read_reviews
from goracs.data.errors import DataError
from goracs.data.recbole import read_atomic
from tests.conftest import shared_file


def test_raw_2014_food_reviews_parse_and_label():
    path = shared_file("amazon-food-2014/reviews_Grocery_and_Gourmet_Food_5.sample.json.gz")
    df, stats = read_reviews(path, progress=False)
    raw = [json.loads(line) for line in gzip.open(path, "rt")]
    assert len(df) == len(raw) == 111 and stats["bad_lines"] == 0
    assert df["user"].astype(str).tolist() == [r["reviewerID"] for r in raw]
    assert df["item"].astype(str).tolist() == [r["asin"] for r in raw]
    assert np.array_equal(df["rating"].to_numpy(), np.array([r["overall"] for r in raw], dtype=np.float32))
    assert df["timestamp"].tolist() == [r["unixReviewTime"] for r in raw]


def test_raw_2018_movies_ratings_and_labels(tmp_path):
    from goracs.data.datasets import load_interactions

    path = shared_file("amazon-movies-2018/Movies_and_TV_5.stratified-sample.json.gz")
    df, _ = read_reviews(path, progress=False)
    assert len(df) == 633
    counts = df["rating"].value_counts().to_dict()
    assert set(counts) == {1.0, 2.0, 3.0, 4.0, 5.0} and all(100 <= c <= 150 for c in counts.values())
    # the dataset loader labels rating > 3 as liked
    meta = tmp_path / "meta_Movies.json"
    meta.write_text("".join(json.dumps({"asin": a, "title": f"Movie {a}"}) + "\n"
                            for a in df["item"].astype(str).unique()))
    (tmp_path / "Movies_5.json.gz").symlink_to(path)
    inter, titles, st = load_interactions({"name": "m", "format": "raw2018", "root": str(tmp_path),
                                           "reviews_file": "Movies_5.json.gz", "meta_file": "meta_Movies.json"},
                                          progress=False)
    assert len(titles) == 67
    assert ((inter["rating"] > 3) == (inter["label"] == 1)).all()
    # the sample holds one repeated (user, item) review: de-duplicated with a count
    assert st["duplicates_removed"] == int(df.duplicated(["user", "item"]).sum()) == 633 - len(inter)


def test_raw_2018_head_file_streams():
    df, _ = read_reviews(shared_file("amazon-movies-2018/Movies_and_TV.head5000.json.gz"), progress=False)
    assert len(df) == 5000 and df["user"].dtype.name == "category"


def test_2014_metadata_python_literals_and_title_rules(tmp_path):
    p = tmp_path / "meta_Food.json"
    p.write_text("\n".join([
        "{'asin': 'A1', 'title': \"Earl Grey Tea\", 'brand': 'Twinings', 'price': 4.5}",
        "{'asin': 'A2', 'title': 'X'}",  # too short
        "{'asin': 'A3', 'categories': [['Grocery']]}",  # no title
        "{'asin': 'A4', 'title': 'Dark   Chocolate'}",
    ]) + "\n")
    df, st = read_meta(p, with_brand=True, min_title_len=2, literal=True, progress=False)
    assert dict(zip(df["item_id"], df["title"])) == {"A1": "Earl Grey Tea - Twinings", "A4": "Dark Chocolate"}
    assert st["no_title"] == 1 and st["short_title"] == 1
    df, _ = read_meta(p, with_brand=True, min_title_len=20, literal=True, progress=False)
    assert df["item_id"].tolist() == ["A1"]


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "Bad_5.json"
    good = {"reviewerID": "u", "asin": "i", "overall": 5.0, "unixReviewTime": 1}
    p.write_text(json.dumps(good) + "\n{not json\n" + json.dumps(good) + "\n")
    with pytest.raises(DataError, match=r"Bad_5\.json:2: malformed line"):
        read_reviews(p, progress=False)
    df, stats = read_reviews(p, skip_bad=True, progress=False)
    assert len(df) == 2 and stats["bad_lines"] == 1


def test_missing_field_names_field(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"reviewerID": "u", "asin": "i", "unixReviewTime": 1}) + "\n")
    with pytest.raises(DataError, match=r"r\.json:1: field 'overall': missing"):
        read_reviews(p, progress=False)
    p.write_text(json.dumps({"reviewerID": "u", "asin": "i", "overall": "five", "unixReviewTime": 1}) + "\n")
    with pytest.raises(DataError, match=r"field 'overall': not a number"):
        read_reviews(p, progress=False)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_reviews(tmp_path / "nope.json.gz", progress=False)
    bad = tmp_path / "x.json.gz"
    bad.write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read file"):
        read_reviews(bad, progress=False)


def test_recbole_reader_real_games_items():
    df = read_atomic(shared_file("amazon-games-2018/amazon-games-2018.item.gz"))
    assert list(df.columns) == ["item_id", "title", "categories"] and len(df) == 16859
    assert (df["title"] == "").sum() == 55


def test_recbole_bad_rows(tmp_path):
    p = tmp_path / "x.inter"
    p.write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\t5\nu2\ti2\n")
    with pytest.raises(DataError, match=r"x\.inter:3: expected 3 tab-separated fields, found 2"):
        read_atomic(p)
    p.write_text("user_id:token\titem_id:token\trating:float\nu1\ti1\tfive\n")
    with pytest.raises(DataError, match=r"x\.inter:2: field 'rating': not a number"):
        read_atomic(p)
    p.write_text("user_id\titem_id\n")
    with pytest.raises(DataError, match="not `name:type`"):
        read_atomic(p)
