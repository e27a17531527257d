"""Convolution backward on two threads: input and weight gradients side by side, a thin
weight gradient summed from row blocks; the same bits as one thread, right against float64."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from fedcore.engine import Tensor, conv, parallel
from fedcore.engine.autograd import VJPS
from fedcore.engine.conv import conv2d
from tests.fedcore.engine.test_parallel import two_threads
from tests.tolerances import assert_close_to_operands


@pytest.fixture
def threads():
    """Run a test inside `two_threads()` (two intra-op threads, tiny grains)."""
    with two_threads():
        yield


def _grads(x0: np.ndarray, w0: np.ndarray, b0: np.ndarray, r: np.ndarray,
           x_grad: bool = True) -> list[np.ndarray]:
    """Gradients of sum(conv2d(x, w, b, padding=1) * r), twice (the second adds in)."""
    x = Tensor(x0, requires_grad=x_grad)
    w, b = Tensor(w0, requires_grad=True), Tensor(b0, requires_grad=True)
    for _ in range(2):
        h = x * 1.0 if x_grad else x  # a non-leaf input: its gradient is a fresh buffer
        (conv2d(h, w, b, padding=1) * r).sum().backward()
    return [t.grad.copy() for t in (x, w, b) if t.grad is not None]


def _reference(x0: np.ndarray, w0: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, ...]:
    """(dW, |terms| summed) in float64 for sum(conv2d(x, w, padding=1) * r)."""
    kh, kw = w0.shape[:2]
    xp = np.pad(x0.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    win = sliding_window_view(xp, (kh, kw), axis=(1, 2))  # (N, Ho, Wo, C, KH, KW)
    g = r.astype(np.float64)
    dw = np.einsum("nyxcij,nyxo->ijco", win, g)
    mag = np.einsum("nyxcij,nyxo->ijco", np.abs(win), np.abs(g))
    return dw, mag


def test_input_and_weight_gradients_run_side_by_side_and_match_one_thread(threads,
                                                                          monkeypatch):
    """An unfolded convolution (9 * 8 columns): its input gradient on one thread and its
    weight and bias gradients on the other, each whole, the bits of one thread."""
    rng = np.random.default_rng(7)
    x0 = rng.standard_normal((4, 6, 6, 8)).astype(np.float32)
    w0 = rng.standard_normal((3, 3, 8, 5)).astype(np.float32)
    b0 = rng.standard_normal(5).astype(np.float32)
    r = rng.standard_normal((4, 6, 6, 5)).astype(np.float32)
    ran: list[tuple[int, int]] = []
    vjps = VJPS["conv2d"]

    def traced(i: int):
        def vjp(ctx, g):
            ran.append((i, threading.get_ident()))
            return vjps[i](ctx, g)
        return vjp

    monkeypatch.setitem(VJPS, "conv2d", tuple(traced(i) for i in range(3)))
    two = _grads(x0, w0, b0, r)
    assert {i for i, _ in ran} == {0, 1, 2}
    assert len({t for i, t in ran if i == 0} | {t for i, t in ran if i == 1}) == 2
    ran.clear()
    parallel.set_num_threads(1)
    one = _grads(x0, w0, b0, r)
    assert len({t for _, t in ran}) == 1
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    dw, mag = _reference(x0, w0, r)
    assert_close_to_operands(two[1], 2 * dw, 2 * mag, 64, np.float32)


@pytest.mark.parametrize("rows", [16, 24])
def test_thin_weight_gradient_from_row_blocks(threads, monkeypatch, rows):
    """A first layer (one input channel, bias folded into the GEMM, no input gradient): its
    weight gradient is summed from fixed row blocks of the column matrix, the same blocks
    and order on one thread and two, so the bits agree; and right against float64."""
    monkeypatch.setattr(conv, "DW_CHUNK_ROWS", rows)
    rng = np.random.default_rng(8)
    x0 = rng.standard_normal((3, 7, 7, 1)).astype(np.float32)  # 147 column rows
    w0 = rng.standard_normal((3, 3, 1, 6)).astype(np.float32)
    b0 = rng.standard_normal(6).astype(np.float32)
    r = rng.standard_normal((3, 7, 7, 6)).astype(np.float32)
    assert conv._dw_chunks((147, 10), 6) == min(conv.DW_CHUNKS, 147 // rows) > 1
    assert conv._dw_chunks((147, 10), conv.DW_CHUNK_MAX_OUT) == 1  # a wide result: one GEMM
    two = _grads(x0, w0, b0, r, x_grad=False)
    parallel.set_num_threads(1)
    one = _grads(x0, w0, b0, r, x_grad=False)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a, b)
    dw, mag = _reference(x0, w0, r)
    assert_close_to_operands(one[0], 2 * dw, 2 * mag, 64, np.float32)
    db = r.astype(np.float64).sum(axis=(0, 1, 2))
    assert_close_to_operands(one[1], 2 * db, 2 * np.abs(r).sum(axis=(0, 1, 2)), 64, np.float32)
