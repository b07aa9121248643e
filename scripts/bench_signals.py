"""Benchmark the selection signals on SmolLM2-135M: batched closed-form gradient norms against per-sample
backward loops (same values?), and samples per second for gradients, EL2N and embeddings. One run, one table.

  OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_signals.py --n 32 --md results/bench_signals.md
  OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_signals.py --n 32 --data games   # real Games prompts
  .venv/bin/python scripts/bench_signals.py --n 256 --device cuda --repeat 3        # on a GPU (wall-time ratios)

--data toy (default) uses the short synthetic histories of goracs.signals.toy (1-10 titles); --data games samples
the real Amazon Games SeqRec/CTR training prompts as the pipeline builds them from ../shared/data (10-title
histories, longer titles), which is what a full-size run computes.
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
    yes_no = G.ctr_answer_ids(tok, df) if task == "ctr" else None
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


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    """(result, wall seconds); the process CPU seconds go to CPU[fn] (robust to other jobs on the machine)."""
    _sync()
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    _sync()
    CPU[fn] = time.process_time() - c0
    return out, time.perf_counter() - t0


def frames(data: str, n: int, task: str, seed: int, shared_dir: str | None = None):
    """n samples of `task`: synthetic (toy) or drawn from the real Games training split (games)."""
    if data == "toy":
        return toy_split(n, task, seed=seed)
    import yaml

    from goracs.cache import StageCache
    from goracs.data.prepare import prepare

    root = Path(__file__).resolve().parent.parent
    shared = Path(shared_dir or root.parent / "shared" / "data") / "amazon-games-2018"
    if not shared.is_dir():
        raise SystemExit(f"--data games needs the real Games fixture at {shared} (absent here)")
    ds = yaml.safe_load((root / "configs" / "dataset" / "games_recbole.yaml").read_text())
    ds["root"] = str(shared)
    d = prepare(ds, {"name": task, "max_history": 10, "n_negatives": 99}, StageCache(root / "cache"), progress=False)
    return d.train.sample(n, random_state=seed).reset_index(drop=True)


def model_from_dir(path: str, device: str, seed: int = 0):
    """SmolLM2-135M from a folder: its weights when the folder has them, else a seeded random initialisation of
    the same architecture (config.json + tokenizer files only; same shapes, so the same work and timings).
    For a GPU machine that cannot take the 540 MB weights along."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = Path(path)
    if not (folder / "config.json").exists():
        raise SystemExit(f"--model-dir {folder} has no config.json")
    tok = AutoTokenizer.from_pretrained(folder)
    if any(folder.glob("*.safetensors")):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device), tok, "weights"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
    return model.to(device).eval(), tok, "random weights (same architecture)"


