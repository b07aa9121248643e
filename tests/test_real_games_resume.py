"""`scripts/real_games.sh resume`: both study queues start in the background from a checkout of a fixed commit,
with cache/ and outputs/ in the launching checkout; a second resume is refused while a study job runs, and a
STUDY_CHECKOUT that is not a linked worktree of the repository is refused and left untouched. The launcher's Python
is replaced by a script that records each job's command instead of running it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUSY = r"real_games\.sh (queue[12]|pilot|ctr|seeds|stratified|seqrec|sweeps|proxy)|python[0-9.]* -m goracs"


def _study_running() -> bool:
    return subprocess.run(["pgrep", "-u", str(os.getuid()), "-f", BUSY], capture_output=True).returncode == 0


def _git(*args, cwd) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def test_resume_starts_both_queues_from_a_fixed_checkout_and_refuses_a_second_start(tmp_path):
    if not (ROOT / ".git").exists() or shutil.which("pgrep") is None:
        pytest.skip("needs the project's git checkout and pgrep")
    if _study_running():
        pytest.skip("a real study job runs on this machine: resume would rightly refuse to start")
    repo = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", "--shared", str(ROOT), str(repo)], check=True)
    # the script as it is in this working tree (an uncommitted edit is what is tested), committed in the clone
    shutil.copy(ROOT / "scripts" / "real_games.sh", repo / "scripts" / "real_games.sh")
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-am", "script under test",
         cwd=repo)
    head = _git("rev-parse", "HEAD", cwd=repo)
    # a later commit pins the study to `head`: resume without an argument starts from the pin, not from HEAD
    (repo / "results" / "real_games").mkdir(parents=True, exist_ok=True)
    (repo / "results" / "real_games" / "STUDY_COMMIT").write_text(f"# the pin\n{head[:9]}\n# a later note\n")
    _git("add", "results/real_games/STUDY_COMMIT", cwd=repo)
    _git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pin", cwd=repo)
    later = _git("rev-parse", "HEAD", cwd=repo)
    record = tmp_path / "jobs.txt"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f'#!/usr/bin/env bash\necho "$GORACS_ROOT|$PYTHONPATH|$*" >> {record}\n')
    fake.chmod(0o755)
    wt = tmp_path / "wt"
    env = {**os.environ, "PY": str(fake), "STUDY_CHECKOUT": str(wt)}
    (repo / "outputs").mkdir()
    (repo / "outputs" / "queue1.log").write_text("the last session's log\n")
    out = subprocess.run(["bash", "scripts/real_games.sh", "resume"], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"study queues started from {head[:7]}" in out.stdout and "pinned commit" in out.stderr
    # each queue's last step: queue1 ends with the budget sweep, queue2 with GraNd / EL2N within classes
    deadline = time.time() + 90
    while time.time() < deadline:
        text = record.read_text() if record.exists() else ""
        if "experiment=sweep_budget_real_cpu" in text and "experiment=table_real_cpu_stratified" in text:
            break
        time.sleep(0.2)
    jobs = record.read_text().splitlines()
    # every job ran from the checkout, with the launching checkout as the root of cache/ and outputs/
    assert jobs and all(j.split("|")[:2] == [str(repo), str(wt)] for j in jobs)
    cmds = [j.split("|")[2] for j in jobs]
    assert any("experiment=table_real_cpu selector=random,goracs,goracs_lam0,grand,el2n" in c for c in cmds)
    assert any("experiment=pilot_real_cpu_seqrec" in c for c in cmds)  # queue2's first step
    assert any("experiment=sweep_budget_real_cpu" in c for c in cmds)  # queue1's last step
    assert _git("rev-parse", "HEAD", cwd=wt) == head
    log1 = (repo / "outputs" / "queue1.log").read_text()
    assert log1.startswith("the last session's log\n") and "== resume" in log1  # appended, not truncated
    assert (repo / "outputs" / "queue2.log").exists()
    # a folder that is not a linked worktree of the repository is refused and kept as it is
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    bad = subprocess.run(["bash", "scripts/real_games.sh", "resume"], cwd=repo, capture_output=True, text=True,
                         env={**env, "STUDY_CHECKOUT": str(keep)}, timeout=60)
    assert bad.returncode == 1 and "not a linked worktree" in bad.stderr
    assert (keep / "precious.txt").read_text() == "x"
    main = subprocess.run(["bash", "scripts/real_games.sh", "resume"], cwd=repo, capture_output=True, text=True,
                          env={**env, "STUDY_CHECKOUT": str(repo)}, timeout=60)
    assert main.returncode == 1 and (repo / "scripts" / "real_games.sh").exists()
    # while a study job runs, a second resume is refused and starts nothing
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
        busy.wait()
    # an argument overrides the pin
    deadline = time.time() + 60
    while _study_running() and time.time() < deadline:  # the first resume's recorded queues end in seconds
        time.sleep(0.2)
    newer = subprocess.run(["bash", "scripts/real_games.sh", "resume", "HEAD"], cwd=repo, env=env,
                           capture_output=True, text=True, timeout=60)
    assert newer.returncode == 0, newer.stderr
    assert f"study queues started from {later[:7]}" in newer.stdout and "pinned" not in newer.stderr
    assert _git("rev-parse", "HEAD", cwd=wt) == later
