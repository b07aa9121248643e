"""Where a CTR job's CPU time goes, and how much less the project's paths need than the plain Hugging Face ones.

One run measures, on real Amazon Games CTR prompts (the pipeline's own samples from ../shared/data, 10-title
histories, the authors' prompt wording) and SmolLM2-135M on one thread, in CPU seconds (process_time):

- scoring (test evaluation and the validation loss): plain = a padded batch in sample order through the model's
  forward with the whole vocabulary at every position (what `model(**batch).logits[:, -1]` costs); ours = the
  packed forward (goracs.signals.packed.answer_logits: the shared prompt prefix once, batches of similar length
  without padding, the last layer and the head's Yes/No rows at the answer position only);
- a training step of 8 samples with the two-way Yes/No loss: plain = padded batch, logits over the whole
  vocabulary at every position; ours = goracs.train.encoding.token_losses (logits only where a label is);

checks that both give the same P(Yes) and losses, and projects the CPU seconds of one CTR job of the real_cpu
profile (steps, validations and test size as configured) for both, next to the multiply-add arithmetic that
bounds the ratio.

  OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_ctr.py --md results/bench_ctr.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from goracs.models import add_lora, load_model  # noqa: E402
from goracs.prompts import sample_prompts  # noqa: E402
from goracs.signals import packed as P  # noqa: E402
from goracs.signals.common import common_prefix_len  # noqa: E402
from goracs.text import answer_token_ids, lm_forward, pad_batch, token_ids  # noqa: E402
from goracs.train.encoding import collate, ctr_yes_no, encode_samples, token_losses  # noqa: E402


def real_ctr_test(n: int, seed: int):
    """n CTR test samples of the real Games fixture with the authors' prompt wording (prompt=paper), as the
    real_cpu profile prepares them."""
    import yaml
    from omegaconf import OmegaConf

    from goracs.cache import StageCache
    from goracs.data.prepare import prepare

    shared = ROOT.parent / "shared" / "data" / "amazon-games-2018"
    if not shared.is_dir():
        raise SystemExit(f"the real Games fixture is not at {shared}")
    ds = yaml.safe_load((ROOT / "configs" / "dataset" / "games_recbole.yaml").read_text())
    ds["root"] = str(shared)
    prompt = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "prompt" / "paper.yaml"))
    d = prepare(ds, {"name": "ctr", "max_history": 10}, StageCache(ROOT / "cache"), progress=False,
                prompt_cfg=prompt)
    return d.test.sample(n, random_state=seed)


def cpu_time(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def plain_scores(model, seqs, yes_no, bs):
    """P(Yes) from the plain padded forward: whole vocabulary at every position, samples in their order."""
    out = []
    with torch.no_grad():
        for s in range(0, len(seqs), bs):
            ids, mask = pad_batch(seqs[s:s + bs], 0, "left")
            logits = lm_forward(model, ids, mask).logits[:, -1].float()
            out.append(torch.softmax(logits[:, list(yes_no)], 1)[:, 0])
    return torch.cat(out).numpy()


def plain_train_step(model, batch, yes_no):
    """The two-way loss from the plain forward: logits over the whole vocabulary at every position."""
    logits = lm_forward(model, batch["input_ids"], batch["attention_mask"]).logits.float()
    lab = batch["labels"]
    pos = (lab != -100).int().argmax(1) - 1
    two = logits[torch.arange(len(lab)), pos][:, list(yes_no)]
    cls = (lab[torch.arange(len(lab)), pos + 1] == yes_no[1]).long()
    loss = torch.nn.functional.cross_entropy(two, cls)
    loss.backward()
    return float(loss.detach())


def our_train_step(model, batch, yes_no):
    ce, m = token_losses(model, batch, yes_no)
    loss = ce.sum() / m.sum()
    loss.backward()
    return float(loss.detach())


def macs(cfg) -> tuple[float, float]:
    """Multiply-adds per token of the decoder body (projections and MLP of every layer) and of the output head."""
    h, i, L, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return float(L * per_layer), float(h * v)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-score", type=int, default=96, help="test prompts scored by each path")
    ap.add_argument("--steps", type=int, default=3, help="training steps of 8 samples by each path")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--job", default="24,4,128,1000",
                    help="the projected job: optimizer steps, validations (after step 0), validation samples, "
                         "test samples (real_cpu at budget 64: 3 epochs of 8 steps, every 8 steps, 128, 1000)")
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)

    model, tok = load_model("smollm2_135m")
    model = add_lora(model, r=8, alpha=16, dropout=0.05, target_modules=("q_proj", "v_proj"))
    df = real_ctr_test(args.n_score, seed=5)
    prompts = sample_prompts(df)
    seqs = token_ids(tok, prompts)[0]
    y_ids, n_ids = answer_token_ids(tok, prompts[0])
    yes_no = (y_ids[0], n_ids[0])
    n_tok = np.array([len(s) for s in seqs])
    c = common_prefix_len(seqs)

    model.eval()
    plain_scores(model, seqs[:2], yes_no, 2)  # warm-up
    p_plain, t_plain = cpu_time(lambda: plain_scores(model, seqs, yes_no, args.batch_size))
    two, t_ours = cpu_time(lambda: P.answer_logits(model, seqs, yes_no, args.batch_size))
    p_ours = torch.softmax(two, 1)[:, 0].numpy()
    d_score = float(np.abs(p_plain - p_ours).max())

    model.train()
    yn = ctr_yes_no(tok, df, {"ctr_loss": "two_way"}, "ctr")
    ids, lab, _ = encode_samples(tok, df, "ctr", 512, "left", True, "two_way", yn)
    cf = collate(tok.pad_token_id)
    batches = [cf([(k, ids[k], lab[k]) for k in range(s, s + 8)]) for s in range(0, 8 * args.steps, 8)]
    t_train = {"plain": 0.0, "ours": 0.0}
    losses = {"plain": [], "ours": []}
    torch.manual_seed(1)
    for b in batches:  # interleaved, the same batches; dropout draws differ, so compare losses in eval mode below
        for name, fn in (("plain", plain_train_step), ("ours", our_train_step)):
            loss, t = cpu_time(lambda: fn(model, b, yes_no))
            model.zero_grad(set_to_none=True)
            t_train[name] += t
            losses[name].append(loss)
    model.eval()
    with torch.no_grad():
        lp = [float(torch.nn.functional.cross_entropy(
            lm_forward(model, b["input_ids"], b["attention_mask"]).logits.float()[
                torch.arange(8), (b["labels"] != -100).int().argmax(1) - 1][:, list(yes_no)],
            (b["labels"][torch.arange(8), (b["labels"] != -100).int().argmax(1)] == yes_no[1]).long()))
              for b in batches]
        lo = [float((lambda ce_m: ce_m[0].sum() / ce_m[1].sum())(token_losses(model, b, yes_no))) for b in batches]
    d_loss = float(np.max(np.abs(np.array(lp) - np.array(lo))))

    per = {"score_plain": t_plain / len(seqs), "score_ours": t_ours / len(seqs),
           "step_plain": t_train["plain"] / len(batches), "step_ours": t_train["ours"] / len(batches)}
    steps, n_val_evals, n_val, n_test = (int(x) for x in args.job.split(","))
    job = {k: steps * per[f"step_{k}"] + ((n_val_evals + 1) * n_val + n_test) * per[f"score_{k}"]
           for k in ("plain", "ours")}
    body, head = macs(model.get_base_model().config)
    T = float(n_tok.mean())
    # padded batches in sample order: every row runs to the longest of its batch
    T_pad = float(np.mean([max(n_tok[s:s + args.batch_size]) for s in range(0, len(n_tok), args.batch_size)]))
    bound_score = T_pad * (body + head) / ((T - c) * body + c * body / len(seqs))
    lines = [
        "# CTR job benchmark (real Games prompts, SmolLM2-135M, 1 thread)", "",
        f"Command: `OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_ctr.py{' --md ' + args.md if args.md else ''}`"
        f" ({platform.machine()}, torch {torch.__version__}, CPU seconds = process_time)", "",
        f"Prompts: {len(seqs)} real Games CTR test-style prompts (10-title histories, the authors' wording), mean "
        f"{T:.0f} tokens (min {n_tok.min()}, max {n_tok.max()}), {c} of them a prefix shared by every prompt; "
        f"padded batches of {args.batch_size} in sample order run {T_pad:.0f} tokens a row.", "",
        "| piece | plain Hugging Face path | ours | speed-up | same result |",
        "|---|---|---|---|---|",
        f"| scoring, CPU s per prompt (test and validation) | {per['score_plain']:.3f} | {per['score_ours']:.3f} | "
        f"{per['score_plain'] / per['score_ours']:.2f}x | max abs P(Yes) difference {d_score:.1e} |",
        f"| training step of 8 (two-way loss, forward + backward), CPU s | {per['step_plain']:.2f} | "
        f"{per['step_ours']:.2f} | {per['step_plain'] / per['step_ours']:.2f}x | max abs loss difference (eval "
        f"mode) {d_loss:.1e} |",
        f"| **one CTR job** ({steps} steps, {n_val_evals + 1} validations of {n_val}, {n_test} test prompts), "
        f"CPU s | {job['plain']:.0f} | {job['ours']:.0f} | **{job['plain'] / job['ours']:.2f}x** | |",
        "",
        f"Arithmetic: the decoder body costs {body / 1e6:.0f}M multiply-adds per token and the output head "
        f"{head / 1e6:.0f}M ({head / (body + head):.0%} of the total). Scoring needs the head at one position and "
        f"for two rows only, no padding, and the shared prefix once per run instead of once per prompt: plain "
        f"{T_pad:.0f} x {(body + head) / 1e6:.0f}M against ours about ({T:.0f} - {c}) x {body / 1e6:.0f}M per "
        f"prompt, {bound_score:.2f}x fewer multiply-adds in the projections (attention is extra on both sides). "
        f"Training keeps the padded batch (the prefix's LoRA activations need their gradients) and saves the head "
        f"at every position but the answer, forward and backward: {(body + head) / body:.2f}x fewer multiply-adds; "
        f"the plain step also writes and reads a batch x tokens x vocabulary float tensor of logits "
        f"({8 * T_pad * model.get_base_model().config.vocab_size * 4 / 2**20:.0f} MiB a step), memory traffic "
        f"beyond its multiply-adds.",
        "",
        f"Training losses per step (train mode, different dropout draws): plain {np.round(losses['plain'], 4).tolist()},"
        f" ours {np.round(losses['ours'], 4).tolist()}.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
