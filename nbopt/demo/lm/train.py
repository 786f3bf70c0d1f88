"""Train the demo LM on the Python documentation corpus and save its weights and record into the package.

    python -m nbopt.demo.lm.train           # seeded; about 5 min on 2 idle cores
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import corpus
from .data import perplexity, tokens, unigram_perplexity
from .model import CONFIG, SEQ_LEN, build

WEIGHTS = Path(__file__).with_name("demo_lm.pt")
RECORD = Path(__file__).with_name("demo_lm.json")
SEED = 0
TRAIN_SEQ = 128  # training windows (held-out perplexity uses SEQ_LEN)


def train(steps: int = 400, batch_size: int = 16, lr: float = 4e-3, seed: int = SEED,
          progress: bool = True) -> torch.nn.Module:
    """Seeded AdamW with warmup + cosine decay on random windows of the training text; eval mode."""
    torch.manual_seed(seed)
    model = build()
    stream = tokens("train")
    gen = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    bar = tqdm(range(steps), desc="train demo LM", disable=not progress)
    for _ in bar:
        start = torch.randint(0, stream.numel() - TRAIN_SEQ - 1, (batch_size,), generator=gen)
        batch = torch.stack([stream[s: s + TRAIN_SEQ + 1] for s in start.tolist()])
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{float(loss):.3f}")
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    model = train(args.steps)
    seconds = time.time() - t0
    state = {k: v.to(torch.float16) for k, v in model.state_dict().items()}
    torch.save(state, args.out)
    from . import load  # measure what ships: the fp16 weights loaded back into fp32
    shipped = load(args.out)
    record = {"python": corpus.python_version(), "corpus_sha256": corpus.corpus_sha256(),
              "train_bytes": int(tokens("train").numel()), "heldout_bytes": int(tokens("heldout").numel()),
              "steps": args.steps, "train_seconds": round(seconds, 1), "config": CONFIG, "seq_len": SEQ_LEN, "train_seq": TRAIN_SEQ, "batch_size": 16,
              "params": sum(p.numel() for p in shipped.parameters()),
              "heldout_perplexity": perplexity(shipped), "heldout_perplexity_all": perplexity(shipped, chunks=None),
              "unigram_perplexity": unigram_perplexity(), "torch": torch.__version__}
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")  # demo_lm.json beside demo_lm.pt
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
