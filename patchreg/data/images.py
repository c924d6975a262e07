"""Gray images in [0, 1]: the photos bundled with scikit-image (with a fixed split) and image files.

Every loader returns float64 numpy arrays of shape (H, W) with values in [0, 1]; colour images
are converted with `skimage.color.rgb2gray` (ITU-R 709 luminance), alpha channels are dropped.

Bundled split (`BUNDLED_SPLITS`, `load_bundled`):
- "test": camera, coins, moon, whole.
- "validation": the bottom-right `VALIDATION_CROP` x `VALIDATION_CROP` block of each train
  photo (`validation_box` gives its coordinates).
- "train": each train photo *without* its validation block. The rest of the photo is returned as
  two disjoint rectangles, "NAME:top" (all rows above the block, full width) and
  "NAME:left" (the block's rows, left of it), so no consumer (a patch sampler, a GMM fit over all
  patches, ...) can ever see a validation pixel. The only patches lost are those straddling the
  seam between the two rectangles (1.1% of the 8x8 positions of the train split).
All images ship inside the scikit-image wheel (`skimage.data`); nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from skimage import color as _color
from skimage import data as _skdata
from skimage import io as _skio

__all__ = [
    "BUNDLED_SPLITS",
    "IMAGE_EXTENSIONS",
    "VALIDATION_CROP",
    "bundled_image",
    "load_bundled",
    "load_folder",
    "load_image",
    "to_gray_float",
    "to_tensor",
    "validation_box",
]

TRAIN_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "hubble_deep_field",
    "immunohistochemistry",
    "brick",
    "grass",
    "gravel",
)
TEST_NAMES = ("camera", "coins", "moon")

# Split -> the bundled photos it is cut from ("validation" holds one crop of each train photo).
BUNDLED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": TRAIN_NAMES,
    "validation": TRAIN_NAMES,
    "test": TEST_NAMES,
}

# Side of the square validation block cut from the bottom-right corner of each train photo.
VALIDATION_CROP = 128

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# skimage.data has no motorcycle_left(); the left view comes from the stereo triple.
_BUNDLED_READERS = {
    name: getattr(_skdata, name) for name in TRAIN_NAMES + TEST_NAMES if name != "motorcycle_left"
}
_BUNDLED_READERS["motorcycle_left"] = lambda: _skdata.stereo_motorcycle()[0]


def to_gray_float(array: np.ndarray, source: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) bool/unsigned/float array -> float64 (H, W) in [0, 1].

    Unsigned integers are scaled by their dtype's maximum (uint16 by 65535, not by the image's
    own maximum). Float images must already lie in [0, 1]. `source` names the image in errors.
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] in (2, 4):  # gray+alpha, RGB+alpha: drop alpha
        array = array[..., :-1]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(
            f"{source}: expected a gray (H, W) or colour (H, W, 3|4) image, got shape {array.shape}"
        )
    if array.dtype == np.bool_:
        gray = array.astype(np.float64)
    elif np.issubdtype(array.dtype, np.unsignedinteger):
        gray = array.astype(np.float64) / float(np.iinfo(array.dtype).max)
    elif np.issubdtype(array.dtype, np.floating):
        gray = array.astype(np.float64)
        if not np.isfinite(gray).all() or gray.min() < 0.0 or gray.max() > 1.0:
            raise ValueError(
                f"{source}: float images must have finite values in [0, 1], got range "
                f"[{np.nanmin(gray)}, {np.nanmax(gray)}]"
            )
    else:
        raise TypeError(f"{source}: unsupported pixel type {array.dtype} (use bool, unsigned int or float)")
    if gray.ndim == 3:
        # rgb2gray's weights sum to 1, but rounding can step just outside [0, 1].
        gray = np.clip(_color.rgb2gray(gray), 0.0, 1.0)
    return np.ascontiguousarray(gray)


@functools.lru_cache(maxsize=None)
def _cached_bundled(name: str) -> np.ndarray:
    gray = to_gray_float(_BUNDLED_READERS[name](), source=f"skimage.data.{name}")
    gray.flags.writeable = False  # shared by the cache; callers get copies
    return gray


def bundled_image(name: str) -> np.ndarray:
    """One whole bundled photo (any name in BUNDLED_SPLITS) as float64 gray (H, W) in [0, 1].

    For a train photo this includes its validation block; use load_bundled("train") to train.
    """
    if name not in _BUNDLED_READERS:
        raise ValueError(f"name must be one of {sorted(_BUNDLED_READERS)}, got {name!r}")
    return _cached_bundled(name).copy()


def validation_box(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), half-open, of the validation block of a height x width photo."""
    if height <= VALIDATION_CROP or width <= VALIDATION_CROP:
        raise ValueError(
            f"a photo must be larger than VALIDATION_CROP={VALIDATION_CROP} on both sides, "
            f"got {height}x{width}"
        )
    return height - VALIDATION_CROP, width - VALIDATION_CROP, height, width


