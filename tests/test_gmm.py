"""GMM patch prior: the gmm_log_prob op (reference, kernels, image form), EM fitting, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

import patchreg
from patchreg.ops import gmm as gmm_ops
from patchreg.ops.gmm import gmm_log_prob, gmm_log_prob_image
from patchreg.priors import GMM
from patchreg.reference import gmm as ref

F64 = torch.float64


def random_mixture(K, d, seed=0, dtype=F64, triangular=True):
    """(prec_chol, log_const, means, covariances) of a random well-conditioned mixture."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(K, d, d, generator=g, dtype=F64)
    cov = a @ a.transpose(1, 2) / d + 0.3 * torch.eye(d, dtype=F64)
    chol = torch.linalg.cholesky(cov)
    u = torch.linalg.solve_triangular(chol, torch.eye(d, dtype=F64).expand(K, d, d), upper=False).mT
    if not triangular:  # any factor with U U^T = P works: rotate by an orthogonal Q
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
        u = u @ q
    weights = torch.rand(K, generator=g, dtype=F64) + 0.2
    weights = weights / weights.sum()
    logdet = torch.linalg.slogdet(u)[1]
    log_const = weights.log() - 0.5 * d * math.log(2 * math.pi) + logdet
    means = torch.randn(K, d, generator=g, dtype=F64)
    return [t.to(dtype) for t in (u, log_const, means)] + [cov, weights]


def random_patches(N, d, seed=1, dtype=F64):
    return torch.randn(N, d, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype) * 1.5


@pytest.fixture
def kernels():
    """The compiled GMM kernels (skips when no library registered them)."""
    patchreg.extension_available()  # loads the library (a -k selection may run no earlier test that does)
    if not gmm_ops.kernels_compiled():
        pytest.skip("GMM kernels are not compiled/loaded (reference backend or extension without gmm_cpu.cpp)")
    gmm_ops._register()
    return torch.ops.patchreg


# --- reference path -------------------------------------------------------------------------


@pytest.mark.parametrize("K,d,N", [(1, 3, 5), (4, 9, 37), (7, 16, 130)])
def test_reference_matches_torch_distributions(K, d, N):
    u, c, mu, cov, w = random_mixture(K, d, seed=K)
    x = random_patches(N, d)
    comp = ref.gmm_component_log_prob(x, u, c, mu)
    expected = torch.stack(
        [torch.distributions.MultivariateNormal(mu[k], cov[k]).log_prob(x) + w[k].log() for k in range(K)], 1
    )
    torch.testing.assert_close(comp, expected, rtol=1e-10, atol=1e-10)
    loglik, best, grad = ref.gmm_mixture_log_prob(x, u, c, mu)
    torch.testing.assert_close(loglik, torch.logsumexp(expected, 1), rtol=1e-10, atol=1e-10)
    assert torch.equal(best, expected.argmax(1))
    assert best.dtype == torch.int64


def test_reference_gradient_matches_autograd():
    u, c, mu, _, _ = random_mixture(5, 8)
    x = random_patches(20, 8).requires_grad_()
    auto = torch.autograd.grad(torch.logsumexp(ref.gmm_component_log_prob(x, u, c, mu), 1).sum(), x)[0]
    _, _, grad = ref.gmm_mixture_log_prob(x.detach(), u, c, mu)
    torch.testing.assert_close(grad, auto, rtol=1e-10, atol=1e-12)
    g = torch.randn(20, 5, dtype=F64)
    auto = torch.autograd.grad((ref.gmm_component_log_prob(x, u, c, mu) * g).sum(), x)[0]
    torch.testing.assert_close(ref.gmm_component_log_prob_backward(g, x.detach(), u, mu), auto)


