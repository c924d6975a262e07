"""Toy manifolds with seeded samplers and an exact distance-to-manifold function.

Every manifold has `ambient_dim` (n), `intrinsic_dim` (d), `suggested_charts` (the K used in
the experiments), `sample(n_points, seed)` (uniform with respect to the manifold's area
measure, float64 array (N, n)), `distance(x)` (Euclidean distance of each row of x to the
manifold, float64 array (N,)) and `area()` (its d-dimensional volume: the samples' density on the
manifold is 1 / area, so log(area) is their entropy there, the least cross-entropy any model's
density on the manifold can have).

Distances: circle, two circles, annulus, sphere and torus have closed forms. The swiss roll and the
Klein bottle are minimised over their 2-D parameter: a dense grid gives the start, then
projected Gauss-Newton (Levenberg-Marquardt) steps refine it; the swiss roll's parameter
box is kept by clipping (it has a boundary), the Klein bottle's is periodic. The refinement
converges to the nearest point whenever the grid start lies in its basin, which a grid
spacing much smaller than the reach guarantees for points near the manifold (the regime of
the metrics); far from the manifold it can return a local minimum (an upper bound).
A point cloud loaded from .npy uses the distance to the nearest cloud point.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

__all__ = [
    "TOY_MANIFOLDS",
    "Annulus",
    "Circle",
    "KleinBottle",
    "PointCloud",
    "Sphere",
    "SwissRoll",
    "Torus",
    "TwoCircles",
    "get_manifold",
    "load_point_cloud",
]


def _as_points(name: str, x, dim: int) -> np.ndarray:
    x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_count(n_points) -> int:
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)):
        raise TypeError(f"n_points must be an int, got {type(n_points).__name__}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    return int(n_points)


def _rejection(rng: np.random.Generator, n: int, draw, weight, weight_max: float) -> np.ndarray:
    """Draw n parameters from `draw` accepted with probability weight/weight_max (area-uniform sampling)."""
    out = []
    have = 0
    while have < n:
        cand = draw(2 * (n - have) + 16)
        keep = cand[rng.random(len(cand)) * weight_max < weight(cand)]
        out.append(keep)
        have += len(keep)
    return np.concatenate(out)[:n]


def _check_radii(small_name: str, small: float, large_name: str, large: float) -> None:
    """The two radii of an annulus, torus or Klein bottle: 0 < small < large."""
    if not 0 < small < large:
        raise ValueError(f"need 0 < {small_name} < {large_name}, got {small_name}={small}, {large_name}={large}")


class ToyManifold:
    name = ""
    ambient_dim = 0
    intrinsic_dim = 0
    suggested_charts = 1

    def sample(self, n_points: int, seed: int = 0) -> np.ndarray:
        return self._sample(np.random.default_rng(seed), _check_count(n_points))

    def distance(self, x) -> np.ndarray:
        return self._distance(_as_points("x", x, self.ambient_dim))

    def area(self) -> float:
        """The d-dimensional volume (length of a curve, area of a surface)."""
        raise NotImplementedError(f"{type(self).__name__} has no area")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={self.ambient_dim}, d={self.intrinsic_dim})"


class Circle(ToyManifold):
    """Circle of radius `radius` around `center` in R^2."""

    name, ambient_dim, intrinsic_dim, suggested_charts = "circle", 2, 1, 2

    def __init__(self, radius: float = 1.0, center=(0.0, 0.0)):
        if radius <= 0:
            raise ValueError(f"radius must be > 0, got {radius}")
        self.radius, self.center = float(radius), np.asarray(center, dtype=np.float64)

    def _sample(self, rng, n):
        t = rng.uniform(0, 2 * math.pi, n)
        return self.center + self.radius * np.stack([np.cos(t), np.sin(t)], 1)

    def _distance(self, x):
        return np.abs(np.linalg.norm(x - self.center, axis=1) - self.radius)

    def area(self):
        return 2 * math.pi * self.radius


class TwoCircles(ToyManifold):
    """Two disjoint circles of radius `radius` centred at (+-offset, 0); half the points on each."""

    name, ambient_dim, intrinsic_dim, suggested_charts = "two_circles", 2, 1, 4

    def __init__(self, radius: float = 1.0, offset: float = 1.5):
        if offset <= radius:
            raise ValueError(f"offset must be > radius so the circles are disjoint, got {offset} <= {radius}")
        self.circles = (Circle(radius, (-offset, 0.0)), Circle(radius, (offset, 0.0)))

    def _sample(self, rng, n):
        which = rng.random(n) < 0.5
        pts = np.where(which[:, None], self.circles[0]._sample(rng, n), self.circles[1]._sample(rng, n))
        return pts

    def _distance(self, x):
        return np.minimum(self.circles[0]._distance(x), self.circles[1]._distance(x))

    def area(self):
        return self.circles[0].area() + self.circles[1].area()


class Annulus(ToyManifold):
    """Flat annulus {inner <= |(x, y)| <= outer, z = 0} in R^3: Alberti et al.'s ring, radii 0.5 and 1.5.

    The authors' ring lives in R^2 (d = n = 2); chart mixtures here need d < n, so it lies in the
    plane z = 0 of R^3, which also makes the distance to it (height and radial overshoot) a real
    test. Area-uniform like every toy here (the authors draw the radius uniformly, which puts more
    mass near the inner edge). A 2-manifold with boundary whose hole no single chart covers.
    """

    name, ambient_dim, intrinsic_dim, suggested_charts = "annulus", 3, 2, 2

    def __init__(self, inner: float = 0.5, outer: float = 1.5):
        _check_radii("inner", inner, "outer", outer)
        self.inner, self.outer = float(inner), float(outer)

    def _sample(self, rng, n):
        r = np.sqrt(rng.uniform(self.inner**2, self.outer**2, n))  # area element r dr
        t = rng.uniform(0, 2 * math.pi, n)
        return np.stack([r * np.cos(t), r * np.sin(t), np.zeros(n)], 1)

    def _distance(self, x):
        r = np.hypot(x[:, 0], x[:, 1])
        radial = np.maximum(0.0, np.maximum(r - self.outer, self.inner - r))
        return np.hypot(radial, x[:, 2])

    def area(self):
        return math.pi * (self.outer**2 - self.inner**2)


class Sphere(ToyManifold):
    """Unit sphere S^2 in R^3."""

    name, ambient_dim, intrinsic_dim, suggested_charts = "sphere", 3, 2, 2

    def _sample(self, rng, n):
        g = rng.standard_normal((n, 3))
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    def _distance(self, x):
        return np.abs(np.linalg.norm(x, axis=1) - 1.0)

    def area(self):
        return 4 * math.pi


class Torus(ToyManifold):
    """Torus in R^3 around the z-axis: tube radius `minor` around a circle of radius `major`."""

    name, ambient_dim, intrinsic_dim, suggested_charts = "torus", 3, 2, 6

    def __init__(self, major: float = 1.0, minor: float = 0.4):
        _check_radii("minor", minor, "major", major)
        self.major, self.minor = float(major), float(minor)

    def _sample(self, rng, n):
        R, r = self.major, self.minor
        # area element r (R + r cos v): reject on v
        v = _rejection(rng, n, lambda m: rng.uniform(0, 2 * math.pi, m), lambda v: R + r * np.cos(v), R + r)
        u = rng.uniform(0, 2 * math.pi, n)
        ring = R + r * np.cos(v)
        return np.stack([ring * np.cos(u), ring * np.sin(u), r * np.sin(v)], 1)

    def _distance(self, x):
        rho = np.hypot(x[:, 0], x[:, 1])
        return np.abs(np.hypot(rho - self.major, x[:, 2]) - self.minor)

    def area(self):
        return 4 * math.pi**2 * self.major * self.minor


class _ParametricSurface(ToyManifold):
    """A surface given by a map P(u, v) on a box; distance by grid search + Gauss-Newton refinement."""

    box = ((0.0, 1.0), (0.0, 1.0))
    periodic = False
    grid = (200, 60)
    refine_steps = 30
    chunk = 512

    def param(self, u, v) -> np.ndarray:  # (N,) x (N,) -> (N, n)
        raise NotImplementedError

    def param_jacobian(self, u, v) -> np.ndarray:  # -> (N, n, 2)
        raise NotImplementedError

    def _grid_points(self):
        (u0, u1), (v0, v1) = self.box
        nu, nv = self.grid
        end = not self.periodic
        uu, vv = np.meshgrid(np.linspace(u0, u1, nu, endpoint=end), np.linspace(v0, v1, nv, endpoint=end), indexing="ij")
        uv = np.stack([uu.ravel(), vv.ravel()], 1)
        return uv, self.param(uv[:, 0], uv[:, 1])

    def closest_params(self, x) -> np.ndarray:
        """(N, 2) parameters (u, v) of the surface point closest to each row of x: grid search, then _refine."""
        grid_uv, grid_pts = self._grid_points()
        sq_grid = (grid_pts**2).sum(1)
        start = np.empty((len(x), 2))
        for i in range(0, len(x), self.chunk):
            xc = x[i : i + self.chunk]
            d2 = (xc**2).sum(1)[:, None] - 2 * xc @ grid_pts.T + sq_grid[None, :]
            start[i : i + self.chunk] = grid_uv[np.argmin(d2, 1)]
        return self._refine(x, start)

    def _distance(self, x):
        uv = self.closest_params(x)
        return np.linalg.norm(x - self.param(uv[:, 0], uv[:, 1]), axis=1)

    def _refine(self, x, uv):
        """Levenberg-Marquardt on ||x - P(u, v)||^2, vectorised over points; a step is kept only if it helps."""
        lam = np.full(len(x), 1e-3)
        cost = ((x - self.param(uv[:, 0], uv[:, 1])) ** 2).sum(1)
        for _ in range(self.refine_steps):
            r = x - self.param(uv[:, 0], uv[:, 1])
            J = self.param_jacobian(uv[:, 0], uv[:, 1])
            JtJ = np.einsum("nki,nkj->nij", J, J)
            Jtr = np.einsum("nki,nk->ni", J, r)
            A = JtJ + lam[:, None, None] * (np.trace(JtJ, axis1=1, axis2=2)[:, None, None] * np.eye(2) + 1e-12)
            step = np.linalg.solve(A, Jtr[..., None])[..., 0]
            cand = self._clip(uv + step)
            new_cost = ((x - self.param(cand[:, 0], cand[:, 1])) ** 2).sum(1)
            better = new_cost < cost
            uv = np.where(better[:, None], cand, uv)
            cost = np.where(better, new_cost, cost)
            lam = np.where(better, lam * 0.3, lam * 10.0)
        return uv

    def _clip(self, uv):
        if self.periodic:
            return uv
        (u0, u1), (v0, v1) = self.box
        return np.stack([np.clip(uv[:, 0], u0, u1), np.clip(uv[:, 1], v0, v1)], 1)


class SwissRoll(_ParametricSurface):
    """Swiss roll (t cos t, h, t sin t) * scale, t in [1.5 pi, 4.5 pi], h in [0, height]; a surface with boundary."""

    name, ambient_dim, intrinsic_dim, suggested_charts = "swiss_roll", 3, 2, 4
    grid = (400, 40)

    def __init__(self, height: float = 10.0, scale: float = 0.1):
        self.height, self.scale = float(height), float(scale)
        self.box = ((1.5 * math.pi, 4.5 * math.pi), (0.0, self.height))

    def param(self, t, h):
        return self.scale * np.stack([t * np.cos(t), h, t * np.sin(t)], 1)

    def param_jacobian(self, t, h):
        zero, one = np.zeros_like(t), np.ones_like(t)
        dt = np.stack([np.cos(t) - t * np.sin(t), zero, np.sin(t) + t * np.cos(t)], 1)
        dh = np.stack([zero, one, zero], 1)
        return self.scale * np.stack([dt, dh], 2)

    def area(self):
        # scale^2 * height * integral of sqrt(1 + t^2) dt over [t0, t1]
        (t0, t1), _ = self.box
        primitive = lambda t: 0.5 * (t * math.sqrt(1 + t * t) + math.asinh(t))  # noqa: E731
        return self.scale**2 * self.height * (primitive(t1) - primitive(t0))

    def _sample(self, rng, n):
        (t0, t1), _ = self.box
        # area element scale^2 sqrt(1 + t^2): reject on t
        t = _rejection(rng, n, lambda m: rng.uniform(t0, t1, m), lambda t: np.sqrt(1 + t**2), math.sqrt(1 + t1**2))
        h = rng.uniform(0, self.height, n)
        return self.param(t, h)


class KleinBottle(_ParametricSurface):
    """Klein bottle embedded in R^4 ("flat-ish" torus-like embedding).

    P(u, v) = ((R + r cos v) cos u, (R + r cos v) sin u, r sin v cos(u/2), r sin v sin(u/2)),
    u, v in [0, 2 pi); P(u + 2 pi, v) = P(u, -v) is the Klein identification. The embedding is
    injective for r < R, and its coordinate fields are orthogonal, with area element
    r sqrt((R + r cos v)^2 + (r sin v)^2 / 4).
    """

    name, ambient_dim, intrinsic_dim, suggested_charts = "klein_bottle", 4, 2, 6
    periodic = True
    grid = (160, 80)

    def __init__(self, major: float = 1.0, minor: float = 0.5):
        _check_radii("minor", minor, "major", major)
        self.major, self.minor = float(major), float(minor)
        self.box = ((0.0, 2 * math.pi), (0.0, 2 * math.pi))

    def param(self, u, v):
        R, r = self.major, self.minor
        ring = R + r * np.cos(v)
        return np.stack([ring * np.cos(u), ring * np.sin(u), r * np.sin(v) * np.cos(u / 2), r * np.sin(v) * np.sin(u / 2)], 1)

    def param_jacobian(self, u, v):
        R, r = self.major, self.minor
        ring = R + r * np.cos(v)
        du = np.stack(
            [-ring * np.sin(u), ring * np.cos(u), -0.5 * r * np.sin(v) * np.sin(u / 2), 0.5 * r * np.sin(v) * np.cos(u / 2)], 1
        )
        dv = np.stack(
            [-r * np.sin(v) * np.cos(u), -r * np.sin(v) * np.sin(u), r * np.cos(v) * np.cos(u / 2), r * np.cos(v) * np.sin(u / 2)], 1
        )
        return np.stack([du, dv], 2)

    def _area_weight(self, v):
        R, r = self.major, self.minor
        return np.sqrt((R + r * np.cos(v)) ** 2 + (r * np.sin(v)) ** 2 / 4)

    def area(self):
        # 2 pi * r * integral over v of _area_weight: a smooth periodic integrand, so the trapezoid rule on 4096 nodes
        # is exact to rounding
        v = np.linspace(0, 2 * math.pi, 4096, endpoint=False)
        return float(2 * math.pi * self.minor * self._area_weight(v).mean() * 2 * math.pi)

    def _sample(self, rng, n):
        v = _rejection(rng, n, lambda m: rng.uniform(0, 2 * math.pi, m), self._area_weight, self.major + self.minor)
        u = rng.uniform(0, 2 * math.pi, n)
        return self.param(u, v)


class PointCloud(ToyManifold):
    """Any point cloud (N, n): sampling draws rows, distance is to the nearest row (an approximation)."""

    name = "points"
    suggested_charts = 4

    def __init__(self, points, intrinsic_dim: int = 1):
        points = np.asarray(points, dtype=np.float64)
        if points.ndim != 2 or points.shape[0] < 2 or points.shape[1] < 2:
            raise ValueError(f"points must have shape (N >= 2, n >= 2), got {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError("points contains NaN or infinite values")
        if not 1 <= intrinsic_dim < points.shape[1]:
            raise ValueError(f"intrinsic_dim must be in [1, {points.shape[1] - 1}], got {intrinsic_dim}")
        self.points, self.ambient_dim, self.intrinsic_dim = points, points.shape[1], int(intrinsic_dim)

    def _sample(self, rng, n):
        replace = n > len(self.points)
        return self.points[rng.choice(len(self.points), n, replace=replace)]

    def _distance(self, x):
        sq = (self.points**2).sum(1)
        out = np.empty(len(x))
        for i in range(0, len(x), 1024):
            xc = x[i : i + 1024]
            d2 = (xc**2).sum(1)[:, None] - 2 * xc @ self.points.T + sq[None, :]
            out[i : i + 1024] = np.sqrt(np.maximum(d2.min(1), 0.0))
        return out


def load_point_cloud(path, intrinsic_dim: int = 1) -> PointCloud:
    """A PointCloud from a .npy file holding a float array (N, n)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    return PointCloud(np.load(path, allow_pickle=False), intrinsic_dim)


TOY_MANIFOLDS = {
    cls.name: cls for cls in (Circle, TwoCircles, Annulus, Sphere, Torus, SwissRoll, KleinBottle)
}


def get_manifold(name: str, **kwargs) -> ToyManifold:
    """The toy manifold called `name` (one of TOY_MANIFOLDS)."""
    if name not in TOY_MANIFOLDS:
        raise ValueError(f"unknown toy manifold {name!r}; choose one of {sorted(TOY_MANIFOLDS)}")
    return TOY_MANIFOLDS[name](**kwargs)
