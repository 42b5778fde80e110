"""IBSI feature families of one ROI, our own vectorised implementation.

Conventions follow IBSI (and `mirp`, which we validate against): intensities discretised
to `bins` fixed bins between the ROI's minimum and maximum (fixed bin number, the default)
or into bins of a fixed width from the ROI's minimum (fixed bin size); texture matrices 3D
with the 13 unique directions (26-neighbourhood) merged into one matrix ("3d_volume_merge");
NGTDM and NGLDM over the 26-neighbourhood within the ROI (NGLDM coarseness 0); GLSZM and
GLDZM zones 26-connected, GLDZM distances 6-connected to the ROI's edge; morphology
(`morphology.py`) from the marching-cubes mesh of the mask in world units (`spacing`). Names
carry mirp's prefixes (`stat_`, `ih_`, `morph_`, `cm_`, `rlm_`, `szm_`, `dzm_`, `ngt_`, `ngl_`).
A feature that is undefined for this ROI (skewness of a constant region, the coefficient of
variation of a zero-mean residual) is NaN.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from orthodiff.errors import OrthodiffError
from orthodiff.radiomics.morphology import morphology

FAMILIES = ("first_order", "histogram", "shape", "glcm", "glrlm", "glszm", "gldzm", "ngtdm", "gldm")
DISCRETISATIONS = ("fixed_bin_number", "fixed_bin_size")
DIRECTIONS = [d for d in itertools.product((-1, 0, 1), repeat=3) if d > (0, 0, 0)]  # 13 unique


def _moments(x: np.ndarray) -> dict[str, float]:
    mu, var = x.mean(), x.var()
    with np.errstate(invalid="ignore", divide="ignore"):
        skew = ((x - mu) ** 3).mean() / var**1.5 if var > 0 else np.nan
        kurt = ((x - mu) ** 4).mean() / var**2 - 3 if var > 0 else np.nan
    p10, p25, med, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    inner = x[(x >= p10) & (x <= p90)]
    return {"mean": mu, "var": var, "skew": skew, "kurt": kurt, "median": med, "min": x.min(), "p10": p10,
            "p90": p90, "max": x.max(), "iqr": p75 - p25, "range": x.max() - x.min(), "mad": np.abs(x - mu).mean(),
            "rmad": np.abs(inner - inner.mean()).mean() if inner.size else np.nan, "medad": np.abs(x - med).mean(),
            "_p25": p25, "_p75": p75}


def first_order(x: np.ndarray) -> dict[str, float]:
    m = _moments(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        extra = {"cov": np.sqrt(m["var"]) / m["mean"], "qcod": (m["_p75"] - m["_p25"]) / (m["_p75"] + m["_p25"]),
                 "energy": float((x.astype(np.float64) ** 2).sum()), "rms": float(np.sqrt((x.astype(np.float64) ** 2).mean()))}
    return {f"stat_{k}": v for k, v in {**m, **extra}.items() if not k.startswith("_")}


def histogram(g: np.ndarray, bins: int) -> dict[str, float]:
    m = _moments(g.astype(np.float64))
    p = np.bincount(g, minlength=bins + 1)[1:] / g.size
    nz = p[p > 0]
    keep = ("mean", "var", "skew", "kurt", "median", "min", "p10", "p90", "max", "iqr", "range", "mad", "rmad", "medad")
    out = {f"ih_{k}": m[k] for k in keep}
    with np.errstate(invalid="ignore", divide="ignore"):
        modes = np.flatnonzero(p == p.max()) + 1  # IBSI: of tied modes, the one nearest the mean
        out |= {"ih_mode": float(modes[np.argmin(np.abs(modes - m["mean"]))]), "ih_cov": np.sqrt(m["var"]) / m["mean"],
                "ih_qcod": (m["_p75"] - m["_p25"]) / (m["_p75"] + m["_p25"]),
                "ih_entropy": float(-(nz * np.log2(nz)).sum()), "ih_uniformity": float((p**2).sum())}
    grad = np.gradient(p * g.size) if bins > 1 else np.zeros(1)  # of the counts: central inside, one-sided at the ends
    out |= {"ih_max_grad": grad.max(), "ih_max_grad_g": float(np.argmax(grad) + 1),
            "ih_min_grad": grad.min(), "ih_min_grad_g": float(np.argmin(grad) + 1)}
    return out


def _pairs(g: np.ndarray, d: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Grey levels of voxel pairs (x, x + d) with both in the ROI (g == 0 outside)."""
    a = g[tuple(slice(max(0, -k), g.shape[i] - max(0, k)) for i, k in enumerate(d))]
    b = g[tuple(slice(max(0, k), g.shape[i] - max(0, -k) if k < 0 else g.shape[i]) for i, k in enumerate(d))]
    both = (a > 0) & (b > 0)
    return a[both], b[both]


