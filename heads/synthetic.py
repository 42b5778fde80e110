"""Synthetic catalogs and middle-block features for head tests and benchmarks.

Labels are written into a few channels with a strength that depends on plane, timestep
and block (so sweeps have a best configuration), and EHR fields are weakly related to
the labels. Layout mirrors the feature store: per plane an xarray Dataset with
``activation(series, timestep, block, channel, z, y, x)`` (optional) and
``gap(series, timestep, block, channel)``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from orthodiff.catalogs.tasks import PLANES, ehr_schema

TIMESTEPS = (10, 30, 50, 100, 150, 200, 300, 500)
BLOCKS = ("mid_0", "mid_1", "mid_2")


def synthetic_catalog(n_exams: int, labels: list[str], seed: int = 0, repeat: float = 0.05, missing: float = 0.03) -> pd.DataFrame:
    """One row per series: a few exams have a repeat scan of a plane or miss a plane."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n_exams, len(labels))) < rng.uniform(0.15, 0.5, len(labels))).astype(int)
    split = rng.choice(["train", "val", "test"], n_exams, p=[0.6, 0.2, 0.2])
    injuries = ehr_schema().categorical["injury_event"]["classes"]
    rows = []
    for e in range(n_exams):
        exam = {
            "case_id": f"P{e:05d}-1", "patient_id": f"P{e:05d}", "task": "knee", "joint": "knee",
            "center": f"C{e % 3}", "vendor": ["GE", "Siemens"][e % 2], "field_strength": [1.5, 3.0][(e // 2) % 2],
            "split": split[e], **dict(zip(labels, y[e])),
            "age": float(np.clip(35 + 10 * y[e, 0] + rng.normal(0, 12), 10, 90)) if rng.random() > 0.1 else np.nan,
            "height": float(rng.normal(172, 9)), "weight": float(rng.normal(74, 12)),
            "sex": rng.choice(["M", "F"]), "athlete": "yes" if rng.random() < 0.2 + 0.4 * y[e, 0] else "no",
            "injury_event": rng.choice(injuries) if rng.random() > 0.1 else None,
        }
        skip = PLANES[rng.integers(3)] if rng.random() < missing else None
        for plane in PLANES:
            if plane == skip:
                continue
            for scan in range(2 if rng.random() < repeat else 1):
                rows.append({"series_id": f"{exam['case_id']}-{plane}-{scan}", "plane": plane, "scan": scan, **exam})
    return pd.DataFrame(rows)


def synthetic_features(
    catalog: pd.DataFrame,
    labels: list[str],
    channels: int = 32,
    spatial: tuple[int, int, int] = (1, 4, 4),
    timesteps=TIMESTEPS,
    blocks=BLOCKS,
    activation: bool = True,
    seed: int = 0,
) -> dict[str, xr.Dataset]:
    """Per plane, features whose label signal peaks at a middle timestep and block."""
    rng = np.random.default_rng(seed)
    out = {}
    t_peak = np.exp(-((np.log(np.asarray(timesteps, float)) - np.log(100.0)) ** 2) / 2)
    b_gain = np.linspace(0.6, 1.0, len(blocks))
    for k, plane in enumerate(PLANES):
        rows = catalog[catalog["plane"] == plane]
        n = len(rows)
        y = rows[labels].to_numpy(float)
        strength = (0.5 + 0.5 * ((np.arange(len(labels)) + k) % 3 == 0))[None, :] * 1.2
        shape = (n, len(timesteps), len(blocks), channels)
        signal = np.zeros(shape, np.float32)
        for j in range(len(labels)):
            gain = t_peak[:, None] * b_gain[None, :] * strength[0, j]
            signal[..., j % channels] += y[:, j, None, None] * gain[None]
        coords = {"series": rows["series_id"].to_numpy(dtype=object), "timestep": list(timesteps),
                  "block": np.array(blocks, dtype=object)}
        if activation:
            act = rng.normal(0, 1, shape + spatial).astype(np.float32) + signal[..., None, None, None]
            ds = xr.Dataset(
                {"activation": (("series", "timestep", "block", "channel", "z", "y", "x"), act.astype(np.float16)),
                 "gap": (("series", "timestep", "block", "channel"), act.mean((4, 5, 6)))},
                coords=coords,
            )
        else:
            noise = rng.normal(0, 1 / np.sqrt(np.prod(spatial)), shape).astype(np.float32)
            ds = xr.Dataset({"gap": (("series", "timestep", "block", "channel"), noise + signal)}, coords=coords)
        out[plane] = ds
    return out