@pytest.mark.parametrize("channels,remove_mean", [(1, False), (1, True), (2, True)])
def test_image_convolution_form_matches_patch_matrix(channels, remove_mean):
    p, K = 3, 5
    d = channels * p * p
    u, c, mu, _, _ = random_mixture(K, d)
    x = torch.rand(2, channels, 9, 11, dtype=F64, generator=torch.Generator().manual_seed(3))
    out = gmm_log_prob_image(x, p, u, c, mu, remove_mean=remove_mean)
    patches = patchreg.extract_patches(x, p, 1, remove_mean=remove_mean)
    patches = patches[0] if remove_mean else patches
    expected = ref.gmm_component_log_prob(patches.reshape(-1, d), u, c, mu).reshape(2, -1, K)
    assert out.shape == (2, 7 * 9, K)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_public_op_gradients_reach_parameters_via_reference():
    u, c, mu, _, _ = random_mixture(3, 4)
    x = random_patches(6, 4)
    params = [t.clone().requires_grad_() for t in (u, c, mu)]
    torch.autograd.gradcheck(lambda *a: gmm_log_prob(x, *a, mixture=True)[0], params)


def test_public_op_gradcheck_wrt_patches():
    u, c, mu, _, _ = random_mixture(3, 4)
    x = random_patches(6, 4).requires_grad_()
    torch.autograd.gradcheck(lambda v: gmm_log_prob(v, u, c, mu), (x,))
    torch.autograd.gradcheck(lambda v: gmm_log_prob(v, u, c, mu, mixture=True, compute_grad=False)[0], (x,))


# --- compiled kernels vs reference -----------------------------------------------------------


@pytest.fixture(params=["avx512", "avx2", "portable"])
def cpu_path(request, monkeypatch):
    """Runs a test with the AVX-512 and the AVX2 loops (where the CPU has them; otherwise the next path
    down runs) and with the portable loops."""
    monkeypatch.setenv("PATCHREG_DISABLE_AVX2", "1" if request.param == "portable" else "0")
    monkeypatch.setenv("PATCHREG_DISABLE_AVX512", "0" if request.param == "avx512" else "1")
    return request.param


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_avx512_and_avx2_loops_agree_bit_for_bit(kernels, monkeypatch, dtype):
    """The two instruction sets run the same per-lane operations in the same order (gmm_simd_loops.h)."""
    u, c, mu, _, _ = random_mixture(7, 64, seed=5, triangular=True)
    x = random_patches(200, 64, seed=6)
    args = [t.to(dtype) for t in (x, u, c, mu)]
    g = random_patches(200, 7, seed=8).to(dtype)
    results = []
    for off in ("0", "1"):
        monkeypatch.setenv("PATCHREG_DISABLE_AVX512", off)
        results.append((kernels.gmm_component_log_prob(*args), *kernels.gmm_mixture_log_prob(*args, True),
                        kernels.gmm_component_log_prob_backward(g, args[0], args[1], args[3])))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("triangular", [True, False])
@pytest.mark.parametrize("K,d,N", [(1, 1, 1), (3, 5, 63), (4, 9, 96), (5, 7, 97), (13, 36, 257), (2, 37, 200)])
def test_kernels_match_reference_float64(kernels, cpu_path, K, d, N, triangular):
    u, c, mu, _, _ = random_mixture(K, d, seed=N, triangular=triangular)
    x = random_patches(N, d, seed=K)
    torch.testing.assert_close(
        kernels.gmm_component_log_prob(x, u, c, mu), ref.gmm_component_log_prob(x, u, c, mu), rtol=1e-12, atol=1e-10
    )
    loglik, best, grad = kernels.gmm_mixture_log_prob(x, u, c, mu, True)
    r_loglik, r_best, r_grad = ref.gmm_mixture_log_prob(x, u, c, mu)
    torch.testing.assert_close(loglik, r_loglik, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, r_grad, rtol=1e-10, atol=1e-10)
    assert torch.equal(best, r_best)
    _, best2, empty = kernels.gmm_mixture_log_prob(x, u, c, mu, False)
    assert torch.equal(best2, r_best) and empty.shape == (N, 0)
    top, best3 = kernels.gmm_best_component(x, u, c, mu)
    r_top, r_best3 = ref.gmm_best_component(x, u, c, mu)
    torch.testing.assert_close(top, r_top, rtol=1e-12, atol=1e-10)
    assert torch.equal(best3, r_best3) and torch.equal(best3, r_best)
    g = random_patches(N, K, seed=7)
    torch.testing.assert_close(
        kernels.gmm_component_log_prob_backward(g, x, u, mu),
        ref.gmm_component_log_prob_backward(g, x, u, mu),
        rtol=1e-10,
        atol=1e-10,
    )