def glcm(g: np.ndarray, bins: int) -> dict[str, float]:
    m = np.zeros((bins, bins))
    for d in DIRECTIONS:
        a, b = _pairs(g, d)
        np.add.at(m, (a - 1, b - 1), 1)
    m = m + m.T
    if m.sum() == 0:
        return {}
    p = m / m.sum()
    i = np.arange(1, bins + 1)[:, None]
    j = i.T
    px, k_diff, k_sum = p.sum(1), np.abs(i - j), i + j
    pd = np.bincount(k_diff.ravel(), p.ravel(), minlength=bins)
    ps = np.bincount(k_sum.ravel(), p.ravel(), minlength=2 * bins + 1)
    kd, ks = np.arange(len(pd)), np.arange(len(ps))
    mu = (i * p).sum()
    var = ((i - mu) ** 2 * p).sum()

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log2(q)).sum())

    hxy = entropy(p.ravel())
    hx = entropy(px)
    pxpy = np.outer(px, px)
    with np.errstate(invalid="ignore", divide="ignore"):
        hxy1 = float(-(p[p > 0] * np.log2(pxpy[p > 0])).sum())
        hxy2 = entropy(pxpy.ravel())
        out = {"joint_max": p.max(), "joint_avg": mu, "joint_var": var, "joint_entr": hxy,
               "diff_avg": (kd * pd).sum(), "diff_var": ((kd - (kd * pd).sum()) ** 2 * pd).sum(), "diff_entr": entropy(pd),
               "sum_avg": (ks * ps).sum(), "sum_var": ((ks - (ks * ps).sum()) ** 2 * ps).sum(), "sum_entr": entropy(ps),
               "energy": (p**2).sum(), "contrast": (k_diff**2 * p).sum(), "dissimilarity": (k_diff * p).sum(),
               "inv_diff": (p / (1 + k_diff)).sum(), "inv_diff_norm": (p / (1 + k_diff / bins)).sum(),
               "inv_diff_mom": (p / (1 + k_diff**2)).sum(), "inv_diff_mom_norm": (p / (1 + (k_diff / bins) ** 2)).sum(),
               "inv_var": (p / np.where(k_diff == 0, np.inf, k_diff**2)).sum(),
               "corr": ((i - mu) * (j - mu) * p).sum() / var if var > 0 else np.nan,
               "auto_corr": (i * j * p).sum(), "clust_tend": ((i + j - 2 * mu) ** 2 * p).sum(),
               "clust_shade": ((i + j - 2 * mu) ** 3 * p).sum(), "clust_prom": ((i + j - 2 * mu) ** 4 * p).sum(),
               "info_corr1": (hxy - hxy1) / hx if hx > 0 else np.nan,
               "info_corr2": np.sqrt(max(0.0, 1 - np.exp(-2 * (hxy2 - hxy))))}
    return {f"cm_{k}": float(v) for k, v in out.items()}


def _size_features(m: np.ndarray, prefix: str, n_voxels: int, emphasis: str) -> dict[str, float]:
    """Features of a (grey level i, size j) count matrix: GLRLM, GLSZM and NGLDM share them."""
    total = m.sum()
    if total == 0:
        return {}
    i = np.arange(1, m.shape[0] + 1)[:, None]
    j = np.arange(1, m.shape[1] + 1)[None, :]  # run length, zone size, or dependence count + 1 (IBSI)
    p = m / total
    mu_i, mu_j = (i * p).sum(), (j * p).sum()
    q = p[p > 0]
    s, l_, name = emphasis
    grey = {"szm": "z", "rlm": "r", "ngl": "c", "dzm": "z"}[prefix]
    out = {f"{s}e": (m / j**2).sum() / total, f"{l_}e": (m * j**2).sum() / total,
           f"lg{grey}e": (m / i**2).sum() / total, f"hg{grey}e": (m * i**2).sum() / total,
           f"{s}lge": (m / (i**2 * j**2)).sum() / total, f"{s}hge": (m * i**2 / j**2).sum() / total,
           f"{l_}lge": (m * j**2 / i**2).sum() / total, f"{l_}hge": (m * i**2 * j**2).sum() / total,
           "glnu": (m.sum(1) ** 2).sum() / total, "glnu_norm": (m.sum(1) ** 2).sum() / total**2,
           "gl_var": ((i - mu_i) ** 2 * p).sum(), f"{name}_var": ((j - mu_j) ** 2 * p).sum(),
           f"{name}_entr": float(-(q * np.log2(q)).sum()),
           f"{name}nu": (m.sum(0) ** 2).sum() / total, f"{name}nu_norm": (m.sum(0) ** 2).sum() / total**2}
    if prefix == "ngl":
        out |= {"dc_perc": total / n_voxels, "dc_energy": (p**2).sum()}
    else:
        out[f"{name[0]}_perc"] = total / n_voxels if prefix in ("szm", "dzm") else total / (n_voxels * len(DIRECTIONS))
    return {f"{prefix}_{k}": float(v) for k, v in out.items()}


