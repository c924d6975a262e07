"""PatchNR's opt-in bfloat16 path (`PatchNR(precision="bfloat16")`, patchreg.priors.flow_lowp).

Accuracy is measured against the float64 flow: the log-density to a stated tolerance on random patches,
the x-gradient by its relative error and cosine. The float32 default must be exactly what it was.
"""

from __future__ import annotations

import pytest
import torch

from patchreg import extract_patches_at
from patchreg.pretrained import resolve_checkpoint
from patchreg.priors import PatchFlow, PatchNR
from patchreg.priors.flow_lowp import Bfloat16FlowLogProb, _relu_, _relu_grad_

# Tolerances of the bfloat16 log-density, in nats per patch, against float64 (measured: shipped flow on
# uniform random 6x6 patches, log p from -137 to +60: max 0.33, mean 0.027; small random flows: max 0.08).
# Only the two hidden activations and the middle weight matrix of each subnet are rounded to bfloat16.
LOGP_MAX_ERR = 0.6
LOGP_MEAN_ERR = 0.06
GRAD_REL_ERR = 0.06  # ||g_bf16 - g_64|| / ||g_64|| (measured 0.025-0.03)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def shipped():
    return PatchFlow.load(resolve_checkpoint("pretrained:flow")).float()


def _random_flow(mixing: str, seed: int = 1) -> PatchFlow:
    flow = PatchFlow(patch_size=3, n_blocks=2, hidden=32, mixing=mixing, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if not (name.endswith("lower") or name.endswith("upper")):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return flow


def _image(seed=0, size=20):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(1, 1, 5, 5, generator=g), size=(size, size), mode="bilinear")
    return (smooth + 0.05 * torch.randn(1, 1, size, size, generator=g)).clamp(0, 1)


def _logp_errors(flow: PatchFlow, patches: torch.Tensor):
    f64 = _copy(flow).double()
    exact = f64.log_prob(patches.double())
    low = Bfloat16FlowLogProb(flow).log_prob(patches.float())
    assert low.dtype == torch.float32 and low.shape == exact.shape
    return (low.double() - exact).abs()


def _copy(flow: PatchFlow) -> PatchFlow:
    twin = PatchFlow(**flow.config)
    twin.load_state_dict(flow.state_dict())
    return twin


def test_log_prob_agrees_with_float64_on_random_patches_shipped_flow(shipped):
    patches = torch.rand(3000, shipped.dim, generator=torch.Generator().manual_seed(0))
    err = _logp_errors(shipped, patches)
    assert err.max() < LOGP_MAX_ERR and err.mean() < LOGP_MEAN_ERR, (err.max(), err.mean())


@pytest.mark.parametrize("mixing", ["permutation", "lu"])
def test_log_prob_agrees_with_float64_random_flows(mixing):
    flow = _random_flow(mixing)
    patches = torch.rand(500, flow.dim, generator=torch.Generator().manual_seed(2))
    err = _logp_errors(flow, patches)
    assert err.max() < 0.2 and err.mean() < 0.03, (err.max(), err.mean())


def test_gradient_agrees_with_float64(shipped):
    patches = torch.rand(2000, shipped.dim, generator=torch.Generator().manual_seed(1))
    p64 = patches.double().requires_grad_(True)
    (g64,) = torch.autograd.grad(_copy(shipped).double().log_prob(p64).sum(), p64)
    p16 = patches.clone().requires_grad_(True)
    (g16,) = torch.autograd.grad(Bfloat16FlowLogProb(shipped).log_prob(p16).sum(), p16)
    rel = float((g16.double() - g64).norm() / g64.norm())
    cos = float(torch.nn.functional.cosine_similarity(g16.double().flatten(), g64.flatten(), dim=0))
    assert rel < GRAD_REL_ERR and cos > 0.998, (rel, cos)


