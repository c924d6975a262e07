"""Topology of the manifold of high-contrast image patches (Carlsson et al. 2008, any patch size).

preprocessing: the patch-space map onto S^(p^2-2); density: the filtration X(k, q);
landmarks: maxmin subsets; persistence: ripser barcodes and the Betti rule; models: synthetic
clouds of known topology; cover: the chart-cover interface and a local-PCA fitter; nerve: the
nerve's homology over Z/2, Z/3 and orientability; verdict: naming and threshold stability;
pipeline: end to end; report: JSON, markdown and figures. At scale (issue 12): patchsets: every
patch of an image folder, streamed and cached; knn: k-th neighbour distances for many k; scale:
density estimates against a reference set, the core grid and its choice rule; model_fit: distances
to the Klein-bottle and three-circle models.
"""

from .cover import ChartCover, fit_local_pca_cover
from .density import density_core, knn_distance
from .knn import kth_neighbour_distances
from .landmarks import maxmin_landmarks
from .model_fit import project_to_model
from .patchsets import PatchSet, build_patch_set
from .models import MODELS, sample_model
from .persistence import BettiRule, compute_barcodes, read_betti
from .pipeline import analyse_points, homology_from_charts, homology_from_persistence
from .preprocessing import dct_basis, grid_laplacian, images_to_sphere, load_points, patches_to_sphere
from .report import write_report
from .verdict import name_topology

__all__ = [
    "BettiRule", "ChartCover", "PatchSet", "build_patch_set", "kth_neighbour_distances", "project_to_model", "MODELS", "analyse_points", "compute_barcodes", "dct_basis", "density_core",
    "fit_local_pca_cover", "grid_laplacian", "homology_from_charts", "homology_from_persistence",
    "images_to_sphere", "knn_distance", "load_points", "maxmin_landmarks", "name_topology",
    "patches_to_sphere", "read_betti", "sample_model", "write_report",
]
