"""`scripts/real_games.sh resume`: both study queues start in the background from a checkout of a fixed commit,
with cache/ and outputs/ in the launching checkout, and a second resume is refused while a queue runs. The
launcher's Python is replaced by a script that records each job's command instead of running it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _queue_running() -> bool:
    return subprocess.run(["pgrep", "-f", "real_games.sh queue[12]"], capture_output=True).returncode == 0


def test_resume_starts_both_queues_from_a_fixed_checkout_and_refuses_a_second_start(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("pgrep") is None:
        pytest.skip("needs the project's git checkout and pgrep")
    if _queue_running():
        pytest.skip("a real study queue runs on this machine: resume would rightly refuse to start")
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(repo)], check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    record = tmp_path / "jobs.txt"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$GORACS_ROOT|$PYTHONPATH|$*" >> {record}\n')
    fake.chmod(0o755)
    wt = tmp_path / "wt"
    env = {**os.environ, "PY": str(fake), "STUDY_CHECKOUT": str(wt)}
    out = subprocess.run(["bash", "scripts/real_games.sh", "resume"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"study queues started from {head[:7]}" in out.stdout
    deadline = time.time() + 60
    while time.time() < deadline and _queue_running():
        time.sleep(0.2)
    jobs = record.read_text().splitlines()
    # every job ran from the checkout, with the launching checkout as the root of cache/ and outputs/
    assert jobs and all(j.split("|")[:2] == [str(repo), str(wt)] for j in jobs)
    cmds = [j.split("|")[2] for j in jobs]
    assert any("experiment=table_real_cpu selector=random,goracs,goracs_lam0,grand,el2n" in c for c in cmds)
    assert any("experiment=pilot_real_cpu_seqrec" in c for c in cmds)  # queue2's first step
    assert any("experiment=sweep_budget_real_cpu" in c for c in cmds)  # queue1's last step
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=wt, capture_output=True, text=True,
                          check=True).stdout.strip() == head
    assert (repo / "outputs" / "queue1.log").exists() and (repo / "outputs" / "queue2.log").exists()
    # while a queue runs, a second resume is refused and starts nothing
    busy = subprocess.Popen(["bash", "-c", 'exec -a "real_games.sh queue1" sleep 30'])
    try:
        time.sleep(0.3)
        n = len(record.read_text().splitlines())
        again = subprocess.run(["bash", "scripts/real_games.sh", "resume"], cwd=repo, env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 1 and "already running" in again.stderr
        time.sleep(0.5)
        assert len(record.read_text().splitlines()) == n
    finally:
        busy.kill()
