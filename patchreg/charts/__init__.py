"""Manifold learning with chart mixtures: mixtures of VAE charts (Alberti et al.) and of injective
free-form flows (FIF, Sorrenson et al.), with exact chart densities, sampling, responsibilities,
projection and chart assignment.

    from patchreg.charts import build_mixture, train_mixture, TrainConfig
    from patchreg.data.toy_manifolds import get_manifold
    torus = get_manifold("torus")
    data = torch.from_numpy(torus.sample(5000, seed=0)).float()
    model = build_mixture("fif", n_charts=6, ambient_dim=3, latent_dim=2)   # or "vae"
    train_mixture(model, data, TrainConfig(seed=0), checkpoint_path="torus.safetensors")
    x, chart = model.sample(1000); logp = model.log_prob(data); r = model.responsibilities(data)

Modules: latent_prior (compact radial prior), coupling (invertible net of the VAE charts),
architectures (residual MLP, conv ResNet), chart (frame, exact chart density), vae_chart / fif_chart
(the two families and their losses), mixture (ChartMixture, build_mixture), seeding (k-means),
training (phases, responsibilities, NaN guard), checkpoint (kind "charts"), stacked (`stack_mlp_charts`,
the stacked weights of all K charts for the all-K reference `charts_log_prob`, which lives in
patchreg.reference.charts, and its fused kernel `charts_log_prob_fused`, patchreg.ops.charts), metrics,
datasets (data specs of the CLI).
Custom encoder/decoder pairs: ChartMixture([FreeFormChart(enc, dec, n, d), ...]); such a model is
saved with save_mixture, but load_mixture can only rebuild built-in architectures (build the model
yourself and pass it to train_mixture(..., resume=True) to load its weights).
"""

from .architectures import ConvResNetDecoder, ConvResNetEncoder, ResidualMLP, build_encoder_decoder
from .chart import Chart, decoder_jacobian, gram_logdet
from .checkpoint import load_mixture, save_mixture
from .fif_chart import FreeFormChart
from .latent_prior import CompactLatentPrior
from .metrics import coverage, distance_to_manifold_stats, heldout_nll, sliced_wasserstein2
from .mixture import FAMILIES, ChartMixture, build_mixture
from .stacked import charts_log_prob, stack_mlp_charts
from ..ops.charts import charts_log_prob_fused
from .training import TrainConfig, TrainingDiverged, train_mixture
from .vae_chart import InjectiveFlowChart

__all__ = [
    "FAMILIES", "Chart", "ChartMixture", "CompactLatentPrior", "ConvResNetDecoder", "ConvResNetEncoder",
    "FreeFormChart", "InjectiveFlowChart", "ResidualMLP", "TrainConfig", "TrainingDiverged",
    "build_encoder_decoder", "build_mixture", "charts_log_prob", "charts_log_prob_fused", "coverage", "decoder_jacobian",
    "distance_to_manifold_stats", "gram_logdet", "heldout_nll", "load_mixture", "save_mixture",
    "sliced_wasserstein2", "stack_mlp_charts", "train_mixture",
]
