"""One chart of the mixture: an encoder R^n -> R^d and a decoder R^d -> R^n around a fixed frame.

The frame (centre c, orthonormal basis Q, scale s; buffers set from the chart's data cluster
at seeding) maps data to the networks' coordinates y = Q^T (x - c) / s and back. With the
"pca" alignment the first d columns of Q span the cluster's principal directions, so a
network that starts near the identity/zero-padding starts on the cluster's tangent plane.
Conv architectures use the "center" alignment (Q = I), which keeps the pixel layout.

The chart density (the formula of the issue), with J the exact decoder Jacobian at z = E(x):
  log p_k(x) = log q(z) - 1/2 log det(J^T J) - ||x - D(z)||^2 / (2 sigma^2) - (n - d)/2 log(2 pi sigma^2),
q the chart's latent density: the prior p_Z, or (a VAE chart with a latent flow phi) p_Z(phi(z)) |det phi'(z)|;
-log q(z) - log Z_d is `latent_energy`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..reference.chart_math import gram_logdet  # defined at the reference level, re-exported here

ALIGNMENTS = ("pca", "center", "none")


def decoder_jacobian(decode, z: torch.Tensor) -> torch.Tensor:
    """Exact Jacobian (B, n, d) of a batch-wise map `decode` at z (B, d): d forward-mode passes.

    Differentiable (torch.func.jvp composes with autograd), so gradients of the log-determinant
    with respect to the parameters and to z are exact.
    """
    columns = []
    for j in range(z.shape[-1]):
        tangent = torch.zeros_like(z)
        tangent[..., j] = 1
        columns.append(torch.func.jvp(decode, (z,), (tangent,))[1])
    return torch.stack(columns, dim=-1)


class Chart(nn.Module):
    """Base chart: subclasses define `_encode_frame(y)` and `_decode_frame(z)` and a training loss."""

    def __init__(self, ambient_dim: int, latent_dim: int):
        super().__init__()
        self.ambient_dim, self.latent_dim = ambient_dim, latent_dim
        self.register_buffer("center", torch.zeros(ambient_dim))
        self.register_buffer("basis", torch.eye(ambient_dim))
        self.register_buffer("scale", torch.ones(()))

    # -- frame ---------------------------------------------------------------------------
    def set_frame(self, points: torch.Tensor, align: str = "pca", target_radius: float = 0.7) -> None:
        """Centre the chart on `points` (its cluster); scale so the cluster's d-D projection fits |z| < ~target_radius."""
        if align not in ALIGNMENTS:
            raise ValueError(f"align must be one of {ALIGNMENTS}, got {align!r}")
        points = points.to(self.center)
        if align == "none":
            return
        center = points.mean(0)
        centred = points - center
        basis = torch.eye(self.ambient_dim, dtype=points.dtype, device=points.device)
        if align == "pca" and len(points) >= 2:
            _, _, vh = torch.linalg.svd(centred, full_matrices=True)
            basis = vh.T.contiguous()
        coords = centred @ basis
        spread = coords[:, : self.latent_dim].norm(dim=1) if align == "pca" else coords.norm(dim=1)
        radius = torch.quantile(spread, 0.95) if len(points) else torch.tensor(1.0)
        self.center.copy_(center)
        self.basis.copy_(basis)
        self.scale.copy_((radius / target_radius).clamp_min(1e-3))

    def to_frame(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.center) @ self.basis) / self.scale

    def from_frame(self, y: torch.Tensor) -> torch.Tensor:
        return (y * self.scale) @ self.basis.T + self.center

    # -- maps ----------------------------------------------------------------------------
    def _encode_frame(self, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode_frame(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode_frame(self.to_frame(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.from_frame(self._decode_frame(z))

    def _decode_frame_jvp(self, z: torch.Tensor, tangents: torch.Tensor):
        """(decoder(z), decoder'(z) @ tangents) in frame coordinates; tangents (B, d, m)."""
        columns = [torch.func.jvp(self._decode_frame, (z,), (tangents[..., j],)) for j in range(tangents.shape[-1])]
        return columns[0][0], torch.stack([c[1] for c in columns], dim=-1)

    def _encode_frame_jvp(self, y: torch.Tensor, tangents: torch.Tensor):
        """(encoder(y), encoder'(y) @ tangents) in frame coordinates; tangents (B, n, m)."""
        columns = [torch.func.jvp(self._encode_frame, (y,), (tangents[..., j],)) for j in range(tangents.shape[-1])]
        return columns[0][0], torch.stack([c[1] for c in columns], dim=-1)

    def encode_jvp(self, x: torch.Tensor, tangents: torch.Tensor):
        """(E(x), E'(x) @ tangents) for tangents (B, n, m), exact forward mode."""
        return self._encode_frame_jvp(self.to_frame(x), (self.basis.T @ tangents) / self.scale)

    def encode_linearized(self, x: torch.Tensor):
        """(E(x), push) with push(tangents (B, n, m)) = E'(x) @ tangents (B, d, m), exact forward mode.

        Subclasses whose encoder can keep what the tangents need from the primal pass override
        this (one primal pass for both); this default recomputes the primal in encode_jvp.
        """
        return self.encode(x), lambda tangents: self.encode_jvp(x, tangents)[1]

    def decode_jvp(self, z: torch.Tensor, tangents: torch.Tensor):
        """(D(z), D'(z) @ tangents) for tangents (B, d, m), exact forward mode."""
        y, ty = self._decode_frame_jvp(z, tangents)
        return self.from_frame(y), self.scale * (self.basis @ ty)

    def decode_with_jacobian(self, z: torch.Tensor):
        """(D(z) (B, n), exact Jacobian J (B, n, d))."""
        eye = torch.eye(self.latent_dim, dtype=z.dtype, device=z.device).expand(z.shape[0], -1, -1)
        return self.decode_jvp(z, eye)

    # -- latent density --------------------------------------------------------------------
    def latent_energy(self, z: torch.Tensor, prior, overlap_scale: float = 1.0) -> torch.Tensor:
        """-log q(z) - log Z_d (B,): the prior's energy U(overlap_scale |z|); charts with a latent flow override it."""
        return prior.energy(z, overlap_scale)

    def latent_from_prior(self, w: torch.Tensor) -> torch.Tensor:
        """The chart's latent z for a draw w ~ p_Z (sampling): w itself; with a latent flow phi, phi^-1(w)."""
        return w

    # -- density -------------------------------------------------------------------------
    def log_prob(self, x: torch.Tensor, prior, sigma, overlap_scale: float = 1.0) -> torch.Tensor:
        """log p_k(x) (B,) by the chart density formula; `overlap_scale` > 1 shrinks the prior's support."""
        z = self.encode(x)
        x_hat, jac = self.decode_with_jacobian(z)
        residual = ((x - x_hat) ** 2).sum(-1)
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        codim = self.ambient_dim - self.latent_dim
        return (
            -self.latent_energy(z, prior, overlap_scale)
            - prior.log_z
            - 0.5 * gram_logdet(jac)
            - residual / (2 * sigma**2)
            - 0.5 * codim * torch.log(2 * math.pi * sigma**2)
        )

    def training_loss(self, x, prior, sigma, overlap_scale=1.0, generator=None, rows=None) -> torch.Tensor:
        """Per-point training loss (B,) of this chart family; lower is better. With `rows` (indices into
        the batch), only the losses of those points (len(rows),), with the random draws the whole batch
        would have used (so the random stream is the same whatever `rows`)."""
        raise NotImplementedError

    def assignment_score(self, x, prior, sigma, overlap_scale=1.0) -> torch.Tensor:
        """Per-point score (B,) whose softmax over charts (plus log alpha) gives the responsibilities."""
        return self.log_prob(x, prior, sigma, overlap_scale)
