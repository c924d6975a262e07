"""The latent flow of VAE charts (Alberti et al.'s code: a coupling flow phi in front of the radial prior).

The chart's latent density is q(z) = p_Z(phi(z)) |det phi'(z)|: checked against an autograd Jacobian, against
the chart without a flow (phi starts as the identity), through sampling (w ~ p_Z decodes at phi^-1(w)) and
through a checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from patchreg.charts import build_mixture
from patchreg.charts.coupling import CouplingFlow
from patchreg.charts.latent_prior import CompactLatentPrior

D64 = torch.float64


def _perturb(module: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Non-zero weights everywhere (the flows start as the identity, which would hide most errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


@pytest.mark.parametrize("dim", [2, 3, 5])
def test_forward_and_logdet_matches_autograd(dim):
    flow = CouplingFlow(dim, hidden=8, n_blocks=3).double()
    _perturb(flow)
    x = torch.randn(6, dim, dtype=D64, generator=torch.Generator().manual_seed(1))
    y, logdet = flow.forward_and_logdet(x)
    torch.testing.assert_close(y, flow(x))
    jac = torch.stack([torch.autograd.functional.jacobian(flow, x[i : i + 1]).reshape(dim, dim) for i in range(len(x))])
    torch.testing.assert_close(logdet, torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.inverse(y), x, rtol=1e-10, atol=1e-10)


def _vae(latent_blocks: int, seed: int = 0):
    torch.manual_seed(seed)
    return build_mixture("vae", 2, 3, 2, width=8, n_blocks=1, sigma=0.1, latent_blocks=latent_blocks).double()


def test_identity_flow_changes_nothing_and_a_trained_one_is_the_change_of_variables():
    plain, flowed = _vae(0), _vae(3)
    flowed.load_state_dict(plain.state_dict(), strict=False)  # same decoders; the latent flows stay the identity
    x = torch.randn(20, 3, dtype=D64, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(flowed.chart_log_probs(x), plain.chart_log_probs(x), rtol=0, atol=1e-12)
    prior = CompactLatentPrior(2)
    for chart, base in zip(flowed.charts, plain.charts):
        _perturb(chart.latent_flow, seed=3)
        z = chart.encode(x)
        w = chart.latent_flow(z)
        jac = torch.stack([torch.autograd.functional.jacobian(chart.latent_flow, z[i : i + 1]).reshape(2, 2)
                           for i in range(len(z))])
        # log q(z) = log p_Z(phi(z)) + log|det phi'(z)|, and the chart density is the plain one's plus the difference
        log_q = prior.log_prob(w) + torch.linalg.slogdet(jac)[1]
        torch.testing.assert_close(-chart.latent_energy(z, prior) - prior.log_z, log_q, rtol=1e-10, atol=1e-10)
        difference = log_q - prior.log_prob(z)
        torch.testing.assert_close(chart.log_prob(x, prior, 0.1), base.log_prob(x, prior, 0.1) + difference,
                                   rtol=1e-10, atol=1e-10)
        assert difference.abs().max() > 1e-2  # the perturbed flow does change the density


def test_sampling_draws_the_prior_through_the_inverse_flow():
    model = _vae(3)
    for chart in model.charts:
        _perturb(chart.latent_flow, seed=4)
    w = CompactLatentPrior(2).sample(50, torch.Generator().manual_seed(5), D64)
    for chart in model.charts:
        z = chart.latent_from_prior(w)
        torch.testing.assert_close(chart.latent_flow(z), w, rtol=1e-10, atol=1e-10)
        assert (z - w).abs().max() > 1e-3
    x, labels = model.sample(50, torch.Generator().manual_seed(5))
    # with one chart's labels, the samples are that chart's decoder at phi^-1 of the same prior draws
    gen = torch.Generator().manual_seed(5)
    torch.multinomial(model.log_alpha.exp(), 50, replacement=True, generator=gen)
    w = model.prior.sample(50, gen, D64)
    for k, chart in enumerate(model.charts):
        sel = labels == k
        torch.testing.assert_close(x[sel], chart.decode(chart.latent_from_prior(w[sel])))


def test_checkpoint_round_trip_and_errors(tmp_path):
    from patchreg.charts import load_mixture, save_mixture

    model = _vae(3)
    for chart in model.charts:
        _perturb(chart.latent_flow, seed=6)
    path = tmp_path / "vae.safetensors"
    save_mixture(path, model)
    loaded, _ = load_mixture(path, D64)
    assert loaded.config["latent_blocks"] == 3
    x = torch.randn(10, 3, dtype=D64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(loaded.log_prob(x), model.log_prob(x), rtol=0, atol=0)
    assert "latent_blocks" not in _vae(0).config  # older checkpoints' configs still compare equal
    with pytest.raises(ValueError, match="latent_blocks .* is for the vae family"):
        build_mixture("fif", 2, 3, 2, latent_blocks=3)
    with pytest.raises(ValueError, match="latent_dim >= 2"):
        build_mixture("vae", 2, 2, 1, latent_blocks=3)
    with pytest.raises(ValueError, match="latent_blocks must be >= 0"):
        build_mixture("vae", 2, 3, 2, latent_blocks=-1)


def test_cli_latent_blocks(tmp_path, capsys):
    from patchreg.charts import load_mixture
    from patchreg.cli import main

    out = tmp_path / "v.safetensors"
    args = ["train", "charts", "--data", "toy:sphere", "--family", "vae", "--steps", "4", "--width", "4", "--n-train", "200",
            "--no-progress", "--out", str(out)]
    assert main(args + ["--latent-blocks", "2"]) == 0
    model, header = load_mixture(out, torch.float32)
    assert header["model"]["latent_blocks"] == 2 and all(c.latent_flow is not None for c in model.charts)
    assert main(args + ["--latent-blocks", "-1"]) == 2
    assert "--latent-blocks must be >= 0" in capsys.readouterr().err
    assert main([a if a != "vae" else "fif" for a in args] + ["--latent-blocks", "2"]) == 2
    assert "--latent-blocks is for the vae family" in capsys.readouterr().err
