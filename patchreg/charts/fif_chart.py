"""FIF chart: an injective free-form flow (Sorrenson et al., ICLR 2024) as one chart.

Encoder f: R^n -> R^d and decoder g: R^d -> R^n are any networks. Per-point loss (their fff/loss.py):
  beta ||x~ - g(f(x~))||^2 + U(f(x~)) - v^T f'(x~) stopgrad(g'(z) v),   x~ = x + noise * eps,
with one Hutchinson vector v per point (normalised and scaled by sqrt(d), i.e. QR of one
column), g'v by forward mode and v^T f' by reverse mode. The surrogate's value is meaningless,
only its gradient estimates that of 1/2 log det(g'^T g'); so responsibilities use the exact
chart log-density (Chart.assignment_score), never this loss.
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

    def _encode_frame(self, y):
        return self.encoder(y)

    def _decode_frame(self, z):
        return self.decoder(z)

    def _decode_frame_jvp(self, z, tangents):
        if hasattr(self.decoder, "jvp"):  # built-in ResidualMLP: hand-written forward mode
            return self.decoder.jvp(z, tangents)
        return super()._decode_frame_jvp(z, tangents)

    def training_loss(self, x, prior, sigma, overlap_scale=1.0, generator=None):
        beta = self.beta if self.beta is not None else 1.0 / (2 * sigma**2)
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_noisy = (x + self.noise * noise).detach().requires_grad_(True)
        z = self.encode(x_noisy)
        v = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12) * math.sqrt(self.latent_dim)
        recon_x, g_v = self.decode_jvp(z, v.unsqueeze(-1))
        g_v = g_v.squeeze(-1)
        (v_f,) = torch.autograd.grad(z, x_noisy, v, create_graph=True)
        surrogate = (v_f * g_v.detach()).sum(-1)
        recon = ((x_noisy - recon_x) ** 2).sum(-1)
        return beta * recon + prior.energy(z, overlap_scale) - surrogate
