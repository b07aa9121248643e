"""Concurrency and cache keys (issue 14): inputs keyed by content, one build per artifact when two processes
start at once, nothing left behind by a killed build that a later run trips over."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from goracs.cache import DONE, StageCache
from goracs.io import file_fingerprint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
       "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_inputs_are_keyed_by_content(tmp_path):
    a = tmp_path / "a.json.gz"
    a.write_bytes(b"\x1f\x8b some bytes")
    key = file_fingerprint(a)
    os.utime(a, (time.time() + 100, time.time() + 100))  # touch
    assert file_fingerprint(a) == key
    b = tmp_path / "copy" / "a.json.gz"
    b.parent.mkdir()
    shutil.copy(a, b)  # a copy without -p: another path and modification time
    assert file_fingerprint(b) == key
    a.write_bytes(b"\x1f\x8b other bytes")
    assert file_fingerprint(a) != key


def test_touching_the_raw_data_keeps_the_prepared_samples(tmp_path):
    from goracs.data.datasets import input_files
    from goracs.data.prepare import prepare, prepare_key

    ds = {"name": "synthetic", "format": "synthetic", "root": str(tmp_path / "data"), "min_history": 1,
          "synthetic": {"n_users": 120, "n_items": 90}, "split": {"method": "temporal", "n_valid": 20,
                                                                   "n_test": 20}}
    task = {"name": "ctr", "max_history": 3}
    cache = StageCache(tmp_path / "cache")
    first = prepare(ds, task, cache, progress=False)
    for p in input_files(ds).values():
        os.utime(p, (time.time() + 60, time.time() + 60))
    assert cache.path("prepare", prepare_key(ds, task, 0)) == first.path
    # the synthetic files are the same bytes when written again (no time stamp in the gzip header)
    files = input_files(ds)
    before = {k: p.read_bytes() for k, p in files.items()}
    shutil.rmtree(tmp_path / "data")
    assert {k: p.read_bytes() for k, p in input_files(ds).items()} == before


_WORKER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from goracs.cache import StageCache
    cache, mode = StageCache(sys.argv[1]), sys.argv[2]
    with cache.lock("stage", {"k": 1}):
        if not cache.done("stage", {"k": 1}):
            with cache.build("stage", {"k": 1}) as tmp:
                (tmp / "value.txt").write_text("made by " + sys.argv[3])
                with open(Path(sys.argv[1]) / "builds.log", "a") as f:
                    f.write(sys.argv[3] + "\\n")
                time.sleep(60 if mode == "hang" else 1.0)
    print(open(cache.path("stage", {"k": 1}) / "value.txt").read())
""")


def test_two_processes_build_an_artifact_once_and_agree(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "c"), "ok", name], env=ENV,
                              stdout=subprocess.PIPE, text=True) for name in ("A", "B")]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert (tmp_path / "c" / "builds.log").read_text().count("\n") == 1  # built once
    assert outs[0] == outs[1] and outs[0].startswith("made by ")  # both read the one artifact


def test_a_killed_build_leaves_nothing_that_a_later_run_trips_over(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    p = subprocess.Popen([sys.executable, str(script), str(tmp_path / "c"), "hang", "killed"], env=ENV,
                         stdout=subprocess.PIPE, text=True)
    log = tmp_path / "c" / "builds.log"
    for _ in range(600):
        if log.exists():
            break
        time.sleep(0.1)
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    cache = StageCache(tmp_path / "c")
    final = cache.path("stage", {"k": 1})
    assert list(final.parent.glob(f".{final.name}.*.tmp")) and not cache.done("stage", {"k": 1})
    # an incomplete folder of an older version's build is there as well
    final.mkdir()
    (final / "half.txt").write_text("half")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "c"), "ok", "later"], env=ENV,
                         capture_output=True, text=True, timeout=120)  # the lock died with its holder
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "made by later" and cache.done("stage", {"k": 1})
    assert not (final / "half.txt").exists()
    assert not list(final.parent.glob(f".{final.name}.*.tmp"))  # the killed build's folder was removed



def test_a_builds_scratch_survives_a_failed_build_and_goes_with_the_complete_artifact(tmp_path):
    """The scratch folder (a training checkpoint) is what a killed or failed builder leaves for the next one; the
    lock holder's clean-up of temporary folders keeps it, and a complete artifact removes it."""
    cache = StageCache(tmp_path / "c")
    scratch = cache.scratch("train", {"k": 1})
    scratch.mkdir(parents=True)
    (scratch / "train_state.pt").write_text("step 5")
    with pytest.raises(RuntimeError), cache.lock("train", {"k": 1}), cache.build("train", {"k": 1}):
        raise RuntimeError("killed")
    with cache.lock("train", {"k": 1}):  # clears a dead builder's temporary folders, not the scratch
        assert (scratch / "train_state.pt").read_text() == "step 5" and not cache.done("train", {"k": 1})
        with cache.build("train", {"k": 1}) as tmp:
            (tmp / "adapter.txt").write_text("done")
    assert cache.done("train", {"k": 1}) and not scratch.exists()
    # a builder killed between completing the artifact and removing its scratch: the next lock holder removes it
    scratch.mkdir()
    with cache.lock("train", {"k": 1}):
        assert not scratch.exists()
    assert not cache.scratch("train", {"k": 2}).exists()

SMALL = ["model=tiny", "train=tiny", "train.epochs=1", "logger=none", "progress=false",
         "dataset.synthetic.n_users=150", "dataset.synthetic.n_items=120", "task.max_history=3",
         "task.pool.max_train=24", "task.pool.max_valid=12", "task.pool.max_test=8", "task.budget=6",
         "task.itra.max_iters=3", "task.itra.cut_num=3", "signals.grad_batch_size=8", "proxy_check=false"]


@pytest.mark.slow
def test_two_jobs_started_at_once_on_a_clean_checkout_build_each_stage_once(tmp_path):
    procs = []
    for name in ("A", "B"):
        cmd = [sys.executable, "-m", "goracs", "stage=all", "task=ctr", "selector=goracs",
               f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run{name}", *SMALL]
        procs.append(subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    builds = re.findall(r"building (\w+)/(\w+)", logs[0] + logs[1])
    stages = [s for s, _ in builds]
    assert sorted(set(stages)) == ["evaluate", "grads", "prepare", "select", "train"]
    assert len(builds) == len(set(builds)) and all(stages.count(s) == 1 for s in set(stages)), builds
    # one synthetic data set, one artifact per stage, the same metrics
    assert len([p for p in (tmp_path / "data" / "synthetic").iterdir() if p.is_dir()]) == 1
    for stage in ("prepare", "grads", "select", "train", "evaluate"):
        done = [d for d in (tmp_path / "cache" / stage).iterdir() if (d / DONE).exists()]
        assert len(done) == 1, stage
    a, b = (json.loads((tmp_path / f"run{n}" / "metrics.json").read_text()) for n in "AB")
    assert a["auc"] == b["auc"] and a["coreset"] == b["coreset"]
