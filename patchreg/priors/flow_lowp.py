"""Low-precision log-density of a PatchFlow for reconstruction: the couplings' dense layers in bfloat16.

`Bfloat16FlowLogProb(flow)` takes a snapshot of a trained `PatchFlow`: the weights of every coupling
subnet (Linear-ReLU-Linear-ReLU-Linear) are cast to bfloat16 once, here, and never again. Its
`log_prob(patches)` returns the same quantity as `flow.log_prob` (float32, differentiable in the
patches), with

- in bfloat16 (float32 accumulation): the three matmuls of each subnet and its ReLUs, forward and
  backward (the input-gradient matmuls); on CPUs with AVX-512-BF16 / AMX, oneDNN runs these 3-5x faster
  than float32. What is rounded to bfloat16 is only the two hidden activations and the middle weight
  matrix: the first layer's input and weights and the last layer's weights are split into hi + lo
  bfloat16 pairs, and the last layer's output is recovered to float32 accuracy by a compensation matmul
  (`_Subnet`). Against float64 the log-density is off by ~0.01-0.03 nats per patch on average (0.3 at
  most on random 6x6 patches), where rounding the subnet outputs too would cost ~0.5 on average.
- in float32: the patches, the affine updates x * exp(s) + t, the soft clamp, the mixing layers
  (permutations as exact 0/1 matmuls, LU linear maps), the log-determinant sums and the Gaussian term.

The subnets run as one autograd function with frozen weights (d/dx only) whose large activations
(N x ~hidden) come from a buffer pool kept between calls: after the first iteration of a reconstruction
they are reused instead of being allocated afresh, which on CPU saves the page faults of first-touching
tens of MB per layer (as costly as the bfloat16 matmuls themselves at N = 40,000). The pool holds
2 buffers per subnet and one more, N x ~hidden bfloat16 numbers each (0.9 GB for N = 40,000 with the
shipped flow: 5 blocks, 2 subnets each, 512 hidden units) while the object lives; `release()` empties it.
ReLU and its gradient run as int16 operations on the bfloat16 bits (10x faster than bfloat16 relu_).

A graph built by `log_prob` can be differentiated once (its activations go back to the pool); a second
backward through the same graph raises RuntimeError.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .coupling import AffineCoupling, InvertibleLinearLU, Permutation, soft_clamp

__all__ = ["Bfloat16FlowLogProb", "bf16_matmul_is_fast"]

LOW_DTYPE = torch.bfloat16


def bf16_matmul_is_fast(device: torch.device | str = "cpu") -> bool:
    """True where bfloat16 matmuls have hardware support: CUDA, or a CPU that oneDNN runs bfloat16 on
    natively (AVX-512-BF16 or AMX). Elsewhere bfloat16 is emulated and slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


class _BufferPool:
    """Free tensors by key: `take` reuses one or makes a new one with `make()`, `give` returns it."""

    def __init__(self):
        self._free: dict[tuple, list[torch.Tensor]] = {}

    def take(self, key: tuple, make) -> torch.Tensor:
        stack = self._free.get(key)
        return stack.pop() if stack else make()

    def give(self, key: tuple, *tensors: torch.Tensor) -> None:
        self._free.setdefault(key, []).extend(tensors)

    def clear(self) -> None:
        self._free.clear()

    def n_free(self) -> int:
        return sum(len(v) for v in self._free.values())


