"""The synthetic default: raw 2018 format, deterministic by seed, with learnable structure; the prepare cache."""

from __future__ import annotations

import gzip
import json
from collections import Counter

import numpy as np
import pytest

from goracs.cache import StageCache
from goracs.data import synthetic
from goracs.data.prepare import prepare

SMALL = synthetic.SyntheticConfig(n_users=300, n_items=120, seed=3)


def test_written_files_are_raw_2018_format_and_deterministic(tmp_path):
    a = synthetic.write(SMALL, tmp_path / "a")
    b = synthetic.write(SMALL, tmp_path / "b")
    assert a["reviews"].name == "Synthetic_5.json.gz" and a["meta"].name == "meta_Synthetic.json.gz"
    assert gzip.open(a["reviews"]).read() == gzip.open(b["reviews"]).read()
    c = synthetic.write(synthetic.SyntheticConfig(n_users=300, n_items=120, seed=4), tmp_path / "c")
    assert gzip.open(a["reviews"]).read() != gzip.open(c["reviews"]).read()
    rev = [json.loads(line) for line in gzip.open(a["reviews"], "rt")]
    meta = [json.loads(line) for line in gzip.open(a["meta"], "rt")]
    assert {"reviewerID", "asin", "overall", "unixReviewTime", "reviewTime"} <= set(rev[0])
    assert {"asin", "title", "brand"} <= set(meta[0])
    # 5-core
    assert min(Counter(r["reviewerID"] for r in rev).values()) >= 5
    assert min(Counter(r["asin"] for r in rev).values()) >= 5


def test_structure_is_learnable():
    meta, rev = synthetic.generate(SMALL)
    genre = {m["asin"]: m["category"][1] for m in meta}
    title = {m["asin"]: m["title"] for m in meta}
    by_user = {}
    for r in sorted(rev, key=lambda r: (r["reviewerID"], r["unixReviewTime"])):
        by_user.setdefault(r["reviewerID"], []).append(r)
    same_genre = total = sequel = 0
    liked_in_top, liked_other = [], []
    for seq in by_user.values():
        counts = Counter(genre[r["asin"]] for r in seq)
        top = counts.most_common(1)[0][0]
        for prev, nxt in zip(seq, seq[1:]):
            total += 1
            same_genre += genre[prev["asin"]] == genre[nxt["asin"]]
            base = title[prev["asin"]].rsplit(" (", 1)[0]
            sequel += title[nxt["asin"]].startswith(base + " I")
        for r in seq:
            (liked_in_top if genre[r["asin"]] == top else liked_other).append(r["overall"] > 3)
    # consecutive items share a genre far more often than the 1/8 of chance, sequels follow their prequels,
    # and a user's main genre is liked more often than the rest
    assert same_genre / total > 0.35
    assert sequel / total > 0.05
    assert np.mean(liked_in_top) > np.mean(liked_other) + 0.15
    ts = [r["unixReviewTime"] for r in rev]
    assert len(set(ts)) > 0.9 * len(ts)


def test_prepare_is_cached_and_keyed(tmp_path):
    cache = StageCache(tmp_path / "cache")
    ds = {"name": "synthetic", "format": "synthetic", "root": str(tmp_path / "raw"),
          "synthetic": {"n_users": 200, "n_items": 160, "seed": 1},
          "split": {"method": "temporal", "n_valid": 0.1, "n_test": 0.1}}
    task = {"name": "seqrec", "max_history": 10, "n_negatives": 99}
    d1 = prepare(ds, task, cache, progress=False)
    stamp = (d1.path / "train.parquet").stat().st_mtime_ns
    d2 = prepare(ds, task, cache, progress=False)
    assert d2.path == d1.path and (d2.path / "train.parquet").stat().st_mtime_ns == stamp
    assert d2.train.equals(d1.train)
    d3 = prepare(ds, {**task, "max_history": 5}, cache, progress=False)
    assert d3.path != d1.path and max(map(len, d3.train["history"])) == 5
    d4 = prepare({**ds, "synthetic": {**ds["synthetic"], "seed": 2}}, task, cache, progress=False)
    assert d4.path != d1.path


def test_interrupted_build_leaves_no_artifact(tmp_path):
    cache = StageCache(tmp_path)
    with pytest.raises(RuntimeError):
        with cache.build("prepare", {"k": 1}) as tmp:
            (tmp / "train.parquet").write_text("half")
            raise RuntimeError("killed")
    assert not cache.done("prepare", {"k": 1})
    assert not cache.path("prepare", {"k": 1}).exists()
    assert list((tmp_path / "prepare").iterdir()) == []


def test_two_builders_of_one_artifact_keep_the_first(tmp_path):
    """Parallel jobs of a sweep may build the same artifact; the first complete folder stays (a reader may hold
    it), the later build is dropped, and an incomplete leftover is replaced."""
    cache = StageCache(tmp_path)
    final = cache.path("signals", {"k": 1})
    final.mkdir(parents=True)
    (final / "half.npy").write_text("leftover of a killed run")  # no _DONE marker
    with cache.build("signals", {"k": 1}) as outer:
        (outer / "v.txt").write_text("second")
        with cache.build("signals", {"k": 1}) as inner:
            (inner / "v.txt").write_text("first")
        assert cache.done("signals", {"k": 1}) and not (final / "half.npy").exists()
        first_inode = final.stat().st_ino
    assert (final / "v.txt").read_text() == "first" and final.stat().st_ino == first_inode
    assert [p.name for p in (tmp_path / "signals").iterdir()] == [final.name]


def test_unknown_settings_fail_clearly(tmp_path):
    from goracs.data.errors import DataError

    ds = {"name": "s", "format": "synthetic", "root": str(tmp_path), "synthetic": {"n_userz": 3}}
    with pytest.raises(DataError, match="unknown synthetic settings"):
        prepare(ds, {"name": "seqrec"}, StageCache(tmp_path / "c"))
    with pytest.raises(DataError, match="unknown dataset format 'csv'"):
        prepare({"name": "x", "format": "csv", "root": str(tmp_path)}, {"name": "seqrec"}, StageCache(tmp_path))
    with pytest.raises(ValueError, match="unknown task 'rank'"):
        prepare(ds, {"name": "rank"}, StageCache(tmp_path))
    with pytest.raises(DataError, match="review file not found"):
        prepare({"name": "g", "format": "raw2018", "root": str(tmp_path), "reviews_file": "Video_Games_5.json",
                 "meta_file": "meta_Video_Games.json"}, {"name": "seqrec"}, StageCache(tmp_path))
