"""A synthetic Amazon-style dataset written in the raw 2018 format (reviews + metadata), with structure a
recommender can learn: users with latent tastes over item genres, series they play in order, habits of staying
in a genre, ratings that follow taste, and timestamps. Deterministic by seed."""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from goracs.io import atomic_path

GENRES = {
    "Racing": (["Turbo", "Velocity", "Asphalt", "Nitro", "Grand", "Street"],
               ["Rally", "Circuit", "Drift", "Speedway", "Motorsport", "Road Kings"]),
    "Fantasy RPG": (["Dragon", "Elder", "Shadow", "Crystal", "Eternal", "Arcane"],
                    ["Kingdoms", "Chronicles", "Quest", "Legends", "Saga", "Realms"]),
    "Shooter": (["Tactical", "Black", "Iron", "Ghost", "Modern", "Delta"],
                ["Warfare", "Strike Force", "Operations", "Recon", "Battlefront", "Squadron"]),
    "Sports": (["Pro", "Ultimate", "World", "All-Star", "Champions", "Super"],
               ["Soccer", "Basketball", "Tennis", "Golf Tour", "Hockey", "Baseball"]),
    "Puzzle": (["Tiny", "Clever", "Color", "Mind", "Block", "Puzzle"],
               ["Logic", "Match", "Blocks", "Riddles", "Tiles", "Brain Trainer"]),
    "Platformer": (["Super", "Jumping", "Pixel", "Rocket", "Mega", "Wonder"],
                   ["Adventure", "Land", "Bros", "Island", "World", "Dash"]),
    "Horror": (["Silent", "Dead", "Dark", "Resident", "Haunted", "Night"],
               ["Asylum", "Outbreak", "Manor", "Evil", "Hollow", "Terror"]),
    "Strategy": (["Total", "Empire", "Civil", "Star", "Command", "Age of"],
                 ["Conquest", "Dominion", "Tactics", "Empires", "Generals", "Legions"]),
}
PLATFORMS = ["PC", "PlayStation 4", "Xbox One", "Nintendo Switch", "PlayStation 3", "Xbox 360"]
PUBLISHERS = ["Northwind Games", "Bluepeak Interactive", "Redshift Studios", "Lumen Works", "Oakridge Digital",
              "Stormforge", "Pixelcraft", "Helix Entertainment"]
SUBTITLES = ["Rebirth", "Origins", "Revolution", "Legacy", "Uprising", "Awakening", "Reloaded", "Frontiers",
             "Redemption", "Infinite", "Vengeance", "Horizons"]


@dataclass
class SyntheticConfig:
    n_users: int = 600
    n_items: int = 240
    min_len: int = 6
    max_len: int = 24
    p_series: float = 0.45  # continue the series of the last item when a next part exists
    p_habit: float = 0.3  # stay in the genre of the last item
    p_explore: float = 0.3  # try a genre uniformly at random (this is where most dislikes come from)
    taste_alpha: float = 0.3  # Dirichlet concentration of a user's genre taste (small = focused)
    start: int = 1420070400  # 2015-01-01
    span_days: int = 1200
    seed: int = 0
    category: str = "Synthetic"


def make_items(cfg: SyntheticConfig, rng: np.random.Generator):
    """Items grouped in genres and series (sequels share a base title and a series id)."""
    genres = list(GENRES)
    items = []  # dicts: asin, title, brand, genre, series, part
    used = set()
    series_id = 0
    while len(items) < cfg.n_items:
        g = genres[rng.integers(len(genres))]
        pre, noun = GENRES[g]
        base = f"{pre[rng.integers(len(pre))]} {noun[rng.integers(len(noun))]}"
        if base in used:
            base = f"{base}: {SUBTITLES[rng.integers(len(SUBTITLES))]}"
            if base in used:
                continue
        used.add(base)
        parts = int(rng.choice([1, 1, 2, 3, 4]))
        platform = PLATFORMS[rng.integers(len(PLATFORMS))]
        brand = PUBLISHERS[rng.integers(len(PUBLISHERS))]
        for p in range(1, parts + 1):
            if len(items) >= cfg.n_items:
                break
            title = base if p == 1 else f"{base} {['', '', 'II', 'III', 'IV'][p]}"
            items.append({"asin": f"S{len(items):07d}X", "title": f"{title} ({platform})", "brand": brand,
                          "genre": g, "series": series_id, "part": p})
        series_id += 1
    return items


