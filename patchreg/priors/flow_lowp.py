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

Forward and gradient in one pass, a block of rows at a time. Each patch's log-density depends on that
patch alone, so d log p_n / d x_n (N x d numbers) is computed with log p itself, block by block: the
forward pass through every layer for `block_rows` patches, then at once the hand-written reverse pass
for the same rows; autograd's backward only scales the stored gradient rows by the incoming weights.
The large activations (rows x ~hidden per subnet) thus live for one block, in buffers allocated once
per object and reused for every block and call (about 22 kB per row of a block for the shipped flow:
180 MB at the default 8,192 rows, where a graph over all N_p = 40,000 patches held 0.9 GB); there are no
autograd nodes, slice gradients or zero fills per layer. Larger blocks pay less of the fixed cost of
each matmul call, smaller ones keep more in cache (bench/patchnr_block_rows.py). ReLU and its gradient
run as int16 operations on the bfloat16 bits (10x faster than bfloat16 relu_); the float32 sum of a
subnet's output parts is one pass of a kernel (patchreg.ops.flow_lowp.bf16_sum_parts).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..ops.flow_lowp import bf16_sum_parts
from .coupling import AffineCoupling, InvertibleLinearLU, Permutation

__all__ = ["Bfloat16FlowLogProb", "bf16_matmul_is_fast", "BLOCK_ROWS"]

LOW_DTYPE = torch.bfloat16
BLOCK_ROWS = 8192  # rows per forward + reverse block (bench/patchnr_block_rows.py)


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