def _split_pieces(split: str, name: str) -> list[tuple[str, np.ndarray]]:
    """The (name, image) pieces `split` takes from bundled photo `name`."""
    photo = _cached_bundled(name)
    if split == "test":
        return [(name, photo.copy())]
    top, left, bottom, right = validation_box(*photo.shape)
    if split == "validation":
        return [(name, photo[top:bottom, left:right].copy())]
    return [(f"{name}:top", photo[:top].copy()), (f"{name}:left", photo[top:, :left].copy())]


def load_bundled(split: str, with_names: bool = False):
    """Images of a bundled split ("train", "validation" or "test"), see the module docstring.

    Returns a list of float64 (H, W) arrays in [0, 1], or (images, names) with with_names=True.
    """
    if split not in BUNDLED_SPLITS:
        raise ValueError(f"split must be one of {sorted(BUNDLED_SPLITS)}, got {split!r}")
    pieces = [piece for name in BUNDLED_SPLITS[split] for piece in _split_pieces(split, name)]
    images = [image for _, image in pieces]
    return (images, [name for name, _ in pieces]) if with_names else images


def load_images(spec, split: str = "train") -> list:
    """The images a command line names: "bundled" (that split of the bundled photos), "train400"
    (that split of train400, see patchreg.data.natural), "train400:train" / "train400:validation",
    "set12", or a folder."""
    spec = str(spec)
    if spec == "bundled":
        return load_bundled(split)
    if spec == "train400" or spec.startswith("train400:"):
        from .natural import load_train400

        return load_train400(spec.split(":", 1)[1] if ":" in spec else split)
    if spec == "set12":
        from .natural import load_set12

        return load_set12()
    return load_folder(spec)


def load_image(path) -> np.ndarray:
    """Read a png, jpg or tif file as float64 gray (H, W) in [0, 1] (16-bit scaled by 65535)."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise ValueError(f"path {str(path)!r} must end in one of {IMAGE_EXTENSIONS}")
    if not path.is_file():
        raise FileNotFoundError(f"path {str(path)!r}: no such image file")
    try:
        array = _skio.imread(path)
    except Exception as err:  # decoders raise anything from OSError to struct.error
        raise ValueError(f"path {str(path)!r} could not be read as an image: {err}") from err
    return to_gray_float(array, source=str(path))


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def image_files(folder, what: str = "folder") -> list[Path]:
    """The image files directly in `folder`, sorted; errors name it as `what` when it is missing or empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {str(folder)!r} is not an existing directory")
    files = _image_files(folder)
    if not files:
        raise ValueError(f"{what} {str(folder)!r} holds no image files with extension in {IMAGE_EXTENSIONS}")
    return files


def load_folder(folder, with_names: bool = False):
    """Every png/jpg/tif image directly in `folder` (not sub-folders), sorted by file name.

    Returns a list of float64 gray (H, W) arrays in [0, 1], or (images, file names).
    """
    files = image_files(folder)
    images = [load_image(p) for p in files]
    return (images, [p.name for p in files]) if with_names else images


def to_tensor(image, dtype: torch.dtype = torch.float64, device="cpu", name: str = "image") -> torch.Tensor:
    """A gray (H, W) numpy array or tensor -> (1, 1, H, W) tensor, the layout the patch ops take.

    `name` is how errors refer to the argument.
    """
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch.Tensor, got {type(image).__name__}")
    if image.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) gray image, got shape {tuple(image.shape)}")
    return image.to(device=device, dtype=dtype)[None, None].contiguous()
