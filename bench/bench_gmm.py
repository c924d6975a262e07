"""Benchmarks of the GMM log-likelihood over all overlapping patches of an image (pytest-benchmark).

K = 200 components, 6x6 patches (d = 36), one 256x256 image (63001 patches), float32, CPU:
- reference_matmul: patchreg.reference.gmm on the patch matrix (components in chunks of 8);
- conv_form: the image-level convolution form (reference.gmm_image_component_log_prob), the
  best pure-PyTorch formulation (engineering.md);
- deepinv_style: one batched matmul over a (K, N, d) tensor (1.8 GB here), the formulation of
  DeepInverse's GaussianMixtureModel;
- fused_components / fused_mixture / fused_mixture_grad: the compiled op (skipped when the GMM
  kernels are not loaded).

Run:  [PATCHREG_GMM_LIBRARY=/path/to/a/separately/built/gmm_cpu.so] PATCHREG_BACKEND=reference \
          .venv/bin/python -m pytest bench/bench_gmm.py --benchmark-only
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import patchreg
from patchreg.ops import gmm as gmm_ops
from patchreg.reference import gmm as ref

K, P, SIZE = 200, 6, 256
D = P * P


@pytest.fixture(scope="module")
def mixture():
    """A random well-conditioned 200-component mixture with triangular precision factors (float32)."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(K, D, D, generator=g, dtype=torch.float64)
    cov = (a @ a.mT / D + 0.05 * torch.eye(D, dtype=torch.float64)) * 1e-2
    chol = torch.linalg.cholesky(cov)
    u = torch.linalg.solve_triangular(chol, torch.eye(D, dtype=torch.float64).expand(K, D, D), upper=False).mT
    log_const = torch.full((K,), -math.log(K)) - 0.5 * D * math.log(2 * math.pi) - chol.diagonal(dim1=1, dim2=2).log().sum(1)
    means = 0.05 * torch.randn(K, D, generator=g, dtype=torch.float64)
    return tuple(t.float().contiguous() for t in (u, log_const, means))


@pytest.fixture(scope="module")
def image():
    from patchreg.data import load_bundled

    photo = load_bundled("test")[0]
    return torch.from_numpy(photo[:SIZE, :SIZE]).float()[None, None].contiguous()


@pytest.fixture(scope="module")
def patches(image):
    return patchreg.extract_patches(image, P)[0].contiguous()


@pytest.fixture
def kernels():
    library = os.environ.get("PATCHREG_GMM_LIBRARY")
    if library and not gmm_ops.kernels_compiled():
        torch.ops.load_library(library)
    if not gmm_ops.kernels_compiled():
        pytest.skip("GMM kernels not loaded")
    return torch.ops.patchreg


def test_reference_matmul(benchmark, patches, mixture):
    out = benchmark(ref.gmm_component_log_prob, patches, *mixture)
    assert out.shape == (patches.shape[0], K)


def test_conv_form(benchmark, image, mixture):
    out = benchmark(ref.gmm_image_component_log_prob, image, P, *mixture)
    assert out.shape == (1, (SIZE - P + 1) ** 2, K)


def test_deepinv_style_bmm(benchmark, patches, mixture):
    u, c, mu = mixture

    def run():  # (K, N, d) intermediate, as a GMM built on one batched matmul
        y = torch.bmm(patches.unsqueeze(0).expand(K, -1, -1) - mu[:, None], u)
        return (c[:, None] - 0.5 * y.square().sum(-1)).T

    benchmark.pedantic(run, rounds=2, iterations=1)


def test_fused_components(benchmark, kernels, patches, mixture):
    out = benchmark(kernels.gmm_component_log_prob, patches, *mixture)
    torch.testing.assert_close(out[:1000], ref.gmm_component_log_prob(patches[:1000], *mixture), rtol=1e-4, atol=1e-2)


def test_fused_mixture(benchmark, kernels, patches, mixture):
    benchmark(kernels.gmm_mixture_log_prob, patches, *mixture, False)


def test_fused_mixture_with_grad(benchmark, kernels, patches, mixture):
    benchmark(kernels.gmm_mixture_log_prob, patches, *mixture, True)
