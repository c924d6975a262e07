"""Manifold learning with chart mixtures: mixtures of VAE charts (Alberti et al.) and of injective
free-form flows (FIF, Sorrenson et al.), with exact chart densities, sampling, responsibilities,
projection and chart assignment.
"""

from .architectures import ConvResNetDecoder, ConvResNetEncoder, ResidualMLP, build_encoder_decoder
from .chart import Chart, decoder_jacobian, gram_logdet
from .checkpoint import load_mixture, save_mixture
from .fif_chart import FreeFormChart
from .latent_prior import CompactLatentPrior
from .metrics import coverage, distance_to_manifold_stats, heldout_nll, sliced_wasserstein2
from .mixture import FAMILIES, ChartMixture, build_mixture
from .stacked import charts_log_prob, stack_mlp_charts
from .training import TrainConfig, TrainingDiverged, train_mixture
from .vae_chart import InjectiveFlowChart

__all__ = [
    "FAMILIES", "Chart", "ChartMixture", "CompactLatentPrior", "ConvResNetDecoder", "ConvResNetEncoder",
    "FreeFormChart", "InjectiveFlowChart", "ResidualMLP", "TrainConfig", "TrainingDiverged",
    "build_encoder_decoder", "build_mixture", "charts_log_prob", "coverage", "decoder_jacobian",
    "distance_to_manifold_stats", "gram_logdet", "heldout_nll", "load_mixture", "save_mixture",
    "sliced_wasserstein2", "stack_mlp_charts", "train_mixture",
]