def glrlm(g: np.ndarray, bins: int) -> dict[str, float]:
    longest = max(g.shape)
    m = np.zeros((bins, longest))
    padded = np.pad(g, 1)
    for d in DIRECTIONS:
        nxt = np.roll(padded, tuple(-k for k in d), axis=(0, 1, 2))
        prv = np.roll(padded, d, axis=(0, 1, 2))
        same_next = (padded > 0) & (nxt == padded)
        length = np.ones(padded.shape, np.int32)
        for _ in range(longest):  # length(x) = 1 + length(x + d) while the next voxel continues the run
            length = np.where(same_next, 1 + np.roll(length, tuple(-k for k in d), axis=(0, 1, 2)), 1)
        start = (padded > 0) & (prv != padded)
        np.add.at(m, (padded[start] - 1, length[start] - 1), 1)
    return _size_features(m, "rlm", int((g > 0).sum()), ("sr", "lr", "rl"))


def _zone_matrix(g: np.ndarray, bins: int, per_zone: np.ndarray | None = None) -> np.ndarray:
    """(grey level, zone size) counts of the 26-connected zones of equal level, or (grey
    level, minimum of `per_zone` over the zone) when a voxel map `per_zone` is given."""
    from skimage.measure import label

    zones = label(g, background=0, connectivity=3).ravel()  # equal-valued regions, all levels at once
    ids, first = np.unique(zones, return_index=True)  # one voxel of each zone (label 0: outside the ROI)
    ids, levels = ids[ids > 0], g.ravel()[first[ids > 0]]
    values = (np.bincount(zones)[ids] if per_zone is None else
              np.asarray(ndimage.minimum(per_zone.ravel(), zones, ids), np.int64))
    m = np.zeros((bins, int(values.max())))
    np.add.at(m, (levels - 1, values - 1), 1)
    return m


def glszm(g: np.ndarray, bins: int) -> dict[str, float]:
    return _size_features(_zone_matrix(g, bins), "szm", int((g > 0).sum()), ("sz", "lz", "zs"))


def gldzm(g: np.ndarray, bins: int) -> dict[str, float]:
    """Grey level distance zone matrix: each zone at the smallest 6-connected (taxicab)
    distance of its voxels to the ROI's edge, 1 on the edge."""
    distance = ndimage.distance_transform_cdt(np.pad(g > 0, 1), metric="taxicab")[1:-1, 1:-1, 1:-1]
    return _size_features(_zone_matrix(g, bins, distance), "dzm", int((g > 0).sum()), ("sd", "ld", "zd"))


def _neighbours(g: np.ndarray):
    """For every offset of the 26-neighbourhood: the neighbour's grey level (0 outside the ROI)."""
    padded = np.pad(g, 1)
    for d in itertools.product((-1, 0, 1), repeat=3):
        if d != (0, 0, 0):
            yield np.roll(padded, d, axis=(0, 1, 2))[1:-1, 1:-1, 1:-1]


