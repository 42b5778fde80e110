"""Bench: probe vs Stage I fine-tuning vs baselines, and segmentation heads vs U-Net/UNETR with
their evaluation, on the default synthetic cohort (the folder `orthodiff demo` leaves).

    .venv/bin/orthodiff demo --out orthodiff-demo
    .venv/bin/python bench/supervised_cohort.py --demo orthodiff-demo

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

SEGMENTERS = {  # run name -> (model, decoder)
    "segment_light": ("diffusion", "light"),
    "segment_skip": ("diffusion", "skip"),
    "segment_unet": ("unet", None),
    "segment_unetr": ("unetr", None),
}
EFFICIENCY = ("segment_light", "segment_unet")  # label-efficiency curves (issue 17)


def classification(demo: Path, out: Path, args, console, timings: dict) -> None:
    from orthodiff.backbone import backbone_id
    from orthodiff.featurestore.extract import extract
    from orthodiff.heads.commands import load_inputs
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
        features, df, labels, _ = load_inputs(store, catalog, [backbone_id(c) for c in checkpoints.values()], planes)
        run_fuse(config, features, df, labels, "concat", out / "finetuned_concat",
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


def subset_catalog(catalog: Path, sizes: list[int]) -> Path:
    """The demo catalog with nested training subsets of ``sizes`` patients, beside it (its
    paths are relative to its folder); the splits are unchanged."""
    from orthodiff.catalogs.cohort import add_subsets, read_catalog, write_catalog

    path = catalog.with_name(f"{catalog.stem}_subsets.parquet")
    if not path.exists():
        write_catalog(add_subsets(read_catalog(catalog), sizes), path)
    return path


def segmentation(demo: Path, out: Path, args, console, timings: dict) -> None:
    from orthodiff.evaluation.run import run_evaluate_seg
    from orthodiff.supervised.runs import comparison, run_segment, run_segment_predict

    store, catalog = str(demo / "store.zarr"), demo / "cohort" / "catalog.parquet"
    sizes = [s if s == "all" else int(s) for s in args.subsets.split(",") if s]
    train_catalog = subset_catalog(catalog, [s for s in sizes if s != "all"]) if sizes else catalog
    predictions = []
    for name, (model, decoder) in SEGMENTERS.items():
        run, start = out / name, time.perf_counter()
        if not (run / "run.json").exists():
            options = {"decoder": decoder, "backbone": demo / "backbones" / "sagittal.pt"} if decoder else {
                "lr": 1e-3, "batch_size": args.baseline_batch, "unetr_size": args.unetr_size}
            run_segment(store, train_catalog, "sagittal", model, run, epochs=args.segment_epochs,
                        subsets=sizes if name in EFFICIENCY else (), **options)
        timings[f"segment {name}"] = time.perf_counter() - start
        if not (out / "predict" / name / "run.json").exists():
            run_segment_predict(run, store, catalog, out / "predict" / name)
        predictions.append(out / "predict" / name)
    console.print(frame_table(comparison([out / n for n in SEGMENTERS]), "Sagittal segmentation, test Dice per structure", "{:.2f}"))
    for name in EFFICIENCY:
        if (out / name / "efficiency.csv").exists():
            import pandas as pd

            console.print(frame_table(pd.read_csv(out / name / "efficiency.csv"), f"Label efficiency, {name}", "{:.3f}"))
    start = time.perf_counter()
    tables = run_evaluate_seg(predictions, catalog, out / "evaluation", "test", 16, ("joint", "plane"), "center",
                              1.0, args.bootstrap, 0, plane="sagittal")
    timings["evaluate seg"] = time.perf_counter() - start
    agreement = tables["agreement"]
    for key, frame in (("tier_tissue", tables["tier_tissue"]),
                       ("agreement (thickness, T2)", agreement[agreement["biomarker"].str.contains("thickness|t2_")]),
                       ("friedman", tables["friedman"]), ("wilcoxon", tables["wilcoxon"]),
                       ("acquisition_effects", tables["acquisition_effects"])):
        console.print(frame_table(frame, key, "{:.3g}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("orthodiff-demo"))
    parser.add_argument("--parts", default="classify,segment", help="classify, segment or both")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="Stage I fine-tuning epochs (paper: 5)")
    parser.add_argument("--baseline-epochs", type=int, default=5, help="ResNet-18 / U-Net-encoder epochs")
    parser.add_argument("--segment-epochs", type=int, default=10, help="every segmenter (paper: 30)")
    parser.add_argument("--baseline-batch", type=int, default=2, help="U-Net / UNETR series per step")
    parser.add_argument("--unetr-size", default="small", help="paper (hidden 768) or small (192)")
    parser.add_argument("--subsets", default="5,10,20,40,all", help="label-efficiency subsets (training patients)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="evaluate seg bootstrap resamples")
    args = parser.parse_args()

    console = make_console()
    out = args.demo / "supervised"
    timings: dict[str, float] = {}
    parts = set(args.parts.split(","))
    if "segment" in parts:
        segmentation(args.demo, out, args, console, timings)
    if "classify" in parts:
        classification(args.demo, out, args, console, timings)
    for name, seconds in timings.items():
        console.print(f"{name}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