def _pad(k: int, multiple: int = 32) -> int:
    return -(-k // multiple) * multiple


def _hi_lo(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~= hi + lo with hi, lo bfloat16 (16 significant bits instead of 8)."""
    hi = t.to(LOW_DTYPE)
    return hi, (t - hi.to(t.dtype)).to(LOW_DTYPE)


def _relu_(t: torch.Tensor) -> torch.Tensor:
    """In-place ReLU of a bfloat16 tensor as int16 max(., 0) (same order for non-negative values, sign bit
    set for negative ones): one vectorised integer pass, ~10x faster on CPU than bfloat16 relu_."""
    t.view(torch.int16).clamp_min_(0)
    return t


def _relu_grad_(grad: torch.Tensor, out: torch.Tensor) -> None:
    """grad *= (out > 0) in place, out a ReLU output (bfloat16 >= 0, compared as int16)."""
    g = grad.view(torch.int16)
    torch.ops.aten.threshold_backward.grad_input(g, out.view(torch.int16), 0, grad_input=g)


class _Subnet:
    """Frozen bfloat16 copy of a coupling subnet Linear-ReLU-Linear-ReLU-Linear (d_in -> H -> H -> d_out).

    Forward, with products accumulated in float32 by the bfloat16 matmuls:
    - layer 1: the input and the weights split into bfloat16 hi + lo parts ([x_hi, x_lo, x_hi] against
      [W1_hi; W1_hi; W1_lo]), so it is float32-accurate up to the rounding of its output;
    - layer 2: bfloat16 weights (the one rounded weight matrix; its bias as hi + lo);
    - layer 3: hi + lo weights and a compensation matmul ([h2, o1] against [0, W3_hi, W3_lo; I, -I, 0])
      that recovers the bfloat16 rounding error of its output o1: the output is float32-accurate.
    The rounded quantities are the two hidden activations and W2. Biases ride in the matmuls on constant
    1-columns (an addmm bias costs as much as a third of the matmul), which each matmul also writes into
    its own output (a weight 1 on the input's 1-column), so every large operand is a whole contiguous
    buffer: activations a1 = [h1, 1, 1, 0...] (N x k1), a2 = [h2, 1, 1, 0..., o1] (N x k2).
    Backward (d/dx only): bfloat16 weights W3, W2, W1.
    """

    def __init__(self, net: nn.Sequential, pool: _BufferPool):
        linears = [m for m in net if isinstance(m, nn.Linear)]
        acts = [m for m in net if not isinstance(m, nn.Linear)]
        if len(linears) != 3 or len(acts) != 2 or not all(isinstance(a, nn.ReLU) for a in acts):
            raise TypeError("the bfloat16 path expects coupling subnets Linear-ReLU-Linear-ReLU-Linear "
                            "(patchreg.priors.coupling.mlp)")
        l1, l2, l3 = linears
        d_in, H, d_out = l1.in_features, l1.out_features, l3.out_features
        if l2.in_features != H or l2.out_features != H or l3.in_features != H:
            raise TypeError("the bfloat16 path expects equal hidden widths")
        self.d_in, self.hidden, self.d_out, self.pool = d_in, H, d_out, pool
        self.k_in = _pad(3 * d_in + 2)  # [x_hi, x_lo, x_hi, 1, 1, 0...]
        self.k1 = _pad(H + 2)  # [h1, 1, 1, 0...]
        self.k2 = _pad(H + 2 + d_out)  # [h2, 1, 1, 0..., o1]
        self.o1 = slice(self.k2 - d_out, self.k2)
        one_in, one_1 = 3 * d_in, H  # the first 1-column of x_aug, of a1 and a2 (the second follows it)
        with torch.no_grad():
            w = [lin.weight.detach().double() for lin in linears]  # (out, in)
            b = [lin.bias.detach().double() for lin in linears]
            dev = w[0].device

            def zeros(rows, cols):
                return torch.zeros(rows, cols, dtype=LOW_DTYPE, device=dev)

            w1h, w1l = _hi_lo(w[0].t())
            b1h, b1l = _hi_lo(b[0])
            self.w1a = zeros(self.k_in, self.k1)
            self.w1a[:d_in, :H], self.w1a[d_in:2 * d_in, :H], self.w1a[2 * d_in:3 * d_in, :H] = w1h, w1h, w1l
            self.w1a[one_in, :H], self.w1a[one_in + 1, :H] = b1h, b1l
            self.w1a[one_in, one_1:one_1 + 2] = 1  # a1's 1-columns
            b2h, b2l = _hi_lo(b[1])
            self.w2a = zeros(self.k1, self.k2)
            self.w2a[:H, :H], self.w2a[one_1, :H], self.w2a[one_1 + 1, :H] = w[1].t().to(LOW_DTYPE), b2h, b2l
            self.w2a[one_1, one_1:one_1 + 2] = 1  # a2's 1-columns; its o1 columns come out 0
            w3h, w3l = _hi_lo(w[2].t())
            b3h, b3l = _hi_lo(b[2])
            w3a = zeros(self.k2, d_out)  # o1 = a2 @ w3a (rounded to bfloat16)
            w3a[:H], w3a[one_1], w3a[one_1 + 1] = w3h, b3h, b3l
            self.w3a = w3a
            w3lo = zeros(self.k2, d_out)
            w3lo[:H] = w3l
            # a2 @ w3c = [o1, (a2 @ w3a - o1), a2 @ w3lo] once o1 is in a2: o1 exactly, its rounding error and the
            # lo part, three bfloat16 numbers per output whose float32 sum is the output
            eye = torch.eye(d_out, dtype=LOW_DTYPE, device=dev)
            pick, minus = zeros(self.k2, d_out), w3a.clone()
            pick[self.o1], minus[self.o1] = eye, -eye
            self.w3c = torch.cat([pick, minus, w3lo], 1)
            # backward: x-gradients through the bfloat16 weights (out, in)
            self.w1, self.w2, self.w3 = (wi.to(LOW_DTYPE).contiguous() for wi in w)

    def x_buffer(self, n: int, device) -> tuple[tuple, object]:
        """(pool key, maker) of the N x k_in input buffer [x_hi, x_lo, x_hi, 1, 1, 0...]."""
        key = ("x", n, self.k_in, self.d_in, device)  # the 1-columns sit at 3 d_in
        ones = 3 * self.d_in

        def make():
            t = torch.zeros(n, self.k_in, dtype=LOW_DTYPE, device=device)
            t[:, ones:ones + 2] = 1
            return t

        return key, make

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _SubnetFunction.apply(x, self)


def _empty(n: int, k: int, device):
    return lambda: torch.empty(n, k, dtype=LOW_DTYPE, device=device)


class _SubnetFunction(torch.autograd.Function):
    """The subnet of `_Subnet` on float32 rows x (N, d_in) -> (N, d_out) float32, d/dx only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, net: _Subnet) -> torch.Tensor:
        n, dev, d = x.shape[0], x.device, net.d_in
        pool = net.pool
        x_key, x_make = net.x_buffer(n, dev)
        a1_key, a2_key = ("a", n, net.k1, dev), ("a", n, net.k2, dev)
        xa = pool.take(x_key, x_make)
        x_hi, x_lo = _hi_lo(x.detach())
        xa[:, :d], xa[:, d:2 * d], xa[:, 2 * d:3 * d] = x_hi, x_lo, x_hi
        a1 = pool.take(a1_key, _empty(n, net.k1, dev))
        _relu_(torch.mm(xa, net.w1a, out=a1))  # [h1, 1, 1, 0...]
        pool.give(x_key, xa)
        a2 = pool.take(a2_key, _empty(n, net.k2, dev))
        _relu_(torch.mm(a1, net.w2a, out=a2))  # [h2, 1, 1, 0..., 0]
        a2[:, net.o1] = torch.mm(a2, net.w3a)  # o1, rounded to bfloat16
        parts = torch.mm(a2, net.w3c)  # (N, 3 d_out): o1, its rounding error, the lo-weight part
        out = parts.to(torch.float32).view(n, 3, net.d_out).sum(1)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(a1, a2)
            ctx.net, ctx.keys, ctx.x_dtype, ctx.pending = net, (a1_key, a2_key), x.dtype, True
        else:
            pool.give(a1_key, a1)
            pool.give(a2_key, a2)
        return out.to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        if not ctx.pending:
            raise RuntimeError("the bfloat16 PatchNR path supports one backward pass per log_prob call "
                               "(its activation buffers are reused); recompute log_prob instead of retain_graph")
        ctx.pending = False
        net, (a1_key, a2_key) = ctx.net, ctx.keys
        a1, a2 = ctx.saved_tensors
        n, H = a1.shape[0], net.hidden
        g_key = ("g", n, H, a1.device)
        g2 = net.pool.take(g_key, _empty(n, H, a1.device))
        torch.mm(grad_out.to(LOW_DTYPE), net.w3, out=g2)
        _relu_grad_(g2, a2[:, :H])
        g1 = a2.view(-1)[: n * H].view(n, H)  # a2 is no longer needed: its memory takes the next gradient
        torch.mm(g2, net.w2, out=g1)
        _relu_grad_(g1, a1[:, :H])
        grad_x = torch.mm(g1, net.w1).to(ctx.x_dtype)
        net.pool.give(g_key, g2)
        net.pool.give(a1_key, a1)
        net.pool.give(a2_key, a2)
        return grad_x, None


class Bfloat16FlowLogProb:
    """log p(patches) of a frozen snapshot of `flow` with bfloat16 dense layers (see the module doc).

    flow: a PatchFlow whose couplings are `patchreg.priors.coupling.AffineCoupling` (any mixing).
    The snapshot does not follow later changes of flow's weights: make a new one after training.
    """

    def __init__(self, flow):
        net = flow.net
        self.dim = flow.dim
        self.device = next(flow.parameters()).device
        self.pool = _BufferPool()
        self.layers: list[tuple] = []
        with torch.no_grad():
            for layer in net.layers:
                if isinstance(layer, AffineCoupling):
                    self.layers.append(("coupling", layer.n1, layer.clamp,
                                        _Subnet(layer.net1, self.pool), _Subnet(layer.net2, self.pool)))
                elif isinstance(layer, Permutation):
                    # x[:, perm] as x @ P (exact: one product by 1 per entry): a float32 matmul, forward and
                    # backward, is ~4x faster than gather + index_put on (N, d)
                    d = layer.perm.numel()
                    perm_matrix = torch.zeros(d, d, dtype=torch.float32, device=layer.perm.device)
                    perm_matrix[layer.perm, torch.arange(d, device=layer.perm.device)] = 1
                    self.layers.append(("linear", perm_matrix, 0.0))
                elif isinstance(layer, InvertibleLinearLU):
                    self.layers.append(("linear", layer.weight().detach().float().t().contiguous(),
                                        float(layer.log_abs_s.detach().double().sum())))
                else:
                    raise TypeError(f"the bfloat16 path does not know the flow layer {type(layer).__name__}")
        self._log_norm = 0.5 * self.dim * math.log(2 * math.pi)
        if not bf16_matmul_is_fast(self.device):
            warnings.warn(
                "precision='bfloat16': this CPU has no native bfloat16 matmuls (AVX-512-BF16 / AMX), so they are "
                "emulated and likely slower than float32", RuntimeWarning, stacklevel=3)

    def log_prob(self, patches: torch.Tensor) -> torch.Tensor:
        """(N,) float32 log-density of patches (N, d) (cast to float32), differentiable in the patches."""
        x = patches.to(torch.float32)
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            kind = layer[0]
            if kind == "coupling":
                _, n1, clamp, net1, net2 = layer
                x1, x2 = x[:, :n1], x[:, n1:]
                out = net2(x2)
                s2, t2 = soft_clamp(out[:, :n1], clamp), out[:, n1:]
                y1 = x1 * torch.exp(s2) + t2
                out = net1(y1)
                k = x2.shape[1]
                s1, t1 = soft_clamp(out[:, :k], clamp), out[:, k:]
                y2 = x2 * torch.exp(s1) + t1
                x = torch.cat([y1, y2], dim=1)
                logdet = logdet + s2.sum(1) + s1.sum(1)
            else:  # fixed linear map (a permutation or an LU layer): x W^T, log|det W| a constant
                x = x @ layer[1]
                if layer[2] != 0.0:
                    logdet = logdet + layer[2]
        return -0.5 * (x * x).sum(1) - self._log_norm + logdet

    def release(self) -> None:
        """Free the pooled activation buffers (they are allocated again on the next call)."""
        self.pool.clear()
