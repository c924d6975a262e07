"""The Shepp-Logan phantom, the standard CT test image."""

from __future__ import annotations

import numpy as np

from .._checks import check_int


def shepp_logan(size: int) -> np.ndarray:
    """(size, size) float64 Shepp-Logan phantom in [0, 1] (scikit-image's, anti-aliased resize)."""
    import skimage.data
    import skimage.transform

    check_int("size", size, 2)
    phantom = skimage.data.shepp_logan_phantom()
    resized = skimage.transform.resize(phantom, (size, size), order=1, anti_aliasing=True, mode="constant")
    return np.clip(resized, 0.0, 1.0).astype(np.float64)
