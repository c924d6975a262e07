"""Topology of the manifold of high-contrast image patches (Carlsson et al. 2008, any patch size).

preprocessing: the patch-space map onto S^(p^2-2); density: the filtration X(k, q);
landmarks: maxmin subsets; persistence: ripser barcodes and the Betti rule; models: synthetic
clouds of known topology; cover: the chart-cover interface and a local-PCA fitter; nerve: the
nerve's homology over Z/2, Z/3 and orientability; verdict: naming and threshold stability;
pipeline: end to end; report: JSON, markdown and figures.
"""

from .cover import ChartCover, fit_local_pca_cover
from .density import density_core, knn_distance
from .landmarks import maxmin_landmarks
from .models import MODELS, sample_model
from .persistence import BettiRule, compute_barcodes, read_betti
from .pipeline import analyse_points, homology_from_charts, homology_from_persistence
from .preprocessing import dct_basis, grid_laplacian, images_to_sphere, load_points, patches_to_sphere
from .report import write_report
from .verdict import name_topology

__all__ = [
    "BettiRule", "ChartCover", "MODELS", "analyse_points", "compute_barcodes", "dct_basis", "density_core",
    "fit_local_pca_cover", "grid_laplacian", "homology_from_charts", "homology_from_persistence",
    "images_to_sphere", "knn_distance", "load_points", "maxmin_landmarks", "name_topology",
    "patches_to_sphere", "read_betti", "sample_model", "write_report",
]