def test_patchnr_bfloat16_nll_close_to_float32(shipped):
    x = _image().requires_grad_(True)
    r32 = PatchNR(shipped, n_patches=500, seed=4)
    r16 = PatchNR(shipped, n_patches=500, seed=4, precision="bfloat16")
    assert r16.precision == "bfloat16"
    a, b = r32.nll(x), r16.nll(x)
    assert b.shape == (1,) and b.dtype == x.dtype
    assert abs(float((a - b).detach())) < LOGP_MEAN_ERR  # a mean over 500 patches
    (ga,) = torch.autograd.grad(a.sum(), x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert float((ga - gb).norm() / ga.norm()) < GRAD_REL_ERR


def test_float32_default_is_unchanged(shipped):
    """The default, and precision="float32", compute -mean log p of the flow itself, bit for bit."""
    x = _image(seed=3).requires_grad_(True)
    default = PatchNR(shipped, n_patches=300, seed=7)
    explicit = PatchNR(shipped, n_patches=300, seed=7, precision="float32")
    assert default.precision == "float32" and default._low is None
    positions = default.draw_positions(1, 20, 20)
    default.reset()
    patches = extract_patches_at(x, positions, shipped.patch_size).reshape(300, -1)
    expected = (-shipped.log_prob(patches)).reshape(1, 300).mean(1)  # the code before `precision` existed
    got = default.nll(x)
    assert torch.equal(got, expected)
    assert torch.equal(explicit.nll(x), got)
    (g_exp,) = torch.autograd.grad(expected.sum(), x)
    default.reset()
    (g_got,) = torch.autograd.grad(default.nll(x).sum(), x)
    assert torch.equal(g_got, g_exp)
    assert all(w.requires_grad for w in shipped.parameters())  # flags restored as before


@pytest.mark.parametrize("bad", ["float16", "bf16", "Float32", "", None, torch.bfloat16, 16])
def test_bad_precision_is_a_value_error_naming_the_argument(shipped, bad):
    with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bfloat16'\)"):
        PatchNR(shipped, n_patches=10, precision=bad)


def test_weights_are_cast_once_and_not_followed(shipped):
    flow = _copy(shipped).float()
    prior = PatchNR(flow, n_patches=200, seed=1, precision="bfloat16")
    x = _image()
    before = prior.nll(x)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(0.5)  # the snapshot taken at construction does not see this
    prior.reset()
    assert torch.equal(prior.nll(x), before)


def test_chunked_bfloat16_equals_unchunked(shipped):
    x = _image(seed=5).requires_grad_(True)
    whole = PatchNR(shipped, n_patches=300, seed=2, precision="bfloat16")
    chunked = PatchNR(shipped, n_patches=300, seed=2, precision="bfloat16", chunk_size=128)
    a, b = whole.nll(x), chunked.nll(x)
    assert torch.allclose(a, b, rtol=0, atol=1e-4)
    (ga,) = torch.autograd.grad(a.sum(), x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    assert torch.allclose(ga, gb, rtol=1e-3, atol=1e-6)


def test_blocks_give_the_whole_result_and_memory_does_not_grow_with_n(shipped):
    patches = torch.rand(700, shipped.dim, generator=torch.Generator().manual_seed(3))
    whole = Bfloat16FlowLogProb(shipped, block_rows=700)
    blocked = Bfloat16FlowLogProb(shipped, block_rows=128)  # 5 full blocks and a short one
    results = []
    for model in (whole, blocked):
        x = patches.clone().requires_grad_(True)
        logp = model.log_prob(x)
        (g,) = torch.autograd.grad(logp.sum(), x)
        results.append((logp.detach(), g))
    (la, ga), (lb, gb) = results
    # the same arithmetic row by row, up to the matmul's blocking of its float32 sums
    assert torch.allclose(la, lb, rtol=0, atol=0.05)
    assert float((ga - gb).norm() / ga.norm()) < 0.01
    held = blocked.memory_bytes()
    assert 0 < held
    blocked.log_prob(torch.rand(3000, shipped.dim))  # more rows, same blocks
    assert blocked.memory_bytes() == held
    assert whole.memory_bytes() > held  # it holds 700 rows per block
    blocked.release()
    assert blocked.memory_bytes() == 0
    assert torch.equal(blocked.log_prob(patches), lb)  # allocated again after release, same numbers


def test_gradient_is_the_stored_rows_scaled_by_the_incoming_weights(shipped):
    patches = torch.rand(50, shipped.dim, generator=torch.Generator().manual_seed(4))
    model = Bfloat16FlowLogProb(shipped, block_rows=16)
    x = patches.clone().requires_grad_(True)
    logp = model.log_prob(x)
    (g1,) = torch.autograd.grad(logp.sum(), x, retain_graph=True)
    w = torch.linspace(-2, 3, 50)
    (gw,) = torch.autograd.grad((w * logp).sum(), x)  # a second backward through the same graph
    assert torch.allclose(gw, w[:, None] * g1, rtol=1e-6, atol=0)
    with torch.no_grad():
        assert torch.equal(model.log_prob(patches), logp.detach())  # forward only: same log p


@pytest.mark.parametrize("mixing", ["permutation", "lu"])
def test_gradient_agrees_with_float64_random_flows(mixing):
    flow = _random_flow(mixing)
    patches = torch.rand(400, flow.dim, generator=torch.Generator().manual_seed(5))
    p64 = patches.double().requires_grad_(True)
    (g64,) = torch.autograd.grad(_copy(flow).double().log_prob(p64).sum(), p64)
    p16 = patches.clone().requires_grad_(True)
    (g16,) = torch.autograd.grad(Bfloat16FlowLogProb(flow, block_rows=64).log_prob(p16).sum(), p16)
    rel = float((g16.double() - g64).norm() / g64.norm())
    assert rel < GRAD_REL_ERR, rel


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_bad_block_rows_is_a_value_error_naming_the_argument(shipped, bad):
    with pytest.raises(ValueError, match="block_rows must be an integer >= 1"):
        Bfloat16FlowLogProb(shipped, block_rows=bad)


def test_float64_image_gets_float64_nll(shipped):
    x = _image().double().requires_grad_(True)
    r = PatchNR(shipped, n_patches=100, seed=0, precision="bfloat16").nll(x)
    assert r.dtype == torch.float64
    (g,) = torch.autograd.grad(r.sum(), x)
    assert g.dtype == torch.float64 and bool(torch.isfinite(g).all())


def test_int16_relu_tricks_match_bfloat16_relu():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 40, generator=g).to(torch.bfloat16)
    a[0, :4] = torch.tensor([-0.0, 0.0, float("inf"), float("-inf")], dtype=torch.bfloat16)
    expected = torch.relu(a)
    out = _relu_(a.clone())
    assert torch.equal(out, expected) and not bool(torch.signbit(out).any())
    grad = torch.randn(64, 40, generator=g).to(torch.bfloat16)
    want = torch.ops.aten.threshold_backward(grad, expected, 0)
    _relu_grad_(grad, expected)
    assert torch.equal(grad, want)
