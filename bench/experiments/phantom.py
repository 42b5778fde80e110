"""Bench: the knee phantom's picture (docs/images/phantom.png), its generation time per exam, how hard
its tasks are for networks from scratch, how much of each lesion survives ingestion, and
cartilage thickness against its truth.

    .venv/bin/python bench/experiments/phantom.py figure docs/images/phantom.png
    .venv/bin/python bench/experiments/phantom.py time --sizes 64 256 --exams 6 3
    .venv/bin/python bench/experiments/phantom.py difficulty --cohort before=OLD/cohort --cohort after=NEW/cohort --out runs \
        --size 32 --epochs 3 10 --planes sagittal --threads 1
    .venv/bin/python bench/experiments/phantom.py visibility --bodies 2 --sizes 32 64
    .venv/bin/python bench/experiments/phantom.py thickness NEW/cohort

`difficulty` takes cohorts made by `orthodiff synth` (e.g. one from the previous phantom's
commit and one from this one), re-splits each by patient (`--val`, `--test`: a large test
split, so per-label AUROC has positives to rank), ingests it at `--size`, trains MONAI's 3D
ResNet-18 (on `--planes`, probabilities averaged per exam) and 3D U-Net (sagittal masks) from
scratch, and prints per-label test AUROC with patient-bootstrap CIs and per-structure test
Dice side by side. A label is "seen" when its CI lies above 0.5. Finished runs are kept.
`thickness` measures row-axis and skeleton cartilage thickness on every reference mask of a
cohort and compares them with the phantom's `true_thickness_*` columns.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from orthodiff.catalogs.synth import Exam, image_series, synthesize
from orthodiff.catalogs.tasks import structures
from orthodiff.tables import frame_table, make_console

PLANES = ("sagittal", "coronal", "axial")
# (plane, structure values whose area picks the slice shown)
VIEWS = (("sagittal", (10, 11)), ("coronal", (8, 9, 5, 6)), ("axial", (3, 7)))


def figure(png: Path, size: int = 256, seed: int = 0) -> Path:
    """Sagittal, coronal and axial slices of a normal and an ACL-torn knee (same body, a
    fat-suppressed proton-density protocol), each plain and with its mask, and a legend of the
    11 structures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = {s.value: s.name for s in structures("knee").structures}
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#e377c2", "#ffd700", "#00ced1", "#8b4513",
               "#7cfc00", "#ff00ff"]
    cmap = ListedColormap(colours)
    series = tuple((plane, 0) for plane, _ in VIEWS)
    exams = {
        "normal": Exam(7, "knee", {}, "center_2", 3.0, series),
        "ACL tear (bone bruises, effusion)": Exam(7, "knee", {"ACL": 1, "EFFU": 1}, "center_2", 3.0, series),
    }
    fig, axes = plt.subplots(2, 6, figsize=(16, 6.4))
    slices: dict[str, int] = {}  # chosen on the normal knee, the same for the torn one
    for row, (title, exam) in enumerate(exams.items()):
        for col, (plane, values) in enumerate(VIEWS):
            out = image_series(exam, plane, 0, size, seed)
            k = slices.setdefault(plane, int(np.argmax([np.isin(m, values).sum() for m in out["mask"]])))
            crop = slice(size // 8, size - size // 8)  # the knee fills the central 3/4 of the field of view
            image, mask = out["image"][k][crop, crop], out["mask"][k][crop, crop]
            for ax, overlay in zip(axes[row, 2 * col : 2 * col + 2], (False, True)):
                ax.imshow(image, cmap="gray", vmin=0, vmax=np.percentile(image, 99.5))
                if overlay:
                    ax.imshow(np.ma.masked_equal(mask, 0) - 1, cmap=cmap, vmin=0, vmax=10, alpha=0.55, interpolation="nearest")
                ax.set_title(f"{title + ': ' if col == 0 and not overlay else ''}{plane}{' + mask' if overlay else ''}", fontsize=9)
                ax.axis("off")
    handles = [Patch(color=colours[v - 1], label=f"{v} {names[v]}") for v in sorted(names)]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(png, dpi=72)
    plt.close(fig)
    from PIL import Image

    Image.open(png).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(png, optimize=True)  # small enough to commit
    return png


def timing(sizes: list[int], exams: list[int]) -> None:
    for size, n in zip(sizes, exams):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            synthesize("knee", n, size, 0, Path(tmp) / "cohort", progress=False, workers=1)
            print(f"synth knee --size {size}: {(time.perf_counter() - start) / n:.2f} s per exam ({n} exams, 1 process)")


def _trained(cohort: Path, out: Path, size: int, epochs: tuple[int, int], val: float, test: float,
             models=("resnet18", "unet"), planes=PLANES) -> tuple[Path, Path]:
    """The cohort re-split, ingested at `size`, a ResNet-18 and a U-Net (those in `models`)
    trained from scratch; returns the two run folders (kept when a rerun finds them finished)."""
    from orthodiff.catalogs.cohort import read_catalog, split_catalog, write_catalog
    from orthodiff.featurestore.ingest import ingest
    from orthodiff.supervised.runs import run_baseline_classify, run_segment

    catalog = cohort / f"catalog.bench_val{val}_test{test}.parquet"  # beside the images: paths stay relative
    if not catalog.exists():
        write_catalog(split_catalog(read_catalog(cohort / "catalog.parquet"), 0, val, test), catalog)
    store = str(out / f"store_{size}.zarr")
    ingest(catalog, store, size=size, progress=False)
    resnet = out / f"resnet18_{'_'.join(p[:3] for p in planes)}_{size}px_{epochs[0]}ep"
    unet = out / f"unet_{size}px_{epochs[1]}ep"
    for model, run, train in (
        ("unet", unet, lambda: run_segment(store, catalog, "sagittal", "unet", unet, epochs=epochs[1])),
        ("resnet18", resnet, lambda: run_baseline_classify(store, catalog, "resnet18", list(planes), resnet, epochs=epochs[0])),
    ):
        if model in models and not (run / "run.json").exists():
            start = time.perf_counter()
            train()
            print(f"{run}: trained in {time.perf_counter() - start:.0f} s")
    return resnet, unet


def difficulty(cohorts: dict[str, Path], out: Path, size: int, epochs: tuple[int, int], val: float, test: float,
               models=("resnet18", "unet"), planes=PLANES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-label AUROC (95% CI, test positives, seen or not) and per-structure Dice, one
    column group per cohort (empty tables for a model left out); `epochs`: (ResNet-18, U-Net)."""
    from orthodiff.outputs import read_table

    aurocs, dices = [], []
    for name, cohort in cohorts.items():
        resnet, unet = _trained(Path(cohort), out / name, size, epochs, val, test, models, planes)
        if "unet" in models:
            dice = read_table(unet / "dice.parquet").set_index("structure")["dice"]
            dices.append(pd.concat([dice, pd.Series({"mean": dice.mean()})]).rename(f"{name} Dice"))
        if "resnet18" not in models:
            continue
        metrics = read_table(resnet / "metrics.parquet")
        auroc = metrics[metrics["metric"] == "auroc"].set_index("label")
        pred = read_table(resnet / "predictions.parquet")
        aurocs.append(pd.DataFrame({
            f"{name} positives": pred[auroc.index].sum().astype(int),
            f"{name} AUROC": auroc["value"],
            f"{name} 95% CI": [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(auroc["ci_low"], auroc["ci_high"])],
            f"{name} seen": np.where(auroc["ci_low"] > 0.5, "yes", "no"),
        }))
        macro = metrics[metrics["metric"] == "macro_auroc"].iloc[0]
        aurocs[-1].loc["macro"] = [pred[auroc.index].to_numpy().sum(), macro["value"],
                                   f"{macro['ci_low']:.2f}-{macro['ci_high']:.2f}", "yes" if macro["ci_low"] > 0.5 else "no"]
    return _side_by_side(aurocs, "label"), _side_by_side(dices, "structure")


def _side_by_side(parts: list, key: str) -> pd.DataFrame:
    return pd.concat(parts, axis=1).rename_axis(key).reset_index() if parts else pd.DataFrame()


def _ingested(volume: np.ndarray, size: int, scale: tuple[float, float] | None = None):
    """The volume as `ingest` stores it (16 central slices, anti-aliased resize, min-max to
    [-1, 1]); `scale` reuses another volume's (min, max), so clean and noisy images share it."""
    from monai.transforms import Resize

    from orthodiff.featurestore.ingest import central_slices

    image = np.asarray(Resize((size, size), mode="bilinear", anti_aliasing=True)(central_slices(volume)), np.float32)
    lo, hi = scale or (float(image.min()), float(image.max()))
    return 2 * (image - lo) / (hi - lo) - 1, (lo, hi)


def visibility(labels: list[str], sizes: list[int], bodies: int, native: int = 64, seed: int = 0) -> pd.DataFrame:
    """How much of each knee lesion survives ingestion at each size, for an ideal observer
    who knows the body: the same exam is imaged with and without the lesion, noise-free, and
    the difference (in ingested units) is compared with the noise of the ingested image.
    Per label and size, medians over `bodies` bodies of the best plane's: voxels changed by
    more than 2 noise SDs, the largest change in noise SDs, and d' = |difference| / noise SD
    (the known-signal detectability; anatomy varying between bodies makes the real task
    much harder, so a small d' means invisible, a large one only possible)."""
    from unittest import mock

    from orthodiff.catalogs import synth

    rows = []
    for body in range(bodies):
        center, field = ("center_1", 3.0) if body % 2 == 0 else ("center_2", 1.5)  # plain and fat-suppressed PD
        for plane in PLANES:
            def image(lab: str | None) -> np.ndarray:
                exam = Exam(body, "knee", {lab: 1} if lab else {}, center, field, ((plane, 0),))
                return image_series(exam, plane, 0, native, seed)["image"]

            noisy = image(None)
            with mock.patch.dict(synth.NOISE, {k: 0.0 for k in synth.NOISE}):  # the same images without noise
                clean = {lab: image(lab) for lab in [None, *labels]}
            for size in sizes:
                noisy_in, scale = _ingested(noisy, size)
                base = _ingested(clean[None], size, scale)[0]
                sd = float((noisy_in - base).std())
                for lab in labels:
                    diff = np.abs(_ingested(clean[lab], size, scale)[0] - base) / sd
                    rows.append({"label": lab, "size": size, "body": body, "plane": plane,
                                 "voxels > 2 SD": int((diff > 2).sum()), "max SD": float(diff.max()),
                                 "d'": float(np.sqrt((diff**2).sum()))})
    df = pd.DataFrame(rows)
    best = df.loc[df.groupby(["label", "size", "body"])["d'"].idxmax()]
    table = best.groupby(["label", "size"], sort=False)[["voxels > 2 SD", "max SD", "d'"]].median()
    table["best plane"] = best.groupby(["label", "size"], sort=False)["plane"].agg(lambda p: p.mode().iloc[0])
    return table.reset_index()


def thickness(cohort: Path) -> pd.DataFrame:
    """Row-axis and skeleton thickness of each cartilage compartment on every reference mask
    against the exam's `true_thickness_<abbr>`: mean absolute error, bias (measured - true),
    Pearson r, per plane and method."""
    import nibabel as nib

    from orthodiff.catalogs.cohort import read_catalog, resolve_path
    from orthodiff.catalogs.geometry import spacing_of
    from orthodiff.evaluation.biomarkers import cartilage, series_biomarkers

    catalog_path = cohort / "catalog.parquet"
    catalog = read_catalog(catalog_path)
    compartments = [s.abbr for s in cartilage(structures("knee"))]
    missing = [f"true_thickness_{c}" for c in compartments if f"true_thickness_{c}" not in catalog.columns]
    if missing:
        raise SystemExit(f"{catalog_path}: no {missing} columns (a cohort of the previous phantom?)")
    rows = []
    for row in catalog[catalog["mask_path"].fillna("") != ""].itertuples(index=False):
        image = nib.load(resolve_path(catalog_path, row.mask_path))
        mask = np.asarray(image.dataobj).transpose(2, 1, 0)  # (slices, rows, columns)
        measured, _ = series_biomarkers(mask, spacing_of(image.affine), structures("knee"))
        for c in compartments:
            for method, key in (("row axis", f"thickness_{c}"), ("skeleton", f"skeleton_thickness_{c}")):
                rows.append({"plane": row.plane, "compartment": c, "method": method, "measured": measured[key],
                             "true": getattr(row, f"true_thickness_{c}"), "pixel": float(row.pixel_spacing)})
    df = pd.DataFrame(rows).dropna(subset=["measured"])
    df["error"] = df["measured"] - df["true"]
    table = (df.groupby(["plane", "compartment", "method"], sort=False)
            .apply(lambda g: pd.Series({"series": len(g), "true mm": g["true"].mean(), "measured mm": g["measured"].mean(),
                                        "MAE mm": g["error"].abs().mean(), "bias mm": g["error"].mean(),
                                        "r": g["measured"].corr(g["true"])}), include_groups=False)
             .reset_index())
    return table.astype({"series": int})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    fig = sub.add_parser("figure")
    fig.add_argument("png", type=Path)
    fig.add_argument("--size", type=int, default=256)
    tim = sub.add_parser("time")
    tim.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    tim.add_argument("--exams", type=int, nargs="+", default=[6, 3])
    dif = sub.add_parser("difficulty")
    dif.add_argument("--cohort", action="append", required=True, metavar="NAME=DIR", help="a cohort folder (repeat)")
    dif.add_argument("--out", type=Path, required=True)
    dif.add_argument("--size", type=int, default=32, help="ingest size (the demo's 32)")
    dif.add_argument("--epochs", type=int, nargs=2, default=[10, 10], metavar=("RESNET", "UNET"),
                     help="epochs of each network (the demo's 10 and 10)")
    dif.add_argument("--val", type=float, default=0.0)
    dif.add_argument("--test", type=float, default=0.4)
    dif.add_argument("--models", nargs="+", default=["resnet18", "unet"], choices=["resnet18", "unet"])
    dif.add_argument("--planes", nargs="+", default=list(PLANES), choices=PLANES, help="planes the ResNet-18 sees")
    dif.add_argument("--threads", type=int, default=None, help="torch threads (1 runs best beside other jobs)")
    vis = sub.add_parser("visibility")
    vis.add_argument("--labels", nargs="+", default=["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"])
    vis.add_argument("--sizes", type=int, nargs="+", default=[32, 64])
    vis.add_argument("--bodies", type=int, default=4)
    vis.add_argument("--native", type=int, default=64, help="synthesized size (the demo's 64)")
    thick = sub.add_parser("thickness")
    thick.add_argument("cohort", type=Path)
    args = parser.parse_args()
    console = make_console()
    if args.command == "figure":
        print(figure(args.png, args.size))
    elif args.command == "time":
        timing(args.sizes, args.exams)
    elif args.command == "difficulty":
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        cohorts = dict(c.split("=", 1) for c in args.cohort)
        auroc, dice = difficulty(cohorts, args.out, args.size, tuple(args.epochs), args.val, args.test, args.models,
                                 args.planes)
        budget = f"{args.size} px, test fraction {args.test}"
        if len(auroc):
            budget_r = f"{budget}, {args.epochs[0]} epochs, planes {' '.join(args.planes)}"
            console.print(frame_table(auroc, f"ResNet-18 from scratch, test AUROC per label ({budget_r})", "{:.2f}"))
        if len(dice):
            console.print(frame_table(dice, f"3D U-Net from scratch, sagittal test Dice ({budget}, {args.epochs[1]} epochs)",
                                      "{:.2f}"))
    elif args.command == "visibility":
        table = visibility(args.labels, args.sizes, args.bodies, args.native)
        console.print(frame_table(table, f"Lesion signal left after ingestion (synthesized at {args.native} px, "
                                         f"{args.bodies} bodies, medians)", "{:.1f}"))
    else:
        console.print(frame_table(thickness(args.cohort), f"Cartilage thickness vs the phantom's truth, {args.cohort}", "{:.2f}"))


if __name__ == "__main__":
    main()
