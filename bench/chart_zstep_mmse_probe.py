"""Exploratory probe (issue 10): a posterior-mean (MMSE) z-step for the chart prior's HQS, not in the library yet.

Per patch and (chart, scale) pair: z ~ N(z1, (1.5 L)(1.5 L)^T) around the Gauss-Newton point z1 of
`_tangent_map_step` (L L^T the inverse GN Hessian), S importance samples weighted by the latent prior (the
compact prior's energy, "true", or the Gaussian of the GN step, "gauss") times the likelihood of the patch;
the estimate is the weighted mean of D(z) plus the Wiener-shrunk residual. "full": the off-manifold part is a
full per-chart covariance (the responsibility-weighted covariance of c/s - D(E(c/s)) over 20,000 training patches)
instead of the isotropic sigma_k^2. ML=1: the pairs' posterior over the selector's TOPM candidates by the
importance-sampled marginal likelihood (else the selector's weights). 4 validation images, sigma 25, seeded.

    ML=1 TOPM=4 OMP_NUM_THREADS=1 python bench/chart_zstep_mmse_probe.py pretrained:charts 16:true:3:1.5:full

Spec per run: S:target:tau:inflate:full|iso (comma-separated runs); printed: per-image PSNR, mean, seconds.
Results: bench/RESULTS.md, "A posterior-mean z-step".
"""
import math, sys, time, statistics
from pathlib import Path
import torch
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from patchreg.data import load_train400, to_tensor
from patchreg.metrics import psnr
from patchreg.pretrained import resolve_checkpoint
from patchreg.priors import PatchCharts
from patchreg.priors.chart_prior import _chart_entries, WEIGHT_FLOOR, DENOISE_CHUNK
from patchreg.priors.hqs import half_quadratic_splitting, default_betas
from patchreg.ops.gmm import gmm_log_prob

ckpt = sys.argv[1]
model = PatchCharts.load(resolve_checkpoint(ckpt))
K = model.n_charts
import os  # noqa: E401
ML = os.environ.get("ML", "0") == "1"
CONST = model.pair_log_weights().float()
sig = model.mixture.sigma.detach().double().expand(K)
prior = model.mixture.prior
from patchreg.data import PatchSampler
from patchreg.priors.chart_prior import pair_responsibilities
sampler = PatchSampler(load_train400("train"), 6, 1024, seed=11, dtype=torch.float32)
coords = model.coords(sampler.sample(20000, torch.Generator().manual_seed(11)))
Wr = pair_responsibilities(model, coords)
n = coords.shape[1]
S2 = torch.zeros(K, n, n, dtype=torch.float64); M = torch.zeros(K, dtype=torch.float64)
with torch.no_grad():
    for p, (k, j) in enumerate(model.pairs().tolist()):
        w = Wr[:, p]; keep = w > 1e-4
        if not keep.any(): continue
        x = coords[keep] / float(model.scales[j])
        r = (x - model.mixture.charts[k].decode(model.mixture.charts[k].encode(x))).double()
        ww = w[keep].double(); S2[k] += (r * ww[:, None]).T @ r; M[k] += ww.sum()
cov = S2 / M.clamp_min(1e-12)[:, None, None]
lam, V = torch.linalg.eigh(cov); lam = lam.clamp_min(1e-6)
for k in range(K):
    if M[k] < 1.0: lam[k] = sig[k] ** 2; V[k] = torch.eye(n, dtype=torch.float64)
CURRENT = {}

