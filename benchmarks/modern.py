"""The tiny GPT and the MobileNet-style CNN in fedcore and in PyTorch, with the same weights;
and peak-memory runs of one training step in a fresh process.

`gpt_case` and `mobilenet_case` return what `benchmarks.engine_layers` times. Memory is
measured per process (a fresh interpreter per figure): `python -m benchmarks.modern WHAT`
prints one JSON line with the RSS once the interpreter, numpy and fedcore are imported and
nothing is built (`import_mb`), the RSS after building the model and data (`base_mb`) and the
peak RSS of the whole process after three training steps (`peak_mb`, the kernel's VmHWM, which
covers the building too), so `peak_mb - base_mb` is what training itself added and `peak_mb -
import_mb` what the model and its training cost together. fedcore runs also give the engine's
own accounting: the bytes its pool holds once the model is built (`model_mb`) and at the peak
of the training steps (`engine_peak_mb`: model, optimizer state, activations and gradients),
and the peak RSS once the model is built, before any step (`build_peak_mb`). WHAT is
`gpt-fedcore`, `gpt-torch` (eager attention: the T x T scores materialised, as a PyTorch model
written out by hand does), `gpt-torch-sdpa`, `lora-int8`, `lora-float32`, `lora-int8-ffa` (A
frozen: B alone trains and travels) or `full`, with `--seq`, `--batch`, `--threads` (default 1;
fedcore trains with the device's own step, `fedcore.nn.shards.train_step`, which cuts a batch
into shards on several threads, the shards after the first in worker processes whose private
memory at the end, `workers_mb`, is added to `peak_mb`) and `--checkpoint blocks` (fedcore:
each block recomputed in the backward pass, see `fedcore.engine.checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import resource
from typing import Any

import numpy as np

from fedcore.models import build_model

#: the issue's benchmark model: d 256, 4 layers, 8 heads, 2 KV heads (a word-level vocabulary)
GPT = dict(vocab_size=2000, embed_dim=256, hidden=688, n_layers=4, n_heads=8, n_kv_heads=2)


def gpt_torch(torch: Any, ours: Any, sdpa: bool = True) -> Any:
    """The same model in PyTorch, weights copied from `ours` (a fedcore TinyGPT)."""
    nn, F = torch.nn, torch.nn.functional  # noqa: N806
    d, h, kv = GPT["embed_dim"], GPT["n_heads"], GPT["n_kv_heads"]
    hd = d // h

    def rope(x: Any) -> Any:  # (B, T, H, D), rotate-half, as fedcore.engine.rope
        t = x.shape[1]
        inv = 10000.0 ** (-torch.arange(0, hd // 2, dtype=torch.float64) * 2.0 / hd)
        ang = torch.outer(torch.arange(t, dtype=torch.float64), inv)
        cos, sin = ang.cos()[:, None, :].float(), ang.sin()[:, None, :].float()
        x1, x2 = x[..., :hd // 2], x[..., hd // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.n1, self.n2 = nn.RMSNorm(d, eps=1e-6), nn.RMSNorm(d, eps=1e-6)
            self.q, self.k = nn.Linear(d, d, bias=False), nn.Linear(d, kv * hd, bias=False)
            self.v, self.o = nn.Linear(d, kv * hd, bias=False), nn.Linear(d, d, bias=False)
            hid = GPT["hidden"]
            self.gate, self.up = nn.Linear(d, hid, bias=False), nn.Linear(d, hid, bias=False)
            self.down = nn.Linear(hid, d, bias=False)

        def forward(self, x: Any) -> Any:
            b, t, _ = x.shape
            a = self.n1(x)
            q = rope(self.q(a).view(b, t, h, hd)).transpose(1, 2)
            k = rope(self.k(a).view(b, t, kv, hd)).transpose(1, 2)
            v = self.v(a).view(b, t, kv, hd).transpose(1, 2)
            if sdpa:
                att = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            else:  # eager: the (T, T) scores of every head exist
                k, v = k.repeat_interleave(h // kv, 1), v.repeat_interleave(h // kv, 1)
                s = (q @ k.transpose(-1, -2)) / hd ** 0.5
                mask = torch.ones(t, t, dtype=torch.bool).triu(1)
                att = torch.softmax(s.masked_fill(mask, float("-inf")), -1) @ v
            x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
            m = self.n2(x)
            return x + self.down(F.silu(self.gate(m)) * self.up(m))

    class GPTModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(GPT["vocab_size"], d)
            self.blocks = nn.ModuleList([Block() for _ in range(GPT["n_layers"])])
            self.norm = nn.RMSNorm(d, eps=1e-6)

        def forward(self, ids: Any) -> Any:
            x = self.embed(ids)
            for blk in self.blocks:
                x = blk(x)
            return self.norm(x).reshape(-1, d) @ self.embed.weight.T  # tied head

    theirs = GPTModel()
    p = {n: torch.from_numpy(t.data.copy()) for n, t in ours.named_parameters()}
    names = {"n1": "norm1", "n2": "norm2", "q": "attn.q", "k": "attn.k", "v": "attn.v",
             "o": "attn.o", "gate": "mlp.gate", "up": "mlp.up", "down": "mlp.down"}
    with torch.no_grad():
        theirs.embed.weight.copy_(p["embed.weight"])
        theirs.norm.weight.copy_(p["norm.weight"])
        for i, blk in enumerate(theirs.blocks):
            for mine, name in names.items():
                w = p[f"blocks.{i}.{name}.weight"]
                getattr(blk, mine).weight.copy_(w if w.ndim == 1 else w.T)
    return theirs


def gpt_case(torch: Any, seq: int = 128, batch: int = 8) -> tuple:
    """The tiny GPT's training step at (batch, seq) in both frameworks."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, GPT["vocab_size"], (batch, seq))
    y = rng.integers(0, GPT["vocab_size"], (batch, seq)).reshape(-1)
    ours = build_model("tiny_gpt", seed=0, **GPT)
    theirs = gpt_torch(torch, ours)
    return ours, theirs, (x, y), (torch.from_numpy(x), torch.from_numpy(y)), 0.1


