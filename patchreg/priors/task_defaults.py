"""Per-task settings of the half-quadratic splitting, tuned on the validation split of train400.

Denoising keeps Zoran & Weiss's schedule (1/sigma^2)[1, 4, 8, 16, 32] and data weight d/sigma^2.
The other tasks observe y with little noise (0.01) through an operator, so a schedule that starts at
y's noise level lets the prior act too late; it starts instead from an image-domain noise level s
(the error of the initial guess). Either it grows by the six factors of SCHEDULE (ending at s / 8), or
it takes `steps` geometric steps from s down to an end level (1/s^2 ... 1/end^2): a start as high as
inpainting's needs many steps to come down to the noise of y. The data weight is
lam = scale * d / sigma^2 (scale 1: the MAP weight). (s, scale[, end, steps]) per prior and task come
from bench/hqs_task_tuning.py (bench/results/hqs_task_tuning.md): the best mean PSNR over validation
images, never the test images.
"""

from __future__ import annotations

__all__ = ["HQS_SETTINGS", "PATCHNR_LAM_SCALE", "PATCHNR_LR", "PATCHNR_STEPS", "SCHEDULE", "TASKS", "hqs_betas",
           "hqs_lam", "patchnr_settings", "schedule_from_start"]

SCHEDULE = (1.0, 4.0, 8.0, 16.0, 32.0, 64.0)
TASKS = ("deblur", "sr2", "sr4", "inpaint", "ct_limited", "ct_lowdose")
# Tasks whose data term is the weighted least squares of Poisson counts (hqs.weighted_problem): the weights
# are the inverse variances, so hqs_lam takes sigma = 1.
POISSON_TASKS = ("ct_lowdose",)

# (start s, data weight scale[, end, steps]) per prior and task (bench/results/hqs_task_tuning.md).
HQS_SETTINGS = {
    "epll": {"deblur": (0.16, 3.0, 0.01, 12), "sr2": (0.16, 3.0, 0.01, 12), "sr4": (0.32, 3.0),
             "inpaint": (0.32, 3.0, 0.01, 24), "ct_limited": (0.64, 3.0, 0.01, 24), "ct_lowdose": (0.16, 3.0, 0.01, 12)},
    "charts": {"deblur": (0.16, 3.0, 0.01, 12), "sr2": (0.16, 3.0, 0.01, 12), "sr4": (0.32, 3.0),
               "inpaint": (0.32, 3.0, 0.01, 24), "ct_limited": (0.16, 3.0, 0.01, 24), "ct_lowdose": (0.16, 3.0)},
}


def schedule_from_start(start: float, end: float | None = None, steps: int | None = None) -> list[float]:
    """betas = (1 / start^2) * SCHEDULE; with end and steps, `steps` geometric betas from 1/start^2 to 1/end^2."""
    if not start > 0:
        raise ValueError(f"start must be > 0 (an image-domain noise level), got {start}")
    if (end is None) != (steps is None):
        raise ValueError(f"end and steps go together: got end={end}, steps={steps}")
    if end is None:
        return [b / start**2 for b in SCHEDULE]
    if not 0 < end <= start:
        raise ValueError(f"end must be in (0, start={start}], got {end}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2, got {steps!r}")
    ratio = (start / end) ** (2 / (steps - 1))
    return [ratio**i / start**2 for i in range(steps)]


def _settings(prior: str, task: str) -> tuple[float, float, float | None, int | None]:
    """(start, scale, end, steps) of a prior and task; end and steps are None for the six-factor schedule."""
    if prior not in HQS_SETTINGS:
        raise ValueError(f"prior must be one of {tuple(HQS_SETTINGS)}, got {prior!r}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (denoising uses the noise level's schedule), got {task!r}")
    start, scale, *rest = HQS_SETTINGS[prior][task]
    end, steps = rest if rest else (None, None)
    return start, scale, end, steps


def hqs_betas(prior: str, task: str) -> list[float]:
    """The tuned schedule of `prior` ("epll" or "charts") for `task` (one of TASKS)."""
    start, _, end, steps = _settings(prior, task)
    return schedule_from_start(start, end, steps)


def hqs_lam(prior: str, task: str, dim: int, sigma: float) -> float:
    """The tuned data weight: scale * dim / sigma^2 (dim: the patch dimension, sigma: y's noise std)."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return _settings(prior, task)[1] * dim / sigma**2


# PatchNR (Adam on the image with N_p random patches per iteration): the iterations and learning rates of the
# paper's code per task, else 300 and 0.01; the weight lam = scale * n_image_patches / d chosen among 0.1 / 0.3 / 1
# on two validation images at the paper's 40k patches (bench/patchnr_paper_settings.py,
# bench/results/patchnr_paper_set12.md; the denoising levels share sigma 25's choice). ct_limited was not tuned
# (3000 iterations did not fit the GPU time): it takes 0.3, the choice of most tasks.
PATCHNR_STEPS = {"ct_limited": 3000}
PATCHNR_LR = {"sr2": 0.03, "sr4": 0.03, "ct_limited": 0.005, "ct_lowdose": 0.005}
PATCHNR_LAM_SCALE = {"denoise": 0.3, "deblur": 0.1, "sr2": 0.3, "sr4": 0.1, "inpaint": 0.3, "ct_lowdose": 0.3,
                     "ct_limited": 0.3}


def patchnr_settings(task: str) -> tuple[int, float, float]:
    """(Adam iterations, learning rate, lam scale) of PatchNR for `task` ("denoise" or one of TASKS)."""
    if task not in PATCHNR_LAM_SCALE:
        raise ValueError(f"task must be one of {tuple(PATCHNR_LAM_SCALE)}, got {task!r}")
    return PATCHNR_STEPS.get(task, 300), PATCHNR_LR.get(task, 0.01), PATCHNR_LAM_SCALE[task]
