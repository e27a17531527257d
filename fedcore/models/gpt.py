"""A tiny GPT: decoder-only transformer with GQA, RoPE, RMSNorm, SwiGLU and a tied head."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np

from ..engine import Tensor, reshape
from ..engine.checkpoint import checkpoint_batch
from ..engine.ops import Operand, tensor
from ..nn import DecoderBlock, Embedding, Module, RMSNorm, TiedHead
from .registry import register_model

if TYPE_CHECKING:
    from ..nn.lora import LoRABuild

__all__ = ["BASE_FILE", "CHECKPOINTS", "SHAKESPEARE_BASE", "TinyGPT", "tiny_gpt",
           "tiny_gpt_shakespeare"]

#: what a training step recomputes instead of keeping: nothing, or each decoder block
CHECKPOINTS = ("none", "blocks")

#: the base the Shakespeare LoRA scenarios fine-tune (~1M parameters)
SHAKESPEARE_BASE = dict(vocab_size=2000, embed_dim=128, hidden=344, n_layers=4, n_heads=4,
                        n_kv_heads=2)
#: its weights, written by `python -m simulations.pretrain_tiny_gpt`
BASE_FILE = resources.files("fedcore.models").joinpath("data/tiny_gpt_shakespeare.safetensors")


class TinyGPT(Module):
    """Token ids (B, T) -> next-token logits (B*T, vocab), rows batch-major (as `lstm`).

    Positions come from rotary embeddings inside attention (no position table, so any
    sequence length works); the output head is the embedding table itself (weight tying).
    `adapt(path, block)` is called on each decoder block as soon as it is built (LoRA
    adapters, stored weights: see `tiny_gpt`). `checkpoint="blocks"`: a training step keeps
    only each block's input (the first block's: the token ids, the lookup is recomputed) and
    recomputes the block in the backward pass a few sequences at a time
    (`fedcore.engine.checkpoint.checkpoint_batch`), its feed-forward a block of rows at a
    time: one group's attention activations and a few rows of its feed-forward live at a
    time, for a second forward pass of the blocks (the feed-forward: a third).
    """

    per_sample = True

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int,
                 n_kv_heads: int, hidden: int, seed: int = 0, checkpoint: str = "none",
                 adapt: Callable[[str, Module], None] | None = None):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.vocab_size, self.d_model = vocab_size, d_model
        self.embed = Embedding(vocab_size, d_model, init_range=0.02, rng=rng)
        blocks = []
        for i in range(n_layers):  # `adapt` sees each block as it is built (LoRA, weights)
            blocks.append(DecoderBlock(d_model, n_heads, n_kv_heads, hidden, rng=rng))
            if adapt is not None:
                adapt(f"blocks.{i}", blocks[-1])
        self.blocks = _Blocks(*blocks)
        self.set_checkpoint(checkpoint)
        self.norm = RMSNorm(d_model)
        self.head = TiedHead(self.embed)

    def set_checkpoint(self, mode: str) -> None:
        """Recompute each block in the backward pass ("blocks") or keep its activations
        ("none"); ValueError naming the modes otherwise."""
        if mode not in CHECKPOINTS:
            raise ValueError(f"tiny_gpt: checkpoint must be one of {', '.join(CHECKPOINTS)}, "
                             f"got {mode!r}")
        self.checkpoint = mode
        for block in self.blocks:  # inside a recomputed block, the feed-forward by rows
            block.rowwise_mlp = mode == "blocks"

    def forward(self, tokens: Operand) -> Tensor:
        """Logits for every position of every sequence."""
        ids = tensor(tokens)
        blocks = list(self.blocks)
        if self.checkpoint == "blocks" and ids.ndim == 2 and blocks:
            # the first block recomputes from the token ids: the lookup is cheap, and its
            # (B, T, d) output is then not kept for the backward pass
            h = checkpoint_batch(lambda t: blocks[0](self.embed(t)), ids,
                                 ids.shape[1] * self.d_model)
            for block in blocks[1:]:  # h is the block before's: its buffer takes its gradient
                h = checkpoint_batch(block, h, donate=True)
        else:
            h = self.embed(ids)
            for block in blocks:
                h = block(h)
        return self.head(reshape(self.norm(h), -1, self.d_model))


class _Blocks(Module):
    """The decoder blocks, named "0", "1", ... (so a block is `blocks.<i>`)."""

    per_sample = True

    def __init__(self, *blocks: Module):
        super().__init__()
        for i, b in enumerate(blocks):
            setattr(self, str(i), b)

    def __iter__(self):  # noqa: ANN204
        return iter(self._modules.values())


@register_model("tiny_gpt")
def tiny_gpt(vocab_size: int | None = None, embed_dim: int = 128, hidden: int = 344,
             n_layers: int = 4, n_heads: int = 4, n_kv_heads: int = 2, seed: int = 0,
             input_dim: int | None = None, checkpoint: str = "none",
             lora: LoRABuild | None = None) -> TinyGPT:
    """A decoder-only language model: `embed_dim` wide, `n_layers` blocks of GQA attention
    (`n_heads` query heads, `n_kv_heads` key/value heads, RoPE) and a SwiGLU of `hidden`
    units, RMSNorm, head tied to the embedding. `input_dim` (a sequence length) is unused.
    `checkpoint = "blocks"` recomputes each block in the backward pass instead of keeping
    its activations (less memory, one more forward pass of compute). `lora` (from `build_model`)
    adapts each block as it is built: an int8 base never holds all its float32 weights."""
    del input_dim
    if vocab_size is None or vocab_size < 2:
        raise ValueError(f"tiny_gpt: vocab_size must be >= 2, got {vocab_size}")
    if isinstance(hidden, list | tuple):
        hidden = int(hidden[0])
    # not flattened here: `build_model` flattens once the adapters of a LoRA run are on, so
    # a frozen base is never copied into a flat float32 vector (nor given gradients)
    return TinyGPT(int(vocab_size), int(embed_dim), int(n_layers), int(n_heads),
                   int(n_kv_heads), int(hidden), seed, checkpoint, lora)


@lru_cache(maxsize=1)
def _base_weights() -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    if not BASE_FILE.is_file():
        raise FileNotFoundError(f"tiny_gpt_shakespeare: no base weights at {BASE_FILE}; "
                                f"run python -m simulations.pretrain_tiny_gpt")
    return load(BASE_FILE.read_bytes())


@register_model("tiny_gpt_shakespeare")
def tiny_gpt_shakespeare(vocab_size: int | None = None, seed: int = 0,
                         input_dim: int | None = None, checkpoint: str = "none",
                         lora: LoRABuild | None = None) -> TinyGPT:
    """The tiny GPT pretrained on the Shakespeare roles no federated client uses (the
    package's `BASE_FILE`): the base a LoRA scenario fine-tunes. `vocab_size` must be the
    dataset's 2,000 words; `seed` and `input_dim` are accepted and unused (the weights are
    fixed); `checkpoint` and `lora` as for `tiny_gpt` (each block gets its stored weights
    before its adapters)."""
    del seed, input_dim
    want = SHAKESPEARE_BASE["vocab_size"]
    if vocab_size is not None and vocab_size != want:
        raise ValueError(f"tiny_gpt_shakespeare was trained on a {want}-word vocabulary; "
                         f"set data.shakespeare.vocab_size = {want}, got {vocab_size}")
    weights = _base_weights()

    def load(path: str, part: Module) -> None:
        for name, p in part.named_parameters(path):
            w = weights.get(name)
            if w is None or w.shape != p.shape:
                raise ValueError(f"tiny_gpt_shakespeare: {BASE_FILE.name} has no weight "
                                 f"{name!r} of shape {p.shape}")
            p.data[...] = w

    def adapt(path: str, block: Module) -> None:
        load(path, block)
        if lora is not None:
            lora(path, block)

    cfg = SHAKESPEARE_BASE
    model = TinyGPT(cfg["vocab_size"], cfg["embed_dim"], cfg["n_layers"], cfg["n_heads"],
                    cfg["n_kv_heads"], cfg["hidden"], checkpoint=checkpoint, adapt=adapt)
    for name, part in (("embed", model.embed), ("norm", model.norm)):
        load(name, part)
    return model
