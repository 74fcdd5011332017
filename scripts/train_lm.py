"""Train chapter 07's TinyGPT on the training split of the Python-stdlib corpus and save it.

Full run (what produced the shipped ``data/tiny_lm.safetensors``)::

    nohup .venv/bin/python scripts/train_lm.py > /tmp/train_lm.log 2>&1 &
    sha256sum data/tiny_lm.safetensors     # then update its line in data/SHA256SUMS by hand

Measured for the shipped run (2-core AMD EPYC, torch 2.13.0+cpu, 2 threads): 1,245 s (20.8 min) wall
with another job sharing both cores for most of it; alone, a step takes about 0.85 s, i.e. about
11.5 min for the 800 steps. Train loss 1.135 nats/char (ppl 3.11), held-out 1.315 (ppl 3.72
[3.63, 3.83]); unigram baseline 23.98. Details in data/README.md.

Quick check (what tests/test_lm.py runs)::

    .venv/bin/python scripts/train_lm.py --steps 2 --eval-chunks 4 --out /tmp/x.safetensors

Recipe: LMConfig() (context 256, d_model 256, 4 layers, 4 heads, d_ff 512, 2.22 M parameters);
AdamW (betas 0.9/0.95, weight decay 0.1 on matrices only), peak learning rate 2e-3, linear warmup
over the first 5% of the steps, cosine decay to 10% of the peak, gradient clipping at 1.0; batches
of 32 windows of 257 characters at offsets drawn from a local generator (seed 0) over the train
split only. torch.manual_seed(0) for the initial weights and 2 threads (torch.set_num_threads(2)),
so a rerun on the same machine gives the same weights. The held-out split is only evaluated at the
end (never used to choose anything during training). The script writes only ``--out``; the
checksum line in data/SHA256SUMS is updated by hand.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from course_lib import lm  # noqa: E402

STEPS = 800
BATCH = 32
PEAK_LR = 2e-3
THREADS = 2
SEED = 0


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warmup over 5% of the steps, then cosine from peak to 0.1 * peak."""
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Train TinyGPT on the stdlib corpus (train split only).")
    ap.add_argument("--steps", type=int, default=STEPS, help=f"optimizer steps (default {STEPS})")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"windows per step (default {BATCH})")
    ap.add_argument("--lr", type=float, default=PEAK_LR, help=f"peak learning rate (default {PEAK_LR})")
    ap.add_argument("--eval-chunks", type=int, default=0,
                    help="held-out chunks evaluated at the end (default 0 = all of them)")
    ap.add_argument("--out", type=Path, default=ROOT / "data" / lm.WEIGHTS_FILE)
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not args.lr > 0 or args.eval_chunks < 0:
        ap.error("--steps and --batch must be >= 1, --lr > 0, --eval-chunks >= 0")

    torch.set_num_threads(THREADS)
    torch.manual_seed(SEED)
    t0 = time.time()
    tok = lm.CharTokenizer()
    train_ids = tok.encode(lm.load_corpus("train"))
    cfg = lm.LMConfig()
    model = lm.TinyGPT(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"config {cfg}; {n_params:,} parameters; train split {train_ids.numel():,} characters")
    print(f"steps {args.steps}, batch {args.batch} x {cfg.context + 1}, peak lr {args.lr}")

    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and not n.startswith(("tok", "pos"))]
    other = [p for n, p in model.named_parameters() if not (p.dim() == 2 and not n.startswith(("tok", "pos")))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(SEED)
    window = cfg.context + 1
    model.train()
    running = None
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr)
        starts = torch.randint(0, train_ids.numel() - window + 1, (args.batch,), generator=g)
        x = torch.stack([train_ids[s:s + window] for s in starts.tolist()])
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        if step % 25 == 0 or step == args.steps - 1:
            print(f"step {step + 1:5d}/{args.steps}  loss {loss.item():.4f}  (smoothed {running:.4f})  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:6.0f} s", flush=True)
    train_time = time.time() - t0

    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = lm.save_lm(model, args.out)
    model, _ = lm.load_lm(args.out)          # evaluate what was saved (float16 weights, upcast)
    held = lm.token_chunks(tok.encode(lm.load_corpus("heldout")), cfg.context)
    g_eval = torch.Generator().manual_seed(1)
    train_eval = lm.token_chunks(train_ids, cfg.context)
    train_eval = train_eval[torch.randperm(train_eval.shape[0], generator=g_eval)[:200]]
    if args.eval_chunks:
        held, train_eval = held[:args.eval_chunks], train_eval[:args.eval_chunks]
    nll_h = lm.chunk_nll(model, held)
    nll_t = lm.chunk_nll(model, train_eval)
    ppl, lo, hi = lm.perplexity_interval(nll_h)
    uni = lm.perplexity(lm.unigram_nll(lm.load_corpus("train"), held))
    print(f"trained in {train_time:.0f} s ({train_time / 60:.1f} min); wrote {args.out} ({size:,} bytes)")
    print(f"train loss {nll_t.mean():.4f} nats/char (ppl {lm.perplexity(nll_t):.3f}) on {train_eval.shape[0]} "
          f"train chunks of {cfg.context}")
    print(f"held-out loss {nll_h.mean():.4f} nats/char, perplexity {ppl:.3f} [{lo:.3f}, {hi:.3f}] (95% "
          f"bootstrap over {held.shape[0]} chunks of {cfg.context}); unigram perplexity {uni:.2f}")
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
