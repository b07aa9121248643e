"""Time and peak memory of preparing the full real Games fixture (453 K interactions) for SeqRec and CTR,
ours against a naive reference (one Python dict per review, grouped and windowed in plain Python, as the
authors' notebook does). Each run happens in a fresh child process so peak RSS is its own.

    python scripts/bench_prepare.py [--shared ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ours(shared: Path) -> dict:
    from goracs.cache import StageCache
    from goracs.data.prepare import prepare

    cfg = {"name": "games_recbole", "format": "recbole", "root": str(shared / "amazon-games-2018"),
           "inter_file": "amazon-games-2018.inter.gz", "item_file": "amazon-games-2018.item.gz",
           "min_title_len": 2, "min_history": 1, "split": {"method": "loo", "n_valid": 5000, "n_test": 5000}}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = StageCache(tmp)
        for task in ("seqrec", "ctr"):
            t = time.perf_counter()
            d = prepare(cfg, {"name": task, "max_history": 10, "n_negatives": 99}, cache, progress=False)
            out[task] = {"seconds": time.perf_counter() - t, "samples": len(d.train) + len(d.valid) + len(d.test)}
    return out


def naive(shared: Path) -> dict:
    import gzip

    out = {}
    t0 = time.perf_counter()
    rows = []
    with gzip.open(shared / "amazon-games-2018/amazon-games-2018.inter.gz", "rt") as f:
        head = f.readline().rstrip("\n").split("\t")
        for line in f:
            rows.append(dict(zip([h.split(":")[0] for h in head], line.rstrip("\n").split("\t"))))
    titles = {}
    with gzip.open(shared / "amazon-games-2018/amazon-games-2018.item.gz", "rt") as f:
        f.readline()
        for line in f:
            p = line.rstrip("\n").split("\t")
            if len(p) > 1 and len(p[1]) > 1:
                titles[p[0]] = p[1]
    users = {}
    for r in rows:
        if r["item_id"] in titles:
            users.setdefault(r["user_id"], []).append(r)
    for task in ("seqrec", "ctr"):
        t = time.perf_counter()
        samples = []
        for u, seq in users.items():
            seq = sorted(seq, key=lambda r: float(r["position"]))
            for i in range(min(10, len(seq) - 1), len(seq)):
                hist = seq[max(0, i - 10):i]
                if not hist or (task == "ctr" and any(r["label"] == "" for r in hist + [seq[i]])):
                    continue
                samples.append({"user": u, "history": [titles[r["item_id"]] for r in hist],
                                "target": titles[seq[i]["item_id"]], "label": seq[i]["label"]})
        out[task] = {"seconds": time.perf_counter() - t + (t - t0 if task == "seqrec" else 0.0),
                     "samples": len(samples)}
    return out


def child(impl: str, shared: Path) -> None:
    res = {"ours": ours, "naive": naive}[impl](shared)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(res))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--child", choices=["ours", "naive"])
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.shared)
    if not (a.shared / "amazon-games-2018").is_dir():
        sys.exit(f"real Games fixture not found under {a.shared}")
    results = {}
    for impl in ("ours", "naive"):
        p = subprocess.run([sys.executable, __file__, "--child", impl, "--shared", str(a.shared)],
                           capture_output=True, text=True, check=True, cwd=ROOT)
        results[impl] = json.loads(p.stdout.strip().splitlines()[-1])
    o, n = results["ours"], results["naive"]
    print("Preparing the real Games fixture (452,989 interactions, 50,546 users), one child process each")
    print("| implementation | SeqRec s | CTR s | total s | peak RSS MB | SeqRec samples | CTR samples | output |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r, what in (("goracs prepare", o, "split, negatives, prompts, Parquet cache"),
                          ("naive dict-per-review", n, "windows only (no split, negatives, prompts or files)")):
        tot = r["seqrec"]["seconds"] + r["ctr"]["seconds"]
        print(f"| {name} | {r['seqrec']['seconds']:.1f} | {r['ctr']['seconds']:.1f} | {tot:.1f} | "
              f"{r['peak_rss_mb']:.0f} | {r['seqrec']['samples']} | {r['ctr']['samples']} | {what} |")
    tot = o["seqrec"]["seconds"] + o["ctr"]["seconds"]
    print(f"\ntargets: under 60 s -> {'met' if tot < 60 else 'MISSED'} ({tot:.1f} s); "
          f"under 2 GB -> {'met' if o['peak_rss_mb'] < 2048 else 'MISSED'} ({o['peak_rss_mb']:.0f} MB)")
    assert o["seqrec"]["samples"] == n["seqrec"]["samples"] and o["ctr"]["samples"] == n["ctr"]["samples"], \
        "sample counts differ between implementations"


if __name__ == "__main__":
    main()
