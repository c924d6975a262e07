"""FIF chart: an injective free-form flow (Sorrenson et al., ICLR 2024) as one chart.

Encoder f: R^n -> R^d and decoder g: R^d -> R^n are any networks. Per-point loss (their fff/loss.py):
  beta ||x~ - g(f(x~))||^2 + U(f(x~)) - v^T f'(x~) stopgrad(g'(z) v),   x~ = x + noise * eps,
with one Hutchinson vector v per point (normalised and scaled by sqrt(d), i.e. QR of one
column), g'v by forward mode and v^T f' by reverse mode (their code; a create_graph backward, so
the parameter gradient is a double backward through the encoder). The same term is also
(f'(x~) u) . v with u = stopgrad(g'v): forward mode through the encoder, then an ordinary
backward; `surrogate_mode` picks the form ("vjp", the default, or "jvp"): same value, same
gradients, and on the digits conv ResNet the same speed within noise on a 2-core CPU.
The surrogate's value is meaningless, only its gradient estimates that of 1/2 log det(g'^T g');
so responsibilities use the exact chart log-density (Chart.assignment_score), never this loss.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .chart import Chart


class FreeFormChart(Chart):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, ambient_dim: int, latent_dim: int,
                 beta: float | None = None, noise: float = 0.01):
        super().__init__(ambient_dim, latent_dim)
        self.encoder, self.decoder = encoder, decoder
        self.beta, self.noise = beta, noise
        # how the Hutchinson term v^T f'(x) u is differentiated: "vjp" (reverse mode with create_graph, as
        # Sorrenson et al.'s code) or "jvp" (forward mode through the encoder). Same value and gradients.
        self.surrogate_mode = "vjp"

    def _encode_frame(self, y):
        return self.encoder(y)

    def _decode_frame(self, z):
        return self.decoder(z)

    def _decode_frame_jvp(self, z, tangents):
        if hasattr(self.decoder, "jvp"):  # built-in architectures: hand-written forward mode
            return self.decoder.jvp(z, tangents)
        return super()._decode_frame_jvp(z, tangents)

    def _encode_frame_jvp(self, y, tangents):
        if hasattr(self.encoder, "jvp"):  # built-in architectures: hand-written forward mode
            return self.encoder.jvp(y, tangents)
        return super()._encode_frame_jvp(y, tangents)

    def encode_linearized(self, x):
        if not hasattr(self.encoder, "linearize"):
            return super().encode_linearized(x)
        z, push = self.encoder.linearize(self.to_frame(x))
        return z, lambda tangents: push((self.basis.T @ tangents) / self.scale)

    def _decode_and_push(self, z, v):
        """(D(z) with autograd, D'(z) v (B, n, 1) detached) for v (B, d): the tangent only feeds the
        stop-gradient of the surrogate, so with a hand-written linearisation it is pushed without autograd."""
        if hasattr(self.decoder, "linearize"):
            y, push = self.decoder.linearize(z)
            with torch.no_grad():
                g_v = self.scale * (self.basis @ push(v.unsqueeze(-1)))
            return self.from_frame(y), g_v
        recon_x, g_v = self.decode_jvp(z, v.unsqueeze(-1))
        return recon_x, g_v.detach()

    def training_loss(self, x, prior, sigma, overlap_scale=1.0, generator=None, rows=None):
        beta = self.beta if self.beta is not None else 1.0 / (2 * sigma**2)
        # the random draws are for the whole batch, whatever `rows`: the random stream does not depend on it
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        v = torch.randn((x.shape[0], self.latent_dim), generator=generator, dtype=x.dtype, device=x.device)
        if rows is not None:
            x, noise, v = x[rows], noise[rows], v[rows]
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(self.latent_dim)
        if self.surrogate_mode not in ("vjp", "jvp"):
            raise ValueError(f"surrogate_mode must be 'vjp' or 'jvp', got {self.surrogate_mode!r}")
        forward_surrogate = self.surrogate_mode == "jvp"
        x_noisy = (x + self.noise * noise).detach().requires_grad_(not forward_surrogate)
        if forward_surrogate:
            # v^T f'(x) u = v . (f'(x) u), u = stopgrad(g'(z) v): the same function of the parameters as the
            # reverse-mode form below, by forward mode (no double backward through the encoder)
            z, encoder_push = self.encode_linearized(x_noisy)
            recon_x, g_v = self._decode_and_push(z, v)
            surrogate = (v * encoder_push(g_v).squeeze(-1)).sum(-1)
        else:
            z = self.encode(x_noisy)
            recon_x, g_v = self._decode_and_push(z, v)
            (v_f,) = torch.autograd.grad(z, x_noisy, v, create_graph=True)
            surrogate = (v_f * g_v.squeeze(-1)).sum(-1)
        recon = ((x_noisy - recon_x) ** 2).sum(-1)
        return beta * recon + prior.energy(z, overlap_scale) - surrogate

