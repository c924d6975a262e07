"""Streaming random patches from a list of gray images, seeded and reproducible.

Each drawn patch is uniform over all valid top-left positions of all images together (so an
image weighs by its number of positions). A position is valid when the p x p patch lies inside
its image and overlaps none of the image's excluded rectangles. Only the images and, for images
with exclusions, the list of their valid positions are kept: patches are cut batch by batch with
`patchreg.extract_patches_at` (the fused kernel when the extension is in use).

Randomness comes from one CPU torch.Generator, so a seed gives the same patches on every device.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ..ops import extract_patches_at
from .._checks import check_int
from .images import to_tensor

__all__ = ["PatchSampler", "RankBatches"]

Box = tuple[int, int, int, int]  # (top, left, bottom, right), half-open pixel rectangle


def _check_box(name: str, box, height: int, width: int) -> Box:
    if not isinstance(box, (tuple, list)) or len(box) != 4:
        raise TypeError(f"{name} must be a (top, left, bottom, right) tuple of ints, got {box!r}")
    box = [int(v) if isinstance(v, np.integer) else v for v in box]  # numpy ints are fine too
    top, left, bottom, right = (check_int(f"{name}[{i}]", v) for i, v in enumerate(box))
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"{name}={tuple(box)} must satisfy 0 <= top < bottom <= {height} and "
            f"0 <= left < right <= {width} for a {height}x{width} image"
        )
    return top, left, bottom, right


def _valid_flat_positions(boxes: Sequence[Box], grid_h: int, grid_w: int, patch_size: int) -> torch.Tensor:
    """Flat indices (row * grid_w + col) of the positions whose patch overlaps no box."""
    valid = torch.ones(grid_h, grid_w, dtype=torch.bool)
    for top, left, bottom, right in boxes:
        # A patch at (r, c) overlaps the box iff r < bottom, r + p > top, c < right, c + p > left.
        valid[max(0, top - patch_size + 1) : bottom, max(0, left - patch_size + 1) : right] = False
    return valid.flatten().nonzero().flatten()


class PatchSampler:
    """Iterator over batches (batch_size, p*p) of random patches from `images`.

    images: list of gray (H, W) numpy arrays or tensors. exclude: None, or one entry per image,
    each None or a list of (top, left, bottom, right) half-open rectangles that no drawn patch may
    overlap. remove_mean subtracts each patch's mean. num_batches: None streams forever, an int
    stops after that many batches per iteration. The stream continues across iterations and
    `sample` calls; `reset()` rewinds it to the seed.
    """

    def __init__(
        self,
        images,
        patch_size: int,
        batch_size: int,
        seed: int,
        remove_mean: bool = False,
        exclude=None,
        dtype: torch.dtype = torch.float32,
        device="cpu",
        num_batches: int | None = None,
    ) -> None:
        if not isinstance(images, (list, tuple)) or len(images) == 0:
            raise ValueError("images must be a non-empty list of (H, W) images")
        self.patch_size = check_int("patch_size", patch_size, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.num_batches = None if num_batches is None else check_int("num_batches", num_batches, 0)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.remove_mean = bool(remove_mean)
        self.images = [
            to_tensor(image, dtype, device, name=f"images[{i}]") for i, image in enumerate(images)
        ]
        grid_widths, valid, counts = self._index_positions(exclude)
        self.num_positions = int(sum(counts))
        if self.num_positions == 0:
            raise ValueError("exclude leaves no valid patch position in any image")
        # Image i owns the global position indices [starts[i], starts[i] + counts[i]).
        self._counts = torch.tensor(counts, dtype=torch.int64)
        self._starts = self._counts.cumsum(0) - self._counts
        self._grid_widths = torch.tensor(grid_widths, dtype=torch.int64)
        # Valid flat positions of the images with exclusions, concatenated; -1 offset = no table.
        tables = [v for v in valid if v is not None]
        self._valid_table = torch.cat(tables) if tables else torch.zeros(0, dtype=torch.int64)
        sizes = torch.tensor([0 if v is None else v.numel() for v in valid], dtype=torch.int64)
        offsets = sizes.cumsum(0) - sizes
        self._table_offsets = torch.where(sizes > 0, offsets, torch.full_like(offsets, -1))
        self._generator = torch.Generator()
        self.reset()

    def _index_positions(self, exclude):
        """Per image: grid width, valid flat positions (None = all of them), number of positions."""
        one_per_image = isinstance(exclude, (list, tuple)) and len(exclude) == len(self.images)
        if exclude is not None and not one_per_image:
            raise ValueError(f"exclude must be None or a list with one entry per image ({len(self.images)})")
        p = self.patch_size
        grid_widths, valid, counts = [], [], []
        for i, image in enumerate(self.images):
            H, W = image.shape[-2:]
            if p > H or p > W:
                raise ValueError(f"patch_size={p} is larger than images[{i}] ({H}x{W})")
            grid_h, grid_w = H - p + 1, W - p + 1
            boxes = [] if exclude is None or exclude[i] is None else exclude[i]
            if not isinstance(boxes, (list, tuple)):
                raise TypeError(
                    f"exclude[{i}] must be None or a list of rectangles, got {type(boxes).__name__}"
                )
            boxes = [_check_box(f"exclude[{i}][{j}]", box, H, W) for j, box in enumerate(boxes)]
            flat = _valid_flat_positions(boxes, grid_h, grid_w, p) if boxes else None
            grid_widths.append(grid_w)
            valid.append(flat)
            counts.append(grid_h * grid_w if flat is None else flat.numel())
        return grid_widths, valid, counts

    def reset(self) -> None:
        """Rewind the random stream to the state given by `seed`."""
        self._generator.manual_seed(self.seed)

    def draw_positions(self, n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """n uniform valid positions: image indices (n,) and top-left (row, col) (n, 2), int64, CPU.

        generator: a CPU generator to draw with instead of the sampler's own stream (a training loop
        that checkpoints its generator state then resumes the exact same patches).
        """
        check_int("n", n, 0)
        draws = torch.randint(self.num_positions, (n,), generator=generator or self._generator)
        image_index = torch.searchsorted(self._starts + self._counts, draws, right=True)
        flat = draws - self._starts[image_index]  # position index within its image
        offsets = self._table_offsets[image_index]
        in_table = offsets >= 0
        if bool(in_table.any()):
            table_index = torch.where(in_table, offsets + flat, torch.zeros_like(flat))
            flat = torch.where(in_table, self._valid_table[table_index], flat)
        grid_w = self._grid_widths[image_index]
        return image_index, torch.stack((flat // grid_w, flat % grid_w), dim=1)

    def extract(self, image_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Patches (n, p*p) at the given image indices (n,) and (row, col) positions (n, 2)."""
        n = image_index.numel()
        if image_index.shape != (n,) or positions.shape != (n, 2):
            raise ValueError(
                f"image_index must be (n,) and positions (n, 2), got {tuple(image_index.shape)} "
                f"and {tuple(positions.shape)}"
            )
        if n and not (0 <= int(image_index.min()) and int(image_index.max()) < len(self.images)):
            raise ValueError(f"image_index must lie in [0, {len(self.images)})")
        image = self.images[0]
        patches = image.new_empty(n, self.patch_size**2)
        # One extract_patches_at call per image: group the draws by image, keep their order.
        order = torch.argsort(image_index, stable=True)
        per_image = torch.bincount(image_index, minlength=len(self.images)).tolist()
        for i, rows in enumerate(order.split(per_image)):
            if rows.numel():
                at = positions[rows].to(image.device)[None]
                patches[rows.to(image.device)] = extract_patches_at(self.images[i], at, self.patch_size)[0]
        if self.remove_mean:
            patches = patches - patches.mean(dim=1, keepdim=True)
        return patches

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n random patches (n, p*p) in one tensor, drawn from the stream (or from `generator`)."""
        return self.extract(*self.draw_positions(n, generator))

    def __iter__(self) -> Iterator[torch.Tensor]:
        count = 0
        while self.num_batches is None or count < self.num_batches:
            yield self.sample(self.batch_size)
            count += 1

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("an infinite PatchSampler (num_batches=None) has no length")
        return self.num_batches


class RankBatches:
    """One process's share of a PatchSampler's seeded stream of `total` patches: batches rank, rank + N,
    rank + 2N, ... (N = world_size) of the one stream that a single process would draw.

    Every rank draws the positions of every batch (cheap), so all ranks step the same generator, and
    cuts patches only for its own batches; the last batch is cut short at `total`, as `GMM.fit` cuts a
    single-process stream. The union over the ranks is therefore the single-process stream whatever N is:
    a fit's patches do not depend on the number of processes, and a checkpoint resumes under another N.
    `reset` rewinds the stream (GMM.fit calls it before every EM iteration)."""

    def __init__(self, sampler: PatchSampler, total: int, rank: int = 0, world_size: int = 1) -> None:
        self.sampler = sampler
        self.total = check_int("total", total, 1)
        self.world_size = check_int("world_size", world_size, 1)
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank must lie in [0, world_size={self.world_size}), got {rank}")
        self.rank = int(rank)
        self.batch_size = sampler.batch_size
        self.n_batches = -(-self.total // self.batch_size)  # of the whole stream, the last one short
        mine = range(self.rank, self.n_batches, self.world_size)
        self.count = sum(min(self.batch_size, self.total - b * self.batch_size) for b in mine)

    def reset(self) -> None:
        self.sampler.reset()

    def __iter__(self) -> Iterator[torch.Tensor]:
        for b in range(self.n_batches):
            image_index, positions = self.sampler.draw_positions(self.batch_size)
            if b % self.world_size == self.rank:
                keep = min(self.batch_size, self.total - b * self.batch_size)
                yield self.sampler.extract(image_index[:keep], positions[:keep])

    def __len__(self) -> int:
        return len(range(self.rank, self.n_batches, self.world_size))
