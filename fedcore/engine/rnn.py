"""LSTM and GRU over whole sequences, each as ONE primitive with backward through time.

Batch-first: x is (B, T, E), the output is every hidden state (B, T, H). The input projection
of all T steps is one (B*T, E) x (E, G*H) matmul; each step then does one fused gate matmul
h @ w_hh (H, G*H) and a handful of in-place ufuncs on slices of a preallocated gate buffer.
Backward walks the steps in reverse, writing the gate gradients time-major into one
(T, B, G*H) buffer; every CHUNK_STEPS steps the weight and input gradients of the finished
chunk are a few matmuls that run on another core beside the walk (`_ChunkGrads`). Only the
recurrent dh = dgates @ w_hh.T is sequential.

LSTM gates are ordered (input, forget, output, cell) so the three sigmoids are one slice;
GRU follows PyTorch: (reset, update, new) with n = tanh(x_n + r * (h @ w_hn + b_hn)).
Initial states are inputs (differentiable); pass None for zeros. `state_out`, a list, receives
copies of the final states for truncated backpropagation through time.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from .autograd import Ctx, Primitive, apply, defvjp
from .blas import serial_blas
from .checks import check_ndim, check_same_dtype
from .ops import Operand, tensor
from .parallel import aside, elementwise, parallel_for
from .parallel import matmul as gemm
from .tensor import Tensor

__all__ = ["gru", "lstm"]


def _sigmoid_(a: np.ndarray) -> None:
    """Logistic function in place, as 0.5 * tanh(a / 2) + 0.5 (no overflow)."""
    a *= 0.5
    np.tanh(a, out=a)
    a *= 0.5
    a += 0.5


def _check(op: str, ngates: int, x: np.ndarray, states: dict[str, np.ndarray],
           w_ih: np.ndarray, w_hh: np.ndarray, biases: dict[str, np.ndarray]) -> int:
    """Validate shapes and dtypes; return the hidden size."""
    check_ndim(op, "input", x, 3, "(batch, time, features)")
    check_ndim(op, "w_hh", w_hh, 2, f"(hidden, {ngates} * hidden)")
    check_ndim(op, "w_ih", w_ih, 2, f"(features, {ngates} * hidden)")
    check_same_dtype(op, input=x, w_ih=w_ih, w_hh=w_hh, **biases, **states)
    b, _, e = x.shape
    h = w_hh.shape[0]
    if w_hh.shape != (h, ngates * h):
        raise ValueError(f"{op}: w_hh {w_hh.shape} must be (hidden, {ngates} * hidden)")
    if w_ih.shape != (e, ngates * h):
        raise ValueError(f"{op}: input {x.shape} has {e} features but w_ih {w_ih.shape} "
                         f"expects ({e}, {ngates * h}) for hidden size {h}")
    for name, bias in biases.items():
        if bias.shape != (ngates * h,):
            raise ValueError(f"{op}: {name} {bias.shape} must be ({ngates * h},) for "
                             f"w_hh {w_hh.shape}")
    for name, s in states.items():
        if s.shape[0] and s.shape != (b, h):
            raise ValueError(f"{op}: {name} {s.shape} must be (batch, hidden) = {(b, h)} for "
                             f"input {x.shape}")
    return h


def _state(ctx: Ctx, s: np.ndarray, b: int, h: int) -> np.ndarray:
    """The initial state: `s`, or zeros for the (0, H) "no state given" placeholder."""
    if s.shape[0]:
        return s
    z = ctx.alloc((b, h), s.dtype)
    z.fill(0)
    return z


def _project(ctx: Ctx, x: np.ndarray, w_ih: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """x @ w_ih + bias for all steps at once: (B, T, G*H)."""
    b, t, e = x.shape
    xp = ctx.alloc((b, t, w_ih.shape[1]), x.dtype)
    xp2 = gemm(x.reshape(b * t, e), w_ih, out=xp.reshape(b * t, -1))
    elementwise(np.add, xp2, xp2, bias)
    return xp


#: the backward pass hands weight gradients to a worker every this many steps
CHUNK_STEPS = 5


class _ChunkGrads:
    """An RNN's input and weight gradients, accumulated chunk by chunk of steps.

    The backward pass walks the steps in reverse on the calling thread, writing the gate
    gradients time-major (d_in for x @ w_ih, d_rec for h @ w_hh; the same array for an LSTM)
    and queueing each finished chunk here through `parallel.aside`: the chunk's share of
    dW_ih, dW_hh, the biases and the input gradient is a few GEMMs that run on another core
    while the walk goes on.
    """

    def __init__(self, ctx: Ctx, x: np.ndarray, w_ih: np.ndarray, d_in: np.ndarray,
                 d_rec: np.ndarray, rec_bias: bool):
        g = w_ih.shape[1]
        self.ctx, self.x, self.w_ih, self.d_in, self.d_rec = ctx, x, w_ih, d_in, d_rec
        self.dx = ctx.alloc(x.shape, x.dtype)
        self.dw_ih = ctx.alloc((x.shape[2], g), x.dtype)
        self.dw_hh = ctx.alloc((ctx.ans.shape[2], g), x.dtype)
        self.db_ih = ctx.alloc((g,), x.dtype)
        self.db_hh = ctx.alloc((g,), x.dtype) if rec_bias else None
        self.first = True

    def add(self, t0: int, t1: int) -> None:
        """Fold steps [t0, t1) in: chunk rows are (step, batch) pairs."""
        ctx, x, hs = self.ctx, self.x, self.ctx.ans
        k, b = t1 - t0, x.shape[0]
        d_in = self.d_in[t0:t1].reshape(k * b, -1)
        d_rec = self.d_rec[t0:t1].reshape(k * b, -1)
        xs = np.ascontiguousarray(x[:, t0:t1].transpose(1, 0, 2)).reshape(k * b, -1)
        prev = np.empty((k, b, hs.shape[2]), hs.dtype)  # the state each step started from
        prev[0] = hs[:, t0 - 1] if t0 else ctx.h0
        prev[1:] = hs[:, t0:t1 - 1].transpose(1, 0, 2)
        prev2 = prev.reshape(k * b, -1)
        self.dx[:, t0:t1] = (d_in @ self.w_ih.T).reshape(k, b, -1).transpose(1, 0, 2)
        ones = np.ones(k * b, x.dtype)  # bias sums as GEMVs: faster than add.reduce
        pairs = [(xs.T, d_in, self.dw_ih), (prev2.T, d_rec, self.dw_hh),
                 (ones, d_in, self.db_ih)]
        if self.db_hh is not None:
            pairs.append((ones, d_rec, self.db_hh))
        for a, d, acc in pairs:
            if self.first:
                np.matmul(a, d, out=acc)
            else:
                acc += a @ d
        self.first = False


def _walk_back(steps: int, step: Callable[[int], None], grads: _ChunkGrads) -> None:
    """Run `step(t)` for t = steps-1 .. 0 with one BLAS thread, folding each finished chunk
    of steps into `grads` beside the walk. Without a second thread there is nothing to
    overlap, and all steps are one chunk: fewer, larger GEMMs (4 % faster on one core)."""
    end = steps
    with serial_blas(), aside() as side:
        chunk = CHUNK_STEPS if side.overlaps else steps
        for t in range(steps - 1, -1, -1):
            step(t)
            if t % chunk == 0:
                side.submit(partial(grads.add, t, end))
                end = t


# -- LSTM ----------------------------------------------------------------------------------
def _lstm_gates_(gt: np.ndarray, h3: int) -> None:
    """Sigmoid on gt[:, :h3] and tanh on gt[:, h3:] in place, with ONE exp over the block.

    tanh(z) = 2 sigmoid(2z) - 1, and sigmoid(z) = 1 / (1 + exp(-z)): one transcendental call
    on (B, 4H) instead of a tanh-based sigmoid plus a tanh (numpy's float32 tanh is scalar).
    exp may overflow to inf for very negative inputs, which gives the exact limit 0.
    """
    gg = gt[:, h3:]
    np.negative(gt[:, :h3], out=gt[:, :h3])
    gg *= -2.0
    np.exp(gt, out=gt)
    gt += 1.0
    np.reciprocal(gt, out=gt)
    gg *= 2.0
    gg -= 1.0


def _lstm_fwd(ctx: Ctx, x: np.ndarray, h0: np.ndarray, c0: np.ndarray, w_ih: np.ndarray,
              w_hh: np.ndarray, bias: np.ndarray, state_out: list | None) -> np.ndarray:
    hid = _check("lstm", 4, x, {"h0": h0, "c0": c0}, w_ih, w_hh, {"bias": bias})
    b, steps, _ = x.shape
    h, c = _state(ctx, h0, b, hid), _state(ctx, c0, b, hid)
    ctx.h0, ctx.c0 = h, c
    xp = _project(ctx, x, w_ih, bias)
    gates = ctx.alloc((steps, b, 4 * hid), x.dtype)  # activated (i, f, o, g) per step
    cs = ctx.alloc((steps, b, hid), x.dtype)
    tcs = ctx.alloc((steps, b, hid), x.dtype)  # tanh(c)
    hs = ctx.alloc((b, steps, hid), x.dtype)
    h3 = 3 * hid
    with np.errstate(over="ignore"), serial_blas():
        for t in range(steps):
            gt = gates[t]
            np.matmul(h, w_hh, out=gt)
            gt += xp[:, t]
            _lstm_gates_(gt, h3)
            ct, tct = cs[t], tcs[t]
            np.multiply(gt[:, hid:2 * hid], c, out=ct)
            np.multiply(gt[:, :hid], gt[:, h3:], out=tct)
            ct += tct
            np.tanh(ct, out=tct)
            h = np.multiply(gt[:, 2 * hid:h3], tct, out=hs[:, t])
            c = ct
    ctx.gates, ctx.cs, ctx.tcs = gates, cs, tcs
    ctx.grads = None  # backward's memo: reset by every forward (a replayed ctx is reused)
    if state_out is not None:
        state_out[:] = [h.copy(), c.copy()]
    return hs


def _lstm_bptt(ctx: Ctx, g: np.ndarray) -> None:
    """Reverse pass over the steps: all of the LSTM's gradients, memoised on ctx.

    Everything that depends only on forward values (the gates' activation derivatives and
    o * tanh'(c)) is computed for all steps at once first, leaving ten small ops and the
    recurrent matmul per step; the weight gradients of finished chunks of steps are computed
    beside the walk (`_LstmGrads`).
    """
    if ctx.grads is not None:
        return
    x, w_ih, w_hh = ctx.args[0], ctx.args[3], ctx.args[4]
    gates, cs, tcs = ctx.gates, ctx.cs, ctx.tcs
    steps, b, hid4 = gates.shape
    hid, h3 = hid4 // 4, 3 * (hid4 // 4)
    deriv = ctx.alloc(gates.shape, g.dtype)  # sigmoid' = s (1 - s), tanh' = 1 - g^2
    odtc = ctx.alloc(tcs.shape, g.dtype)  # o * (1 - tanh(c)^2): dh -> dc

    def derivatives(lo: int, hi: int) -> None:  # steps [lo, hi)
        dv, gs, od, tc = deriv[lo:hi], gates[lo:hi], odtc[lo:hi], tcs[lo:hi]
        np.subtract(1.0, gs, out=dv)
        dv *= gs
        np.multiply(gs[..., h3:], gs[..., h3:], out=dv[..., h3:])
        np.subtract(1.0, dv[..., h3:], out=dv[..., h3:])
        np.multiply(tc, tc, out=od)
        np.subtract(1.0, od, out=od)
        od *= gs[..., 2 * hid:h3]

    parallel_for(steps, derivatives, 2 * deriv.size)
    dg = ctx.alloc((steps, b, hid4), g.dtype)  # time-major: a chunk of steps is contiguous
    grads = _ChunkGrads(ctx, x, w_ih, dg, dg, rec_bias=False)
    dh = np.zeros((b, hid), g.dtype)
    dc = np.zeros((b, hid), g.dtype)
    tmp = np.empty((b, hid), g.dtype)
    w_hh_t = w_hh.T

    def step(t: int) -> None:
        gt, dgt = gates[t], dg[t]
        np.add(dh, g[:, t], out=dh)
        np.multiply(dh, tcs[t], out=dgt[:, 2 * hid:h3])  # d o
        np.multiply(dh, odtc[t], out=tmp)
        np.add(dc, tmp, out=dc)
        np.multiply(dc, gt[:, h3:], out=dgt[:, :hid])  # d i
        np.multiply(dc, cs[t - 1] if t else ctx.c0, out=dgt[:, hid:2 * hid])  # d f
        np.multiply(dc, gt[:, :hid], out=dgt[:, h3:])  # d g
        np.multiply(dc, gt[:, hid:2 * hid], out=dc)
        dgt *= deriv[t]  # through the activations
        np.matmul(dgt, w_hh_t, out=dh)

    _walk_back(steps, step, grads)
    ctx.grads = {"x": grads.dx, "h0": dh, "c0": dc, "w_ih": grads.dw_ih, "w_hh": grads.dw_hh,
                 "b": grads.db_ih}


def _lstm_vjp(which: str) -> Callable[[Ctx, np.ndarray], np.ndarray]:
    def vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
        _lstm_bptt(ctx, g)
        return ctx.grads[which]
    return vjp


lstm_p = Primitive("lstm", _lstm_fwd, saves=(0, 1, 2, 3, 4), saves_output=True)
defvjp(lstm_p, *(_lstm_vjp(w) for w in ("x", "h0", "c0", "w_ih", "w_hh", "b")))


def _placeholder(like: Tensor) -> Tensor:
    return tensor(np.zeros((0, 0), like.dtype))


def lstm(x: Operand, w_ih: Operand, w_hh: Operand, bias: Operand, h0: Operand | None = None,
         c0: Operand | None = None, state_out: list | None = None) -> Tensor:
    """Run an LSTM over batch-first `x` (B, T, E); returns all hidden states (B, T, H).

    w_ih (E, 4H), w_hh (H, 4H), bias (4H,), gates ordered (i, f, o, g); h0/c0 (B, H) or None.
    """
    w = tensor(w_hh)
    h = _placeholder(w) if h0 is None else tensor(h0)
    c = _placeholder(w) if c0 is None else tensor(c0)
    return apply(lstm_p, tensor(x), h, c, tensor(w_ih), w, tensor(bias), state_out=state_out)


# -- GRU -----------------------------------------------------------------------------------
def _gru_fwd(ctx: Ctx, x: np.ndarray, h0: np.ndarray, w_ih: np.ndarray, w_hh: np.ndarray,
             b_ih: np.ndarray, b_hh: np.ndarray, state_out: list | None) -> np.ndarray:
    hid = _check("gru", 3, x, {"h0": h0}, w_ih, w_hh, {"b_ih": b_ih, "b_hh": b_hh})
    b, steps, _ = x.shape
    h = ctx.h0 = _state(ctx, h0, b, hid)
    xp = _project(ctx, x, w_ih, b_ih)
    gates = ctx.alloc((steps, b, 3 * hid), x.dtype)  # activated (r, z, n) per step
    hpn = ctx.alloc((steps, b, hid), x.dtype)  # h @ w_hn + b_hn, needed by dr
    hp = np.empty((b, 3 * hid), x.dtype)
    hs = ctx.alloc((b, steps, hid), x.dtype)
    h2 = 2 * hid
    with serial_blas():
        for t in range(steps):
            gt, xt = gates[t], xp[:, t]
            np.matmul(h, w_hh, out=hp)
            hp += b_hh
            np.add(xt[:, :h2], hp[:, :h2], out=gt[:, :h2])
            _sigmoid_(gt[:, :h2])
            n = gt[:, h2:]
            hpn[t] = hp[:, h2:]
            np.multiply(gt[:, :hid], hp[:, h2:], out=n)
            n += xt[:, h2:]
            np.tanh(n, out=n)
            hn = hs[:, t]
            np.subtract(h, n, out=hn)  # h' = n + z (h - n)
            hn *= gt[:, hid:h2]
            hn += n
            h = hn
    ctx.gates, ctx.hpn = gates, hpn
    ctx.grads = None  # backward's memo: reset by every forward (a replayed ctx is reused)
    if state_out is not None:
        state_out[:] = [h.copy()]
    return hs


def _gru_bptt(ctx: Ctx, g: np.ndarray) -> None:
    """Reverse pass over the steps: all of the GRU's gradients, memoised on ctx."""
    if ctx.grads is not None:
        return
    x, w_ih, w_hh_t = ctx.args[0], ctx.args[2], ctx.args[3].T
    gates, hpn, hs = ctx.gates, ctx.hpn, ctx.ans
    steps, b, hid3 = gates.shape
    hid, h2 = hid3 // 3, 2 * (hid3 // 3)
    d_in = ctx.alloc((steps, b, hid3), g.dtype)  # time-major: chunks of steps are contiguous
    d_rec = ctx.alloc((steps, b, hid3), g.dtype)
    grads = _ChunkGrads(ctx, x, w_ih, d_in, d_rec, rec_bias=True)
    dh = np.zeros((b, hid), g.dtype)
    tmp = np.empty((b, hid), g.dtype)

    def step(t: int) -> None:
        gt, di, dr = gates[t], d_in[t], d_rec[t]
        r, z, n = gt[:, :hid], gt[:, hid:h2], gt[:, h2:]
        hprev = hs[:, t - 1] if t else ctx.h0
        np.add(dh, g[:, t], out=dh)
        dn = di[:, h2:]  # dn_pre = dh (1 - z) (1 - n^2)
        np.subtract(1.0, z, out=dn)
        dn *= dh
        np.multiply(n, n, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        dn *= tmp
        dz = di[:, hid:h2]  # dz_pre = dh (hprev - n) z (1 - z)
        np.subtract(hprev, n, out=dz)
        dz *= dh
        np.subtract(1.0, z, out=tmp)
        np.multiply(tmp, z, out=tmp)
        dz *= tmp
        np.multiply(dn, r, out=dr[:, h2:])  # through r * (h @ w_hn + b_hn)
        drr = di[:, :hid]  # dr_pre = dn_pre * hpn * r (1 - r)
        np.multiply(dn, hpn[t], out=drr)
        np.subtract(1.0, r, out=tmp)
        np.multiply(tmp, r, out=tmp)
        drr *= tmp
        dr[:, :h2] = di[:, :h2]
        np.multiply(dh, z, out=dh)
        np.add(dh, np.matmul(dr, w_hh_t, out=tmp), out=dh)

    _walk_back(steps, step, grads)
    ctx.grads = {"x": grads.dx, "h0": dh, "w_ih": grads.dw_ih, "w_hh": grads.dw_hh,
                 "b_ih": grads.db_ih, "b_hh": grads.db_hh}


def _gru_vjp(which: str) -> Callable[[Ctx, np.ndarray], np.ndarray]:
    def vjp(ctx: Ctx, g: np.ndarray) -> np.ndarray:
        _gru_bptt(ctx, g)
        return ctx.grads[which]
    return vjp


gru_p = Primitive("gru", _gru_fwd, saves=(0, 1, 2, 3), saves_output=True)
defvjp(gru_p, *(_gru_vjp(w) for w in ("x", "h0", "w_ih", "w_hh", "b_ih", "b_hh")))


def gru(x: Operand, w_ih: Operand, w_hh: Operand, b_ih: Operand, b_hh: Operand,
        h0: Operand | None = None, state_out: list | None = None) -> Tensor:
    """Run a GRU over batch-first `x` (B, T, E); returns all hidden states (B, T, H).

    w_ih (E, 3H), w_hh (H, 3H), biases (3H,), gates ordered (r, z, n) as in PyTorch.
    """
    w = tensor(w_hh)
    h = _placeholder(w) if h0 is None else tensor(h0)
    return apply(gru_p, tensor(x), h, tensor(w_ih), w, tensor(b_ih), tensor(b_hh),
                 state_out=state_out)
