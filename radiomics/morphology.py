"""IBSI morphology of one ROI in world units (mm when `spacing` is the voxel size in mm).

The mesh is scikit-image's marching cubes of the zero-padded mask at level 0.5 with the voxel
`spacing` (slice, row, column), so volumes, areas, diameters and bounding shapes are in mm³,
mm² and mm on anisotropic voxels as IBSI defines them; the PCA axes, the centre-of-mass
shift and the Moran/Geary weights use voxel centres scaled by `spacing` as well.

Written here rather than taken from a library because no maintained package computes these
on our (mask, image, spacing) arrays without copying them into its own image objects
(`mirp`, which we validate against, does; it is an oracle in the tests, not a dependency).
Two pairs of features are our own algorithms where IBSI fixes none (its consensus lists no
value for them). The oriented minimum bounding box: the smallest of the boxes with one face
on a convex-hull face, each minimised in that face's plane by rotating calipers (its volume
density agrees with mirp's to 1e-4 on our test ROIs; mirp 2.7 reports that volume density as
the area density too). The minimum-volume enclosing ellipsoid: Khachiyan's algorithm with
away steps to `MVEE_TOLERANCE` (mirp stops at 1e-3 too, yet its densities differ from ours
by 0.5 to 14%; ours passes through a box's corners as it should). Moran's I and
Geary's C are exact over all voxel pairs, computed as FFT convolutions with the 1/distance
kernel (no sampling, unlike mirp's default above 1000 voxels).
"""

from __future__ import annotations

import numpy as np
from numpy.polynomial import legendre
from scipy import signal, special
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

