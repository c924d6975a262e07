"""bench/charts_model_selection.py: cell parsing, the generic (non-fused) scorer against the fused one, the conv
wrapper's forward mode, and resumability (complete cells skipped, partial ones resumed) on a tiny budget."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
pytest.importorskip("sklearn")  # bench/patch_nll_table.py's DC density
cms = pytest.importorskip("charts_model_selection")


def test_parse_cells():
    cells = cms.parse_cells("fif:mlp:32:8, vae:mlp:16:4,fif:conv:8:8")
    assert [c["name"] for c in cells] == ["fif-mlp-K32-d8", "vae-mlp-K16-d4", "fif-conv-K8-d8"]
    assert cells[1]["K"] == 16 and cells[1]["d"] == 4
    for bad in ("fif:mlp:32", "gmm:mlp:2:2", "vae:conv:2:2", "fif:mlp:0:2", "fif:mlp:2:35", "fif:mlp:2:2,fif:mlp:2:2", ""):
        with pytest.raises(ValueError):
            cms.parse_cells(bad)


def _tiny(arch="mlp", K=3, d=3):
    torch.manual_seed(0)
    mix = cms.build_cell_mixture(dict(family="fif", architecture=arch, K=K, d=d), 8, 1, 4, 1, 0.1)
    with torch.no_grad():
        mix.log_sigma.copy_(torch.log(torch.tensor([0.05, 0.08, 0.1])[:K]))
        mix.log_alpha.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2])[:K]))
    model = cms.PatchCharts(mix, 6)
    model.scales = torch.tensor([1.0, 0.5, 2.0])
    model.scale_log_alpha = torch.log(torch.tensor([[0.2, 0.1, 0.05], [0.15, 0.1, 0.0], [0.2, 0.1, 0.1]]))[:K]
    return model


def test_generic_scorer_matches_fused_kernel():
    model = _tiny()
    assert cms.fused(model)
    coords = 0.1 * torch.randn(64, 35, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lp, bare = cms.generic_log_probs(model, coords, batch=25)
    assert torch.allclose(lp, cms.fused_log_probs(model, coords), rtol=1e-4, atol=1e-3)
    assert torch.allclose(bare, cms.fused_log_probs(cms.bare_copy(model), coords), rtol=1e-4, atol=1e-3)
    assert not torch.allclose(lp, bare)  # the scales matter
    # the pruned pair (chart 1, scale 2) takes no part: the pairs' weights in the sum are alpha_{k,s} exactly
    manual = []
    for k, j in model.pairs().tolist():
        s = float(model.scales[j])
        manual.append(model.mixture.charts[k].log_prob((coords / s).float(), model.mixture.prior, model.mixture.sigma[k]).double()
                      + float(model.scale_log_alpha[k, j]) - 35 * math.log(s))
    assert torch.allclose(lp, torch.logsumexp(torch.stack(manual, 1), 1), rtol=1e-4, atol=1e-3)


def test_conv_cells_use_the_generic_path_with_exact_forward_mode():
    model = _tiny("conv", K=2, d=3)
    assert not cms.fused(model)
    chart = model.mixture.charts[0]
    y = torch.randn(5, 35, generator=torch.Generator().manual_seed(2))
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(3))
    t_y = torch.randn(5, 35, 2, generator=torch.Generator().manual_seed(4))
    t_z = torch.randn(5, 3, 2, generator=torch.Generator().manual_seed(5))
    for net, x, t in ((chart.encoder, y, t_y), (chart.decoder, z, t_z)):
        out, tan = net.jvp(x, t)
        assert torch.allclose(out, net(x))
        for i in range(2):
            _, ref = torch.func.jvp(net, (x,), (t[..., i],))
            assert torch.allclose(tan[..., i], ref, atol=1e-5)
    # decoder outputs are mean-free coordinates of a 6x6 patch: the patch they map to has zero mean
    assert model.patches_from_coords(chart.decoder(z).double()).mean(1).abs().max() < 1e-6


def test_grid_skips_complete_cells_and_resumes_partial_ones(tmp_path, monkeypatch, capsys):
    import patchreg.data

    rng = np.random.default_rng(0)
    monkeypatch.setattr(patchreg.data, "load_images", lambda spec, split: [rng.random((16, 16)) for _ in range(2)])
    argv = ["--cells", "fif:mlp:2:2", "--steps", "4", "--batch-size", "16", "--width", "8", "--blocks", "1",
            "--scale-points", "300", "--checkpoint-every", "1", "--ckpt-dir", str(tmp_path), "--train-only"]
    cms.main(argv)
    (ckpt,) = tmp_path.glob("*.safetensors")
    done = cms.done_path(ckpt)
    first = json.loads(done.read_text())
    assert first["resumed"] is False and first["steps"] == 4
    model = cms.load_cell(ckpt)
    assert model.has_selector and model.scales.numel() == len(cms.PatchCharts.__init__.__globals__["DEFAULT_SCALES"])
    stamp = ckpt.stat().st_mtime_ns
    capsys.readouterr()
    cms.main(argv)  # complete: not trained again
    assert "complete" in capsys.readouterr().out and ckpt.stat().st_mtime_ns == stamp
    done.unlink()  # a checkpoint without its done marker is partial: resumed, not restarted
    cms.main(argv)
    again = json.loads(done.read_text())
    assert again["resumed"] is True and again["final_loss"] == first["final_loss"]
