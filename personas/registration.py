"""Affine registration to a common reference (the paper's preprocessing option, sec. 5.1).

The paper compares no registration with an affine one (NiftyReg) that aligns every scan to a
common reference space before personas and radiomics. Here SimpleITK (the optional
extra `registration`) does the affine step: normalised correlation (`similarity=
"correlation"`, the default: one contrast, the most precise: a known affine's residual 75x
smaller against Mattes' 16x, tests/test_registration.py) or Mattes mutual information
(`"mattes"`, 32 histogram bins, every voxel) for a plane that mixes contrasts, where
correlation assumes one intensity relation: on the demo cohort's sagittal plane its metric
stayed above -0.4 for two thirds of the fat-suppressed series and for none of the others
(docs/results/personas.md compares both). Gradient descent with a learning rate estimated
every iteration, converged when
the metric's change over a window of 10 iterations falls below 1e-6 (ITK's convergence
monitor), centred geometric initialisation, linear resampling onto the reference grid. The
reference of a plane is the voxel-wise mean of its training series (a template of the
cohort; no external atlas needed).

A registration that fails (constant volume, an exception inside ITK, the optimiser stopping
at its iteration limit, a non-finite metric) gives no volume but a recorded reason;
`register_store` writes the aligned series to a new store and every series' record
(metric, iterations, stop condition, reason) to `registration_<plane>.csv` in it. The paper's
none-vs-affine comparison is then the same chain (persona -> radiomics -> fingerprint) on
both stores, and `registration_comparison` puts their metrics side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.errors import OrthodiffError

REGISTRATIONS = ("none", "affine")
SIMILARITIES = ("correlation", "mattes")


def _sitk():
    try:
        import SimpleITK as sitk
    except ImportError:
        raise OrthodiffError("affine registration needs SimpleITK: pip install 'orthodiff[registration]'") from None
    return sitk


@dataclass
class Registered:
    """The aligned volume (None when the registration failed) and how it went."""

    volume: np.ndarray | None
    metric: float
    iterations: int
    stop: str
    reason: str | None = None


def affine_register(moving: np.ndarray, fixed: np.ndarray, iterations: int = 200, seed: int = 0,
                    similarity: str = "correlation") -> Registered:
    """Align `moving` (D, H, W) to `fixed` (same shape) with a 12-parameter affine transform,
    maximising `similarity` (one of SIMILARITIES)."""
    if similarity not in SIMILARITIES:
        raise OrthodiffError(f"similarity {similarity!r}: expected one of {list(SIMILARITIES)}")
    sitk = _sitk()
    for name, volume in (("moving", moving), ("fixed", fixed)):
        volume = np.asarray(volume)
        if volume.ndim != 3 or min(volume.shape) < 2:
            return Registered(None, np.nan, 0, "", f"{name} volume of shape {volume.shape}: not a 3D volume")
        if not np.isfinite(volume).all():
            return Registered(None, np.nan, 0, "", f"{name} volume has non-finite voxels")
        if np.ptp(volume) == 0:
            return Registered(None, np.nan, 0, "", f"{name} volume is constant: nothing to align")
    f = sitk.GetImageFromArray(np.asarray(fixed, np.float32))
    m = sitk.GetImageFromArray(np.asarray(moving, np.float32))
    reg = sitk.ImageRegistrationMethod()
    if similarity == "mattes":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    else:
        reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=iterations, convergenceMinimumValue=1e-6,
                                      convergenceWindowSize=10, estimateLearningRate=reg.EachIteration)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetInitialTransform(sitk.CenteredTransformInitializer(f, m, sitk.AffineTransform(3),
                                                              sitk.CenteredTransformInitializerFilter.GEOMETRY))
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic sums
    try:
        transform = reg.Execute(f, m)
    except RuntimeError as err:
        return Registered(None, np.nan, 0, "", f"ITK failed: {str(err).strip().splitlines()[-1]}")
    stop, metric, done = reg.GetOptimizerStopConditionDescription(), float(reg.GetMetricValue()), reg.GetOptimizerIteration()
    if not np.isfinite(metric):
        return Registered(None, np.nan, done, stop, "non-finite metric")
    if "Maximum number of iterations" in stop:
        return Registered(None, metric, done, stop, f"did not converge in {iterations} iterations")
    out = sitk.Resample(m, f, transform, sitk.sitkLinear, float(np.min(moving)), sitk.sitkFloat32)
    return Registered(sitk.GetArrayFromImage(out), metric, done, stop)


def register_store(store: str, plane: str, out: str, iterations: int = 200, progress=None,
                   similarity: str = "correlation") -> pd.DataFrame:
    """Every `plane` series of `store` aligned to the mean training volume, appended to `out`
    (a new store; series already there are skipped, so an interrupted run finishes on rerun;
    one registered with another `similarity` is refused); returns and writes
    `<out>/registration_<plane>.csv`: one row per series with similarity, metric, iterations,
    stop condition and `reason` (NaN when aligned, else why the series was left out)."""
    from orthodiff.featurestore.volumes import COORDS, append_volumes, ingested_series, open_volumes
    from orthodiff.outputs import write_table

    ds = open_volumes(store)
    ds = ds.isel(series=np.flatnonzero(ds.plane.values == plane))
    if not ds.sizes["series"]:
        raise OrthodiffError(f"{store}: no {plane} volumes to register")
    train = np.flatnonzero(ds.split.values == "train")
    if not len(train):
        raise OrthodiffError(f"{store}: no {plane} training series to build the reference from")
    reference = ds.volume.isel(series=train).astype(np.float64).mean("series").values
    done = ingested_series(out) if Path(out).exists() else set()
    records = Path(out) / f"registration_{plane}.csv"
    if done and records.exists():
        before = set(pd.read_csv(records).get("similarity", pd.Series(["correlation"])).dropna())
        if before != {similarity}:
            raise OrthodiffError(f"{out}: its {plane} series were registered with similarity {sorted(before)}, not "
                                 f"{similarity!r}; write to another --out or remove it")
    rows = []
    for i, series in enumerate(ds.series.values.tolist()):
        result = affine_register(ds.volume.isel(series=i).values, reference, iterations, similarity=similarity)
        rows.append({"series_id": series, "similarity": similarity, "metric": result.metric, "iterations": result.iterations,
                     "stop": result.stop, "reason": result.reason if result.reason else np.nan})
        if progress:
            progress()
        if result.volume is None or series in done:
            continue
        meta = pd.DataFrame([{"series_id": series, **{c: ds[c].values[i] for c in COORDS}}])
        append_volumes(out, np.clip(result.volume, -1, 1)[None], meta)
    table = pd.DataFrame(rows)
    if table["reason"].notna().all():
        raise OrthodiffError(f"{store}: no {plane} series could be registered ({table['reason'].iloc[0]})")
    write_table(table, records)
    return table


def registration_comparison(runs: dict[str, str | Path]) -> pd.DataFrame:
    """The metrics of `orthodiff fingerprint` runs keyed by registration ("none", "affine")
    in one table, one row per (model, registration)."""
    unknown = set(runs) - set(REGISTRATIONS)
    if unknown:
        raise OrthodiffError(f"registration {sorted(unknown)}: expected {list(REGISTRATIONS)}")
    parts = []
    for registration, run in runs.items():
        path = Path(run) / "metrics.csv"
        if not path.is_file():
            raise OrthodiffError(f"{path}: no fingerprint metrics (run `orthodiff fingerprint --out {run}` first)")
        parts.append(pd.read_csv(path).assign(registration=registration))
    return pd.concat(parts).sort_values(["model", "registration"], kind="stable").reset_index(drop=True)
