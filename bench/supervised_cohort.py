"""Bench: probe vs Stage I fine-tuning vs baselines, and diffusion vs U-Net/UNETR segmentation,
on the default synthetic cohort (the folder `orthodiff demo` leaves).

    .venv/bin/orthodiff demo --out orthodiff-demo
    .venv/bin/python bench/supervised_cohort.py --demo orthodiff-demo

Classification (test split, exam level, macro AUROC): the demo's concat fusion of probed
features; the same fusion on features extracted from backbones fine-tuned per plane at the
demo's selected (timestep, block); ResNet-18 and the U-Net-encoder classifier from scratch
(probabilities averaged over planes). Segmentation (sagittal test series): Dice per
structure of the diffusion encoder + light decoder, MONAI U-Net and UNETR, then the
biomarker agreement of the diffusion masks. Everything is written under `DEMO/supervised/`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


from orthodiff.tables import frame_table, make_console


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("orthodiff-demo"))
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--finetune-lr", type=float, default=1e-5)
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--segment-epochs", type=int, default=10)
    args = parser.parse_args()

    from orthodiff.backbone import backbone_id
    from orthodiff.featurestore.extract import extract
    from orthodiff.heads.inputs import load_inputs
    from orthodiff.heads.pipeline import SMALL_COHORT_FUSION
    from orthodiff.heads.runs import run_fuse
    from orthodiff.supervised.runs import (
        comparison, run_baseline_classify, run_finetune, run_segment, run_segment_predict,
    )

    console = make_console()
    demo = args.demo
    store, catalog = str(demo / "store.zarr"), demo / "cohort" / "catalog.parquet"
    config = json.loads((demo / "heads" / "config.json").read_text())
    out = demo / "supervised"
    timings = {}

    tuned = []
    for plane, choice in config["planes"].items():
        ckpt = out / "backbones" / f"{plane}_ft.pt"
        start = time.perf_counter()
        if not ckpt.exists():  # a rerun reuses the fine-tuned backbones
            run_finetune(store, catalog, plane, demo / "backbones" / f"{plane}.pt", choice["timestep"],
                         choice["block"], ckpt, pooling=config["pooling"], epochs=args.finetune_epochs,
                         lr=args.finetune_lr)
        extract(store, ckpt, plane, (choice["timestep"],), (choice["block"],), progress=False)
        timings[f"finetune + extract {plane}"] = time.perf_counter() - start
        tuned.append(backbone_id(ckpt))
    features, df, labels, _ = load_inputs(store, catalog, tuned, list(config["planes"]))
    run_fuse(config, features, df, labels, "concat", out / "finetuned_concat", fusion_params=SMALL_COHORT_FUSION)

    for model in ("resnet18", "unet_encoder"):
        start = time.perf_counter()
        if not (out / model / "run.json").exists():  # a rerun keeps finished runs
            run_baseline_classify(store, catalog, model, list(config["planes"]), out / model, epochs=args.baseline_epochs)
        timings[f"baseline {model}"] = time.perf_counter() - start
    runs = [demo / "heads" / "concat", out / "finetuned_concat", out / "resnet18", out / "unet_encoder"]
    console.print(frame_table(comparison(runs), "Diagnosis, test split: probe vs fine-tuned vs from scratch"))

    for model in ("diffusion", "unet", "unetr"):
        start = time.perf_counter()
        if not (out / f"segment_{model}" / "run.json").exists():
            run_segment(store, catalog, "sagittal", model, out / f"segment_{model}",
                        backbone=demo / "backbones" / "sagittal.pt", epochs=args.segment_epochs)
        timings[f"segment {model}"] = time.perf_counter() - start
    seg_runs = [out / f"segment_{m}" for m in ("diffusion", "unet", "unetr")]
    console.print(frame_table(comparison(seg_runs), "Sagittal segmentation, test Dice per structure", "{:.2f}"))
    table = run_segment_predict(out / "segment_diffusion", store, catalog, out / "segment_diffusion_masks")
    console.print(frame_table(table, "Biomarkers from diffusion masks vs reference (test)", "{:.2f}"))
    for name, seconds in timings.items():
        console.print(f"{name}: {seconds:.0f} s")


if __name__ == "__main__":
    main()
