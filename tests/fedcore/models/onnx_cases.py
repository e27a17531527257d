"""PyTorch models for the ONNX import round trips, their export, and the parameter map.

The map: an imported model's parameters are the file's initializers, which PyTorch's exporter
derives from its parameters by copies only (transposes of folded MatMul weights, LSTM gate
blocks reordered and concatenated). Exporting a copy of the model whose every scalar parameter
holds its own index (1, 2, 3, ...; exact in float32) and importing that file tells, for every
scalar of the imported model, which scalar of the PyTorch model it copies. Gradients and
parameters then compare entry by entry, whatever the exporter rearranged.
"""

from __future__ import annotations

import copy
import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from fedcore.models import from_onnx
from fedcore.models.onnx import OnnxModel

VOCAB, SEQ = 40, 6


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(20, 32), nn.LayerNorm(32), nn.Linear(32, 24)
        self.fc3 = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(F.gelu(self.fc1(x)))
        return self.fc3(F.gelu(self.fc2(h), approximate="tanh"))


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(16 * 5 * 5, 60), nn.ReLU(), nn.Linear(60, 10))


class BasicBlock(nn.Module):
    """ResNet's basic block with a projection shortcut, then pooling and a classifier."""

    def __init__(self, cin: int = 3, cout: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False),
                                   nn.BatchNorm2d(cout))
        self.fc = nn.Linear(cout, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)) + self.short(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def separable() -> nn.Module:
    """MobileNet-style: stem, depthwise 3x3 + pointwise 1x1 (BN, ReLU6), then a grouped,
    dilated conv with asymmetric padding and a classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(),
        nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.ZeroPad2d((0, 1, 1, 0)), nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4),
        nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


class RecurrentLM(nn.Module):
    def __init__(self, cell: type = nn.LSTM) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        self.rnn = cell(16, 24, batch_first=True)
        self.head = nn.Linear(24, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.embed(tokens))
        return self.head(h).reshape(-1, VOCAB)


class CausalTransformer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        h = self.encoder(self.embed(tokens), mask=mask, is_causal=True)
        return self.head(h).reshape(-1, VOCAB)


class SDPA(nn.Module):
    """F.scaled_dot_product_attention with a causal flag, pre-norm and an MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.qkv = nn.Embedding(VOCAB, 16), nn.Linear(16, 48)
        self.norm, self.out = nn.LayerNorm(16), nn.Linear(16, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        b, t, _ = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, t, 3, 2, 8).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(x + y.transpose(1, 2).reshape(b, t, 16)).reshape(-1, VOCAB)


def _tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, VOCAB, (n, SEQ))


def _images(shape: tuple[int, ...]):  # noqa: ANN202
    return lambda rng, n: rng.standard_normal((n, *shape)).astype(np.float32)


#: name -> (builder, input maker(rng, batch))
CASES = {
    "mlp": (MLP, _images((20,))),
    "lenet": (lenet, _images((1, 28, 28))),
    "resnet_block": (BasicBlock, _images((3, 16, 16))),
    "separable": (separable, _images((3, 16, 16))),
    "lstm_lm": (RecurrentLM, _tokens),
    "gru_lm": (lambda: RecurrentLM(nn.GRU), _tokens),
    "transformer": (CausalTransformer, _tokens),
    "sdpa": (SDPA, _tokens),
}


def export(model: nn.Module, example: np.ndarray, path: Path, opset: int = 20) -> Path:
    """`torch.onnx.export` (TorchScript exporter) with a dynamic batch, in eval mode without
    folding BatchNorm into the convolutions (TrainingMode.PRESERVE), as the README says."""
    was = model.training
    model.eval()
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.from_numpy(example),), buf, dynamo=False,
                      input_names=["input"], output_names=["output"], opset_version=opset,
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      training=torch.onnx.TrainingMode.PRESERVE)
    model.train(was)
    path.write_bytes(buf.getvalue())
    return path


def torch_flat(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])


def torch_grads(model: nn.Module) -> np.ndarray:
    return np.concatenate([p.grad.numpy().ravel() for p in model.parameters()])


def imported(model: nn.Module, example: np.ndarray, path: Path, opset: int = 20
             ) -> tuple[OnnxModel, np.ndarray]:
    """The model imported from an export, holding PyTorch's current values, and for each
    scalar of its flat vector the index of the PyTorch scalar it copies (see the module
    docstring)."""
    ids = copy.deepcopy(model)
    with torch.no_grad():
        start = 1
        for p in ids.parameters():
            p.copy_(torch.arange(start, start + p.numel(), dtype=torch.float32).view(p.shape))
            start += p.numel()
    ours = from_onnx(export(ids, example, path, opset))
    flat = ours.get_flat()
    idx = flat.astype(np.int64)
    assert np.array_equal(idx, flat) and idx.min() >= 1 and idx.max() < start, \
        "an imported parameter is not a copy of one PyTorch parameter"
    ours.set_flat(torch_flat(model)[idx - 1].astype(np.float32))
    return ours, idx - 1