def main() -> int:
    """Run the benchmark and print (and optionally write) a markdown report."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--n", type=int, default=32, help="samples per task for the gradient comparison")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds; in each round every method runs once (interleaved, so a change in the machine's "
                         "load hits all methods alike); the table gives each method's round with the least CPU time")
    ap.add_argument("--n-embed", type=int, default=512, help="texts for the embedding throughput (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tasks", default="seqrec,ctr")
    ap.add_argument("--data", choices=["toy", "games"], default="toy",
                    help="synthetic short histories, or real Games training prompts from ../shared/data")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU the speed-ups are wall-time ratios)")
    ap.add_argument("--skip-naive", action="store_true", help="leave out the two per-sample loops")
    ap.add_argument("--model-dir", default=None,
                    help="load SmolLM2 from this folder (random weights when it holds only config + tokenizer)")
    ap.add_argument("--shared-dir", default=None, help="where amazon-games-2018/ lies (default ../shared/data)")
    ap.add_argument("--md", default=None, help="write the report here too (e.g. results/bench_signals_toy.md)")
    ap.add_argument("--plot", default=None, help="write a bar chart of the times here (e.g. results/figures/...png)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.model_dir:
        model, tok, weights = model_from_dir(args.model_dir, args.device)
    else:
        (model, tok), weights = load_model("smollm2_135m", device=args.device), "weights"
    gpu = args.device != "cpu"
    model = G.ensure_lora(model, lora_seed=0)
    rows, lines, rounds = [], [], []
    for task in args.tasks.split(","):
        df = frames(args.data, args.n, task, seed=11, shared_dir=args.shared_dir)
        n_tok = [len(i) for i in encode(tok, df, task, 512).ids]
        G.grad_norms(model, tok, df.iloc[:2], task, batch_size=2, progress=False)  # warm-up (one-time costs)
        G.grad_norms(model, tok, df.iloc[:2], task, batch_size=2, packed=False, progress=False)
        methods = {
            "batched": lambda: G.grad_norms(model, tok, df, task, batch_size=args.batch_size, progress=False),
            "padded": lambda: G.grad_norms(model, tok, df, task, batch_size=args.batch_size, packed=False,
                                           progress=False),
            "loop": lambda: G.grad_norms_loop(model, tok, df, task, progress=False),
            "naive": lambda: naive_loop(model, tok, df, task),
            "el2n": lambda: el2n_scores(model, tok, df, task, batch_size=args.batch_size, progress=False),
            "el2n_padded": lambda: el2n_scores(model, tok, df, task, batch_size=args.batch_size, packed=False,
                                               progress=False),
        }
        if args.skip_naive:
            del methods["loop"], methods["naive"]
        best: dict[str, tuple[float, float]] = {}  # method -> (CPU s, wall s) of its cheapest round
        vals = {}
        for r in range(max(1, args.repeat)):
            for name, fn in methods.items():
                vals[name], wall = timed(fn)
                cpu = CPU.pop(fn)
                rounds.append(f"{task} round {r + 1} {name}: CPU {cpu:.1f} s, wall {wall:.1f} s")
                key = wall if gpu else cpu
                if name not in best or key < (best[name][1] if gpu else best[name][0]):
                    best[name] = (cpu, wall)
        rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b)))  # noqa: E731
        diffs = {k: rel(vals["batched"], vals[k]) for k in ("naive", "loop", "padded") if k in vals}
        diffs["el2n"] = rel(vals["el2n"], vals["el2n_padded"])
        rows.append((task, len(df), np.mean(n_tok), best, diffs))

    texts, c_emb = [], None
    if args.n_embed > 0:
        enc_model = load_encoder("minilm")  # load once, outside the timing
        texts = sample_texts(frames(args.data, args.n_embed, "seqrec", seed=12, shared_dir=args.shared_dir), "seqrec")
        embed_texts(texts[:8], progress=False)
        fn = lambda: embed_texts(texts, batch_size=64, progress=False)  # noqa: E731
        _, t_emb = timed(fn)
        c_emb = CPU.pop(fn)
        del enc_model

    data = ("synthetic samples (goracs.signals.toy, 1-10 history titles)" if args.data == "toy" else
            "real Amazon Games training prompts (../shared/data, 10-title histories), a seeded random draw")
    unit = "wall" if gpu else "CPU"
    head = (f"SmolLM2-135M-Instruct ({weights}, fp32, LoRA r=8 on q_proj/v_proj, gradient w.r.t. LoRA B of v_proj in the last "
            f"layer), {args.device} ({torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, batch size {args.batch_size}, "
            f"{max(1, args.repeat)} round(s), each method's cheapest round; {data}. Speed-ups are {unit}-time ratios.")
    lines += [head, "",
              "| task | samples | mean tokens | CPU s (wall s): batched packed | batched padded | per-sample loop, "
              "backward to the layer | naive per-sample loop, full LoRA backward | speed-up vs naive | vs loop "
              f"| vs padded | gradient samples/s | EL2N packed (padded) {unit} s | EL2N speed-up | EL2N samples/s "
              "| max rel. diff vs naive / loop / padded; EL2N packed vs padded |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for task, n, ntok, best, diffs in rows:
        t = lambda k: best[k][1] if gpu else best[k][0]  # noqa: E731
        cell = lambda k: f"{best[k][0]:.1f} ({best[k][1]:.1f})" if k in best else "-"  # noqa: E731
        ratio = lambda k, ref="batched": f"{t(k) / t(ref):.2f}x" if k in best else "-"  # noqa: E731
        diff = " / ".join(f"{diffs[k]:.1e}" if k in diffs else "-" for k in ("naive", "loop", "padded"))
        lines.append(f"| {task} | {n} | {ntok:.0f} | {cell('batched')} | {cell('padded')} | {cell('loop')} | "
                     f"{cell('naive')} | **{ratio('naive')}** | {ratio('loop')} | {ratio('padded')} | "
                     f"{n / t('batched'):.2f} | {t('el2n'):.1f} ({t('el2n_padded'):.1f}) | "
                     f"{ratio('el2n_padded', 'el2n')} | {n / t('el2n'):.2f} | {diff}; {diffs['el2n']:.1e} |")
    if c_emb is not None:
        lines += ["", f"Embeddings (all-MiniLM-L6-v2, batch 64, {len(texts)} SeqRec texts of the same kind, encoder "
                  f"loaded beforehand): CPU {c_emb:.1f} s ({len(texts) / c_emb:.0f} samples/s), wall {t_emb:.1f} s "
                  f"({len(texts) / t_emb:.0f} samples/s)."]
    lines += ["", "Rounds:", ""] + [f"    {r}" for r in rounds]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.md:
        cmd = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} python scripts/bench_signals.py " + " ".join(sys.argv[1:])
        write_text(args.md, f"# Signal benchmark ({args.data})\n\nCommand: `{cmd}`\n\n{report}")
    if args.plot:
        plot(rows, args.plot, f"{args.data} prompts, {args.device}", unit)
    return 0


LABELS = {"batched": "gradients, batched packed", "padded": "gradients, batched padded",
          "loop": "gradients, per-sample loop", "naive": "gradients, naive loop", "el2n": "EL2N, packed",
          "el2n_padded": "EL2N, padded"}


def plot(rows, path: str, what: str, unit: str) -> None:
    """Grouped bars: seconds per method for each task (the cheapest round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from goracs.io import atomic_path

    fig, ax = plt.subplots(figsize=(8, 3.8))
    names = [k for k in LABELS if any(k in r[3] for r in rows)]
    width = 0.8 / len(rows)
    for j, (task, n, _, best, _) in enumerate(rows):
        vals = [best[k][1 if unit == "wall" else 0] if k in best else 0.0 for k in names]
        bars = ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"{task} ({n} samples)")
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(np.arange(len(names)) + width * (len(rows) - 1) / 2, [LABELS[k] for k in names], rotation=20,
                  ha="right", fontsize=8)
    ax.set_ylabel(f"{unit} seconds")
    ax.set_title(f"SmolLM2-135M selection signals: {what}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
