"""Dataset loading by config: raw Amazon 2014/2018 files, RecBole atomic files, or the synthetic generator,
normalised to interactions (user, item, rating, label, timestamp, order) and item titles."""

from __future__ import annotations

import logging
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

from goracs.data import amazon, recbole, synthetic
from goracs.data.errors import DataError
from goracs.data.samples import dedupe_interactions
from goracs.io import config_hash, file_fingerprint

log = logging.getLogger(__name__)

FORMATS = ("raw2014", "raw2018", "recbole", "synthetic")


def find_file(root: Path, name: str, what: str) -> Path:
    """`name` or `name.gz` under root; the error says where the file should go."""
    for cand in (root / name, root / (name + ".gz"), root / name.removesuffix(".gz")):
        if cand.exists():
            return cand
    raise DataError(root / name, f"{what} not found (looked for {name} and {name}.gz in {root}); "
                                 f"download it from the Amazon review data page and put it there")


def input_files(cfg: Mapping[str, Any]) -> dict[str, Path]:
    """The raw files a dataset config reads (after generating synthetic data if needed)."""
    fmt = cfg["format"]
    if fmt not in FORMATS:
        raise DataError(cfg.get("name", "?"), f"unknown dataset format '{fmt}'; known: {list(FORMATS)}",
                        field="dataset.format")
    root = Path(cfg["root"])
    if fmt == "synthetic":
        gen = synthetic_config(cfg)
        root = root / f"seed{gen.seed}-{config_hash(vars(gen), 10)}"
        paths = {"reviews": root / f"{gen.category}_5.json.gz", "meta": root / f"meta_{gen.category}.json.gz"}
        if not all(p.exists() for p in paths.values()):
            from goracs.cache import file_lock

            # written once: a second process started at the same time waits, then finds the files
            with file_lock(root.with_name(root.name + ".lock")):
                if not all(p.exists() for p in paths.values()):
                    log.info("writing synthetic dataset to %s", root)
                    synthetic.write(gen, root)
        return paths
    if fmt == "recbole":
        out = {"inter": find_file(root, cfg["inter_file"], "RecBole interaction file")}
        if cfg.get("item_file"):
            out["item"] = find_file(root, cfg["item_file"], "RecBole item file")
        return out
    return {"reviews": find_file(root, cfg["reviews_file"], "review file"),
            "meta": find_file(root, cfg["meta_file"], "metadata file")}


def synthetic_config(cfg: Mapping[str, Any]) -> synthetic.SyntheticConfig:
    """The generator settings named in the dataset config's `synthetic` block."""
    known = {f.name for f in fields(synthetic.SyntheticConfig)}
    block = dict(cfg.get("synthetic") or {})
    unknown = set(block) - known
    if unknown:
        raise DataError(cfg.get("name", "synthetic"), f"unknown synthetic settings {sorted(unknown)}",
                        field="dataset.synthetic")
    return synthetic.SyntheticConfig(**block)


# The settings that say where the input files lie (read only by input_files): the files enter the key by name, size
# and SHA-256, so a moved or copied data folder keeps its cached data.
LOCATION_SETTINGS = ("root", "inter_file", "item_file", "reviews_file", "meta_file")