def test_kernels_float32_close_to_float64(kernels, cpu_path):
    u, c, mu, _, _ = random_mixture(20, 36, seed=2)
    x = random_patches(300, 36)
    x32, u32, c32, mu32 = (t.float() for t in (x, u, c, mu))
    loglik, best, grad = kernels.gmm_mixture_log_prob(x32, u32, c32, mu32, True)
    r_loglik, _, r_grad = ref.gmm_mixture_log_prob(x, u, c, mu)
    torch.testing.assert_close(loglik.double(), r_loglik, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(grad.double(), r_grad, rtol=1e-4, atol=1e-3)
    comp = ref.gmm_component_log_prob(x, u, c, mu)
    torch.testing.assert_close(kernels.gmm_component_log_prob(x32, u32, c32, mu32).double(), comp, rtol=1e-5, atol=1e-3)
    top, _ = kernels.gmm_best_component(x32, u32, c32, mu32)
    torch.testing.assert_close(top.double(), comp.max(dim=1).values, rtol=1e-5, atol=1e-3)
    g = random_patches(300, 20, seed=3)
    torch.testing.assert_close(
        kernels.gmm_component_log_prob_backward(g.float(), x32, u32, mu32).double(),
        ref.gmm_component_log_prob_backward(g, x, u, mu),
        rtol=1e-4,
        atol=1e-3,
    )


def test_avx2_path_is_reported(kernels):
    import json

    info = json.loads(torch.ops.patchreg.build_info())
    assert isinstance(info["avx2"], bool)


def test_kernels_handle_extreme_separation(kernels):
    """Responsibilities that underflow (log-lik gaps of 1e4) must not give NaN/inf (online logsumexp)."""
    u, c, mu, _, _ = random_mixture(3, 4)
    mu = mu * 100
    x = mu[1] + 0.1 * random_patches(5, 4)
    loglik, best, grad = kernels.gmm_mixture_log_prob(x, u, c, mu, True)
    r = ref.gmm_mixture_log_prob(x, u, c, mu)
    assert torch.isfinite(loglik).all() and torch.isfinite(grad).all()
    torch.testing.assert_close(loglik, r[0])
    torch.testing.assert_close(grad, r[2])
    assert (best == 1).all()


def test_kernels_gradcheck_and_opcheck(kernels):
    u, c, mu, _, _ = random_mixture(3, 5)
    x = random_patches(100, 5).requires_grad_()  # two patch blocks of 96, the second partial
    torch.autograd.gradcheck(lambda v: kernels.gmm_component_log_prob(v, u, c, mu), (x,))
    torch.autograd.gradcheck(lambda v: kernels.gmm_mixture_log_prob(v, u, c, mu, True)[0], (x,))
    # The AOT-dispatch checks trace graphs through the fake kernels (slow): once, on few patches.
    quick = ("test_autograd_registration", "test_faketensor")
    torch.library.opcheck(kernels.gmm_mixture_log_prob, (x[:3].detach().requires_grad_(), u, c, mu, True))
    torch.library.opcheck(kernels.gmm_mixture_log_prob, (x, u, c, mu, True), test_utils=quick)
    torch.library.opcheck(kernels.gmm_component_log_prob, (x, u, c, mu), test_utils=quick)
    torch.library.opcheck(kernels.gmm_mixture_log_prob, (x.detach(), u, c, mu, False), test_utils=quick)
    g = random_patches(100, 3)
    torch.library.opcheck(kernels.gmm_component_log_prob_backward, (g, x.detach(), u, mu), test_utils=quick)
    torch.library.opcheck(kernels.gmm_best_component, (x.detach(), u, c, mu))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("K,d,N", [(1, 1, 1), (5, 36, 300), (3, 64, 129)])
def test_cuda_kernels_match_reference(kernels, K, d, N):
    u, c, mu, _, _ = random_mixture(K, d, seed=N, triangular=False)
    x = random_patches(N, d, seed=K)
    cuda = [t.cuda() for t in (x, u, c, mu)]
    torch.testing.assert_close(
        kernels.gmm_component_log_prob(*cuda).cpu(), ref.gmm_component_log_prob(x, u, c, mu), rtol=1e-12, atol=1e-10
    )
    loglik, best, grad = (t.cpu() for t in kernels.gmm_mixture_log_prob(*cuda, True))
    r_loglik, r_best, r_grad = ref.gmm_mixture_log_prob(x, u, c, mu)
    torch.testing.assert_close(loglik, r_loglik, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(grad, r_grad, rtol=1e-10, atol=1e-10)
    assert torch.equal(best, r_best)
    top, best2 = (t.cpu() for t in kernels.gmm_best_component(*cuda))
    torch.testing.assert_close(top, ref.gmm_best_component(x, u, c, mu)[0], rtol=1e-12, atol=1e-10)
    assert torch.equal(best2, r_best)
    g = random_patches(N, K, seed=7)
    torch.testing.assert_close(
        kernels.gmm_component_log_prob_backward(g.cuda(), *cuda[:2], cuda[3]).cpu(),
        ref.gmm_component_log_prob_backward(g, x, u, mu),
        rtol=1e-10,
        atol=1e-10,
    )
    loglik32, _, _ = kernels.gmm_mixture_log_prob(*(t.float() for t in cuda), False)
    torch.testing.assert_close(loglik32.cpu().double(), r_loglik, rtol=1e-5, atol=1e-3)
    u65, c65, mu65, _, _ = random_mixture(1, 65)
    with pytest.raises(ValueError, match="d <= 64"):
        kernels.gmm_component_log_prob(random_patches(2, 65).cuda(), u65.cuda(), c65.cuda(), mu65.cuda())


def test_kernel_argument_errors(kernels):
    u, c, mu, _, _ = random_mixture(3, 5)
    x = random_patches(4, 5)
    with pytest.raises(ValueError, match="prec_chol"):
        kernels.gmm_component_log_prob(x, u[:, :4], c, mu)
    with pytest.raises(TypeError, match="means.dtype"):
        kernels.gmm_mixture_log_prob(x, u, c, mu.float(), True)
    with pytest.raises(ValueError, match="dimension"):
        kernels.gmm_component_log_prob(x[:, :4], u, c, mu)


def test_public_op_uses_kernels_when_extension_backend(kernels):
    if patchreg.get_backend() != "extension":
        pytest.skip("the reference backend is selected")
    u, c, mu, _, _ = random_mixture(4, 9)
    x = random_patches(50, 9)
    torch.testing.assert_close(gmm_log_prob(x, u, c, mu), ref.gmm_component_log_prob(x, u, c, mu))


# --- argument checks of the public op --------------------------------------------------------


def test_public_op_bad_inputs():
    u, c, mu, _, _ = random_mixture(3, 5)
    x = random_patches(4, 5)
    with pytest.raises(ValueError, match="patches has dimension 4"):
        gmm_log_prob(x[:, :4], u, c, mu)
    with pytest.raises(ValueError, match="prec_chol must have shape"):
        gmm_log_prob(x, u[:2], c, mu)
    with pytest.raises(ValueError, match="log_const must have shape"):
        gmm_log_prob(x, u, c[:2], mu)
    with pytest.raises(TypeError, match="means.dtype"):
        gmm_log_prob(x, u, c, mu.float())
    with pytest.raises(TypeError, match="patches must be a torch.Tensor"):
        gmm_log_prob(x.numpy(), u, c, mu)
    with pytest.raises(ValueError, match="patches must be 2-D"):
        gmm_log_prob(x[None], u, c, mu)
    with pytest.raises(ValueError, match="C\\*p\\*p=4"):
        gmm_log_prob_image(torch.rand(1, 1, 6, 6, dtype=F64), 2, u, c, mu)


# --- the GMM model --------------------------------------------------------------------------


def sample_known_mixture(n, seed=0):
    """Samples of a 3-component 2-D mixture with distinct weights, means and covariances."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    means = torch.tensor([[0.0, 0.0], [4.0, 1.0], [-3.0, 4.0]], dtype=F64)
    covs = torch.tensor([[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.8]], [[0.6, 0.0], [0.0, 0.2]]], dtype=F64)
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    z = torch.randn(n, 2, generator=g, dtype=F64)
    x = means[labels] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(covs)[labels], z)
    return x, weights, means, covs


def test_em_recovers_known_mixture():
    x, weights, means, covs = sample_known_mixture(20000)
    model = GMM(3, patch_size=1, channels=2, remove_mean=False)
    model.fit(x, n_iter=100, batch_size=5000, tol=1e-8, seed=0, progress=False)
    order = [int(torch.cdist(m[None], model.means).argmin()) for m in means]
    assert sorted(order) == [0, 1, 2]
    torch.testing.assert_close(model.weights[order], weights, atol=0.02, rtol=0)
    torch.testing.assert_close(model.means[order], means, atol=0.06, rtol=0)
    torch.testing.assert_close(model.covariances[order], covs, atol=0.06, rtol=0)
    history = torch.tensor(model.history)
    assert (history[1:] - history[:-1] >= -1e-9).all(), "EM log-likelihood must not decrease"


@pytest.mark.parametrize("resp_floor", [0.0, 1e-12])
def test_em_statistics_match_dense_sums(resp_floor):
    """The grouped sparse second moments equal the dense float64 sums over the responsibilities kept."""
    from patchreg.priors.gmm import _Statistics

    g = torch.Generator().manual_seed(3)
    n, K, d = 700, 9, 5
    x = torch.randn(n, d, generator=g, dtype=F64)
    logits = 40 * torch.randn(n, K, generator=g, dtype=F64)  # sharp: many responsibilities under 1e-12
    resp = torch.softmax(logits, dim=1)
    resp[:, 4] = 0.0  # a component with no responsibility at all
    resp = resp / resp.sum(1, keepdim=True)
    stats = _Statistics.zeros(K, d, "cpu", resp_floor=resp_floor)
    for rows in (slice(0, 300), slice(300, n)):  # two batches accumulate
        stats.add(x[rows], resp[rows], loglik_sum=1.0)
    kept = torch.where(resp > resp_floor, resp, 0.0)
    if resp_floor > 0:
        assert (kept == 0).sum() > (resp == 0).sum(), "the case must drop some pairs"
    torch.testing.assert_close(stats.resp_sum, kept.sum(0), rtol=1e-13, atol=0)
    torch.testing.assert_close(stats.first, kept.T @ x, rtol=1e-12, atol=1e-13)
    dense = torch.einsum("nk,ni,nj->kij", kept, x, x)
    torch.testing.assert_close(stats.second_matrix(), dense, rtol=1e-12, atol=1e-13)
    assert torch.equal(stats.second_matrix(), stats.second_matrix().transpose(1, 2))
    assert stats.count == n and stats.mean_loglik == pytest.approx(2.0 / n)
    # what the floor drops is below it per pair, so the statistics move by at most n * floor
    full = _Statistics.zeros(K, d, "cpu", resp_floor=0.0)
    full.add(x, resp, 0.0)
    assert (full.resp_sum - stats.resp_sum).abs().max() <= n * resp_floor + 1e-12


@pytest.mark.parametrize("resp_floor", [0.0, 1e-12])
@pytest.mark.parametrize("comp_dtype", [torch.float32, F64])
def test_statistics_from_log_densities_match_dense_softmax(resp_floor, comp_dtype):
    """`add_log_densities` (the E-step's path: candidates picked in comp's dtype, float64 on them) sums what
    `add` sums from the dense float64 softmax of the same log-densities, log-likelihood included."""
    from patchreg.priors.gmm import _Statistics

    g = torch.Generator().manual_seed(4)
    n, K, d = 900, 11, 6
    x = torch.randn(n, d, generator=g, dtype=F64)
    comp = (60 * torch.randn(n, K, generator=g, dtype=F64) - 100).to(comp_dtype)  # sharp rows, far from 0
    comp[5, :] = comp[5, 0]  # a row of exact ties
    comp[:, 7] = -torch.inf  # a component of zero weight
    dense = _Statistics.zeros(K, d, "cpu", resp_floor=resp_floor)
    fast = _Statistics.zeros(K, d, "cpu", resp_floor=resp_floor)
    for rows in (slice(0, 400), slice(400, n)):
        c64 = comp[rows].to(F64)
        loglik = torch.logsumexp(c64, dim=1)
        dense.add(x[rows], torch.exp(c64 - loglik[:, None]), float(loglik.sum()))
        fast.add_log_densities(x[rows], comp[rows])
    if resp_floor > 0:
        resp = torch.softmax(comp.to(F64), dim=1)
        assert ((resp > 0) & (resp <= resp_floor)).sum() > 100, "the case must drop some pairs"
    assert fast.count == dense.count == n
    assert fast.loglik_sum == pytest.approx(dense.loglik_sum, rel=1e-13)
    for name in ("resp_sum", "first", "second"):  # sums and exponents reordered: 1e-11 of the largest entry
        a, b = getattr(fast, name), getattr(dense, name)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-11 * float(b.abs().max()))
    assert fast.resp_sum[7] == 0 and fast.resp_sum.sum() == pytest.approx(n, rel=1e-12)


def test_statistics_from_log_densities_check_rows():
    from patchreg.priors.gmm import _Statistics

    stats = _Statistics.zeros(3, 2, "cpu")
    with pytest.raises(ValueError, match="x has 4 rows but comp has 5"):
        stats.add_log_densities(torch.zeros(4, 2, dtype=F64), torch.zeros(5, 3))


def test_fit_keeps_small_init_clusters_distinct():
    """k-means clusters with at most d patches used to share one fallback mean (zero) and the
    global covariance: exact twins, which EM keeps identical for ever (the shipped K = 200 GMM had
    154 components in 29 groups of twins, 75 distinct). Each must start from its own centre."""
    x = torch.randn(300, 9, generator=torch.Generator().manual_seed(0), dtype=F64)
    model = GMM(40, patch_size=3, remove_mean=False)
    model._initialize(x, kmeans_iter=5, floor=1e-6, seed=0)
    sizes = torch.bincount(torch.cdist(x, model.means).argmin(1), minlength=40)
    assert (sizes <= 9).any(), "the case needs clusters too small for a covariance"
    gaps = torch.cdist(model.means, model.means) + torch.eye(40, dtype=F64)
    assert gaps.min() > 1e-3
    model.fit(x, n_iter=3, tol=0, seed=0, progress=False)
    gaps = torch.cdist(model.means, model.means) + torch.eye(40, dtype=F64)
    assert gaps.min() > 1e-3
    assert model.hyperparameters["init_size"] == 500 * 40  # the default, recorded
    assert model.twin_groups() == []


def test_twin_groups_finds_identical_components():
    model = GMM(5, patch_size=1, channels=2, remove_mean=False)
    model.means.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1e-3]], dtype=F64))
    assert model.twin_groups() == [[0, 2], [1, 3]]  # 4 differs by 1e-3 from 0 and 2
    model.covariances[2] *= 2.0
    assert model.twin_groups() == [[1, 3]]


class ReplayableStream:
    """An iterable of patch batches with reset(), like patchreg.data.PatchSampler."""

    def __init__(self, x, batch):
        self.x, self.batch, self.resets = x, batch, 0

    def reset(self):
        self.resets += 1

    def __iter__(self):
        for start in range(0, self.x.shape[0], self.batch):
            yield self.x[start : start + self.batch]


def test_streamed_fit_equals_tensor_fit():
    x, *_ = sample_known_mixture(3000, seed=1)
    a = GMM(3, 1, 2, remove_mean=False).fit(x, n_iter=5, batch_size=512, tol=0, seed=3, progress=False)
    stream = ReplayableStream(x, 700)
    b = GMM(3, 1, 2, remove_mean=False).fit(
        stream, n_iter=5, patches_per_iter=3000, batch_size=512, tol=0, seed=3, progress=False
    )
    assert stream.resets >= 5
    for key in ("weights", "means", "covariances"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key), rtol=1e-9, atol=1e-12)


def test_fit_on_patch_sampler_with_mean_removal():
    from patchreg.data import PatchSampler

    image = torch.rand(40, 40, generator=torch.Generator().manual_seed(0), dtype=F64)
    sampler = PatchSampler([image], 3, batch_size=500, seed=0)
    model = GMM(4, 3, remove_mean=True).fit(sampler, n_iter=3, patches_per_iter=2000, seed=0, progress=False)
    # Mean-removed patches: means sum to zero and the constant patch has only the floor variance.
    torch.testing.assert_close(model.means.sum(1), torch.zeros(4, dtype=F64), atol=1e-6, rtol=0)
    ones = torch.ones(9, dtype=F64) / 3
    assert (ones @ model.covariances @ ones < 1e-5).all()
    assert len(model.history) == 3


def test_fit_streams_without_holding_all_patches():
    """An infinite stream: only patches_per_iter are drawn per iteration, batch by batch."""
    drawn = []

    def infinite():
        g = torch.Generator().manual_seed(0)
        while True:
            batch = torch.randn(100, 4, generator=g, dtype=F64)
            drawn.append(batch.shape[0])
            yield batch

    class Stream:
        def __iter__(self):
            return infinite()

    model = GMM(2, 2, remove_mean=False)
    model.fit(Stream(), n_iter=2, patches_per_iter=1000, batch_size=300, init_size=500, tol=0, progress=False)
    assert sum(drawn) <= 500 + 100 + 2 * (1000 + 100)
    with pytest.raises(ValueError, match="patches_per_iter is required"):
        GMM(2, 2).fit(Stream(), n_iter=1, progress=False)


def test_log_prob_and_nll():
    x, *_ = sample_known_mixture(2000)
    model = GMM(3, 1, 2, remove_mean=False).fit(x, n_iter=10, seed=0, progress=False)
    lp = model.log_prob(x[:10])
    expected = torch.logsumexp(
        torch.stack(
            [
                torch.distributions.MultivariateNormal(model.means[k], model.covariances[k]).log_prob(x[:10])
                + model.weights[k].log()
                for k in range(3)
            ],
            1,
        ),
        1,
    )
    torch.testing.assert_close(lp, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(model.log_prob(x[:10].float()), expected.float(), rtol=1e-4, atol=1e-4)

    image_model = GMM(3, 2, remove_mean=True)
    image_model.fit(torch.randn(500, 4, dtype=F64), n_iter=3, seed=0, progress=False)
    img = torch.rand(2, 1, 6, 7, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    nll_mean, nll_sum = image_model.nll(img), image_model.nll(img, reduction="sum")
    assert nll_mean.shape == (2,)
    torch.testing.assert_close(nll_sum, nll_mean * 5 * 6)
    patches = patchreg.extract_patches(img.detach(), 2)
    torch.testing.assert_close(nll_mean, -image_model.log_prob(patches).mean(1))
    torch.autograd.gradcheck(lambda v: image_model.nll(v), (img,))


def test_save_load_round_trip_and_errors(tmp_path):
    model = GMM(3, 2, remove_mean=True).fit(torch.randn(400, 4, dtype=F64), n_iter=2, seed=0, progress=False)
    path = model.save(tmp_path / "gmm.safetensors")
    loaded = GMM.load(path, patch_size=2)
    for key in ("weights", "means", "covariances"):
        assert torch.equal(getattr(model, key), getattr(loaded, key))
    assert (loaded.patch_size, loaded.remove_mean, loaded.n_components) == (2, True, 3)
    assert loaded.hyperparameters["seed"] == 0 and loaded.history == model.history
    from patchreg.io import load_checkpoint, save_checkpoint

    tensors, header = load_checkpoint(path, "gmm")
    assert set(tensors) == {"weights", "means", "covariances"} and header["patch_size"] == 2
    with pytest.raises(ValueError, match="patch_size=3 was requested"):
        GMM.load(path, patch_size=3)
    save_checkpoint(tmp_path / "flow.safetensors", "flow", {"w": torch.zeros(1)}, {"patch_size": 2})
    with pytest.raises(ValueError, match="expected 'gmm'"):
        GMM.load(tmp_path / "flow.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupted"):
        GMM.load(tmp_path / "bad.safetensors")
    save_checkpoint(tmp_path / "short.safetensors", "gmm", {"weights": tensors["weights"]}, header)
    with pytest.raises(ValueError, match="lacks the tensor 'means'"):
        GMM.load(tmp_path / "short.safetensors")
    with pytest.raises(FileNotFoundError):
        GMM.load(tmp_path / "missing.safetensors")


def test_training_resumes_from_checkpoint(tmp_path):
    x, *_ = sample_known_mixture(1500, seed=2)
    ckpt = tmp_path / "run.safetensors"
    full = GMM(3, 1, 2, remove_mean=False).fit(x, n_iter=6, tol=0, seed=1, progress=False)
    GMM(3, 1, 2, remove_mean=False).fit(x, n_iter=3, tol=0, seed=1, checkpoint=ckpt, progress=False)
    assert GMM.load(ckpt).hyperparameters["iterations_done"] == 3
    resumed = GMM(3, 1, 2, remove_mean=False).fit(
        x, n_iter=6, tol=0, seed=1, checkpoint=ckpt, resume=True, progress=False
    )
    assert len(resumed.history) == 6
    for key in ("weights", "means", "covariances"):
        torch.testing.assert_close(getattr(resumed, key), getattr(full, key), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="cannot resume"):
        GMM(4, 1, 2, remove_mean=False).fit(x, n_iter=6, checkpoint=ckpt, resume=True, progress=False)


def test_gmm_bad_inputs():
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        GMM(0, 3)
    with pytest.raises(TypeError, match="patch_size must be an int"):
        GMM(2, 2.5)
    model = GMM(2, 2)
    with pytest.raises(ValueError, match="covariance_floor must be > 0"):
        model.fit(torch.randn(100, 4), covariance_floor=0, progress=False)
    with pytest.raises(ValueError, match="dimension 5"):
        model.fit(torch.randn(100, 5), progress=False)
    with pytest.raises(ValueError, match="at least n_components=2"):
        model.fit(torch.randn(1, 4), progress=False)
    with pytest.raises(TypeError, match="source must be"):
        model.fit(3, progress=False)
    with pytest.raises(ValueError, match="last dim"):
        model.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match="has 2 channels"):
        model.nll(torch.rand(1, 2, 5, 5))
    with pytest.raises(ValueError, match="reduction"):
        model.nll(torch.rand(1, 1, 5, 5), reduction="max")