def _pad(k: int, multiple: int = 32) -> int:
    return -(-k // multiple) * multiple


def _hi_lo(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t ~= hi + lo with hi, lo bfloat16 (16 significant bits instead of 8)."""
    hi = t.to(LOW_DTYPE)
    return hi, (t - hi.to(t.dtype)).to(LOW_DTYPE)


def _relu_grad_(grad: torch.Tensor, out: torch.Tensor) -> None:
    """grad *= (out > 0) in place, out a ReLU output (bfloat16 >= 0, compared as int16)."""
    g = grad.view(torch.int16)
    torch.ops.aten.threshold_backward.grad_input(g, out.view(torch.int16), 0, grad_input=g)


def _relu_(t: torch.Tensor) -> torch.Tensor:
    """In-place ReLU of a bfloat16 tensor as int16 max(., 0) (same order for non-negative values, sign bit
    set for negative ones): one vectorised integer pass, ~10x faster on CPU than bfloat16 relu_."""
    t.view(torch.int16).clamp_min_(0)
    return t


class _Workspace:
    """Buffers shared by the subnets of one flow, by (role, columns): the first layer's input
    [x_hi, x_lo, x_hi, 1, 1, 0...] and the two hidden-size gradients of the reverse pass. Each grows to
    the largest block seen (at most block_rows); a block of fewer rows uses the leading rows (a contiguous
    view)."""

    def __init__(self, device):
        self.device = device
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, key: tuple, cols: int, rows: int, init=None) -> torch.Tensor:
        buf = self._buffers.get(key)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty(rows, cols, dtype=LOW_DTYPE, device=self.device)
            if init is not None:
                init(buf)
            self._buffers[key] = buf
        return buf[:rows]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())

    def clear(self) -> None:
        self._buffers.clear()


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
    buffer: activations a1 = [h1, 1, 1, 0...] (rows x k1), a2 = [h2, 1, 1, 0..., o1] (rows x k2).
    `forward` keeps a1 and a2 of its block (in this subnet's own buffers) for `backward`, the
    input-gradient of the same block through the bfloat16 weights W3, W2, W1.
    """

    def __init__(self, net: nn.Sequential):
        linears = [m for m in net if isinstance(m, nn.Linear)]
        acts = [m for m in net if not isinstance(m, nn.Linear)]
        if len(linears) != 3 or len(acts) != 2 or not all(isinstance(a, nn.ReLU) for a in acts):
            raise TypeError("the bfloat16 path expects coupling subnets Linear-ReLU-Linear-ReLU-Linear "
                            "(patchreg.priors.coupling.mlp)")
        l1, l2, l3 = linears
        d_in, H, d_out = l1.in_features, l1.out_features, l3.out_features
        if l2.in_features != H or l2.out_features != H or l3.in_features != H:
            raise TypeError("the bfloat16 path expects equal hidden widths")
        self.d_in, self.hidden, self.d_out = d_in, H, d_out
        self._a1 = self._a2 = None  # this subnet's activations of the current chunk (rows x k1, rows x k2)
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

    def _first_layer_input(self, x: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """[x_hi, x_lo, x_hi, 1, 1, 0...] (rows x k_in) in the shared buffer for this width."""
        ones = 3 * self.d_in

        def init(t):
            t.zero_()
            t[:, ones:ones + 2] = 1

        xa = ws.get(("x", self.k_in, self.d_in), self.k_in, x.shape[0], init)
        x_hi, x_lo = _hi_lo(x)
        d = self.d_in
        xa[:, :d], xa[:, d:2 * d], xa[:, 2 * d:3 * d] = x_hi, x_lo, x_hi
        return xa

    def _activations(self, rows: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._a1 is None or self._a1.shape[0] < rows:
            self._a1 = torch.empty(rows, self.k1, dtype=LOW_DTYPE, device=device)
            self._a2 = torch.empty(rows, self.k2, dtype=LOW_DTYPE, device=device)
        return self._a1[:rows], self._a2[:rows]

    def forward(self, x: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """Float32 rows x (rows, d_in) -> (rows, d_out) float32; keeps this block's activations."""
        rows = x.shape[0]
        xa = self._first_layer_input(x, ws)
        a1, a2 = self._activations(rows, x.device)
        _relu_(torch.mm(xa, self.w1a, out=a1))  # [h1, 1, 1, 0...]
        _relu_(torch.mm(a1, self.w2a, out=a2))  # [h2, 1, 1, 0..., 0]
        a2[:, self.o1] = torch.mm(a2, self.w3a)  # o1, rounded to bfloat16
        parts = torch.mm(a2, self.w3c)  # (rows, 3 d_out): o1, its rounding error, the lo-weight part
        return bf16_sum_parts(parts, 3)  # float32, summed in that order

    def backward(self, grad_out: torch.Tensor, ws: _Workspace) -> torch.Tensor:
        """d/dx of <grad_out, subnet(x)> for the rows of the last `forward`: (rows, d_in) float32."""
        rows, H = grad_out.shape[0], self.hidden
        a1, a2 = self._activations(rows, grad_out.device)
        g2 = ws.get(("g2", H), H, rows)
        torch.mm(grad_out.to(LOW_DTYPE), self.w3, out=g2)
        _relu_grad_(g2, a2[:, :H])
        g1 = ws.get(("g1", H), H, rows)
        torch.mm(g2, self.w2, out=g1)
        _relu_grad_(g1, a1[:, :H])
        return torch.mm(g1, self.w1).to(torch.float32)

    def release(self) -> None:
        self._a1 = self._a2 = None


def _soft_clamp_and_slope(s: torch.Tensor, clamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """patchreg.priors.coupling.soft_clamp(s, clamp) = clamp 2/pi atan(s / clamp), and its derivative."""
    u = s / clamp
    return (clamp * (2.0 / math.pi)) * torch.atan(u), (2.0 / math.pi) / (1.0 + u * u)


class _LogProbWithGrad(torch.autograd.Function):
    """log p (N,) of a Bfloat16FlowLogProb whose per-row gradient comes from its own reverse pass."""

    @staticmethod
    def forward(ctx, patches: torch.Tensor, model: "Bfloat16FlowLogProb") -> torch.Tensor:
        logp, grad = model._evaluate(patches.detach().to(torch.float32), with_grad=True)
        ctx.save_for_backward(grad)
        ctx.in_dtype = patches.dtype
        return logp

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logp: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_logp.to(grad.dtype)[:, None]).to(ctx.in_dtype), None


class Bfloat16FlowLogProb:
    """log p(patches) of a frozen snapshot of `flow` with bfloat16 dense layers (see the module doc).

    flow: a PatchFlow whose couplings are `patchreg.priors.coupling.AffineCoupling` (any mixing).
    block_rows: patches per forward + reverse block (memory about 22 kB per row for the shipped flow).
    The snapshot does not follow later changes of flow's weights: make a new one after training.
    """

    def __init__(self, flow, block_rows: int = BLOCK_ROWS):
        if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
            raise ValueError(f"block_rows must be an integer >= 1, got {block_rows!r}")
        net = flow.net
        self.dim = flow.dim
        self.block_rows = block_rows
        self.device = next(flow.parameters()).device
        self.layers: list[tuple] = []
        with torch.no_grad():
            for layer in net.layers:
                if isinstance(layer, AffineCoupling):
                    self.layers.append(("coupling", layer.n1, layer.clamp, _Subnet(layer.net1), _Subnet(layer.net2)))
                elif isinstance(layer, Permutation):
                    # x[:, perm] as x @ P (exact: one product by 1 per entry): a float32 matmul is ~4x faster
                    # than a gather on (rows, d)
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
        self._workspace = _Workspace(self.device)
        if not bf16_matmul_is_fast(self.device):
            warnings.warn(
                "precision='bfloat16': this CPU has no native bfloat16 matmuls (AVX-512-BF16 / AMX), so they are "
                "emulated and likely slower than float32", RuntimeWarning, stacklevel=3)

    def log_prob(self, patches: torch.Tensor) -> torch.Tensor:
        """(N,) float32 log-density of patches (N, d) (cast to float32), differentiable in the patches."""
        if torch.is_grad_enabled() and patches.requires_grad:
            return _LogProbWithGrad.apply(patches, self)
        return self._evaluate(patches.detach().to(torch.float32), with_grad=False)[0]

    def _evaluate(self, x: torch.Tensor, with_grad: bool):
        """(log p (N,), d log p / dx (N, d) or None) of float32 rows x, block by block."""
        logp = x.new_empty(x.shape[0])
        grad = torch.empty_like(x) if with_grad else None
        with torch.no_grad():
            for start in range(0, x.shape[0], self.block_rows):
                rows = slice(start, min(start + self.block_rows, x.shape[0]))
                logp[rows], g = self._block(x[rows], with_grad)
                if with_grad:
                    grad[rows] = g
        return logp, grad

    def _block(self, x: torch.Tensor, with_grad: bool):
        """Forward through every layer for one block of rows, then (with_grad) the reverse pass."""
        ws = self._workspace
        tape = []
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            if layer[0] == "coupling":
                _, n1, clamp, net1, net2 = layer
                x1, x2 = x[:, :n1], x[:, n1:]
                out2 = net2.forward(x2, ws)
                s2, slope2 = _soft_clamp_and_slope(out2[:, :n1], clamp)
                e2 = torch.exp(s2)
                y1 = torch.addcmul(out2[:, n1:], x1, e2)  # x1 exp(s2) + t2
                out1 = net1.forward(y1, ws)
                k = x2.shape[1]
                s1, slope1 = _soft_clamp_and_slope(out1[:, :k], clamp)
                e1 = torch.exp(s1)
                y2 = torch.addcmul(out1[:, k:], x2, e1)  # x2 exp(s1) + t1
                logdet += s2.sum(1) + s1.sum(1)
                tape.append((x1, x2, e2, slope2, e1, slope1))
                x = torch.cat([y1, y2], dim=1)
            else:  # fixed linear map (a permutation or an LU layer): x W^T, log|det W| a constant
                x = x @ layer[1]
                logdet += layer[2]
        logp = -0.5 * (x * x).sum(1) - self._log_norm + logdet
        if not with_grad:
            return logp, None
        # Reverse pass of log p = -|z|^2 / 2 + sum of the log-scales: dz = -z, and every log-scale gets +1.
        g = -x
        for layer in reversed(self.layers):
            if layer[0] == "coupling":
                _, n1, _, net1, net2 = layer
                x1, x2, e2, slope2, e1, slope1 = tape.pop()
                g1, g2 = g[:, :n1], g[:, n1:]
                d_s1 = (g2 * x2 * e1 + 1.0) * slope1  # y2 = x2 exp(s1) + t1, s1 = clamp(raw)
                g1 = g1 + net1.backward(torch.cat([d_s1, g2], dim=1), ws)
                d_s2 = (g1 * x1 * e2 + 1.0) * slope2
                g2 = torch.addcmul(net2.backward(torch.cat([d_s2, g1], dim=1), ws), g2, e1)
                g = torch.cat([g1 * e2, g2], dim=1)
            else:
                g = g @ layer[1].t()
        return logp, g

    def memory_bytes(self) -> int:
        """Bytes held in reusable buffers between calls (activations of one block, the workspace)."""
        held = self._workspace.nbytes()
        for layer in self.layers:
            if layer[0] == "coupling":
                for net in layer[3:]:
                    if net._a1 is not None:
                        held += (net._a1.numel() + net._a2.numel()) * net._a1.element_size()
        return held

    def release(self) -> None:
        """Free the reusable buffers (they are allocated again on the next call)."""
        self._workspace.clear()
        for layer in self.layers:
            if layer[0] == "coupling":
                layer[3].release()
                layer[4].release()
