"""Forward operators of inverse problems, noise models and their helpers.

Operators (one module each): Denoising, Blur, SuperResolution, Tomography, Inpainting. All
act on (B, C, H, W) tensors, are differentiable and have exact adjoints (see _base.py).
Noise models (noise.py): GaussianNoise, PoissonNoise, each with the data fidelity `nll`.
Whitened (whitened.py): the weighted least squares of PoissonNoise (low-dose CT) for splitting solvers.
"""

from ._base import LinearPhysics
from .blur import Blur, gaussian_kernel
from .denoising import Denoising
from .inpainting import Inpainting
from .noise import GaussianNoise, PoissonNoise, squared_error
from .phantom import shepp_logan
from .simulate import simulate
from .solvers import conjugate_gradient
from .super_resolution import SuperResolution
from .tomography import Tomography
from .whitened import Whitened, poisson_weights

__all__ = [
    "Blur",
    "Denoising",
    "GaussianNoise",
    "Inpainting",
    "LinearPhysics",
    "PoissonNoise",
    "SuperResolution",
    "Tomography",
    "Whitened",
    "conjugate_gradient",
    "gaussian_kernel",
    "poisson_weights",
    "shepp_logan",
    "simulate",
    "squared_error",
]
