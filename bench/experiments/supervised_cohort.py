"""Bench: probe vs Stage I fine-tuning vs baselines, and segmentation heads vs U-Net/UNETR with
their evaluation, on the default synthetic cohort (the folder `orthodiff demo` leaves).

    .venv/bin/orthodiff demo --out orthodiff-demo
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python bench/experiments/supervised_cohort.py --demo orthodiff-demo

(one thread per process: on a loaded CPU machine torch's default thread pool spends far more
CPU per step).

Diagnosis (test split, exam level): the demo's concat fusion of probed features (LP); Stage I
fine-tuning per plane at the demo's selected (timestep, block) and pooling with the paper's
settings (head 5e-4, encoder 0.05 x that, 5 epochs, batch 10), then concat fusion with the
fine-tuned pooling heads as Stage I over the fine-tuned backbones' stored features (FT);
ResNet-18 and the U-Net-encoder classifier from scratch (probabilities averaged over planes).

Segmentation (sagittal): the paper's light head and the skip decoder on the demo backbone
(paper settings except the epochs), MONAI U-Net and UNETR from scratch; label efficiency on
nested training subsets for the light head and the U-Net; `segment predict` on the test split
and `orthodiff evaluate seg` over the four models. Everything is written under
`DEMO/supervised/`; finished runs are kept on a rerun, so the command is rerunnable as is
(delete `DEMO/supervised/` after changing the demo's backbones).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orthodiff.tables import frame_table, make_console

SEGMENTERS = {  # run name -> (model, decoder, long: --long-epochs instead of --segment-epochs)
    "segment_light": ("diffusion", "light", False),
    "segment_skip": ("diffusion", "skip", False),
    "segment_unet": ("unet", None, False),
    "segment_unetr": ("unetr", None, False),
    "segment_light_long": ("diffusion", "light", True),
    "segment_skip_long": ("diffusion", "skip", True),
}
EFFICIENCY = ("segment_light", "segment_unet")  # label-efficiency curves (issue 17)


def markdown(frame, digits: int = 3) -> str:
    """A pipe table to print and to paste into docs/results/benchmarks.md (numbers rounded to ``digits``, NaN as a dash)."""
    import numpy as np

    def cell(v):
        if isinstance(v, float | np.floating):
            return "-" if np.isnan(v) else f"{v:.{digits}g}" if abs(v) < 1e-3 and v else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def classification(demo: Path, out: Path, args, console, timings: dict) -> None:
    from orthodiff.backbone import backbone_id
    from orthodiff.featurestore.extract import extract
    from orthodiff.heads.inputs import load_inputs
    from orthodiff.heads.runs import run_fuse
    from orthodiff.supervised.runs import comparison, finetuned_probes, run_baseline_classify, run_finetune

    store, catalog = str(demo / "store.zarr"), demo / "cohort" / "catalog.parquet"
    config = json.loads((demo / "heads" / "config.json").read_text())
    planes = list(config["planes"])
    checkpoints = {}
    for plane, choice in config["planes"].items():
        ckpt = out / "backbones" / f"{plane}_ft.pt"
        start = time.perf_counter()
        if not ckpt.exists():  # a rerun reuses the fine-tuned backbones
            run_finetune(store, catalog, plane, demo / "backbones" / f"{plane}.pt", choice["timestep"], choice["block"],
                         ckpt, pooling=config["pooling"], epochs=args.finetune_epochs)
        extract(store, ckpt, plane, (choice["timestep"],), (choice["block"],), progress=False)
        timings[f"finetune + extract {plane}"] = time.perf_counter() - start
        checkpoints[plane] = ckpt
    if not (out / "finetuned_concat" / "run.json").exists():
        data, labels, _ = load_inputs(store, catalog, [backbone_id(c) for c in checkpoints.values()], planes)
        run_fuse(config, data, labels, "concat", out / "finetuned_concat",
                 probes=finetuned_probes(checkpoints, config))
    for model in ("resnet18", "unet_encoder"):
        start = time.perf_counter()
        if not (out / model / "run.json").exists():
            run_baseline_classify(store, catalog, model, planes, out / model, epochs=args.baseline_epochs)
        timings[f"baseline {model}"] = time.perf_counter() - start
    runs = [demo / "heads" / "concat", out / "finetuned_concat", out / "resnet18", out / "unet_encoder"]
    table = comparison(runs)
    table.insert(1, "row", ["LP (probe), concat", "FT (Stage I), concat", "ResNet-18", "U-Net encoder"])
    console.print(frame_table(table, "Diagnosis, test split: probe vs fine-tuned vs from scratch"))
    (out / "diagnosis.md").write_text(markdown(table[["row", "macro_auroc", "ci_low", "ci_high", "CF1", "OF1"]]))


def subset_catalog(catalog: Path, sizes: list[int]) -> Path:
    """The demo catalog with nested training subsets of ``sizes`` patients, beside it (its
    paths are relative to its folder); the splits are unchanged."""
    from orthodiff.catalogs.cohort import add_subsets, read_catalog, write_catalog

    path = catalog.with_name(f"{catalog.stem}_subsets.parquet")
    if not path.exists():
        write_catalog(add_subsets(read_catalog(catalog), sizes), path)
    return path


def train_segmenters(demo: Path, out: Path, names, args, timings: dict) -> list[Path]:
    """Train (unless finished) and predict the test split with each named segmenter; returns
    the prediction folders."""
    from orthodiff.supervised.runs import run_segment, run_segment_predict

    store, catalog = str(demo / "store.zarr"), demo / "cohort" / "catalog.parquet"
    sizes = [s if s == "all" else int(s) for s in args.subsets.split(",") if s]
    train_catalog = subset_catalog(catalog, [s for s in sizes if s != "all"]) if sizes else catalog
    predictions = []
    for name in names:
        (model, decoder, long), run, start = SEGMENTERS[name], out / name, time.perf_counter()
        if not (run / "run.json").exists():
            options = {"decoder": decoder, "backbone": demo / "backbones" / "sagittal.pt"} if decoder else {
                "lr": 1e-3, "batch_size": args.baseline_batch, "unetr_size": args.unetr_size}
            run_segment(store, train_catalog, "sagittal", model, run, epochs=args.long_epochs if long else args.segment_epochs,
                        subsets=sizes if name in EFFICIENCY else (), **options)
        timings[f"segment {name}"] = time.perf_counter() - start
        if not (out / "predict" / name / "run.json").exists():
            run_segment_predict(run, store, catalog, out / "predict" / name)
        predictions.append(out / "predict" / name)
    return predictions


def segmentation(demo: Path, out: Path, args, console, timings: dict) -> None:
    from orthodiff.evaluation.run import run_evaluate_seg
    from orthodiff.supervised.runs import comparison

    catalog = demo / "cohort" / "catalog.parquet"
    names = [n for n, (_, _, long) in SEGMENTERS.items() if args.long_epochs or not long]
    predictions = train_segmenters(demo, out, names, args, timings)
    dice = comparison([out / n for n in names]).drop(columns="model")
    dice["run"] = names
    console.print(frame_table(dice, "Sagittal segmentation, test Dice per structure", "{:.2f}"))
    start = time.perf_counter()
    tables = run_evaluate_seg(predictions, catalog, out / "evaluation", "test", 16, ("joint", "plane"), "center",
                              1.0, args.bootstrap, 0, plane="sagittal")
    timings["evaluate seg"] = time.perf_counter() - start
    summary = json.loads((out / "evaluation" / "evaluation.json").read_text())
    (out / "segmentation.md").write_text("\n".join(segmentation_tables(out, dice, tables, summary)))
    console.print((out / "segmentation.md").read_text())


def segmentation_tables(out: Path, dice, tables: dict, summary: dict) -> list[str]:
    """The segmentation tables of docs/results/benchmarks.md (markdown): Dice per structure, label efficiency,
    tissue tiers, thickness/T2 agreement, Friedman/Wilcoxon, acquisition fixed effects."""
    import pandas as pd

    parts = ["Test Dice per structure (`segment train`)", markdown(dice, 2)]
    curves = [pd.read_csv(out / n / "efficiency.csv").set_index("subset").rename(columns={"macro_dice": n})
              for n in EFFICIENCY if (out / n / "efficiency.csv").exists()]
    if curves:
        joined = pd.concat([curves[0]] + [c.drop(columns="series") for c in curves[1:]], axis=1)
        parts += ["Label efficiency, test macro Dice", markdown(joined.reset_index())]
    tiers = tables["tier_tissue"].assign(dice=lambda t: [f"{m:.2f} ± {s:.2f}" for m, s in zip(t["dice"], t["dice_sd"])])
    overall = tables["tier_dataset"].set_index("model")[["dice", "iou", "hd95", "nsd"]]
    parts += ["Subject Dice by tissue type (mean ± SD over subjects), and over all structures (Dice, IoU, HD95 mm, NSD)",
              markdown(tiers.pivot(index="model", columns="tissue", values="dice").join(overall).reset_index(), 2)]
    agreement = tables["agreement"]
    agreement = agreement[agreement["biomarker"].str.contains("thickness|t2_")]
    undefined = agreement[~agreement["method"].isin(["parametric", "nonparametric"])]
    agreement = agreement[agreement["method"].isin(["parametric", "nonparametric"])].assign(
        icc=lambda t: [f"{i:.2f} ({lo:.2f} to {hi:.2f})" for i, lo, hi in zip(t["icc"], t["icc_low"], t["icc_high"])],
        bias=lambda t: [f"{b:+.2f} ({lo:+.2f} to {hi:+.2f})" for b, lo, hi in zip(t["bias"], t["loa_low"], t["loa_high"])])
    parts += ["Thickness (mm) and T2 (ms) agreement with the reference per subject: ICC(3,1) (95% CI), "
              "bias (limits of agreement)",
              markdown(agreement[["model", "biomarker", "n", "method", "reference_mean", "icc", "bias", "spearman_rho"]], 2),
              "undefined (no voxels, too few or constant values): "
              + ", ".join(f"{m}: {len(g)}" for m, g in undefined.groupby("model")) + "\n"]
    for name in ("friedman", "wilcoxon", "acquisition_effects"):
        if name in tables and not tables[name].empty:
            parts += [name, markdown(tables[name])]
    parts += ["acquisition model: " + json.dumps(summary.get("acquisition_model", {}))]
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("orthodiff-demo"))
    parser.add_argument("--parts", default="classify,segment",
                        help="classify and/or segment (every segmenter, then evaluate seg), or segmenter run names alone")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="Stage I fine-tuning epochs (paper: 5)")
    parser.add_argument("--baseline-epochs", type=int, default=5, help="ResNet-18 / U-Net-encoder epochs")
    parser.add_argument("--segment-epochs", type=int, default=5, help="every segmenter (paper: 30)")
    parser.add_argument("--long-epochs", type=int, default=0, help="also light/skip runs (*_long) at this many epochs")
    parser.add_argument("--baseline-batch", type=int, default=2, help="U-Net / UNETR series per step")
    parser.add_argument("--unetr-size", default="paper", help="paper (hidden 768, 12 heads, MLP 3072) or small (192, 4, 384)")
    parser.add_argument("--subsets", default="5,10,20,40,all", help="label-efficiency subsets (training patients)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="evaluate seg bootstrap resamples")
    args = parser.parse_args()

    console = make_console()
    out = args.demo / "supervised"
    timings: dict[str, float] = {}
    parts = set(args.parts.split(","))
    if "segment" in parts:
        segmentation(args.demo, out, args, console, timings)
    elif parts & set(SEGMENTERS):
        train_segmenters(args.demo, out, [n for n in SEGMENTERS if n in parts], args, timings)
    if "classify" in parts:
        classification(args.demo, out, args, console, timings)
    for name, seconds in timings.items():
        console.print(f"{name}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
