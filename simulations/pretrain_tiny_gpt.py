"""Train the tiny GPT's Shakespeare base centrally, the model LoRA scenarios fine-tune.

    python -m simulations.pretrain_tiny_gpt [--epochs 4] [--out PATH]

The base learns from the roles the federated scenarios do NOT use as clients (every role but
the `EXCLUDED_ROLES` with the most words, which `load_shakespeare` hands to clients 0..19), so
the federated fine-tuning adapts it to text it has not seen. Vocabulary and tokenization are
the dataset's own (`build_vocab` over the whole corpus, 2,000 words). It writes
`fedcore/models/data/tiny_gpt_shakespeare.safetensors` (float16 weights, ~2 MB, with the
configuration and the held-out perplexity in its metadata), which `tiny_gpt_shakespeare`
loads; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from fedcore.evaluate import evaluate, perplexity
from fedcore.models.gpt import BASE_FILE, SHAKESPEARE_BASE, TinyGPT, tiny_gpt
from fedcore.nn.shards import train_step
from fedcore.objectives import objective
from fedcore.optim import AdamW
from simulations.datasets.shakespeare import build_vocab, encode, role_words, roles, windows

EXCLUDED_ROLES = 20
SEQ_LEN = 32


def corpus(seq_len: int = SEQ_LEN) -> tuple[np.ndarray, np.ndarray, int]:
    """(x, y) windows of every role outside the top `EXCLUDED_ROLES`, and its word count."""
    words = role_words()
    vocab = build_vocab(words.values(), SHAKESPEARE_BASE["vocab_size"])
    excluded = set(roles(EXCLUDED_ROLES))
    ids = np.concatenate([encode(w, vocab) for role, w in words.items() if role not in excluded])
    x, y = windows(ids, seq_len)
    return x, y, len(ids)


def train(epochs: int, batch: int, lr: float, seed: int) -> tuple[TinyGPT, dict]:
    """The trained base and what to record about it."""
    x, y, nwords = corpus()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    nval = max(1, len(x) // 20)
    val, tr = order[:nval], order[nval:]
    model = tiny_gpt(seed=seed, **SHAKESPEARE_BASE)
    model.flatten_parameters()
    opt = AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    loss = objective("cross_entropy").loss  # next-word cross-entropy, a mean over rows
    steps = epochs * math.ceil(len(tr) / batch)
    step, start = 0, time.perf_counter()
    for epoch in range(epochs):
        perm = rng.permutation(tr)
        for lo in range(0, len(perm), batch):
            idx = perm[lo:lo + batch]
            opt.lr = lr * 0.5 * (1 + math.cos(math.pi * step / steps))  # cosine decay
            train_step(model, loss, x[idx], y[idx], opt)
            step += 1
        ppl = perplexity(evaluate(model, x[val], y[val], batch_size=64)[0])
        print(f"epoch {epoch + 1}/{epochs}: held-out perplexity {ppl:.1f} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    info = {"corpus_words": nwords, "excluded_roles": EXCLUDED_ROLES, "seq_len": SEQ_LEN,
            "epochs": epochs, "steps": step, "batch": batch, "lr": lr, "seed": seed,
            "heldout_perplexity": round(ppl, 2), "config": SHAKESPEARE_BASE}
    return model, info


def save(model: TinyGPT, info: dict, out: Path) -> None:
    """float16 weights by parameter name, `info` as JSON metadata."""
    from safetensors.numpy import save_file

    tensors = {n: p.data.astype(np.float16) for n, p in model.named_parameters()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out), metadata={"format": "fedcore-model", "model": "tiny_gpt",
                                           "info": json.dumps(info, sort_keys=True)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    model, info = train(args.epochs, args.batch, args.lr, args.seed)
    out = args.out or Path(str(BASE_FILE))
    save(model, info, out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {json.dumps(info)}")


if __name__ == "__main__":
    main()
