"""The GPU check: every device path of goracs against the CPU path, on the same inputs and the same weights, in
one command (issue 17 item 5). Made for the first session that is lent a GPU; `--device cpu` runs every code path
here (then the "device" is the CPU too).

  bash scripts/device_carry.sh      # fills .devcarry/: SmolLM2's config + tokenizer, the Games fixture, wheels
  # then, on the device machine, with carry [".devcarry"] (README.md, "GPU check", has the one-line command that
  # first installs the carried wheels into /tmp/site):
  PYTHONPATH=/tmp/site python3 scripts/gpu_check.py --device cuda --model-dir .devcarry/smollm2 \
      --shared-dir .devcarry/shared --out $OUT
  # here, small and on the CPU (what tests/test_gpu_check.py runs):
  OMP_NUM_THREADS=1 .venv/bin/python scripts/gpu_check.py --device cpu --model tiny --small --out /tmp/gpu_check

The model has SmolLM2-135M's architecture (config.json + tokenizer of --model-dir) with seeded random weights (the
real weights do not travel; if the folder holds *.safetensors they are used unless --random-weights), or the tiny
LLaMA of goracs.models (`--model tiny`, for tests). The prompts are real Amazon Games samples as the pipeline
prepares them (--shared-dir/amazon-games-2018). Nothing is downloaded (the Hugging Face offline switches are set).

Checks (`--checks`, all by default); each compares the device result with the CPU reference computed in the same
run (fp32 on the CPU), within the tolerances of TOL (written to the record with the reason for each):
  cost    the GORACS cost matrix (goracs.selection.cost.compute_cost) on the device vs the CPU
  select  the GORACS selector (cost on the device, then ITRA) vs the same on the CPU: identical indices, or, where
          fp32 rounding flipped a near-tie, the same POO on the CPU cost
  grads   packed per-sample gradient norms (goracs.signals.grads) in fp32 and bf16, batched and per-sample loop,
          with the timings of both
  el2n    EL2N (goracs.signals.el2n), packed fp32 and bf16 and padded fp32
  train   a short LoRA fine-tune through accelerate (goracs.train.train_lora, mixed_precision bf16 on the device):
          initial validation loss, first-step loss, final validation loss, and the loss decreases on both
  seqrec  SeqRec generation (greedy and beam token ids, fp32; teacher-forced logits) and grounding
          (goracs.evaluate.seqrec.evaluate_seqrec on real test samples with their 99 negatives; catalogue embeddings)
  ctr     CTR scoring (goracs.evaluate.ctr.evaluate_ctr / p_yes) in fp32 and bf16
Each check runs in its own try/except (an error is recorded and the others still run). Writes OUT/gpu_check.json
(every comparison's pass/fail, values, timings) and OUT/gpu_check.md; exit status 1 when a comparison failed or a
check raised, 2 when the device is missing. `--perturb CHECK[,CHECK]` (or `all`) deliberately moves the device
results of those checks beyond their tolerance (to test that a broken comparison is reported).
"""

from __future__ import annotations

import os

# offline before anything imports huggingface_hub / transformers: the device machine reaches no network
for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
               "TQDM_DISABLE": "1"}.items():
    os.environ[_k] = _v

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

CHECK_NAMES = ("cost", "select", "grads", "el2n", "train", "seqrec", "ctr")

# Tolerances: (value, why). fp32 = both sides in float32 (the device with TF32 off); bf16 = the device in bfloat16
# against the CPU in float32. The reasons are written into the record.
TOL = {
    "cost_atol": (1e-5, "cost entries lie in [0, 1]; float32 rounding of the distances (d=384) is ~1e-7 "
                        "relative, 1e-5 absolute leaves room for another summation order"),
    "select_poo_rtol": (1e-3, "only used when the two selections differ: ITRA's greedy and exchange steps pick "
                              "the best of thousands of candidates, and a gain difference below the cost's float32 "
                              "rounding can flip a pick; the flipped selection must then be as good, its POO on "
                              "the CPU cost within 1e-3 relative of the CPU selection's (on the CPU, uniform noise "
                              "of up to 1e-5 on the default 20,000 x 2,000 cost left the selection unchanged)"),
    "fp32_rtol": (1e-3, "per-sample gradient norms and losses through 30 layers in float32: the CPU paths "
                        "(packed, padded, per-sample loop) agree within 5e-5 (results/bench_signals.md); "
                        "1e-3 leaves room for other kernels' summation order"),
    "fp32_atol": (1e-4, "probabilities and EL2N scores (values in [0, 1.5]) in float32"),
    "fp32_logit_atol": (1e-3, "logits (std ~0.5 for the random model) after 30 layers in float32"),
    "fp32_embed_rtol": (1e-3, "per-row relative L2 difference of last-layer hidden states in float32"),
    "bf16_rtol": (5e-2, "bfloat16 keeps 8 significant bits (rel. 4e-3 per rounding); the bf16 gradient norms of "
                        "the random SmolLM2 on the CPU differ from fp32 by at most 1.1 % (real prompts, batched and "
                        "loop). The bf16 comparisons are sanity checks; the fp32 ones are the sharp test of the "
                        "device code"),
    "bf16_atol": (3e-2, "probabilities and EL2N scores in bfloat16: P(Yes) is the sigmoid of a logit difference "
                        "known to ~3 digits; CPU bf16 vs fp32 differed by up to 5e-3 on a few real prompts"),
    "loss_bf16_rtol": (2e-2, "training losses under bf16 autocast vs fp32 (same batches, same weights, LoRA "
                             "dropout 0); the final loss after a few Adam steps gets 5e-2"),
    "loss_final_rtol": (5e-2, "final validation loss after a few Adam steps, bf16 autocast vs fp32: Adam "
                              "normalises each update, so rounding moves the trajectory a little at each step"),
    "tie_atol": (1e-3, "generated ids may differ only where the reference's two candidate tokens (greedy: their "
                       "logits; beam: the final beam scores) lie within this of each other, a near-tie that float32 "
                       "rounding may flip"),
    "auc_atol": (1e-3, "AUC from probabilities that agree within fp32_atol"),
}


def tol(key: str) -> float:
    return float(TOL[key][0])


# ---------------------------------------------------------------------------------------------------------------
# records