def ngtdm(g: np.ndarray, bins: int) -> dict[str, float]:
    total, count = np.zeros(g.shape), np.zeros(g.shape)
    for nb in _neighbours(g):
        total += nb
        count += nb > 0
    valid = (g > 0) & (count > 0)
    levels = g[valid]
    diff = np.abs(levels - total[valid] / count[valid])
    n = np.bincount(levels, minlength=bins + 1)[1:].astype(float)
    s = np.bincount(levels, diff, minlength=bins + 1)[1:]
    nv = n.sum()
    if nv == 0:
        return {}
    p = n / nv
    present = p > 0
    i = np.arange(1, bins + 1)
    ip, pp, sp = i[present], p[present], s[present]
    ng = present.sum()
    pi, pj = pp[:, None], pp[None, :]
    ii, jj = ip[:, None], ip[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"coarseness": 1 / (pp * sp).sum() if (pp * sp).sum() > 0 else np.nan,
               "contrast": (pi * pj * (ii - jj) ** 2).sum() / (ng * (ng - 1)) * sp.sum() / nv if ng > 1 else np.nan,
               "busyness": (pp * sp).sum() / np.abs(ii * pi - jj * pj).sum() if ng > 1 else np.nan,
               "complexity": (np.abs(ii - jj) * (pi * sp[:, None] + pj * sp[None, :]) / (pi + pj)).sum() / nv,
               "strength": ((pi + pj) * (ii - jj) ** 2).sum() / sp.sum() if sp.sum() > 0 else np.nan}
    return {f"ngt_{k}": float(v) for k, v in out.items()}


def gldm(g: np.ndarray, bins: int) -> dict[str, float]:
    """NGLDM with coarseness 0 (PyRadiomics' GLDM with alpha 0)."""
    dependence = np.zeros(g.shape, np.int32)
    for nb in _neighbours(g):
        dependence += (nb == g) & (g > 0)
    inside = g > 0
    m = np.zeros((bins, 27))
    np.add.at(m, (g[inside] - 1, dependence[inside]), 1)
    return _size_features(m, "ngl", int(inside.sum()), ("ld", "hd", "dc"))


def discretise(x: np.ndarray, bins: int = 32, method: str = "fixed_bin_number", bin_width: float | None = None,
               ) -> tuple[np.ndarray, int]:
    """(levels, number of levels) of the ROI values `x`. Fixed bin number: levels 1..bins over
    [min, max]. Fixed bin size: level floor((x - min) / bin_width) + 1, so as many levels as
    bins of `bin_width` span the ROI (IBSI; its lower bound is the ROI's minimum here, as no
    re-segmentation range is set)."""
    lo, hi = x.min(), x.max()
    if method == "fixed_bin_size":
        if not bin_width or bin_width <= 0:
            raise OrthodiffError(f"fixed-bin-size discretisation needs a bin width > 0 (got {bin_width!r}): pass --bin-width")
        g = np.floor((x - lo) / bin_width).astype(np.int64) + 1
        return g, int(g.max())
    if method != "fixed_bin_number":
        raise OrthodiffError(f"discretisation {method!r}: expected one of {list(DISCRETISATIONS)}")
    if hi == lo:
        return np.ones(x.shape, np.int64), bins
    return np.minimum(np.floor(bins * (x - lo) / (hi - lo)).astype(np.int64) + 1, bins), bins


def roi_features(image: np.ndarray, mask: np.ndarray, families=FAMILIES, bins: int = 32, spacing=(1.0, 1.0, 1.0),
                 discretisation: str = "fixed_bin_number", bin_width: float | None = None) -> dict[str, float]:
    """All features of `families` for the voxels of `image` where `mask` is true (cropped to
    the mask's bounding box first). `spacing`: the voxel size (slice, row, column), in mm for
    morphology in mm. `discretisation` (`DISCRETISATIONS`): `bins` levels, or bins of
    `bin_width` intensity units. An empty mask gives an empty dict (the caller records why)."""
    if not mask.any():
        return {}
    box = ndimage.find_objects(mask.astype(np.int8))[0]
    image, mask = image[box].astype(np.float64), mask[box].astype(bool)
    x = image[mask]
    g = np.zeros(mask.shape, np.int64)
    g[mask], levels = discretise(x, bins, discretisation, bin_width)
    out = {}
    for family in families:
        if family == "first_order":
            out |= first_order(x)
        elif family == "histogram":
            out |= histogram(g[mask], levels)
        elif family == "shape":
            out |= morphology(mask, image, spacing)
        else:
            out |= {"glcm": glcm, "glrlm": glrlm, "glszm": glszm, "gldzm": gldzm, "ngtdm": ngtdm, "gldm": gldm}[family](g, levels)
    return {k: float(v) if np.isfinite(v) else np.nan for k, v in out.items()}  # e.g. cov of a zero-mean residual