def cache_key(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """What determines the loaded data: the config less where its files lie, and the input files by content."""
    return {"cfg": {k: v for k, v in dict(cfg).items() if k not in LOCATION_SETTINGS},
            "files": {k: file_fingerprint(p) for k, p in input_files(cfg).items()}}


def load_interactions(cfg: Mapping[str, Any], progress: bool = True) -> tuple[pd.DataFrame, dict[str, str], dict]:
    """Read a dataset: interactions (user, item, rating, label, timestamp, order), titles (item -> title), stats."""
    files = input_files(cfg)
    fmt = cfg["format"]
    skip_bad = bool(cfg.get("skip_bad_lines", False))
    stats: dict[str, Any] = {"files": {k: str(v) for k, v in files.items()}}
    if fmt == "recbole":
        inter = recbole.read_atomic(files["inter"], what="interactions")
        for col in ("user_id", "item_id"):
            if col not in inter:
                raise DataError(files["inter"], f"missing column (has {list(inter.columns)})", line=1, field=col)
        df = pd.DataFrame({"user": inter["user_id"].astype(str), "item": inter["item_id"].astype(str)})
        df["rating"] = inter["rating"].astype(np.float32) if "rating" in inter else np.float32(np.nan)
        if "label" in inter:
            df["label"] = inter["label"].astype(np.float64)
        elif "rating" in inter:
            df["label"] = np.where(df["rating"].isna(), np.nan, (df["rating"] > 3).astype(np.float64))
        else:
            df["label"] = np.nan
        df["timestamp"] = inter["timestamp"].astype(np.float64) if "timestamp" in inter else np.nan
        df["order"] = inter["position"].astype(np.int64) if "position" in inter else np.arange(len(df))
        if "item" in files:
            items = recbole.read_atomic(files["item"], what="items")
            if "title" in items:
                items = items[items["title"].str.len() >= int(cfg.get("min_title_len", 2))]
                titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str)))
            else:
                titles = {}
        else:
            titles = {}
        if not titles and cfg.get("title_fallback") == "id":
            # interaction-only data (e.g. the Food fixture): the item id stands in for the title
            titles = {i: f"item {i}" for i in df["item"].unique()}
    else:
        reviews, rstats = amazon.read_reviews(files["reviews"], skip_bad=skip_bad, progress=progress)
        stats["review_read"] = rstats
        keep = set(reviews["item"].cat.categories)
        meta, mstats = amazon.read_meta(files["meta"], with_brand=bool(cfg.get("with_brand", False)),
                                        min_title_len=int(cfg.get("min_title_len", 2)),
                                        literal=True if fmt == "raw2014" else None, skip_bad=skip_bad,
                                        keep=keep, progress=progress)
        stats["meta_read"] = mstats
        titles = dict(zip(meta["item_id"], meta["title"]))
        df = pd.DataFrame({"user": reviews["user"].astype(str), "item": reviews["item"].astype(str),
                           "rating": reviews["rating"], "timestamp": reviews["timestamp"].astype(np.float64)})
        df["label"] = (df["rating"] > 3).astype(np.float64)
        df["order"] = np.arange(len(df), dtype=np.int64)
    df, removed = dedupe_interactions(df)
    stats["duplicates_removed"] = removed
    stats.update(users=int(df["user"].nunique()), items=int(df["item"].nunique()), interactions=len(df),
                 titled_items=len(set(df["item"].unique()) & titles.keys()))
    title_file = files.get("meta", files.get("item", files.get("inter")))
    log.info("%s: %d of the %d items with interactions have a title", title_file, stats["titled_items"],
             stats["items"])
    if not stats["titled_items"]:
        raise no_titles_error(cfg, files, stats)
    return df.reset_index(drop=True), titles, stats


def no_titles_error(cfg: Mapping[str, Any], files: Mapping[str, Path], stats: Mapping[str, Any]) -> DataError:
    """The error for data where no item with interactions has a title (samples need titles): it names the file the
    titles come from, how many items have one, and what the reader saw there."""
    n = stats["items"]
    if "meta" in files:
        m = stats.get("meta_read", {})
        seen = (f"its records: {m.get('other_items', 0)} for items that are not in the reviews, "
                f"{m.get('no_title', 0)} reviewed items without a title, {m.get('short_title', 0)} with a title "
                f"shorter than dataset.min_title_len={cfg.get('min_title_len', 2)}")
        if m.get("other_items", 0) and not m.get("no_title", 0) and not m.get("short_title", 0):
            seen += f"; do its 'asin' values match those of {files['reviews'].name}?"
        return DataError(files["meta"], f"no reviewed item has a title in this metadata file: 0 of the {n} items "
                                        f"reviewed in {files['reviews']} have one ({seen})")
    if "item" in files:
        return DataError(files["item"], f"no item with interactions has a title in this item file: 0 of the {n} "
                                        f"items in {files['inter']} have one (a 'title' column, item_id values that "
                                        f"match the interactions, titles of at least dataset.min_title_len="
                                        f"{cfg.get('min_title_len', 2)} characters are needed)")
    return DataError(files["inter"], f"no item titles: 0 of the {n} items have one, as the dataset has no "
                                     f"item_file; set dataset.item_file, or dataset.title_fallback=id to use the "
                                     f"item ids as titles")
