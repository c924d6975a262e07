"""VAE chart (Alberti et al., JMLR 2024): an injective decoder from an invertible coupling network.

D(z) = T(z, 0) in the chart frame (the latent zero-padded to R^n, pushed through T), so D is
injective; the encoder is E(x) = first d coordinates of T^{-1}(x). Training minimises the
negative ELBO with a fixed-width Gaussian encoder (their code):
  L(x) = ||x - D(E(x) + s eps)||^2 / (2 sigma^2) + U(E(x)) - d log s,  s = 0.01,
and the mixture's responsibilities use -L (the ELBO), as in their code.

Latent flow (their code, when d > 1; `latent_blocks` > 0 here): a small coupling flow phi on R^d in front of
the prior, so the chart's latent density is q(z) = p_Z(phi(z)) |det phi'(z)| instead of the fixed radial
p_Z; U(z) in L becomes U(phi(z)) - log|det phi'(z)| (their "- latent-flow log det"), and sampling draws
w ~ p_Z and decodes z = phi^-1(w). The flow starts as the identity (zero output layers).
"""

from __future__ import annotations

import math

import torch

from .chart import Chart
from .coupling import CouplingFlow

ENCODER_NOISE = 0.01


class InjectiveFlowChart(Chart):
    def __init__(self, ambient_dim: int, latent_dim: int, hidden: int = 64, n_blocks: int = 5, flow=None,
                 latent_blocks: int = 0):
        super().__init__(ambient_dim, latent_dim)
        self.flow = flow if flow is not None else CouplingFlow(ambient_dim, hidden, n_blocks)
        if latent_blocks and latent_dim < 2:
            raise ValueError(f"a latent flow needs latent_dim >= 2 (a coupling flow splits z), got latent_dim={latent_dim}")
        self.latent_flow = CouplingFlow(latent_dim, hidden, latent_blocks) if latent_blocks else None

    def latent_energy(self, z, prior, overlap_scale=1.0):
        if self.latent_flow is None:
            return prior.energy(z, overlap_scale)
        w, logdet = self.latent_flow.forward_and_logdet(z)
        return prior.energy(w, overlap_scale) - logdet

    def latent_from_prior(self, w):
        return w if self.latent_flow is None else self.latent_flow.inverse(w)

    def _encode_frame(self, y):
        return self.flow.inverse(y)[..., : self.latent_dim]

    def _decode_frame(self, z):
        pad = z.new_zeros(*z.shape[:-1], self.ambient_dim - self.latent_dim)
        return self.flow(torch.cat([z, pad], dim=-1))

    def _decode_frame_jvp(self, z, tangents):
        pad = z.new_zeros(*z.shape[:-1], self.ambient_dim - self.latent_dim)
        t_pad = tangents.new_zeros(*tangents.shape[:-2], self.ambient_dim - self.latent_dim, tangents.shape[-1])
        return self.flow.jvp(torch.cat([z, pad], -1), torch.cat([tangents, t_pad], -2))

    def training_loss(self, x, prior, sigma, overlap_scale=1.0, generator=None, rows=None):
        # drawn for the whole batch, whatever `rows`: the random stream does not depend on it
        eps = torch.randn((x.shape[0], self.latent_dim), generator=generator, dtype=x.dtype, device=x.device)
        if rows is not None:
            x, eps = x[rows], eps[rows]
        z = self.encode(x)
        recon = ((x - self.decode(z + ENCODER_NOISE * eps)) ** 2).sum(-1)
        return recon / (2 * sigma**2) + self.latent_energy(z, prior, overlap_scale) - self.latent_dim * math.log(ENCODER_NOISE)

    def assignment_score(self, x, prior, sigma, overlap_scale=1.0):
        # Alberti et al. use the (negative) per-chart loss; the noise-free version keeps it deterministic
        z = self.encode(x)
        recon = ((x - self.decode(z)) ** 2).sum(-1)
        return -(recon / (2 * sigma**2) + self.latent_energy(z, prior, overlap_scale))