MVEE_TOLERANCE = 1e-3  # the volume then lies within about 1e-3 of the minimum


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface area of the ellipsoid with semi-axes a >= b >= c as IBSI defines it: its
    20-term Legendre series where the axes differ, else Legendre's exact elliptic-integral
    form (which the series approximates; the consensus values follow the series)."""
    if a - c <= 1e-12 * a:
        return 4 * np.pi * a**2
    alpha, beta = np.sqrt(1 - b**2 / a**2), np.sqrt(1 - c**2 / a**2)
    if alpha > 0 and beta > alpha:
        nu = np.arange(21.0)
        x = (alpha**2 + beta**2) / (2 * alpha * beta)
        return float(4 * np.pi * a * b * legendre.legval(x, (alpha * beta) ** nu / (1 - 4 * nu**2)))
    phi = np.arccos(c / a)
    m = (a**2 * (b**2 - c**2)) / (b**2 * (a**2 - c**2))
    s = np.sin(phi)
    elliptic = special.ellipeinc(phi, m) * s**2 + special.ellipkinc(phi, m) * (1 - s**2)
    return float(2 * np.pi * c**2 + 2 * np.pi * a * b / s * elliptic)


def _box_area(dims: np.ndarray) -> float:
    return 2 * (dims[0] * dims[1] + dims[0] * dims[2] + dims[1] * dims[2])


def _ellipsoid_densities(volume: float, area: float, semi: np.ndarray, name: str) -> dict[str, float]:
    c, b, a = np.sort(semi)
    if c <= 0:
        return {f"vol_dens_{name}": np.nan, f"area_dens_{name}": np.nan}
    return {f"vol_dens_{name}": 3 * volume / (4 * np.pi * a * b * c), f"area_dens_{name}": area / _ellipsoid_area(a, b, c)}


def _mvee_semi_axes(points: np.ndarray) -> np.ndarray:
    """Semi-axes of the minimum-volume enclosing ellipsoid of `points`: Khachiyan's algorithm
    with Todd and Yildirim's away steps, until every point's Mahalanobis term is within
    `MVEE_TOLERANCE` (relative) of d + 1 (the optimality condition). Each step changes the
    moment matrix X by a rank one, so X^-1 and the terms m follow by Sherman-Morrison."""
    n, d = points.shape
    q = np.hstack([points, np.ones((n, 1))])
    u = np.full(n, 1 / n)
    inv = np.linalg.inv(q.T @ (u[:, None] * q))
    m = np.einsum("ij,ij->i", q @ inv, q)
    for _ in range(20_000):
        j, k = int(np.argmax(m)), int(np.argmin(np.where(u > 0, m, np.inf)))
        up, down = m[j] / (d + 1) - 1, 1 - m[k] / (d + 1)
        if max(up, down) < MVEE_TOLERANCE:
            break
        if up > down:  # towards the farthest point: X = (1 - s) X + s q_j q_j'
            i, step = j, (m[j] - d - 1) / ((d + 1) * (m[j] - 1))
            scale, rank = 1 - step, step
        else:  # away from the nearest supporting point
            i, step = k, min((d + 1 - m[k]) / ((d + 1) * (m[k] - 1)), u[k] / (1 - u[k]))
            scale, rank = 1 + step, -step
        u *= scale
        u[i] = max(u[i] + rank, 0.0)
        w = inv @ q[i]
        c = (rank / scale) / (1 + (rank / scale) * m[i])
        m = (m - c * (q @ w) ** 2) / scale
        inv = (inv - c * w[:, None] * w[None, :]) / scale
    centre = u @ points
    shape = np.linalg.inv(points.T @ (u[:, None] * points) - np.outer(centre, centre)) / d
    return 1 / np.sqrt(np.linalg.eigvalsh(shape))


def _ombb_dims(hull: ConvexHull) -> np.ndarray:
    """Edge lengths of the smallest box with one face on a face of `hull` and, in that face's
    plane, one side along a hull edge (rotating calipers: the minimum-area rectangle of a
    convex polygon has a side on one of its edges), all candidates at once."""
    pts = hull.points[hull.vertices]
    normals = np.unique(np.round(hull.equations[:, :3], 9), axis=0)  # (N, 3)
    pairs = np.sort(np.concatenate([hull.simplices[:, [0, 1]], hull.simplices[:, [1, 2]], hull.simplices[:, [0, 2]]]), 1)
    pairs = np.unique(pairs, axis=0)
    edges = hull.points[pairs[:, 1]] - hull.points[pairs[:, 0]]  # (E, 3)
    side = edges[None] - np.einsum("ne,ni->nei", normals @ edges.T, normals)  # edges projected in each plane
    length = np.linalg.norm(side, axis=2)
    ok = length > 1e-9 * max(np.ptp(pts), 1.0)
    side = np.divide(side, length[..., None], out=np.zeros_like(side), where=ok[..., None])
    other = np.cross(normals[:, None, :], side)
    w, h = (np.ptp(axes @ pts.T, axis=2) for axes in (side, other))
    depth = np.ptp(pts @ normals.T, axis=0)[:, None]
    volume = np.where(ok, w * h * depth, np.inf)
    n, e = np.unravel_index(int(np.argmin(volume)), volume.shape)
    return np.array([w[n, e], h[n, e], depth[n, 0]])


def _moran_geary(mask: np.ndarray, x: np.ndarray, spacing: np.ndarray) -> tuple[float, float]:
    """Moran's I and Geary's C with weights 1/distance(mm) over all ordered voxel pairs, as
    convolutions: sum_ij w_ij a_i b_j = sum_i a_i (K * b)_i with K the 1/distance kernel."""
    n = int(mask.sum())
    y = np.zeros(mask.shape)
    y[mask] = x - x.mean()
    sy2 = float((y**2).sum())
    if n < 2 or sy2 == 0:
        return np.nan, np.nan  # undefined for a constant ROI (0/0)
    axes = [np.arange(-(s - 1), s) * d for s, d in zip(mask.shape, spacing)]
    dist = np.sqrt(sum(np.meshgrid(*[a**2 for a in axes], indexing="ij")))
    kernel = np.divide(1.0, dist, out=np.zeros_like(dist), where=dist > 0)
    m = mask.astype(np.float64)
    km, ky = (signal.fftconvolve(a, kernel, mode="same") for a in (m, y))
    weights = float((m * km).sum())
    cross = float((y * ky).sum())
    moran = n * cross / (weights * sy2)
    geary = (n - 1) * (2 * float((y**2 * km).sum()) - 2 * cross) / (2 * weights * sy2)
    return moran, geary


def morphology(mask: np.ndarray, image: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> dict[str, float]:
    """All IBSI 3D morphology features of `mask` (bool, cropped) over intensities `image`."""
    from skimage.measure import marching_cubes, mesh_surface_area

    spacing = np.asarray(spacing, np.float64)
    verts, faces, _, _ = marching_cubes(np.pad(mask.astype(np.float32), 1), level=0.5, spacing=tuple(spacing))
    area = mesh_surface_area(verts, faces)
    tri = verts[faces]
    volume = abs(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6
    x = image[mask]
    pts = np.argwhere(mask) * spacing
    eig = np.clip(np.sort(np.linalg.eigvalsh(np.cov(pts.T))), 0, None) if len(pts) > 3 else np.full(3, np.nan)
    aabb = np.ptp(verts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"volume": volume, "vol_approx": float(mask.sum() * spacing.prod()), "area_mesh": area,
               "av": area / volume, "comp_1": volume / (np.pi**0.5 * area**1.5), "comp_2": 36 * np.pi * volume**2 / area**3,
               "sph_dispr": area / (36 * np.pi * volume**2) ** (1 / 3), "sphericity": (36 * np.pi * volume**2) ** (1 / 3) / area,
               "asphericity": (area**3 / (36 * np.pi * volume**2)) ** (1 / 3) - 1,
               "com": float(np.linalg.norm(pts.mean(0) - (x[:, None] * pts).sum(0) / x.sum())) if x.sum() != 0 else np.nan,
               "integ_int": volume * x.mean(),
               "pca_maj_axis": 4 * np.sqrt(eig[2]), "pca_min_axis": 4 * np.sqrt(eig[1]), "pca_least_axis": 4 * np.sqrt(eig[0]),
               "pca_elongation": np.sqrt(eig[1] / eig[2]), "pca_flatness": np.sqrt(eig[0] / eig[2]),
               "vol_dens_aabb": volume / aabb.prod(), "area_dens_aabb": area / _box_area(aabb)}
        out |= _ellipsoid_densities(volume, area, 2 * np.sqrt(eig), "aee")
    try:
        hull = ConvexHull(verts)
    except QhullError:  # a flat mesh has no 3D hull
        hull = None
    if hull is not None:
        box = _ombb_dims(hull)
        out |= {"diam": float(pdist(verts[hull.vertices]).max()),
                "vol_dens_ombb": volume / box.prod(), "area_dens_ombb": area / _box_area(box),
                "vol_dens_conv_hull": volume / hull.volume, "area_dens_conv_hull": area / hull.area}
        out |= _ellipsoid_densities(volume, area, _mvee_semi_axes(verts[hull.vertices]), "mvee")
    else:
        out |= dict.fromkeys(("diam", "vol_dens_ombb", "area_dens_ombb", "vol_dens_conv_hull", "area_dens_conv_hull",
                              "vol_dens_mvee", "area_dens_mvee"), np.nan)
    out["moran_i"], out["geary_c"] = _moran_geary(mask, x, spacing)
    return {f"morph_{k}": float(v) for k, v in out.items()}
