"""PatchFlow (GLOW coupling flow on patches), its training and checkpoints, and the PatchNR regularizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from patchreg import extract_patches, io
from patchreg.priors.coupling import AffineCoupling, CouplingFlow, InvertibleLinearLU, soft_clamp
from patchreg.priors.flow import PatchFlow
from patchreg.priors.patchnr import PatchNR

MIXINGS = ("permutation", "lu")


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _randomize(module: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Non-trivial weights (zero-initialised output layers would make every coupling the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("lower") or name.endswith("upper"):
                continue  # keep the LU factors well conditioned
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _small_flow(patch_size=2, channels=1, mixing="permutation", n_blocks=3, hidden=16, seed=0) -> PatchFlow:
    flow = PatchFlow(patch_size, n_blocks=n_blocks, hidden=hidden, mixing=mixing, channels=channels, seed=seed)
    return flow.double()


class GaussianStream:
    """A seeded sampler of N(mean, std^2 I) vectors with the PatchSampler interface (sample, reset)."""

    def __init__(self, dim, mean=0.5, std=0.1, seed=0, nan_after=None):
        self.dim, self.mean, self.std, self.seed, self.nan_after = dim, mean, std, seed, nan_after
        self.generator = torch.Generator()
        self.reset()

    def reset(self):
        self.generator.manual_seed(self.seed)
        self.drawn = 0

    def sample(self, n):
        x = self.mean + self.std * torch.randn(n, self.dim, generator=self.generator)
        self.drawn += 1
        if self.nan_after is not None and self.drawn > self.nan_after:
            x[0, 0] = float("nan")
        return x


# --- coupling blocks ------------------------------------------------------------------------------


def test_soft_clamp_is_bounded_with_slope_two_over_pi():
    s = torch.linspace(-100, 100, 2001, dtype=torch.float64)
    out = soft_clamp(s, 1.6)
    assert out.abs().max() < 1.6
    assert out.abs().max() > 1.55
    slope = (soft_clamp(torch.tensor(1e-6, dtype=torch.float64), 1.6) / 1e-6).item()
    assert slope == pytest.approx(2 / math.pi, rel=1e-9)


@pytest.mark.parametrize("mixing", MIXINGS)
@pytest.mark.parametrize("n", [2, 5, 36])
def test_coupling_flow_is_invertible_float64(mixing, n):
    net = CouplingFlow(n, n_blocks=3, hidden=24, clamp=1.6, mixing=mixing).double()
    _randomize(net, std=0.15)
    x = torch.randn(64, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    z, logdet = net(x)
    x_back, logdet_inv = net.inverse(z)
    assert not torch.allclose(z, x)  # the map is not the identity
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mixing", MIXINGS)
@pytest.mark.parametrize("n", [3, 6])
def test_logdet_matches_autograd_jacobian(mixing, n):
    net = CouplingFlow(n, n_blocks=2, hidden=12, mixing=mixing).double()
    _randomize(net, std=0.5)
    x = torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _, logdet = net(x)
    _, logdet_inv = net.inverse(x)
    for i in range(x.shape[0]):
        J = torch.autograd.functional.jacobian(lambda v: net(v[None])[0][0], x[i])
        J_inv = torch.autograd.functional.jacobian(lambda v: net.inverse(v[None])[0][0], x[i])
        assert torch.linalg.slogdet(J)[1].item() == pytest.approx(logdet[i].item(), abs=1e-10)
        assert torch.linalg.slogdet(J_inv)[1].item() == pytest.approx(logdet_inv[i].item(), abs=1e-10)


def test_affine_coupling_scales_stay_within_clamp():
    layer = AffineCoupling(4, hidden=8, clamp=0.5).double()
    _randomize(layer, std=5.0)  # huge raw log-scales
    x = torch.randn(100, 4, dtype=torch.float64)
    _, logdet = layer(x)
    assert logdet.abs().max() < 4 * 0.5  # 4 coordinates, each |s| < clamp


def test_lu_mixing_starts_orthogonal():
    lin = InvertibleLinearLU(7, seed=3).double()
    W = lin.weight()
    torch.testing.assert_close(W @ W.T, torch.eye(7, dtype=torch.float64), rtol=0, atol=1e-6)


# --- density --------------------------------------------------------------------------------------


@pytest.mark.parametrize("mixing", MIXINGS)
def test_log_prob_integrates_to_one_on_2d_toy(mixing):
    # A 2-D flow: 1x1 "patches" with 2 channels. Riemann sum of exp(log p) over a wide grid.
    flow = _small_flow(patch_size=1, channels=2, mixing=mixing, n_blocks=2, hidden=16)
    _randomize(flow, std=0.15)
    t = torch.linspace(-10, 10, 501, dtype=torch.float64)
    grid = torch.cartesian_prod(t, t)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    mass = density.sum().item() * (t[1] - t[0]).item() ** 2
    assert mass == pytest.approx(1.0, abs=2e-3)


def test_log_prob_is_change_of_variables():
    flow = _small_flow(patch_size=2)
    _randomize(flow)
    x = torch.rand(10, 4, dtype=torch.float64)
    z, logdet = flow(x)
    normal = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(flow.log_prob(x), normal + logdet, rtol=0, atol=1e-12)


def test_untrained_flow_is_standard_normal():
    flow = _small_flow(patch_size=2)
    x = torch.randn(10, 4, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1)
    torch.testing.assert_close(flow.log_prob(x), expected, rtol=0, atol=1e-12)


def test_sample_is_seeded_and_inverts_the_flow():
    flow = _small_flow(patch_size=2, mixing="lu")
    _randomize(flow)
    a = flow.sample(50, generator=torch.Generator().manual_seed(4))
    b = flow.sample(50, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    z = torch.randn(50, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(flow(a)[0], z, rtol=0, atol=1e-10)


# --- training --------------------------------------------------------------------------------------


def test_training_lowers_nll_towards_the_true_entropy():
    flow = PatchFlow(patch_size=2, n_blocks=2, hidden=16, seed=0)
    data = GaussianStream(4, mean=0.5, std=0.1, seed=0)
    held_out = GaussianStream(4, mean=0.5, std=0.1, seed=99).sample(2000)
    before = -flow.log_prob(held_out).mean().item()
    flow.fit(data, steps=100, lr=1e-2, batch_size=64, progress=False)
    with torch.no_grad():
        after = -flow.log_prob(held_out).mean().item()
    entropy = 4 * (0.5 * math.log(2 * math.pi * math.e) + math.log(0.1))  # -3.54 nats
    assert before > 4.0
    assert after < entropy + 0.4, (before, after, entropy)
    assert after > entropy - 0.3  # an exact likelihood cannot beat the entropy by much on held-out data


@pytest.mark.parametrize("mixing", MIXINGS)
def test_save_load_round_trip(tmp_path, mixing):
    flow = _small_flow(patch_size=2, mixing=mixing)
    _randomize(flow)
    path = flow.save(tmp_path / "flow.safetensors")
    loaded = PatchFlow.load(path, patch_size=2)
    assert loaded.config == flow.config
    x = torch.rand(20, 4, dtype=torch.float64)
    torch.testing.assert_close(loaded.log_prob(x), flow.log_prob(x), rtol=0, atol=0)


def test_load_errors_are_clear(tmp_path):
    flow = _small_flow(patch_size=2)
    path = flow.save(tmp_path / "flow.safetensors")
    with pytest.raises(ValueError, match=r"2x2 patches, but patch_size=6"):
        PatchFlow.load(path, patch_size=6)
    gmm = io.save_checkpoint(tmp_path / "gmm.safetensors", "gmm", {"weights": torch.ones(3)}, {"patch_size": 2})
    with pytest.raises(ValueError, match="'gmm' checkpoint, expected 'flow'"):
        PatchFlow.load(gmm)
    corrupted = tmp_path / "corrupted.safetensors"
    corrupted.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="corrupted"):
        PatchFlow.load(corrupted)
    no_arch = io.save_checkpoint(tmp_path / "bare.safetensors", "flow", {"model.x": torch.ones(1)}, {})
    with pytest.raises(ValueError, match="architecture key"):
        PatchFlow.load(no_arch)
    with pytest.raises(FileNotFoundError):
        PatchFlow.load(tmp_path / "missing.safetensors")


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    def fresh():
        return PatchFlow(patch_size=2, n_blocks=2, hidden=16, mixing="lu", seed=5)

    straight = fresh()
    straight.fit(GaussianStream(4, seed=1), steps=20, lr=1e-2, batch_size=16, progress=False)

    path = tmp_path / "train.safetensors"
    first = fresh()
    first.fit(GaussianStream(4, seed=1), 10, lr=1e-2, batch_size=16, checkpoint=path, checkpoint_every=5, progress=False)
    resumed = fresh()  # a new process would start from scratch like this
    history = resumed.fit(
        GaussianStream(4, seed=1), 20, lr=1e-2, batch_size=16, checkpoint=path, resume=True, progress=False
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert history[-1][0] == 20
    _, header = io.load_checkpoint(path, "flow")
    assert header["training"]["step"] == 20
    assert header["training"]["seconds"] > 0
    assert PatchFlow.load(path).config == straight.config


def test_validation_history_and_patience_rule(tmp_path):
    """steps is a minimum under patience: training stops at the first validation point where the best
    validation NLL is `patience` steps old (here lr 0.3 makes it worsen, so the best stays early)."""
    val = GaussianStream(4, seed=9).sample(256)
    flow = PatchFlow(patch_size=2, n_blocks=1, hidden=8, seed=0)
    flow.fit(GaussianStream(4, seed=1), 4, lr=1e-2, batch_size=16, validation=val, val_every=2, progress=False)
    assert [h[0] for h in flow.validation_history] == [0, 2, 4]  # the starting weights, then every 2 steps
    with torch.no_grad():
        assert flow.validation_history[-1][1] == pytest.approx(-float(flow.log_prob(val).mean()), rel=1e-6)

    path = tmp_path / "val.safetensors"
    noisy = PatchFlow(patch_size=2, n_blocks=1, hidden=8, seed=0)
    history = noisy.fit(GaussianStream(4, seed=1), 4, lr=0.3, batch_size=16, validation=val, val_every=2,
                        patience=4, max_steps=400, checkpoint=path, progress=False)
    vh = noisy.validation_history
    best_step = min(vh, key=lambda h: (h[1], h[0]))[0]
    assert history[-1][0] == vh[-1][0] >= 4
    assert vh[-1][0] - best_step >= 4 or vh[-1][0] == 400  # stopped by the rule or the cap
    for step, _ in vh[:-1]:  # no earlier validation point after the minimum satisfied the rule
        assert step < 4 or step - min((h for h in vh if h[0] <= step), key=lambda h: (h[1], h[0]))[0] < 4
    header = io.load_checkpoint(path, "flow")[1]["training"]
    assert header["step"] == vh[-1][0] and [tuple(h) for h in header["validation"]] == vh


def test_patience_resumes_with_its_validation_history(tmp_path):
    val = GaussianStream(4, seed=9).sample(128)

    def run(steps, path, resume=False):
        flow = PatchFlow(patch_size=2, n_blocks=1, hidden=8, seed=0)
        flow.fit(GaussianStream(4, seed=1), steps, lr=0.05, batch_size=16, validation=val, val_every=3,
                 patience=6, max_steps=60, checkpoint=path, checkpoint_every=3, resume=resume, progress=False)
        return flow

    straight = run(3, tmp_path / "a.safetensors")
    first = PatchFlow(patch_size=2, n_blocks=1, hidden=8, seed=0)  # stopped by hand at step 3 (no rule yet)
    first.fit(GaussianStream(4, seed=1), 3, lr=0.05, batch_size=16, validation=val, val_every=3,
              checkpoint=tmp_path / "b.safetensors", checkpoint_every=3, progress=False)
    resumed = run(3, tmp_path / "b.safetensors", resume=True)
    assert resumed.validation_history == straight.validation_history
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)


def test_patience_arguments_are_checked_before_training():
    flow = PatchFlow(patch_size=2, n_blocks=1, hidden=8)
    val = torch.zeros(5, 4)
    with pytest.raises(ValueError, match="patience= needs validation="):
        flow.fit(GaussianStream(4), 5, patience=10, max_steps=20, progress=False)
    with pytest.raises(ValueError, match="patience= needs max_steps="):
        flow.fit(GaussianStream(4), 5, validation=val, patience=10, progress=False)
    with pytest.raises(ValueError, match="max_steps must be >= 5"):
        flow.fit(GaussianStream(4), 5, validation=val, patience=10, max_steps=4, progress=False)
    with pytest.raises(ValueError, match="max_steps is the cap of the patience rule"):
        flow.fit(GaussianStream(4), 5, max_steps=9, progress=False)
    with pytest.raises(ValueError, match=r"validation must be a tensor \(M, 4\)"):
        flow.fit(GaussianStream(4), 5, validation=torch.zeros(5, 3), progress=False)
    with pytest.raises(ValueError, match="val_every must be >= 1"):
        flow.fit(GaussianStream(4), 5, validation=val, val_every=0, progress=False)


def test_resume_rejects_a_different_architecture(tmp_path):
    path = tmp_path / "train.safetensors"
    PatchFlow(patch_size=2, n_blocks=1, hidden=8).fit(GaussianStream(4), 2, checkpoint=path, progress=False)
    other = PatchFlow(patch_size=2, n_blocks=1, hidden=16)
    with pytest.raises(ValueError, match="cannot resume"):
        other.fit(GaussianStream(4), 4, checkpoint=path, resume=True, progress=False)


def test_nan_guard_stops_with_a_clear_message(tmp_path):
    flow = PatchFlow(patch_size=2, n_blocks=1, hidden=8)
    path = tmp_path / "train.safetensors"
    with pytest.raises(FloatingPointError, match=r"step 6: loss is nan, the patch batch itself holds NaN.*step 4"):
        flow.fit(GaussianStream(4, nan_after=5), 10, checkpoint=path, checkpoint_every=2, progress=False)
    assert io.load_checkpoint(path, "flow")[1]["training"]["step"] == 4
    with pytest.raises(FloatingPointError, match="the flow diverged"):
        PatchFlow(patch_size=2, n_blocks=1, hidden=8).fit(_Exploding(), 3, progress=False)


class _Exploding:
    """Finite patches so large that the Gaussian log-density overflows float32."""

    def sample(self, n):
        return torch.full((n, 4), 1e30)


def test_fit_and_constructor_reject_bad_arguments():
    flow = PatchFlow(patch_size=2, n_blocks=1, hidden=8)
    with pytest.raises(TypeError, match="sampler must have a sample"):
        flow.fit(torch.zeros(10, 4), 5, progress=False)
    with pytest.raises(ValueError, match="lr must be"):
        flow.fit(GaussianStream(4), 5, lr=-1.0, progress=False)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        flow.fit(GaussianStream(4), 5, resume=True, progress=False)
    with pytest.raises(ValueError, match="mixing must be one of"):
        PatchFlow(mixing="conv")
    with pytest.raises(ValueError, match="patch_size must be >= 1"):
        PatchFlow(patch_size=0)
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        flow.log_prob(torch.zeros(3, 5))


# --- PatchNR regularizer -----------------------------------------------------------------------------


def _regularizer(n_patches=7, reduction="mean", channels=1):
    flow = _small_flow(patch_size=2, channels=channels)
    _randomize(flow)
    return PatchNR(flow, n_patches=n_patches, reduction=reduction, seed=3)


def test_patchnr_is_the_mean_nll_of_the_drawn_patches():
    reg = _regularizer()
    x = torch.rand(2, 1, 6, 7, dtype=torch.float64)
    value = reg.nll(x)
    reg.reset()
    positions = reg.draw_positions(2, 6, 7)
    all_patches = extract_patches(x, 2)  # (B, L, 4), row-major over the 5 x 6 grid of corners
    index = positions[..., 0] * 6 + positions[..., 1]
    expected = torch.stack([-reg.flow.log_prob(all_patches[b, index[b]]).mean() for b in range(2)])
    assert value.shape == (2,)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-12)


def test_patchnr_sum_is_n_patches_times_mean():
    mean, total = _regularizer(reduction="mean"), _regularizer(reduction="sum")
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(total.nll(x), 7 * mean.nll(x), rtol=1e-12, atol=0)


def test_patchnr_redraws_patches_every_call_and_reset_rewinds():
    reg = _regularizer()
    x = torch.rand(1, 1, 16, 16, dtype=torch.float64)
    first, second = reg.nll(x), reg.nll(x)
    assert not torch.equal(first, second)
    reg.reset()
    torch.testing.assert_close(reg.nll(x), first, rtol=0, atol=0)


def test_patchnr_gradient_reaches_the_image():
    reg = _regularizer(n_patches=5)
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)

    def fixed_draw(image):
        reg.reset()  # same positions on every evaluation, so finite differences are meaningful
        return reg.nll(image)

    assert torch.autograd.gradcheck(fixed_draw, (x,))
    fixed_draw(x).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("chunk_size", [None, 16])
def test_patchnr_differentiates_the_image_only(chunk_size):
    reg = _regularizer(n_patches=50)
    reg.chunk_size = chunk_size
    weights = list(reg.flow.parameters())
    weights[0].requires_grad_(False)  # a mixed state must come back as it was
    x = torch.rand(1, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    reg.nll(x).sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(w.grad is None for w in weights)
    assert [w.requires_grad for w in weights] == [False] + [True] * (len(weights) - 1)


def test_patchnr_chunked_recomputation_matches():
    reg = _regularizer(n_patches=50)
    chunked = PatchNR(reg.flow, n_patches=50, seed=3, chunk_size=16)
    x = torch.rand(2, 1, 9, 9, dtype=torch.float64, requires_grad=True)
    a = reg.nll(x)
    (ga,) = torch.autograd.grad(a.sum(), x)
    b = chunked.nll(x)
    (gb,) = torch.autograd.grad(b.sum(), x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=0, atol=1e-12)


def test_patchnr_multichannel_and_dtype():
    reg = _regularizer(channels=3)
    assert reg.patch_size == 2
    x = torch.rand(1, 3, 6, 6)  # float32 image, float64 flow: the result follows the image
    assert reg.nll(x).dtype == torch.float32


def test_patchnr_rejects_bad_input():
    reg = _regularizer()
    with pytest.raises(ValueError, match="3 channels .* 1-channel"):
        reg.nll(torch.rand(1, 3, 8, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="smaller than the flow's 2x2"):
        reg.nll(torch.rand(1, 1, 1, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match="4-D"):
        reg.nll(torch.rand(8, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        reg.nll(np.zeros((1, 1, 8, 8)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        PatchNR(reg.flow, 5, reduction="max")
    with pytest.raises(ValueError, match="n_patches must be >= 1"):
        PatchNR(reg.flow, 0)
    with pytest.raises(TypeError, match="flow must be a PatchFlow"):
        PatchNR(torch.nn.Linear(2, 2), 5)


# --- command line ---------------------------------------------------------------------------------


def test_cli_trains_resumes_and_writes_a_loadable_checkpoint(tmp_path, capsys):
    from skimage import io as skio

    from patchreg.cli import main

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        skio.imsave(images / f"im{i}.png", (rng.random((20, 24)) * 255).astype(np.uint8), check_contrast=False)
    out = tmp_path / "flow.safetensors"
    args = ["train", "flow", "--images", str(images), "--patch-size", "3", "--batch-size", "8",
            "--n-blocks", "1", "--hidden", "8", "--out", str(out), "--seed", "1", "--quiet"]
    assert main(args + ["--steps", "6", "--checkpoint-every", "3"]) == 0
    assert main(args + ["--steps", "9", "--resume"]) == 0
    assert "trained to step 9" in capsys.readouterr().out
    flow = PatchFlow.load(out, patch_size=3)
    assert flow.config["hidden"] == 8
    assert io.load_checkpoint(out, "flow")[1]["training"]["step"] == 9
    assert main(args[:-1] + ["--steps", "2", "--mixing", "lu", "--resume"]) == 2  # architecture differs
    # a continuation from those weights with a fresh Adam, validated, stopped by the patience rule or its cap
    cont = tmp_path / "cont.safetensors"
    more = ["train", "flow", "--images", str(images), "--patch-size", "3", "--batch-size", "8", "--n-blocks", "1",
            "--hidden", "8", "--out", str(cont), "--seed", "2", "--quiet", "--init-from", str(out),
            "--val-images", str(images), "--val-patches", "64", "--val-every", "2"]
    assert main(more + ["--steps", "4", "--patience", "2", "--max-steps", "12"]) == 0
    printed = capsys.readouterr().out
    assert "validation NLL per patch" in printed
    training = io.load_checkpoint(cont, "flow")[1]["training"]
    assert 4 <= training["step"] <= 12 and len(training["validation"]) >= 2
    assert main(more + ["--steps", "4", "--patience", "2"]) == 2  # no cap
    assert main(more + ["--steps", "4", "--max-steps", "8"]) == 2  # a cap without the rule
    assert main(more + ["--steps", "4", "--resume"]) == 2  # a new run or a continuation, not both
    assert main(more[:-6] + ["--steps", "4", "--patience", "2", "--max-steps", "8"]) == 2  # no --val-images
    assert main(more[:4] + ["--patch-size", "2"] + more[6:] + ["--steps", "4"]) == 2  # --init-from: other patch size