def mobilenet_case(torch: Any) -> tuple:
    """The MobileNet-style CNN on MNIST-sized images, batch 32."""
    nn = torch.nn
    rng = np.random.default_rng(0)
    x = rng.random((32, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, 32)
    ours = build_model("mobilenet", num_classes=10, seed=0)
    chans = (16, 32, 64)
    layers: list = [nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU()]
    width = 16
    for i, out in enumerate(chans):
        layers += [nn.Conv2d(width, width, 3, stride=1 if i == 0 else 2, padding=1,
                             groups=width), nn.BatchNorm2d(width), nn.ReLU(),
                   nn.Conv2d(width, out, 1), nn.BatchNorm2d(out), nn.ReLU()]
        width = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    theirs = nn.Sequential(*layers)
    mods = [m for m in ours if type(m).__name__ not in ("Reshape", "GlobalAvgPool2d")]
    tmods = [m for m in theirs if not isinstance(m, nn.ReLU | nn.AdaptiveAvgPool2d | nn.Flatten)]
    with torch.no_grad():
        for m, t in zip(mods, tmods, strict=True):
            w = torch.from_numpy(m.weight.data.copy())
            kind = type(m).__name__
            if kind == "Conv2d":
                w = w.permute(3, 2, 0, 1)
            elif kind == "DepthwiseConv2d":
                w = w.permute(2, 0, 1)[:, None]
            elif kind == "PointwiseConv2d":
                w = w.T[:, :, None, None]
            elif kind == "Dense":
                w = w.T
            t.weight.copy_(w)
            t.bias.copy_(torch.from_numpy(m.bias.data.copy()))
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    return ours, theirs, (x, y), (tx, torch.from_numpy(y)), 0.05


def gpt_params() -> int:
    """Parameters of the float32 model (embedding shared with the head)."""
    d, hid, layers = GPT["embed_dim"], GPT["hidden"], GPT["n_layers"]
    kv = GPT["n_kv_heads"] * d // GPT["n_heads"]
    return GPT["vocab_size"] * d + d + layers * (2 * d + 2 * d * d + 2 * d * kv + 3 * d * hid)


# -- memory, one process per figure --------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_mb() -> float:
    """VmHWM: this address space's high-water mark (getrusage's ru_maxrss would carry the
    parent's across fork and exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(what: str, seq: int, batch: int, steps: int = 3, checkpoint: str = "none",
            threads: int = 1, micro_batch: int | None = None) -> dict:
    """Build `what`, note the RSS, train `steps` steps on `threads` threads (fedcore: in
    micro-batches of `micro_batch` sequences when given), note the peak RSS."""
    out: dict = {"what": what, "seq": seq, "batch": batch, "checkpoint": checkpoint,
                 "threads": threads, "micro_batch": micro_batch, "import_mb": _rss_mb()}
    rng = np.random.default_rng(0)
    x = rng.integers(0, GPT["vocab_size"], (batch, seq))
    y = rng.integers(0, GPT["vocab_size"], (batch, seq)).reshape(-1)
    if what.startswith("gpt-torch"):
        import torch

        torch.set_num_threads(threads)
        ours = build_model("tiny_gpt", seed=0, **GPT)
        model = gpt_torch(torch, ours, sdpa=what.endswith("sdpa"))
        del ours
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)
        out["base_mb"] = _rss_mb()
        for _ in range(steps):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(tx), ty).backward()
            opt.step()
    else:
        from fedcore.engine import get_engine, softmax_cross_entropy
        from fedcore.engine.parallel import set_num_threads
        from fedcore.nn.shard_workers import worker_memory
        from fedcore.nn.shards import replica_pools, train_step  # the device's step (not
        from fedcore.optim import SGD  # benchmarks.engine's: its imports cost 0.7 MB)

        set_num_threads(threads)
        lora = None
        if what.startswith("lora"):
            lora = dict(rank=8, alpha=16, targets=["attn", "mlp"], base=what.split("-")[1],
                        freeze_a=what.endswith("-ffa"))
        model = build_model("tiny_gpt", seed=0, lora=lora, checkpoint=checkpoint, **GPT)
        out["trained_params"] = model.layout.size
        out["model_params"] = gpt_params()
        opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
        out["base_mb"] = _rss_mb()
        out["build_peak_mb"] = _peak_mb()
        pool = get_engine().pool
        out["model_mb"] = pool.live_bytes / 2**20
        pool.reset_peak()
        for _ in range(steps):
            train_step(model, softmax_cross_entropy, x, y, opt, micro_batch=micro_batch)
        replicas = sum(p.peak_bytes for p in replica_pools(model))  # the shards' own pools
        out["engine_peak_mb"] = (pool.peak_bytes + replicas) / 2**20
        out["workers_mb"] = worker_memory(model) / 2**20  # shards in worker processes
    out["peak_mb"] = _peak_mb() + out.get("workers_mb", 0.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="one peak-memory figure (see the module doc)")
    ap.add_argument("what", choices=["gpt-fedcore", "gpt-torch", "gpt-torch-sdpa", "lora-int8",
                                     "lora-float32", "lora-int8-ffa", "full"])
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--checkpoint", choices=["none", "blocks"], default="none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="fedcore: sequences a micro-batch (gradients accumulated)")
    args = ap.parse_args()
    what = "gpt-fedcore" if args.what == "full" else args.what
    if what.startswith("gpt-torch") and (args.checkpoint != "none" or args.micro_batch):
        ap.error("--checkpoint and --micro-batch are fedcore's (the torch models keep every "
                 "activation)")
    if args.micro_batch is not None and args.micro_batch < 1:
        ap.error("--micro-batch must be at least 1")
    print(json.dumps(measure(what, args.seq, args.batch, checkpoint=args.checkpoint,
                             threads=args.threads, micro_batch=args.micro_batch)))


if __name__ == "__main__":
    main()
