"""Data: gray images in [0, 1] (bundled scikit-image photos with a fixed split, image files) and
streaming random patch sampling."""

from .images import (
    BUNDLED_SPLITS,
    IMAGE_EXTENSIONS,
    VALIDATION_CROP,
    bundled_image,
    load_bundled,
    load_folder,
    load_image,
    load_images,
    to_gray_float,
    to_tensor,
    validation_box,
)
from . import toy_manifolds
from .natural import NATURAL_SPLITS, load_set12, load_train400, natural_dir, split_names
from .patch_sampler import PatchSampler, RankBatches

__all__ = [
    "BUNDLED_SPLITS",
    "IMAGE_EXTENSIONS",
    "NATURAL_SPLITS",
    "VALIDATION_CROP",
    "PatchSampler",
    "RankBatches",
    "bundled_image",
    "load_bundled",
    "load_folder",
    "load_image",
    "load_set12",
    "load_train400",
    "natural_dir",
    "split_names",
    "load_images",
    "to_gray_float",
    "to_tensor",
    "toy_manifolds",
    "validation_box",
]
