"""Bench: `evaluate seg` seconds per series, and the promptable adapter's seconds per slice.

    .venv/bin/python bench/benchmarks/evaluate.py --series 4 --size 256 --vit-b

A synthetic knee cohort at `--size` (20 slices, the central 16 evaluated as for
`segment predict` runs) is made in a temporary folder; one "model" is the reference
shifted by two columns. Timed: the measuring pass of `evaluate seg` (Dice, IoU, HD95, NSD
per structure; volumes, row-axis and skeleton thickness, T2 of the model's and the
reference's masks) per series, and the whole command (tables, statistics, figures).
Then one 1024 x 1024 slice with four box prompts through a tiny randomly initialised SAM
(warm-up, then the mean of 3) and, with --vit-b, a vit_b-sized one (one timed slice after
a warm-up): the CPU cost of the real model's architecture.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def cohort(root: Path, n_series: int, size: int):
    from orthodiff.catalogs.cohort import read_catalog, resolve_path, write_catalog
    from orthodiff.catalogs.synth import synthesize

    catalog_path = synthesize("knee", max(2, n_series), size, 0, root / "cohort", progress=False)
    catalog = read_catalog(catalog_path)
    with_mask = catalog[catalog["mask_path"].fillna("") != ""].head(n_series)
    catalog = catalog[catalog["series_id"].isin(with_mask["series_id"])].assign(split="test", t2_path="")
    model = root / "shifted"
    model.mkdir()
    for row in catalog.itertuples():
        image = nib.load(resolve_path(catalog_path, row.mask_path))
        mask = np.roll(np.asarray(image.dataobj), 2, axis=0)  # array axis 0 is the column axis
        t2 = np.where(mask > 0, 45.0, 20.0).astype(np.float32)
        nib.save(nib.Nifti1Image(mask, image.affine), str(model / f"{row.series_id}.nii.gz"))
        nib.save(nib.Nifti1Image(t2, image.affine), str(root / "cohort" / f"{row.series_id}_t2.nii.gz"))
    catalog["t2_path"] = [f"{s}_t2.nii.gz" for s in catalog["series_id"]]
    write_catalog(catalog, catalog_path)
    return catalog_path, model


def time_slice(sam, repeats: int) -> float:
    from orthodiff.evaluation.promptable import PromptedSegmenter, SamBoxPredictor

    segmenter = PromptedSegmenter(SamBoxPredictor(sam))
    image = np.random.default_rng(0).normal(size=(1, 256, 256)).astype(np.float32)
    boxes = {(0, v): np.array([20.0 + 10 * v, 30, 120 + 10 * v, 140]) for v in (1, 2, 4, 5)}
    segmenter.segment(image, boxes)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        segmenter.segment(image, boxes)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--vit-b", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    from orthodiff.evaluation.inputs import models_of
    from orthodiff.evaluation.promptable import build_sam
    from orthodiff.evaluation.run import measure, run_evaluate_seg

    result = {"series": args.series, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        catalog_path, model = cohort(Path(tmp), args.series, args.size)
        start = time.perf_counter()
        measure(models_of([model]), catalog_path, central=16)
        result["measure_s_per_series"] = (time.perf_counter() - start) / args.series
        start = time.perf_counter()
        run_evaluate_seg([model], catalog_path, Path(tmp) / "eval", central=16, n_boot=2000)
        result["evaluate_seg_s_per_series"] = (time.perf_counter() - start) / args.series
    torch.manual_seed(0)
    result["tiny_sam_s_per_slice"] = time_slice(build_sam("tiny"), 3)
    if args.vit_b:
        result["vit_b_sam_s_per_slice"] = time_slice(build_sam("vit_b"), 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
