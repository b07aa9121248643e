"""scripts/gpu_check.py on the CPU: with --device cpu the "device" and the reference are both the CPU, so every code
path runs and every comparison must pass (the fp32 ones exactly, the bf16 ones within their tolerance); its JSON and
markdown records; and a deliberately broken comparison, or a check that raises, fails the run (exit status 1)
while the other checks still run and pass."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"
SHARED = ROOT.parent / "shared" / "data"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _load_script():
    """scripts/gpu_check.py as a module; the environment variables it sets on import are restored afterwards."""
    saved = dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return mod


@pytest.fixture(scope="module")
def carry(tmp_path_factory) -> Path:
    """A carry folder made by scripts/device_carry.sh, as for the device (without its wheels: no network)."""
    if not (SHARED / "amazon-games-2018").is_dir():
        pytest.skip("the real Games fixture (../shared/data/amazon-games-2018) is absent")
    try:
        from goracs.models import smollm2_path

        smollm2_path()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"the SmolLM2 tokenizer is not available here ({e})")
    dest = tmp_path_factory.mktemp("carry") / "devcarry"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "device_carry.sh"), str(dest)], cwd=ROOT,
                       env={**ENV, "WHEELS": "0", "PYTHON": sys.executable}, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (dest / "smollm2" / "config.json").exists() and (dest / "smollm2" / "tokenizer.json").exists()
    assert not list((dest / "smollm2").glob("*.safetensors"))  # the weights never travel
    assert (dest / "shared" / "amazon-games-2018" / "amazon-games-2018.inter.gz").exists()
    return dest


def _run(carry: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict, str]:
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--model", "tiny", "--small", "--cpu-threads", "1",
           "--model-dir", str(carry / "smollm2"), "--shared-dir", str(carry / "shared"), "--out", str(out),
           "--work-dir", str(tmp_path / "work"), *extra]
    r = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=1200)
    assert (out / "gpu_check.json").exists(), r.stdout[-3000:] + r.stderr[-5000:]
    return r, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.mark.slow
def test_every_check_runs_and_passes_on_cpu(carry, tmp_path):
    mod = _load_script()
    r, rec, md = _run(carry, tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert rec["passed"] and rec["failed_checks"] == []
    assert list(rec["checks"]) == list(mod.CHECK_NAMES)
    for name, c in rec["checks"].items():
        assert c["error"] is None, (name, c["error"])
        assert c["passed"] and c["comparisons"], name
        assert all(x["passed"] for x in c["comparisons"]), name
        assert c["timings"], name
    comps = {x["name"]: x for c in rec["checks"].values() for x in c["comparisons"]}
    # the same code on the same CPU: the fp32 "device" results are the reference itself
    for task in ("seqrec", "ctr"):
        assert comps[f"{task} grad norms, device fp32 packed batched vs CPU fp32"]["max_abs_diff"] == 0.0
        assert comps[f"{task} EL2N, device fp32 vs CPU fp32 packed"]["max_abs_diff"] == 0.0
        # the bf16 path really ran in bf16: close, but not equal
        bf = comps[f"{task} grad norms, device bf16 packed batched vs CPU fp32"]
        assert 0.0 < bf["max_rel_diff"] <= bf["rtol"]
        # the per-sample loop against the batched closed form (the fp32 reference)
        assert comps[f"{task} grad norms, device fp32 per-sample loop vs CPU fp32"]["max_rel_diff"] < 1e-4
        for side in ("device", "CPU"):
            dec = comps[f"{task} validation loss decreases on the {side}"]
            assert dec["final"] < dec["initial"]
    assert comps["cost matrix C (device vs CPU)"]["max_abs_diff"] == 0.0
    sel = comps["selection (device vs CPU): identical indices, or the same POO on the CPU cost"]
    assert sel["identical"] and sel["overlap"] == sel["budget"] == 20
    gen = comps["greedy generated ids (fp32), device vs CPU: equal, or near-ties"]
    assert gen["identical"] == gen["n"] == 2 and not gen["mismatches"]
    ev = comps["evaluate_seqrec: generations equal (but near-tied beams), ranks equal where the generations are"]
    assert ev["n_candidates"] == 100 and ev["ranks_device"] == ev["ranks_cpu"]  # target + its 99 negatives
    t = rec["checks"]["grads"]["timings"]
    assert {"seqrec_device_fp32_batched_s", "seqrec_device_fp32_loop_s", "ctr_device_bf16_loop_s",
            "ctr_device_bf16_batched_speedup_vs_loop"} <= set(t)
    assert "**PASS**" in md and "## Comparisons" in md and "## Timings" in md and "## Tolerances" in md
    for name in mod.CHECK_NAMES:
        assert f"| {name} | pass |" in md


@pytest.mark.slow
def test_a_perturbed_model_check_fails_the_run(carry, tmp_path):
    r, rec, md = _run(carry, tmp_path, "--checks", "ctr,el2n", "--tasks", "ctr", "--perturb", "ctr")
    assert r.returncode == 1
    assert not rec["passed"] and rec["failed_checks"] == ["ctr"] and rec["perturbed"] == ["ctr"]
    ctr = rec["checks"]["ctr"]
    assert ctr["error"] is None and not ctr["passed"]
    assert all(not x["passed"] for x in ctr["comparisons"])  # P(Yes) fp32 and bf16, AUC
    assert rec["checks"]["el2n"]["passed"]
    assert "**FAIL**" in md and "failed: ctr" in md


def test_a_broken_comparison_and_a_raising_check_are_failures(tmp_path, monkeypatch):
    """In process, on the checks that need no model or data: the cost matrix perturbed beyond its tolerance fails;
    a check that raises is recorded with its error and traceback and the next check still runs and passes."""
    mod = _load_script()
    base = ["--device", "cpu", "--small", "--cpu-threads", "1", "--checks", "cost,select",
            "--work-dir", str(tmp_path / "work")]
    assert mod.main(base + ["--perturb", "cost", "--out", str(tmp_path / "a")]) == 1
    rec = json.loads((tmp_path / "a" / "gpu_check.json").read_text())
    cost = rec["checks"]["cost"]
    assert not cost["passed"] and cost["error"] is None
    assert cost["comparisons"][0]["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert rec["checks"]["select"]["passed"] and rec["failed_checks"] == ["cost"]

    def broken(ctx):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(mod.CHECKS, "cost", broken)
    assert mod.main(base + ["--out", str(tmp_path / "b")]) == 1
    rec = json.loads((tmp_path / "b" / "gpu_check.json").read_text())
    assert rec["checks"]["cost"]["error"] == "RuntimeError: kernel exploded"
    assert "kernel exploded" in rec["checks"]["cost"]["traceback"]
    assert rec["checks"]["select"]["passed"] and rec["failed_checks"] == ["cost"]
    md = (tmp_path / "b" / "gpu_check.md").read_text()
    assert "kernel exploded" in md and "| select | pass |" in md
    assert not list((tmp_path / "work").iterdir())  # the scratch folder is removed


def test_a_missing_cuda_device_is_reported(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    mod = _load_script()
    assert mod.main(["--device", "cuda", "--out", str(tmp_path / "o"), "--cpu-threads", "1"]) == 2
    rec = json.loads((tmp_path / "o" / "gpu_check.json").read_text())
    assert not rec["passed"] and "no CUDA device" in rec["error"]
