"""Benchmark the selection signals on SmolLM2-135M: batched closed-form gradient norms against per-sample
backward loops (same values?), and samples per second for gradients, EL2N and embeddings. One run, one table.

  OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_signals.py --n 32 --md results/bench_signals.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from goracs.io import write_text  # noqa: E402
from goracs.models import load_model  # noqa: E402
from goracs.signals import grads as G  # noqa: E402
from goracs.signals.common import encode  # noqa: E402
from goracs.signals.el2n import el2n_scores  # noqa: E402
from goracs.signals.embed import embed_texts, load_encoder, sample_texts  # noqa: E402
from goracs.signals.toy import toy_split  # noqa: E402


def naive_loop(model, tok, df, task, max_len=512):
    """What a straightforward implementation does: every LoRA matrix trainable, a full backward per sample."""
    enc = encode(tok, df, task, max_len)
    yes_no = G.answer_token_ids(tok) if task == "ctr" else None
    lora_b, _ = G.lora_b_module(model, -1)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for n_, p in model.named_parameters():
        p.requires_grad_("lora_" in n_)
    model.eval()
    out = np.empty(len(enc.ids), dtype=np.float32)
    try:
        for k in range(len(enc.ids)):
            ids, mask = G.pad_right([enc.ids[k]], G.pad_id_of(tok), G.model_device(model))
            labels = torch.as_tensor(enc.labels[[k]]) if enc.labels is not None else None
            loss = G.sample_losses(model, ids, mask, task, labels, yes_no)
            model.zero_grad(set_to_none=True)
            loss.sum().backward()
            out[k] = float(lora_b.weight.grad.norm())
    finally:
        model.zero_grad(set_to_none=True)
        for p, f in flags:
            p.requires_grad_(f)
    return out


CPU = {}


def timed(fn):
    """(result, wall seconds); the process CPU seconds go to CPU[fn] (robust to other jobs on the machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    CPU[fn] = time.process_time() - c0
    return out, time.perf_counter() - t0


def main() -> int:
    """Run the benchmark and print (and optionally write) a markdown report."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--n", type=int, default=32, help="samples per task for the gradient comparison")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n-embed", type=int, default=512, help="texts for the embedding throughput")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default="seqrec,ctr")
    ap.add_argument("--md", default=None, help="write the report here too (e.g. results/bench_signals.md)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    model, tok = load_model("smollm2_135m")
    model = G.ensure_lora(model, lora_seed=0)
    rows, lines = [], []
    for task in args.tasks.split(","):
        df = toy_split(args.n, task, seed=11)
        n_tok = [len(i) for i in encode(tok, df, task, 512).ids]
        G.grad_norms(model, tok, df.iloc[:2], task, batch_size=2, progress=False)  # warm-up (one-time costs)
        f_fast = lambda: G.grad_norms(model, tok, df, task, batch_size=args.batch_size, progress=False)  # noqa
        f_loop = lambda: G.grad_norms_loop(model, tok, df, task, progress=False)  # noqa: E731
        f_naive = lambda: naive_loop(model, tok, df, task)  # noqa: E731
        f_el2n = lambda: el2n_scores(model, tok, df, task, batch_size=args.batch_size, progress=False)  # noqa
        fast, t_fast = timed(f_fast)
        loop, t_loop = timed(f_loop)
        naive, t_naive = timed(f_naive)
        _, t_el2n = timed(f_el2n)
        rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b)))  # noqa: E731
        rows.append((task, len(df), np.mean(n_tok), t_fast, t_loop, t_naive, t_el2n, rel(fast, loop),
                     rel(fast, naive), CPU[f_fast], CPU[f_loop], CPU[f_naive]))

    enc_model = load_encoder("minilm")  # load once, outside the timing
    texts = sample_texts(toy_split(args.n_embed, "seqrec", seed=12), "seqrec")
    embed_texts(texts[:8], progress=False)
    _, t_emb = timed(lambda: embed_texts(texts, batch_size=64, progress=False))
    del enc_model

    head = (f"SmolLM2-135M-Instruct (fp32, LoRA r=8 on q_proj/v_proj, gradient w.r.t. LoRA B of v_proj in the last "
            f"layer), {platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
            f"batch size {args.batch_size}; synthetic samples (goracs.signals.toy, up to 10 history titles).")
    lines += [head, "",
              "| task | samples | mean tokens | batched closed form (s) | per-sample loop, backward to the "
              "layer (s) | naive per-sample loop, full LoRA backward (s) | speed-up vs loop | speed-up vs naive "
              "| batched samples/s | EL2N samples/s | max rel. diff vs loop | max rel. diff vs naive "
              "| CPU s: batched / loop / naive |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, n, ntok, tf, tl, tn, te, r1, r2, cf, cl, cn in rows:
        lines.append(f"| {task} | {n} | {ntok:.0f} | {tf:.1f} | {tl:.1f} | {tn:.1f} | {tl / tf:.2f}x | "
                     f"{tn / tf:.2f}x | {n / tf:.2f} | {n / te:.2f} | {r1:.1e} | {r2:.1e} | "
                     f"{cf:.1f} / {cl:.1f} / {cn:.1f} |")
    lines += ["", f"Embeddings (all-MiniLM-L6-v2, batch 64, {len(texts)} SeqRec texts, encoder loaded beforehand): "
              f"{t_emb:.1f} s, {len(texts) / t_emb:.0f} samples/s."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.md:
        cmd = "OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_signals.py " + " ".join(sys.argv[1:])
        write_text(args.md, f"# Signal benchmark\n\nCommand: `{cmd}`\n\n{report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
