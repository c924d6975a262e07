"""Image quality (PSNR, SSIM via scikit-image, one value per image) and cost (time, peak memory).

Images are (B, C, H, W) tensors or (H, W) arrays on the [0, 1] scale (data_range 1); they
are compared as given, without clipping. SSIM uses scikit-image's defaults (7x7 uniform
window) with the channels as channel axis.
"""

from __future__ import annotations

import os
import resource
import threading
import time

import numpy as np
import torch

__all__ = ["psnr", "ssim", "Measure", "measure"]


def _as_batch(name: str, images) -> np.ndarray:
    """(B, C, H, W) float64 numpy array from a (B, C, H, W) tensor/array or a (H, W) one."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if not isinstance(images, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(images).__name__}")
    if images.ndim == 2:
        images = images[None, None]
    if images.ndim != 4:
        raise ValueError(f"{name} must be (B, C, H, W) or (H, W), got shape {images.shape}")
    return images.astype(np.float64, copy=False)


def _pairs(estimate, reference):
    estimate, reference = _as_batch("estimate", estimate), _as_batch("reference", reference)
    if estimate.shape != reference.shape:
        raise ValueError(f"estimate has shape {estimate.shape} but reference has shape {reference.shape}")
    return estimate, reference


def psnr(estimate, reference, data_range: float = 1.0) -> np.ndarray:
    """Peak signal-to-noise ratio in dB of each image, shape (B,)."""
    from skimage.metrics import peak_signal_noise_ratio  # imported here: pulls in scipy.stats (~1 s)

    estimate, reference = _pairs(estimate, reference)
    return np.array([
        peak_signal_noise_ratio(ref, est, data_range=data_range) for est, ref in zip(estimate, reference)
    ])


def ssim(estimate, reference, data_range: float = 1.0) -> np.ndarray:
    """Structural similarity of each image (channels as channel axis), shape (B,)."""
    from skimage.metrics import structural_similarity

    estimate, reference = _pairs(estimate, reference)
    return np.array([
        structural_similarity(ref, est, data_range=data_range, channel_axis=0)
        for est, ref in zip(estimate, reference)
    ])


def _current_rss_bytes() -> int | None:
    """Resident set size of this process now (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class Measure:
    """Context manager timing a block and measuring its peak memory.

    seconds: wall-clock time (CUDA synchronised before and after when device is CUDA).
    peak_bytes: on CUDA, torch.cuda.max_memory_allocated during the block minus the memory
    allocated at its start (tensors only, not the caching allocator's reserve). On CPU, the
    peak resident set size of the whole process during the block minus its RSS at the start,
    sampled every `interval` seconds by a background thread from /proc/self/statm (so
    allocations that live less than an interval can be missed); where /proc is missing, the
    increase of the process's lifetime peak RSS (getrusage), which is 0 when the process
    had already been larger before the block.
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002):
        self.device = torch.device(device)
        self.interval = interval
        self.seconds = float("nan")
        self.peak_bytes = 0
        self._stop = threading.Event()

    def _sample_once(self) -> None:
        rss = _current_rss_bytes() or self._start_rss
        self.peak_bytes = max(self.peak_bytes, rss - self._start_rss)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._sample_once()
            self._stop.wait(self.interval)

    def __enter__(self) -> "Measure":
        self._thread = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            self._start_rss = _current_rss_bytes()
            if self._start_rss is None:
                self._start_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            else:
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
        self._start_time = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self._start_time
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._start_bytes
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample_once()
        else:
            end_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.peak_bytes = end_maxrss - self._start_maxrss

    @property
    def peak_megabytes(self) -> float:
        return self.peak_bytes / 2**20


def measure(device: torch.device | str = "cpu", interval: float = 0.002) -> Measure:
    """`with measure() as m: ...` then m.seconds and m.peak_bytes (see Measure)."""
    return Measure(device, interval)