def _plain(x):
    """JSON-able copy: numpy scalars and arrays to Python, NaN and infinities to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, torch.Tensor):
        return _plain(x.detach().cpu().numpy())
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    return str(x)


def allclose(name: str, got, ref, *, rtol: float = 0.0, atol: float = 0.0, note: str = "") -> dict:
    """Element-wise |got - ref| <= atol + rtol * |ref| (and got finite); the record of one comparison."""
    g = np.asarray(got, dtype=np.float64).reshape(-1)
    r = np.asarray(ref, dtype=np.float64).reshape(-1)
    rec = {"name": name, "kind": "allclose", "rtol": rtol, "atol": atol, "n": int(r.size), "note": note}
    if g.shape != r.shape:
        return {**rec, "passed": False, "detail": f"shapes differ: device {g.shape}, reference {r.shape}"}
    diff = np.abs(g - r)
    rel = diff / np.maximum(np.abs(r), 1e-30)
    ok = bool(np.isfinite(g).all() and np.isfinite(r).all() and (diff <= atol + rtol * np.abs(r)).all())
    return {**rec, "passed": ok, "max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "max_rel_diff": float(rel.max()) if rel.size else 0.0,
            "median_rel_diff": float(np.median(rel)) if rel.size else 0.0,
            "ref_mean": float(r.mean()) if r.size else None, "ref_std": float(r.std()) if r.size else None,
            "device_head": g[:4].tolist(), "ref_head": r[:4].tolist()}


def verdict(name: str, passed: bool, note: str = "", **values) -> dict:
    """A comparison that is not element-wise (equal ids, a decrease, ...)."""
    return {"name": name, "kind": "assert", "passed": bool(passed), "note": note, **values}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev: torch.device, fn):
    """(result, wall seconds), the device synchronised before and after."""
    _sync(dev)
    t0 = time.perf_counter()
    out = fn()
    _sync(dev)
    return out, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------------------
# the shared inputs: tokenizer, model, prepared Games samples


class Ctx:
    """What the checks share; built lazily, each piece once (a failure is re-raised to every check needing it)."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cpu = torch.device("cpu")
        if args.work_dir:
            Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.work_dir))
        self._memo: dict = {}
        self.perturb_set = {p.strip() for p in (args.perturb or "").split(",") if p.strip()}

    def perturbed(self, check: str) -> bool:
        return check in self.perturb_set or "all" in self.perturb_set

    def memo(self, key: str, fn):
        if key not in self._memo:
            try:
                self._memo[key] = ("ok", fn())
            except Exception as e:  # noqa: BLE001  (recorded by every check that needs it)
                self._memo[key] = ("err", f"{type(e).__name__}: {e}")
                raise
        state, val = self._memo[key]
        if state == "err":
            raise RuntimeError(f"{key} could not be built earlier: {val}")
        return val

    # model ------------------------------------------------------------------------------------------------------

    def tokenizer(self):
        return self.memo("tokenizer", lambda: load_tok(self.args.model_dir))

    def base(self):
        """(CPU float32 model in eval mode, description): built once; the checks take deep copies."""
        return self.memo("model", lambda: build_model(self.args, self.tokenizer()))

    def model(self, where: torch.device, dtype=torch.float32):
        m = copy.deepcopy(self.base()[0])
        return m.to(device=where, dtype=dtype).eval()

    def lora_ref(self, nonzero_b: bool):
        """A CPU float32 model with a seeded LoRA (B = 0 as a fresh adapter, or seeded random B as after training)."""
        def build():
            from goracs.signals.lora_b import ensure_lora

            m = ensure_lora(self.model(self.cpu), lora_seed=self.args.seed)
            if nonzero_b:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.args.seed + 1)
                    for n, p in m.named_parameters():
                        if "lora_B" in n:
                            with torch.no_grad():
                                p.normal_(0.0, self.args.lora_b_std)
            return m.eval()

        return self.memo(f"lora_ref_{nonzero_b}", build)

    def lora_model(self, where: torch.device, dtype, nonzero_b: bool):
        """The base model in `dtype` on `where` with LoRA (peft keeps the adapters in float32 for a bf16 model),
        the adapter weights copied from lora_ref: the same weights as the CPU reference."""
        from goracs.signals.lora_b import ensure_lora

        ref = self.lora_ref(nonzero_b)
        m = ensure_lora(self.model(where, dtype), lora_seed=self.args.seed)
        src = dict(ref.named_parameters())
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_" in n:
                    p.copy_(src[n].to(device=p.device, dtype=p.dtype))
        return m.eval()

    # data -------------------------------------------------------------------------------------------------------

    def prepared(self, task: str):
        def build():
            import yaml

            from goracs.cache import StageCache
            from goracs.data.prepare import prepare

            shared = Path(self.args.shared_dir) / "amazon-games-2018"
            if not shared.is_dir():
                raise FileNotFoundError(f"the real Games fixture is not at {shared} (--shared-dir; "
                                        "scripts/device_carry.sh copies it to .devcarry/shared)")
            ds = yaml.safe_load((ROOT / "configs" / "dataset" / "games_recbole.yaml").read_text())
            ds["root"] = str(shared)
            return prepare(ds, {"name": task, "max_history": 10, "n_negatives": 99}, StageCache(self.work / "cache"),
                           progress=False)

        return self.memo(f"prepared_{task}", build)

    def train_frame(self, task: str, n: int, seed: int):
        return self.prepared(task).train.sample(int(n), random_state=seed).reset_index(drop=True)

    def close(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def load_tok(model_dir: str):
    """The tokenizer of --model-dir with a pad token and left padding (goracs.models.load_tokenizer)."""
    from goracs.models import load_tokenizer

    folder = Path(model_dir)
    if not (folder / "tokenizer.json").exists() and not (folder / "tokenizer_config.json").exists():
        raise FileNotFoundError(f"--model-dir {folder} holds no tokenizer (tokenizer.json); run scripts/device_carry.sh")
    try:
        return load_tokenizer(folder)
    except Exception as e:  # noqa: BLE001  (another transformers release may not know the saved tokenizer class)
        if not (folder / "tokenizer.json").exists():
            raise
        from transformers import PreTrainedTokenizerFast

        print(f"[gpu_check] AutoTokenizer failed ({type(e).__name__}: {e}); using tokenizer.json directly", flush=True)
        spec = json.loads((folder / "tokenizer_config.json").read_text()) if (folder / "tokenizer_config.json").exists() \
            else {}
        special = {k: spec[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token") if isinstance(spec.get(k), str)}
        tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **special)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
        return tok


def build_model(args, tok):
    """(model, description): CPU float32, eval mode, seeded. SmolLM2's architecture from --model-dir/config.json with
    random weights (its weights when the folder has *.safetensors and --random-weights is off), or the tiny LLaMA."""
    if args.model == "tiny":
        from goracs.models import tiny_llama

        model, _ = tiny_llama(seed=args.seed, vocab_from=tok)
        return model.float().eval(), "tiny LLaMA (goracs.models.tiny_llama: 2 layers, hidden 32), seeded random weights"
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(args.model_dir)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"--model-dir {folder} has no config.json")
    if any(folder.glob("*.safetensors")) and not args.random_weights:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        return model.eval(), f"{folder.name}: its weights"
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    n = sum(p.numel() for p in model.parameters())
    return model.eval(), (f"{folder.name} architecture ({model.config.num_hidden_layers} layers, hidden "
                          f"{model.config.hidden_size}, {n / 1e6:.1f}M parameters), seeded random weights "
                          f"(seed {args.seed}, initializer_range {model.config.initializer_range})")


# ---------------------------------------------------------------------------------------------------------------
# the checks: each returns {"comparisons": [...], "timings": {...}, "info": {...}}


def _cost_inputs(args):
    """Seeded unit-norm embeddings with some cluster structure (as sentence embeddings are) and lognormal norms."""
    rng = np.random.default_rng(args.seed)
    d = int(args.cost_dim)
    centres = rng.standard_normal((16, d))
    X = centres[rng.integers(0, 16, args.cost_n)] + 0.7 * rng.standard_normal((args.cost_n, d))
    Y = centres[rng.integers(0, 16, args.cost_m)] + 0.7 * rng.standard_normal((args.cost_m, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Y /= np.linalg.norm(Y, axis=1, keepdims=True)
    g = rng.lognormal(0.0, 0.5, args.cost_n)
    return X.astype(np.float32), Y.astype(np.float32), g.astype(np.float32)


def check_cost(ctx: Ctx) -> dict:
    from goracs.selection.cost import compute_cost

    a = ctx.args
    X, Y, g = _cost_inputs(a)
    run = lambda dev: compute_cost(X, Y, g, a.lam, device=str(dev), chunk_rows=a.chunk_rows)  # noqa: E731
    run(ctx.device)  # warm-up (CUDA context, cuBLAS handles)
    C_dev, t_dev = timed(ctx.device, lambda: run(ctx.device))
    C_ref, t_ref = timed(ctx.cpu, lambda: run(ctx.cpu))
    if ctx.perturbed("cost"):
        C_dev = C_dev.copy()
        C_dev[0] += 1e-3
    comps = [allclose("cost matrix C (device vs CPU)", C_dev, C_ref, atol=tol("cost_atol"),
                      note=f"{a.cost_n} x {a.cost_m}, d={a.cost_dim}, lambda={a.lam}")]
    comps[0].pop("device_head", None)
    comps[0].pop("ref_head", None)
    return {"comparisons": comps, "timings": {"device_s": t_dev, "cpu_s": t_ref, "speedup": t_ref / max(t_dev, 1e-9)},
            "info": {"shape": [a.cost_n, a.cost_m], "C_range": [float(C_ref.min()), float(C_ref.max())]}}


def check_select(ctx: Ctx) -> dict:
    from goracs.selection.base import Signals
    from goracs.selection.cost import compute_cost
    from goracs.selection.goracs import GoracsSelector
    from goracs.selection.ot import poo

    a = ctx.args
    X, Y, g = _cost_inputs(a)
    X, Y, g = X[:a.select_n], Y[:a.select_m], g[:a.select_n]
    sig = Signals(embeddings=X, val_embeddings=Y, grad_norms=g)
    sel = lambda dev: GoracsSelector(lam=a.lam, max_iters=a.itra_iters, cut_num=a.cut_num, device=str(dev),  # noqa: E731
                                     progress=False, chunk_rows=a.chunk_rows, cost_storage="dense")
    warm = Signals(embeddings=X[:64], val_embeddings=Y[:16], grad_norms=g[:64])
    sel(ctx.cpu).select(warm, 8)  # warm-up: numba compiles ITRA once, outside the timings
    s_dev, t_dev = timed(ctx.device, lambda: sel(ctx.device).select(sig, a.budget))
    s_ref, t_ref = timed(ctx.cpu, lambda: sel(ctx.cpu).select(sig, a.budget))
    idx_dev, idx_ref = np.asarray(s_dev.indices), np.asarray(s_ref.indices)
    if ctx.perturbed("select"):
        idx_dev = np.arange(a.budget)
    C_ref = compute_cost(X, Y, g, a.lam, device="cpu", chunk_rows=a.chunk_rows)
    p_dev, p_ref = poo(C_ref[idx_dev])[0], poo(C_ref[idx_ref])[0]
    same = bool(np.array_equal(idx_dev, idx_ref))
    rel = abs(p_dev - p_ref) / max(abs(p_ref), 1e-30)
    comps = [verdict("selection (device vs CPU): identical indices, or the same POO on the CPU cost",
                     same or rel <= tol("select_poo_rtol"), identical=same,
                     overlap=int(len(np.intersect1d(idx_dev, idx_ref))), budget=int(a.budget),
                     poo_device_selection=p_dev, poo_cpu_selection=p_ref, poo_rel_diff=rel,
                     rtol=tol("select_poo_rtol"))]
    rep = {k: s_ref.report.get(k) for k in ("poo_greedy", "poo_final", "accepted", "refine_stop")}
    return {"comparisons": comps, "timings": {"device_s": t_dev, "cpu_s": t_ref},
            "info": {"shape": [a.select_n, a.select_m], "budget": a.budget, "cpu_report": rep,
                     "device_report": {k: s_dev.report.get(k) for k in rep}}}


def check_grads(ctx: Ctx) -> dict:
    from goracs.signals import grads as G
    from goracs.signals.common import encode

    a, tok = ctx.args, ctx.tokenizer()
    comps, tim, info = [], {}, {}
    for task in a.tasks:
        df = ctx.train_frame(task, a.n_grad, seed=11)
        info[f"{task}_mean_tokens"] = float(np.mean([len(i) for i in encode(tok, df, task, 512).ids]))
        ref_model = ctx.lora_ref(nonzero_b=False)
        ref, t_ref = timed(ctx.cpu, lambda: G.grad_norms(ref_model, tok, df, task, batch_size=a.batch_size,
                                                         progress=False))
        tim[f"{task}_cpu_fp32_batched_s"] = t_ref
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            m = ctx.lora_model(ctx.device, dtype, nonzero_b=False)
            G.grad_norms(m, tok, df.iloc[:2], task, batch_size=2, progress=False)  # warm-up
            got, t_b = timed(ctx.device, lambda: G.grad_norms(m, tok, df, task, batch_size=a.batch_size,
                                                              progress=False))
            tim[f"{task}_device_{dname}_batched_s"] = t_b
            rtol = tol("fp32_rtol") if dname == "fp32" else tol("bf16_rtol")
            if ctx.perturbed("grads"):
                got = got * 1.2
            comps.append(allclose(f"{task} grad norms, device {dname} packed batched vs CPU fp32", got, ref,
                                  rtol=rtol, note=f"{len(df)} real Games prompts"))
            if not a.skip_loop:
                G.grad_norms_loop(m, tok, df.iloc[:2], task, progress=False)  # warm-up
                loop, t_l = timed(ctx.device, lambda: G.grad_norms_loop(m, tok, df, task, progress=False))
                tim[f"{task}_device_{dname}_loop_s"] = t_l
                tim[f"{task}_device_{dname}_batched_speedup_vs_loop"] = t_l / max(t_b, 1e-9)
                if ctx.perturbed("grads"):
                    loop = loop * 1.2
                comps.append(allclose(f"{task} grad norms, device {dname} per-sample loop vs CPU fp32", loop, ref,
                                      rtol=rtol))
    return {"comparisons": comps, "timings": tim, "info": info}


def check_el2n(ctx: Ctx) -> dict:
    from goracs.signals.el2n import el2n_scores

    a, tok = ctx.args, ctx.tokenizer()
    comps, tim = [], {}
    for task in a.tasks:
        df = ctx.train_frame(task, a.n_el2n, seed=12)
        ref_model = ctx.model(ctx.cpu)
        ref, t_ref = timed(ctx.cpu, lambda: el2n_scores(ref_model, tok, df, task, batch_size=a.batch_size,
                                                        progress=False))
        tim[f"{task}_cpu_fp32_s"] = t_ref
        for dname, dtype, packed in (("fp32", torch.float32, True), ("bf16", torch.bfloat16, True),
                                     ("fp32 padded", torch.float32, False)):
            m = ctx.model(ctx.device, dtype)
            el2n_scores(m, tok, df.iloc[:2], task, batch_size=2, packed=packed, progress=False)  # warm-up
            got, t = timed(ctx.device, lambda: el2n_scores(m, tok, df, task, batch_size=a.batch_size, packed=packed,
                                                           progress=False))
            tim[f"{task}_device_{dname.replace(' ', '_')}_s"] = t
            if ctx.perturbed("el2n"):
                got = got * 1.2 + 0.05
            atol = tol("bf16_atol") if dtype == torch.bfloat16 else tol("fp32_atol")
            note = ("SeqRec EL2N of a random model is 1 - O(1e-5) for every sample (near-uniform next-token "
                    "distribution): a weak check of the positions and targets" if task == "seqrec" else "")
            comps.append(allclose(f"{task} EL2N, device {dname} vs CPU fp32 packed", got, ref, atol=atol, note=note))
    return {"comparisons": comps, "timings": tim, "info": {}}


def _train_cfg(a, device: str, mixed: str) -> dict:
    return {"device": device, "mixed_precision": mixed, "max_steps": int(a.train_steps), "epochs": 1000,
            "micro_batch_size": int(a.train_micro), "batch_size": int(a.train_micro), "eval_every_steps": 1,
            "patience": None, "lr": float(a.train_lr), "resume": False, "seed": int(a.seed), "cutoff_len": 256,
            "eval_batch_size": 8, "lora": {"dropout": 0.0}, "gradient_checkpointing": False}


def check_train(ctx: Ctx) -> dict:
    from accelerate.state import AcceleratorState

    from goracs.train import train_lora

    a, tok = ctx.args, ctx.tokenizer()
    comps, tim, info = [], {}, {}
    for task in a.train_tasks:
        df = ctx.train_frame(task, a.n_train, seed=13)
        hist = {}
        for side, dev, mixed in (("cpu", ctx.cpu, "no"), ("device", ctx.device, a.mixed_precision)):
            AcceleratorState._reset_state(True)  # one process, two Accelerators (cpu / device, precisions)
            model = ctx.model(ctx.cpu)  # train_lora wraps it with LoRA and accelerate moves it
            cfg = _train_cfg(a, dev.type, mixed)
            (_, rep), t = timed(dev, lambda: train_lora(model, tok, df, df, task, cfg,
                                                        ctx.work / f"train_{task}_{side}"))
            tim[f"{task}_{side}_s"] = t
            h = rep["history"]
            hist[side] = {"initial_val": h[0]["val_loss"], "first_train": h[1]["train_loss"],
                          "final_val": h[-1]["val_loss"], "val": [r["val_loss"] for r in h],
                          "distributed_type": rep["distributed_type"], "steps": rep["steps"]}
        AcceleratorState._reset_state(True)
        d, c = hist["device"], hist["cpu"]
        if ctx.perturbed("train"):
            d = {**d, **{k: d[k] * 1.2 + 0.05 for k in ("initial_val", "first_train", "final_val")}}
        info[task] = {"device": d, "cpu": c, "mixed_precision_device": a.mixed_precision}
        note = f"train = validation = {len(df)} samples (so the loss must fall), {a.train_steps} steps, lr {a.train_lr}"
        comps += [
            allclose(f"{task} initial validation loss, device ({a.mixed_precision}) vs CPU fp32", d["initial_val"],
                     c["initial_val"], rtol=tol("loss_bf16_rtol"), note=note),
            allclose(f"{task} first-step training loss, device vs CPU", d["first_train"], c["first_train"],
                     rtol=tol("loss_bf16_rtol")),
            allclose(f"{task} final validation loss, device vs CPU", d["final_val"], c["final_val"],
                     rtol=tol("loss_final_rtol")),
            verdict(f"{task} validation loss decreases on the device", d["final_val"] < d["initial_val"],
                    initial=d["initial_val"], final=d["final_val"]),
            verdict(f"{task} validation loss decreases on the CPU", c["final_val"] < c["initial_val"],
                    initial=c["initial_val"], final=c["final_val"]),
        ]
    return {"comparisons": comps, "timings": tim, "info": info}


@torch.no_grad()
def generate_ids(model, tok, prompts: list[str], beams: int, max_new: int, cutoff: int | None = 512):
    """Generated token ids (n, max_new; pad after the end) and the beam scores (greedy: None), tokenised and
    padded as goracs.evaluate.seqrec.generate_titles does."""
    from goracs.text import pad_batch, token_ids, truncate

    dev = next(model.parameters()).device
    ps = [truncate(p, cutoff, "left") for p in token_ids(tok, prompts)[0]]
    ids, mask = pad_batch(ps, tok.pad_token_id, "left")
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), num_beams=beams, num_return_sequences=1,
                         do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id, return_dict_in_generate=True, output_scores=beams > 1)
    gen = out.sequences[:, ids.shape[1]:].cpu().numpy()
    gen = np.pad(gen, ((0, 0), (0, max_new - gen.shape[1])), constant_values=tok.pad_token_id)
    scores = out.sequences_scores.float().cpu().numpy() if beams > 1 else None
    return gen, scores, ps


@torch.no_grad()
def forced_logits(model, prompt_ids: list[list[int]], cont: np.ndarray, pad_id: int) -> torch.Tensor:
    """Teacher-forced logits (n, T, vocab) at the positions that predict each continuation token (CPU float32)."""
    from goracs.text import lm_forward, pad_batch

    dev = next(model.parameters()).device
    T = cont.shape[1]
    seqs = [list(p) + [int(t) for t in c] for p, c in zip(prompt_ids, cont)]
    ids, mask = pad_batch(seqs, pad_id, "left")
    logits = lm_forward(model, ids.to(dev), mask.to(dev)).logits[:, -T - 1:-1].float().cpu()
    return logits


def _first_diff(a: np.ndarray, b: np.ndarray) -> int | None:
    d = np.flatnonzero(a != b)
    return int(d[0]) if len(d) else None


def check_seqrec(ctx: Ctx) -> dict:
    from goracs.evaluate.seqrec import base_model_context, catalogue_embeddings, evaluate_seqrec
    from goracs.prompts import sample_prompts

    a, tok = ctx.args, ctx.tokenizer()
    d = ctx.prepared("seqrec")
    test = d.test.sample(int(a.n_seqrec), random_state=a.seed).sort_index()
    items = set(test["target"].astype(str)) | {str(x) for negs in test["negatives"] for x in negs}
    cat = d.catalogue[d.catalogue["item_id"].astype(str).isin(items)].reset_index(drop=True)
    ref_m = ctx.lora_ref(nonzero_b=True)  # an adapter that changes the outputs: generation uses it, grounding not
    dev_m = ctx.lora_model(ctx.device, torch.float32, nonzero_b=True)
    prompts = sample_prompts(test)
    comps, tim, info = [], {}, {"n_test": len(test), "n_catalogue_items": len(cat)}
    T = int(a.max_new_tokens)

    # 1. greedy ids: equal, or the first difference is a near-tie of the reference's logits
    (g_dev, _, pids), tim["greedy_device_s"] = timed(ctx.device, lambda: generate_ids(dev_m, tok, prompts, 1, T))
    (g_ref, _, _), tim["greedy_cpu_s"] = timed(ctx.cpu, lambda: generate_ids(ref_m, tok, prompts, 1, T))
    if ctx.perturbed("seqrec"):
        g_dev = g_dev.copy()
        g_dev[0, -1] = (g_dev[0, -1] + 1) % len(tok)
    ties, bad = [], []
    for k in range(len(g_ref)):
        t = _first_diff(g_dev[k], g_ref[k])
        if t is None:
            continue
        lg = forced_logits(ref_m, [pids[k]], g_ref[k:k + 1, :t + 1], tok.pad_token_id)[0, t]
        margin = float(abs(lg[int(g_ref[k, t])] - lg[int(g_dev[k, t])]))
        (ties if margin <= tol("tie_atol") else bad).append({"sample": k, "step": t, "margin": margin})
    comps.append(verdict("greedy generated ids (fp32), device vs CPU: equal, or near-ties", not bad,
                         identical=int(sum(_first_diff(x, y) is None for x, y in zip(g_dev, g_ref))), n=len(g_ref),
                         near_ties=ties, mismatches=bad, tie_atol=tol("tie_atol"), max_new_tokens=T))

    # 2. teacher-forced logits along the reference's greedy continuation
    lg_dev = forced_logits(dev_m, pids, g_ref, tok.pad_token_id)
    lg_ref = forced_logits(ref_m, pids, g_ref, tok.pad_token_id)
    if ctx.perturbed("seqrec"):
        lg_dev = lg_dev + 0.01
    rec = allclose("teacher-forced logits (fp32) along the greedy continuation, device vs CPU", lg_dev.numpy(),
                   lg_ref.numpy(), atol=tol("fp32_logit_atol"))
    rec.pop("device_head", None)
    rec.pop("ref_head", None)
    comps.append(rec)

    # 3. beam ids (the evaluation's setting): equal, or the top beams' scores tie
    B = int(a.num_beams)
    (b_dev, s_dev, _), tim["beam_device_s"] = timed(ctx.device, lambda: generate_ids(dev_m, tok, prompts, B, T))
    (b_ref, s_ref, _), tim["beam_cpu_s"] = timed(ctx.cpu, lambda: generate_ids(ref_m, tok, prompts, B, T))
    if ctx.perturbed("seqrec"):
        s_dev = s_dev + 1.0
        b_dev = b_dev.copy()
        b_dev[0, -1] = (b_dev[0, -1] + 1) % len(tok)
    bties, bbad = [], []
    for k in range(len(b_ref)):
        if _first_diff(b_dev[k], b_ref[k]) is not None:
            gap = float(abs(s_dev[k] - s_ref[k]))
            (bties if gap <= tol("tie_atol") else bbad).append({"sample": k, "score_gap": gap})
    beam_same = [_first_diff(x, y) is None for x, y in zip(b_dev, b_ref)]
    comps.append(verdict(f"beam search ids ({B} beams, fp32), device vs CPU: equal, or tied top beams", not bbad,
                         identical=int(sum(beam_same)), n=len(b_ref), near_ties=bties, mismatches=bbad))
    same = np.asarray(beam_same, dtype=bool)
    comps.append(allclose("beam scores (length-normalised log-probabilities) where the beam ids are equal, device "
                          "vs CPU", s_dev[same], s_ref[same], atol=tol("fp32_logit_atol")))

    # 4. grounding: catalogue embeddings of the base model (adapter disabled)
    def cat_emb(m):
        with base_model_context(m) as base:
            return catalogue_embeddings(base, tok, cat, None, batch_size=32, max_tokens=64)

    e_dev, tim["catalogue_embed_device_s"] = timed(ctx.device, lambda: cat_emb(dev_m))
    e_ref, tim["catalogue_embed_cpu_s"] = timed(ctx.cpu, lambda: cat_emb(ref_m))
    if ctx.perturbed("seqrec"):
        e_dev = e_dev * 1.01
    row_rel = np.linalg.norm(e_dev - e_ref, axis=1) / np.maximum(np.linalg.norm(e_ref, axis=1), 1e-30)
    comps.append(verdict("catalogue embeddings (base model, last layer, last token), per-row relative L2 diff",
                         bool(np.isfinite(e_dev).all() and row_rel.max() <= tol("fp32_embed_rtol")),
                         max_row_rel_diff=float(row_rel.max()), rtol=tol("fp32_embed_rtol"),
                         mean_row_norm=float(np.linalg.norm(e_ref, axis=1).mean()), n=len(cat),
                         note=f"{len(cat)} titles (the candidates of the test samples), adapter disabled"))

    # 5. the evaluation itself: generation, grounding, ranks, metrics
    cfg = {"num_beams": B, "max_new_tokens": T, "batch_size": 8, "embed_batch_size": 32, "progress": False,
           "protocol": "sampled", "ks": [5, 10]}
    r_dev, tim["evaluate_seqrec_device_s"] = timed(ctx.device, lambda: evaluate_seqrec(dev_m, None, tok, test, cat, cfg))
    r_ref, tim["evaluate_seqrec_cpu_s"] = timed(ctx.cpu, lambda: evaluate_seqrec(ref_m, None, tok, test, cat, cfg))
    gd, gr = r_dev["per_sample"]["raw_generation"], r_ref["per_sample"]["raw_generation"]
    rd, rr = r_dev["per_sample"]["rank"], r_ref["per_sample"]["rank"]
    if ctx.perturbed("seqrec"):
        rd = [x + 1 for x in rd]
    tied = {t["sample"] for t in bties}
    same_gen = [x == y for x, y in zip(gd, gr)]
    gen_ok = all(s or k in tied for k, s in enumerate(same_gen))
    rank_ok = all(x == y for x, y, s in zip(rd, rr, same_gen) if s)
    metrics = {k: (r_dev[k], r_ref[k]) for k in r_ref if k.startswith(("HR@", "NDCG@"))}
    comps.append(verdict("evaluate_seqrec: generations equal (but near-tied beams), ranks equal where the "
                         "generations are", gen_ok and rank_ok, generations_equal=int(sum(same_gen)), n=len(gd),
                         ranks_device=rd, ranks_cpu=rr, metrics_device_cpu=metrics,
                         n_candidates=r_ref.get("n_candidates"),
                         generation_example=gr[0][:120] if gr else None))
    return {"comparisons": comps, "timings": tim, "info": info}


def check_ctr(ctx: Ctx) -> dict:
    from goracs.evaluate.ctr import evaluate_ctr

    a, tok = ctx.args, ctx.tokenizer()
    test = _balanced(ctx.prepared("ctr").test, int(a.n_ctr), a.seed)
    cfg = {"batch_size": 8, "progress": False}
    ref_m = ctx.lora_ref(nonzero_b=True)
    r_ref, t_ref = timed(ctx.cpu, lambda: evaluate_ctr(ref_m, tok, test, cfg))
    comps, tim = [], {"cpu_fp32_s": t_ref}
    for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        m = ctx.lora_model(ctx.device, dtype, nonzero_b=True)
        evaluate_ctr(m, tok, test.iloc[:2], cfg)  # warm-up
        r, t = timed(ctx.device, lambda: evaluate_ctr(m, tok, test, cfg))
        tim[f"device_{dname}_s"] = t
        p = np.asarray(r["p_yes"])
        auc = r["auc"]
        if ctx.perturbed("ctr"):
            p = np.clip(p * 1.2 + 0.05, 0, 1)
            auc = (auc or 0) + 0.1
        atol = tol("fp32_atol") if dname == "fp32" else tol("bf16_atol")
        comps.append(allclose(f"P(Yes), device {dname} vs CPU fp32 ({r['method']})", p, r_ref["p_yes"], atol=atol,
                              note=f"{len(test)} real Games CTR test prompts, balanced labels"))
        if dname == "fp32":
            comps.append(allclose("AUC, device fp32 vs CPU", auc, r_ref["auc"], atol=tol("auc_atol")))
    return {"comparisons": comps, "timings": tim, "info": {"auc_cpu": r_ref["auc"], "logloss_cpu": r_ref["logloss"]}}


def _balanced(df, n: int, seed: int):
    """n samples, half of each label (the AUC needs both)."""
    import pandas as pd

    half = n // 2
    pos = df[df["label"] == 1].sample(half, random_state=seed)
    neg = df[df["label"] == 0].sample(n - half, random_state=seed)
    return pd.concat([pos, neg]).sort_index()


CHECKS = {"cost": check_cost, "select": check_select, "grads": check_grads, "el2n": check_el2n,
          "train": check_train, "seqrec": check_seqrec, "ctr": check_ctr}


# ---------------------------------------------------------------------------------------------------------------
# running and writing


def environment(args) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "device": args.device,
           "cuda_available": torch.cuda.is_available()}
    for mod in ("transformers", "peft", "accelerate", "numpy", "numba", "ot", "pandas"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001
            env[mod] = f"not importable ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env


def run_checks(args, out: Path | None = None) -> dict:
    """Run the selected checks (each in try/except) and return the record; with `out`, the record so far is
    written after every check (a run stopped by a time limit still leaves what it did)."""
    ctx = Ctx(args)
    rec = {"command": "python scripts/gpu_check.py " + " ".join(args.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "environment": environment(args), "tolerances": {k: {"value": v, "why": w} for k, (v, w) in TOL.items()},
           "perturbed": sorted(ctx.perturb_set), "checks": {}}
    t_all = time.perf_counter()
    try:
        for name in args.checks:
            print(f"[gpu_check] {name} ...", flush=True)
            t0 = time.perf_counter()
            entry: dict = {"passed": False, "error": None, "comparisons": [], "timings": {}, "info": {}}
            if ctx.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                res = CHECKS[name](ctx)
                entry.update(res)
                entry["passed"] = bool(res["comparisons"]) and all(c["passed"] for c in res["comparisons"])
                if not res["comparisons"]:
                    entry["error"] = "the check made no comparison"
            except Exception as e:  # noqa: BLE001  (recorded; the other checks still run)
                entry["error"] = f"{type(e).__name__}: {e}"
                entry["traceback"] = traceback.format_exc()
                print(entry["traceback"], file=sys.stderr, flush=True)
            entry["wall_s"] = time.perf_counter() - t0
            if ctx.device.type == "cuda":
                entry["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
            if "model" in ctx._memo and ctx._memo["model"][0] == "ok":
                rec["model"] = ctx._memo["model"][1][1]
            n_ok = sum(c["passed"] for c in entry["comparisons"])
            print(f"[gpu_check] {name}: {'PASS' if entry['passed'] else 'FAIL'} ({n_ok}/{len(entry['comparisons'])} "
                  f"comparisons, {entry['wall_s']:.1f} s){' ' + entry['error'] if entry['error'] else ''}", flush=True)
            rec["checks"][name] = entry
            if out is not None:
                _summarise(rec, time.perf_counter() - t_all, done=False)
                write(rec, out)
    finally:
        ctx.close()
    _summarise(rec, time.perf_counter() - t_all, done=True)
    return rec


def _summarise(rec: dict, wall: float, done: bool) -> None:
    rec["wall_s"] = wall
    rec["complete"] = done
    rec["passed"] = done and bool(rec["checks"]) and all(c["passed"] for c in rec["checks"].values())
    rec["failed_checks"] = [n for n, c in rec["checks"].items() if not c["passed"]]


def _fmt(x) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}" if (x == 0 or 1e-3 <= abs(x) < 1e4) else f"{x:.2e}"
    return str(x)


def markdown(rec: dict) -> str:
    env = rec["environment"]
    lines = ["# GPU check", "", f"Command: `{rec['command']}`", "",
             f"Started {rec['started']}, {rec['wall_s']:.0f} s in all. **{'PASS' if rec['passed'] else 'FAIL'}**"
             + ("" if rec.get("complete", True) else " (incomplete: written after each check; the run stopped early)")
             + (f" (failed: {', '.join(rec['failed_checks'])})" if rec["failed_checks"] else "")
             + (f"; deliberately perturbed: {', '.join(rec['perturbed'])}" if rec["perturbed"] else ""), "",
             f"Device `{env['device']}`" + (f" ({env.get('gpu')}, CUDA {env.get('cuda')}, TF32 off)" if env.get("gpu")
                                            else "") +
             f"; torch {env['torch']}, transformers {env['transformers']}, peft {env['peft']}, accelerate "
             f"{env['accelerate']}, Python {env['python']}; CPU reference on {env['cpu_threads']} thread(s) "
             f"({env['cpu_count']} cores).", "",
             f"Model: {rec.get('model', '-')}. Prompts: real Amazon Games samples (goracs.data.prepare, 10-title "
             "histories). Every comparison is the device result against the CPU float32 path on the same inputs and "
             "weights.", "",
             "| check | result | comparisons passed | wall s | error |", "|---|---|---|---|---|"]
    if rec.get("error"):
        lines[-2:-2] = [f"**Not run: {rec['error']}**", ""]
    for name, c in rec["checks"].items():
        n_ok = sum(x["passed"] for x in c["comparisons"])
        err = (c["error"] or "").replace("|", "/").replace("\n", " ")[:200]
        lines.append(f"| {name} | {'pass' if c['passed'] else '**FAIL**'} | {n_ok}/{len(c['comparisons'])} | "
                     f"{c['wall_s']:.1f} | {err} |")
    lines += ["", "## Comparisons", "",
              "| check | comparison | result | tolerance | max abs diff | max rel diff | ref. mean (std) | note |",
              "|---|---|---|---|---|---|---|---|"]
    for name, c in rec["checks"].items():
        for x in c["comparisons"]:
            if x["kind"] == "allclose":
                t = " + ".join(s for s in ((f"atol {_fmt(x['atol'])}" if x["atol"] else ""),
                                           (f"rtol {_fmt(x['rtol'])}" if x["rtol"] else "")) if s)
                spread = f"{_fmt(x.get('ref_mean'))} ({_fmt(x.get('ref_std'))})"
                vals = (_fmt(x.get("max_abs_diff")), _fmt(x.get("max_rel_diff")), spread)
            else:
                t = "-"
                keep = {k: v for k, v in x.items() if k not in ("name", "kind", "passed", "note")}
                vals = ("-", "-", "")
                x = {**x, "note": (x.get("note") or "") + " " + json.dumps(_plain(keep))[:400]}
            note = (x.get("note") or x.get("detail") or "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | {x['name']} | {'pass' if x['passed'] else '**FAIL**'} | {t} | {vals[0]} | "
                         f"{vals[1]} | {vals[2]} | {note} |")
    lines += ["", "## Timings (wall seconds; the device synchronised)", "", "| check | what | value |", "|---|---|---|"]
    for name, c in rec["checks"].items():
        for k, v in c.get("timings", {}).items():
            lines.append(f"| {name} | {k} | {_fmt(v)} |")
        if c.get("gpu_peak_mib") is not None:
            lines.append(f"| {name} | GPU peak MiB | {c['gpu_peak_mib']:.0f} |")
    lines += ["", "## Tolerances", ""] + [f"- `{k}` = {_fmt(v['value'])}: {v['why']}" for k, v in
                                          rec["tolerances"].items()]
    errs = [(n, c["traceback"]) for n, c in rec["checks"].items() if c.get("traceback")]
    if errs:
        lines += ["", "## Errors", ""]
        for n, tb in errs:
            lines += [f"{n}:", "", "```", tb.rstrip(), "```", ""]
    return "\n".join(lines) + "\n"


def write(rec: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(_plain(rec), indent=1, allow_nan=False))
    (out / "gpu_check.md").write_text(markdown(rec))


SMALL = {"n_grad": 4, "n_el2n": 4, "n_train": 4, "train_steps": 2, "train_micro": 2, "n_seqrec": 2,
         "max_new_tokens": 6, "n_ctr": 8, "cost_n": 600, "cost_m": 80, "select_n": 200, "select_m": 40, "budget": 20,
         "itra_iters": 5, "batch_size": 4, "train_lr": 3e-3}


def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the device under test (cuda, cuda:1, cpu)")
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--checks", default=",".join(CHECK_NAMES), help=f"comma list of {', '.join(CHECK_NAMES)}")
    ap.add_argument("--perturb", default="", help="checks whose device results are deliberately moved beyond "
                                                  "tolerance (to test failure reporting; 'all' for every check)")
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2",
                    help="smollm2: the architecture of --model-dir; tiny: goracs.models.tiny_llama (tests)")
    ap.add_argument("--model-dir", default=str(ROOT / ".devcarry" / "smollm2"),
                    help="config.json + tokenizer (and weights, if any) of SmolLM2-135M (scripts/device_carry.sh)")
    ap.add_argument("--random-weights", action="store_true", help="random weights even when the folder has them")
    ap.add_argument("--shared-dir", default=str(ROOT.parent / "shared" / "data"),
                    help="where amazon-games-2018/ lies (.devcarry/shared on the device)")
    ap.add_argument("--work-dir", default=None, help="scratch folder (prepared samples, adapters; removed at the "
                                                      "end); default: the system's temporary folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cpu-threads", type=int, default=None,
                    help="torch threads of the CPU reference (default: $OMP_NUM_THREADS, else every core)")
    ap.add_argument("--small", action="store_true", help="tiny sizes for every option left at its default (tests)")
    sizes = ap.add_argument_group("sizes")
    sizes.add_argument("--tasks", default="seqrec,ctr", help="tasks of the gradient-norm and EL2N checks")
    sizes.add_argument("--n-grad", type=int, default=64, help="samples per task for the gradient norms")
    sizes.add_argument("--skip-loop", action="store_true", help="leave out the per-sample gradient loops")
    sizes.add_argument("--n-el2n", type=int, default=64)
    sizes.add_argument("--batch-size", type=int, default=8)
    sizes.add_argument("--train-tasks", default="seqrec,ctr")
    sizes.add_argument("--n-train", type=int, default=8, help="fine-tuning samples (also the validation set)")
    sizes.add_argument("--train-steps", type=int, default=6)
    sizes.add_argument("--train-micro", type=int, default=4, help="micro batch = batch (no accumulation)")
    sizes.add_argument("--train-lr", type=float, default=3e-4, help="the project's default (TrainConfig.lr)")
    sizes.add_argument("--mixed-precision", default="bf16", help="accelerate's mixed_precision on the device")
    sizes.add_argument("--n-seqrec", type=int, default=8, help="SeqRec test samples (each with its 99 negatives)")
    sizes.add_argument("--max-new-tokens", type=int, default=32)
    sizes.add_argument("--num-beams", type=int, default=2)
    sizes.add_argument("--n-ctr", type=int, default=64, help="CTR test samples (half of each label)")
    sizes.add_argument("--lora-b-std", type=float, default=0.05,
                       help="std of the seeded LoRA B of the evaluation model (an adapter that changes the outputs)")
    sizes.add_argument("--cost-n", type=int, default=20000)
    sizes.add_argument("--cost-m", type=int, default=2000)
    sizes.add_argument("--cost-dim", type=int, default=384)
    sizes.add_argument("--select-n", type=int, default=20000, help="pool of the selection (first rows of the cost's)")
    sizes.add_argument("--select-m", type=int, default=2000)
    sizes.add_argument("--budget", type=int, default=500)
    sizes.add_argument("--itra-iters", type=int, default=50)
    sizes.add_argument("--cut-num", type=int, default=30)
    sizes.add_argument("--lam", type=float, default=0.1)
    sizes.add_argument("--chunk-rows", type=int, default=2048)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)
    if args.small:
        for k, v in SMALL.items():
            if getattr(args, k) == ap.get_default(k):
                setattr(args, k, v)
    args.argv = argv
    args.checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    unknown = [c for c in args.checks if c not in CHECKS]
    if unknown:
        ap.error(f"unknown check(s) {unknown}; known: {list(CHECKS)}")
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    args.train_tasks = [t.strip() for t in args.train_tasks.split(",") if t.strip()]
    args.select_n, args.select_m = min(args.select_n, args.cost_n), min(args.select_m, args.cost_m)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    threads = args.cpu_threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or os.cpu_count() or 1
    torch.set_num_threads(int(threads))
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on the device means fp32
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        rec = {"command": "python scripts/gpu_check.py " + " ".join(args.argv), "started": time.strftime("%F %T"),
               "environment": environment(args), "passed": False, "error": "torch sees no CUDA device",
               "checks": {}, "failed_checks": [], "perturbed": [], "wall_s": 0.0,
               "tolerances": {k: {"value": v, "why": w} for k, (v, w) in TOL.items()}}
        write(rec, out)
        print(f"[gpu_check] --device {args.device}: torch sees no CUDA device", file=sys.stderr)
        return 2
    rec = run_checks(args, out)
    write(rec, out)
    print(markdown(rec).split("## Comparisons")[0], flush=True)
    print(f"[gpu_check] {'PASS' if rec['passed'] else 'FAIL'}; wrote {out / 'gpu_check.json'} and "
          f"{out / 'gpu_check.md'}", flush=True)
    return 0 if rec["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