@torch.no_grad()
def mmse_step(chart, c, var, tau2, S, gen, target, inflate):
    z0 = chart.encode(c)
    d0, J = chart.decode_with_jacobian(z0)
    d = z0.shape[1]
    eye = torch.eye(d, dtype=c.dtype)
    gram = J.mT @ J / var[:, :, None] + eye / tau2
    rhs = (J.mT @ (c - d0)[:, :, None]).squeeze(-1) / var - z0 / tau2
    z1 = z0 + torch.linalg.solve(gram, rhs)
    L = torch.linalg.cholesky(torch.linalg.inv(gram))  # proposal covariance factor
    R = c.shape[0]
    eps = torch.randn(S, R, d, generator=gen, dtype=c.dtype)
    zs = z1[None] + inflate * (L[None] @ eps[..., None])[..., 0]  # (S, R, d)
    dz = zs.reshape(S * R, d)
    dec = chart.decode(dz).reshape(S, R, -1)
    if FULL:
        Vk, lk = CURRENT["V"], CURRENT["lam"]
        res = (c[None] - dec) @ Vk  # (S, R, n) in the eigenbasis
        tot = lk[None, None, :] + CURRENT["v"][None]  # (1, R, n)
        loglik = -0.5 * (res ** 2 / tot).sum(-1) - 0.5 * torch.log(2 * math.pi * tot).sum(-1)
    else:
        loglik = -((c[None] - dec) ** 2).sum(-1) / (2 * var[None, :, 0])
    if target == "true":
        logprior = -prior.energy(dz).reshape(S, R) - prior.log_z
    else:
        logprior = -(zs ** 2).sum(-1) / (2 * tau2)
    logq = -(eps ** 2).sum(-1) / 2 - 0.5 * d * math.log(2 * math.pi) - torch.log(inflate * torch.diagonal(L, dim1=1, dim2=2)).sum(-1)[None]
    logw = loglik + logprior - logq
    w = torch.softmax(logw, dim=0)  # (S, R)
    logml = torch.logsumexp(logw, dim=0) - math.log(S)
    if FULL:
        Vk, lk = CURRENT["V"], CURRENT["lam"]
        gain = lk[None, None, :] / (lk[None, None, :] + CURRENT["v"][None])
        est = dec + ((((c[None] - dec) @ Vk) * gain) @ Vk.T)
        return (w[..., None] * est).sum(0), logml
    return (w[..., None] * dec).sum(0)

def denoise(patches, noise_var, S, target, tau, inflate, gen):
    dtype = patches.dtype
    means = patches.mean(dim=1, keepdim=True)
    c_all = model.coords(patches).contiguous()
    N = c_all.shape[0]
    pr = model.pairs()
    scores = gmm_log_prob(c_all, *model.selector_params(dtype, noise_var))
    top_scores, selection = scores.topk(int(__import__("os").environ.get("TOPM", "1")), dim=1)
    weights = torch.softmax(top_scores, dim=1)
    out = torch.zeros_like(c_all); kept = c_all.new_zeros(N)
    m = selection.shape[1]
    EST = c_all.new_zeros(N, m, c_all.shape[1]); LML = c_all.new_full((N, m), -math.inf)
    for k, rows, slots, pair_idx in _chart_entries(model, N, selection, c_all.device):
        w = weights[rows, slots]
        chart = model.mixture.charts[k]
        for part in torch.arange(rows.numel()).split(DENOISE_CHUNK):
            r, wp = rows[part], w[part]
            scale = model.scales.to(dtype)[pr[pair_idx[part], 1]][:, None]
            c = c_all.index_select(0, r) / scale
            var = float(sig[k]) ** 2 + noise_var / scale ** 2
            CURRENT.update(V=V[k].to(dtype), lam=lam[k].to(dtype), v=(noise_var / scale ** 2).expand(-1, n))
            on, logml = mmse_step(chart, c, var, tau * model.latent_variance(), S, gen, target, inflate)
            shrink = float(sig[k]) ** 2 / (float(sig[k]) ** 2 + noise_var / scale ** 2)
            est = on if FULL else on + shrink * (c - on)
            if ML:
                EST[r, slots[part]] = scale * est
                LML[r, slots[part]] = logml + CONST[pair_idx[part]]
            else:
                out.index_add_(0, r, wp[:, None] * scale * est)
                kept.index_add_(0, r, wp)
    if ML:
        post = torch.softmax(LML, dim=1)
        return model.patches_from_coords((post[:, :, None] * EST).sum(1), means)
    return model.patches_from_coords(out / kept[:, None], means)

images = [to_tensor(im, torch.float32) for im in load_train400("validation")[:4]]
sigma = 25 / 255
gen0 = torch.Generator().manual_seed(0)
noisy = [im + sigma * torch.randn(im.shape, generator=gen0) for im in images]
for spec in sys.argv[2].split(","):
    S, target, tau, inflate, full = spec.split(":")
    FULL = full == "full"
    S, tau, inflate = int(S), float(tau), float(inflate)
    gen = torch.Generator().manual_seed(1)
    t = time.time(); vals = []
    for y, x in zip(noisy, images):
        out = half_quadratic_splitting(y, None, lambda p, b: denoise(p, 1.0 / b, S, target, tau, inflate, gen), 6, 1,
                                       default_betas(sigma), 36 / sigma**2)
        vals.append(float(psnr(out.clamp(0, 1), x)[0]))
    print(spec, [round(v, 2) for v in vals], round(statistics.mean(vals), 3), round(time.time() - t, 1), flush=True)
