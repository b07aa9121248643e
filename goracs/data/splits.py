"""Train / validation / test splits (global temporal, or leave-one-out per user) and sampled test negatives."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


class SplitError(ValueError):
    """A split that cannot be made from the data (e.g. larger than the data)."""


def resolve_size(size: int | float, total: int, name: str) -> int:
    """An int is a count; a float in (0, 1) a share of `total`, rounded."""
    if isinstance(size, float) and 0 < size < 1:
        return int(round(size * total))
    if float(size) != int(size) or int(size) < 0:
        raise SplitError(f"split.{name} must be a non-negative count or a share in (0, 1), got {size!r}")
    return int(size)


def split_samples(samples: pd.DataFrame, method: str = "auto", n_valid: int | float = 5000,
                  n_test: int | float = 5000, seed: int = 0) -> tuple[dict[str, pd.DataFrame], dict]:
    """Split samples; `temporal` sorts by target time (last n_test = test, the n_valid before = validation),
    `loo` (for data without timestamps) draws n_test + n_valid distinct users and holds out each one's last
    sample, `auto` is temporal when every sample has a timestamp."""
    total = len(samples)
    if not total:
        raise SplitError("there are no samples to split (see the sample statistics for what was dropped: "
                         "interactions of items without a title, histories shorter than min_history, unlabelled "
                         "CTR targets)")
    has_time = bool(samples["timestamp"].notna().all())
    if method == "auto":
        method = "temporal" if has_time else "loo"
    if method == "temporal":
        if not has_time:
            raise SplitError("split.method=temporal needs timestamps, but some samples have none; use loo")
        nv, nt = resolve_size(n_valid, total, "n_valid"), resolve_size(n_test, total, "n_test")
        if nv + nt >= total:
            raise SplitError(f"split asks for {nv} validation + {nt} test samples but there are only {total} "
                             f"samples: nothing would be left to train on")
        order = np.argsort(samples["timestamp"].to_numpy(), kind="stable")
        ntr = total - nv - nt
        parts = {"train": order[:ntr], "valid": order[ntr:ntr + nv], "test": order[ntr + nv:]}
    elif method == "loo":
        users = samples["user"].to_numpy()
        # samples are grouped by user and ordered by position within each user: a user's last sample is the last
        # row of its group. Distinct users give the test and validation samples (their last sample each); every
        # other sample trains, so no held-out sample has a later sample of its own user in train.
        last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
        nt = resolve_size(n_test, len(last), "n_test")
        nv = resolve_size(n_valid, len(last), "n_valid")
        if nt + nv > len(last):
            raise SplitError(f"split asks for {nv} validation + {nt} test samples but leave-one-out has only "
                             f"{len(last)} users to hold out from")
        rng = np.random.default_rng(seed)
        held = rng.permutation(last)
        test, valid = np.sort(held[:nt]), np.sort(held[nt:nt + nv])
        keep = np.ones(total, bool)
        keep[test] = False
        keep[valid] = False
        parts = {"train": np.flatnonzero(keep), "valid": valid, "test": test}
        if len(parts["train"]) == 0:
            raise SplitError("leave-one-out left no training samples")
    else:
        raise SplitError(f"unknown split.method '{method}'; known: auto, temporal, loo")
    out = {k: samples.iloc[v].reset_index(drop=True) for k, v in parts.items()}
    stats = {"method": method, **{f"n_{k}": len(v) for k, v in out.items()},
             "unused": total - sum(len(v) for v in out.values())}
    return out, stats


def sample_negatives(test: pd.DataFrame, user_items: dict[str, set], catalogue: np.ndarray, n_neg: int = 99,
                     seed: int = 0) -> list[list[str]]:
    """For each test sample, n_neg distinct catalogue items outside the user's items, drawn from one generator
    seeded once (not reseeded per user, unlike the authors' code, whose negatives are then near-identical)."""
    rng = np.random.default_rng(seed)
    cat_index = {it: k for k, it in enumerate(catalogue)}
    n_cat = len(catalogue)
    out = []
    for user in test["user"]:
        own = {cat_index[i] for i in user_items.get(user, ()) if i in cat_index}
        if n_cat - len(own) < n_neg:
            raise SplitError(f"catalogue has {n_cat} items, too few for {n_neg} negatives outside the "
                             f"{len(own)} items of user {user}")
        chosen: list[int] = []
        seen = set(own)
        while len(chosen) < n_neg:
            for c in rng.integers(0, n_cat, size=2 * (n_neg - len(chosen)) + 8):
                c = int(c)
                if c not in seen:
                    seen.add(c)
                    chosen.append(c)
                    if len(chosen) == n_neg:
                        break
        out.append([str(catalogue[c]) for c in chosen])
    return out
