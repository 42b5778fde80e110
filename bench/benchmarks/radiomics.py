"""Radiomics: our vectorised IBSI families vs `mirp` on the same ROIs (speed, largest disagreement).

    .venv/bin/python bench/benchmarks/radiomics.py [--rois 3] [--spacing 3,0.5,0.5]

Draws a smooth random 16x32x32 volume, takes the first `--rois` cells of the 3x3x3 central box
grid, computes every family with both (mirp through `radiomics.oracle`: the extra
`orthodiff[mirp]`, exact Moran's I), matches features by mirp's names and prints the
largest relative disagreement per family, seconds per ROI for each (after one untimed call
each, so that imports are not timed), and the implied series/s for 27 ROIs x 3 sources.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import ndimage

from orthodiff.personas.rois import box_grid
from orthodiff.radiomics.ibsi import roi_features
from orthodiff.radiomics.oracle import mirp_features


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rois", type=int, default=3)
    parser.add_argument("--spacing", default="1,1,1", help="Voxel size (slice, row, column) in mm.")
    args = parser.parse_args()
    spacing = tuple(float(v) for v in args.spacing.split(","))
    rng = np.random.default_rng(0)
    image = ndimage.gaussian_filter(rng.normal(0, 1, (16, 32, 32)), 1.5) * 300 + 500
    labels, names = box_grid(image.shape, 3)
    rows, own_s, mirp_s = [], 0.0, 0.0
    roi_features(image, labels == 1, spacing=spacing), mirp_features(image, labels == 1, spacing)  # imports out of the timing
    for j in range(1, args.rois + 1):
        mask = labels == j
        t = time.perf_counter()
        own = roi_features(image, mask, spacing=spacing)
        own_s += time.perf_counter() - t
        t = time.perf_counter()
        ref = mirp_features(image, mask, spacing)
        mirp_s += time.perf_counter() - t
        for name, value in own.items():
            if name in ref:
                diff = abs(value - ref[name]) / max(abs(ref[name]), 1e-9)
                rows.append({"roi": names[j - 1], "feature": name, "own": value, "mirp": ref[name], "rel_diff": diff})
    df = pd.DataFrame(rows)
    df["family"] = df.feature.str.split("_").str[0]
    pd.set_option("display.width", 200)
    print(df.groupby("family").rel_diff.agg(["max", "median", "count"]))
    print(df.sort_values("rel_diff", ascending=False).head(25).to_string())
    matched = df.feature.nunique()
    print(f"own {len(own)} features/ROI, matched by name with mirp: {matched}")
    print(f"seconds per ROI: own {own_s / args.rois:.3f}, mirp {mirp_s / args.rois:.2f} (ratio {mirp_s / own_s:.0f}x)")
    print(f"series/s at 27 ROIs x 3 sources: own {1 / (81 * own_s / args.rois):.3f}, mirp {1 / (81 * mirp_s / args.rois):.4f}")


if __name__ == "__main__":
    main()