def generate(cfg: SyntheticConfig):
    """Return (items, reviews) as lists of dicts in the raw 2018 Amazon format (before writing)."""
    rng = np.random.default_rng(cfg.seed)
    items = make_items(cfg, rng)
    genres = list(GENRES)
    g_of = np.array([genres.index(it["genre"]) for it in items])
    by_genre = [np.flatnonzero(g_of == g) for g in range(len(genres))]
    # Zipf-like popularity inside each genre
    pop = rng.pareto(1.5, size=len(items)) + 1.0
    next_part = {}
    for k, it in enumerate(items):
        for k2, it2 in enumerate(items):
            if it2["series"] == it["series"] and it2["part"] == it["part"] + 1:
                next_part[k] = k2
    reviews = []
    for u in range(cfg.n_users):
        taste = rng.dirichlet(np.full(len(genres), cfg.taste_alpha))
        length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
        t = cfg.start + int(rng.integers(0, cfg.span_days * 86400 // 2))
        seen: list[int] = []
        while len(seen) < length:
            last = seen[-1] if seen else None
            r = rng.random()
            cand = None
            if last is not None and r < cfg.p_series and next_part.get(last) is not None \
                    and next_part[last] not in seen:
                cand = next_part[last]
            else:
                r2 = rng.random()
                if last is not None and r2 < cfg.p_habit:
                    g = g_of[last]
                elif r2 < cfg.p_habit + cfg.p_explore:
                    g = int(rng.integers(len(genres)))
                else:
                    g = int(rng.choice(len(genres), p=taste))
                pool = [k for k in by_genre[g] if k not in seen]
                if not pool:
                    pool = [k for k in range(len(items)) if k not in seen]
                w = pop[pool] / pop[pool].sum()
                cand = int(rng.choice(pool, p=w))
            seen.append(cand)
        user_id = f"U{u:06d}SYN"
        for k in seen:
            g = g_of[k]
            affinity = taste[g] * len(genres)  # 1 = average interest
            score = 0.8 * np.log(affinity + 1e-2) + 1.2 + rng.normal(0, 0.7)
            rating = int(np.clip(np.round(3 + score), 1, 5))
            t += int(rng.exponential(12 * 86400)) + 3600
            reviews.append({"overall": float(rating), "verified": True,
                            "reviewTime": _review_time(t), "reviewerID": user_id, "asin": items[k]["asin"],
                            "reviewerName": f"Player {u}", "reviewText": _review_text(rating, items[k]),
                            "summary": ["Terrible", "Poor", "Okay", "Good", "Excellent"][rating - 1],
                            "unixReviewTime": t})
    reviews = five_core(reviews)
    keep = {r["asin"] for r in reviews}
    meta = [{"asin": it["asin"], "title": it["title"], "brand": it["brand"],
             "category": ["Video Games", it["genre"]], "main_cat": "Video Games"} for it in items
            if it["asin"] in keep]
    return meta, reviews


def five_core(reviews: list[dict], k: int = 5) -> list[dict]:
    """Iteratively keep users and items with at least k reviews, as the Amazon 5-core files do."""
    while True:
        from collections import Counter

        cu = Counter(r["reviewerID"] for r in reviews)
        ci = Counter(r["asin"] for r in reviews)
        kept = [r for r in reviews if cu[r["reviewerID"]] >= k and ci[r["asin"]] >= k]
        if len(kept) == len(reviews):
            return kept
        reviews = kept


def _review_time(t: int) -> str:
    import datetime as dt

    d = dt.datetime.fromtimestamp(t, tz=dt.timezone.utc)
    return f"{d.month:02d} {d.day}, {d.year}"


def _review_text(rating: int, item: dict) -> str:
    mood = ["Did not enjoy", "Not great", "It is fine", "Really fun", "Loved every minute of"][rating - 1]
    return f"{mood} {item['title']}."


def write(cfg: SyntheticConfig, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write `<Cat>_5.json.gz` and `meta_<Cat>.json.gz` (2018 format) into out_dir atomically."""
    out_dir = Path(out_dir)
    meta, reviews = generate(cfg)
    paths = {"reviews": out_dir / f"{cfg.category}_5.json.gz", "meta": out_dir / f"meta_{cfg.category}.json.gz"}
    for key, rows in (("meta", meta), ("reviews", reviews)):
        with atomic_path(paths[key]) as tmp:
            # no time or name in the gzip header: the same settings give the same bytes (files are keyed by content)
            with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
                gz.write("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))
    return paths
