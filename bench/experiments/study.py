"""The study: do pretrained diffusion features, stored once, carry what cheap heads need?

Runs the `orthodiff` commands a user would run, on a synthetic knee cohort of 400 exams
(seed 1; 20% test by patient, i.e. 80 test exams, enough for bootstrap CIs of about +-0.06 on
macro AUROC) ingested at 32 px for the `demo` preset. Every stage is skipped when its output
is complete, so it can run for hours in the background and be continued after any
interruption (`nohup .venv/bin/python bench/experiments/study.py --out study > study.log 2>&1 &`).

Stages:
1. cohort and ingestion;
2. pretraining curve: one backbone per plane, checkpoints kept at each of `--steps`
   (0 = the initialisation, a random-init baseline); denoising validation loss per checkpoint;
3. per checkpoint: extraction at `--timesteps`, a probe sweep per plane on validation (`--pooling`:
   GAP by default, the batched sweep that takes seconds; a SAP sweep of 400 exams takes about
   7 minutes per plane and checkpoint on two cores), the best configuration frozen, then the
   single-plane probe scored on test (macro AUROC + CI);
4. tables and figures in `--docs` (CSV + PNG): `pretraining_curve.csv/png`;
5. the fusion ablation, on all three planes of every step count (GAP sweep, cross-plane
   selection, then concat, linear concat, linear add, cross-attention, MPAE, concat and MPAE
   with EHR, EHR-only and LightGBM on test): `fusion.csv`, and the paired permutation test of
   each against the initialisation (`pretrained_vs_random.csv`);
6. on the best checkpoint (the lowest denoising validation loss, a label-free choice): the
   sweep's validation AUROC per plane, timestep and block (`sweep.csv`, `heatmap_<plane>.png`),
   the MPAE gate weights per label (`mpae_gates.csv/png`), label efficiency of concat and
   LightGBM on 25-200 training patients and all, against the initialisation
   (`label_efficiency.csv/png`), the from-scratch baselines against concat (`baselines.csv`:
   5 epochs each, and ResNet-18 for 20; ResNet-18 for 5 and 20 on each subset too,
   `baseline_efficiency.csv`),
   each plane's probe with GAP, GLP and SAP pooling (`pooling.csv`), and cross-joint transfer:
   the fusion ablation on a synthetic ankle cohort (seed 2) with the knee backbones and the
   initialisation, and ResNet-18 from scratch on the ankle (`transfer.csv`); LP vs FT vs
   ResNet-18 at every label count (`finetuning.csv`: Stage I fine-tuning of each plane at the
   configuration's timestep and block, at the paper's rates and, on all patients, at the
   probes' settings, then concat fusion with the fine-tuned heads); the headline at every
   label count, the best diffusion-feature result against the best network from scratch
   (`headline.csv`); and the
   segmentation curve on 5-40 training patients and all, the published light head on the
   sagittal backbone against MONAI's U-Net from scratch, `--segmentation-epochs` each
   (`segmentation_efficiency.csv/png`);
7. `--ship STEPS`: the float16 encoders of that step count exported (`orthodiff export-encoder`)
   to the package's `weights/`, with `demo.json` (command, cohort, settings, hashes): the
   backbones `orthodiff demo` uses by default.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

PLANES = ("sagittal", "coronal", "axial")
PRESET, SIZE, BATCH, LR = "demo", 32, 4, 2e-4


def orthodiff(log: Path, *args) -> None:
    """One `orthodiff` command, its output appended to `log`; a failure stops the study."""
    command = [sys.executable, "-m", "orthodiff", *map(str, args)]
    with open(log, "a") as handle:
        handle.write(f"\n$ orthodiff {' '.join(map(str, args))}\n")
        handle.flush()
        start = time.perf_counter()
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
        handle.write(f"# {time.perf_counter() - start:.1f} s, exit {done.returncode}\n")
    if done.returncode:
        sys.exit(f"failed: orthodiff {' '.join(map(str, args))} (see {log})")


def checkpoint(out: Path, plane: str, steps: int) -> Path:
    return out / "backbones" / f"{plane}_{steps:05d}.pt"


def pretrain_curve(out: Path, store: Path, steps: list[int], log: Path) -> None:
    """Train each plane to each step count in turn, keeping a copy at every count (resumable:
    the running checkpoint continues exactly where it stopped)."""
    for count in steps:
        for plane in PLANES:
            kept = checkpoint(out, plane, count)
            if kept.exists():
                continue
            running = out / "backbones" / f"{plane}_running.pt"
            args = ["pretrain", "--plane", plane, "--store", store, "--preset", PRESET, "--steps", count,
                    "--batch", BATCH, "--lr", LR, "--every", 50, "--seed", 0, "--out", running if count else kept]
            orthodiff(log, *args, *(["--resume"] if running.exists() and count else []))
            if count:
                shutil.copyfile(running, kept.with_suffix(".tmp"))
                kept.with_suffix(".tmp").replace(kept)


def backbone_id(path: Path) -> str:
    from orthodiff.backbone import backbone_id as content_id

    return content_id(path)


def validation_loss(store: Path, path: Path, plane: str, draws: int = 4) -> float:
    """Mean denoising loss of the EMA weights over every validation series, fixed noise
    (kept beside the checkpoint)."""
    kept = path.with_suffix(".val_loss.json")
    if kept.exists():
        return json.loads(kept.read_text())["val_loss"]
    import torch

    from orthodiff.backbone import load_backbone
    from orthodiff.backbone.diffusion import NoiseScheduler
    from orthodiff.backbone.pretrain import PlaneVolumes, denoising_loss
    from orthodiff.featurestore.volumes import open_volumes

    model, scheduler = load_backbone(path, "cpu").eval(), NoiseScheduler()
    val = PlaneVolumes.select(open_volumes(str(store)), plane, "val")
    generator = torch.Generator().manual_seed(12345)
    losses = []
    with torch.no_grad():
        for _ in range(draws):
            for start in range(0, len(val), 16):
                x0 = val.batch(np.arange(start, min(start + 16, len(val))))
                losses.append(float(denoising_loss(model, scheduler, x0, generator)) * len(x0))
    loss = sum(losses) / (draws * len(val))
    kept.write_text(json.dumps({"val_loss": loss, "draws": draws, "series": len(val)}))
    return loss


def head_flags(heads: str) -> tuple[list[str], list[str]]:
    """`sweep` and `select` options of a heads setting: `small`, the demo's small-cohort settings
    (docs/guides/sweeps-fusion.md), or `paper`, the paper's (the commands' defaults: probes at 5e-4, fusion at
    5e-5 for 5 epochs, made for thousands of exams)."""
    if heads == "paper":
        return [], []
    from orthodiff.heads.pipeline import SMALL_COHORT_FUSION, SMALL_COHORT_PROBE, settings_flags

    return settings_flags(SMALL_COHORT_PROBE).split(), settings_flags(SMALL_COHORT_FUSION).split()


def probe(out: Path, store: Path, catalog: Path, plane: str, count: int, timesteps: str, pooling: str, heads: str,
          log: Path) -> dict:
    """Extraction, probe sweep on validation, frozen best configuration, test score of one plane."""
    ckpt = checkpoint(out, plane, count)
    bid = backbone_id(ckpt)
    run = out / "probe" / f"{plane}_{count:05d}_{pooling}_{heads}"
    sweep_flags, select_flags = head_flags(heads)
    metrics = run / "test" / "metrics.csv"
    if not metrics.exists():
        orthodiff(log, "extract", "--plane", plane, "--store", store, "--backbone", ckpt, "--timesteps", timesteps)
        if not (run / "sweep" / "top4.parquet").exists():
            orthodiff(log, "sweep", "--store", store, "--catalog", catalog, "--out", run / "sweep", "--planes", plane,
                      "--backbone-id", bid, "--pooling", pooling, *sweep_flags)
        if not (run / "config.json").exists():
            orthodiff(log, "select", "--sweep", run / "sweep", "--out", run / "config.json", *select_flags)
        orthodiff(log, "fuse", "--config", run / "config.json", "--out", run / "test", "--method", "concat")
    table = pd.read_csv(metrics)
    macro = table[table["metric"] == "macro_auroc"].iloc[0]
    # the configuration scored on test is the selection's (Stage II on validation among the
    # sweep's top four), not necessarily the sweep's best single probe, reported beside it
    config = json.loads((run / "config.json").read_text())
    selected = config["planes"][plane]
    best = pd.read_parquet(run / "sweep" / "top4.parquet").iloc[0]
    return {"plane": plane, "steps": count, "pooling": pooling, "heads": heads, "backbone": bid,
            "timestep": int(selected["timestep"]), "block": selected["block"], "val_auroc": float(config["val_macro_auroc"]),
            "sweep_timestep": int(best["timestep"]), "sweep_block": best["block"], "sweep_val_auroc": float(best["auroc"]),
            "test_auroc": float(macro["value"]), "test_low": float(macro["ci_low"]), "test_high": float(macro["ci_high"])}


FUSIONS = (("concat", False), ("linear_concat", False), ("linear_add", False), ("cross_attention", False),
           ("mpae", False), ("concat", True), ("mpae", True), ("ehr_only", False), ("lightgbm", False))


def macro_row(run: Path) -> dict:
    table = pd.read_csv(run / "metrics.csv")
    table = table[table["label"] == "all"].set_index("metric")
    return {"test_auroc": table.at["macro_auroc", "value"], "test_low": table.at["macro_auroc", "ci_low"],
            "test_high": table.at["macro_auroc", "ci_high"], "CF1": table.at["CF1", "value"], "OF1": table.at["OF1", "value"]}


def fusion(out: Path, store: Path, catalog: Path, count: int, heads: str, log: Path, runs: Path | None = None
           ) -> pd.DataFrame:
    """All three planes of one step count: a GAP sweep, the cross-plane selection on validation,
    then every fusion method (and EHR, EHR-only, LightGBM) on that configuration, scored on test
    (under `runs`, by default `out/fusion`)."""
    run = (runs or out / "fusion") / f"{count:05d}_{heads}"
    sweep_flags, select_flags = head_flags(heads)
    ids = ",".join(backbone_id(checkpoint(out, plane, count)) for plane in PLANES)
    if not (run / "sweep" / "top4.parquet").exists():
        orthodiff(log, "sweep", "--store", store, "--catalog", catalog, "--out", run / "sweep", "--backbone-id", ids,
                  "--pooling", "gap", *sweep_flags)
    if not (run / "config.json").exists():
        orthodiff(log, "select", "--sweep", run / "sweep", "--out", run / "config.json", *select_flags)
    rows = []
    for method, ehr in FUSIONS:
        name = method + ("_ehr" if ehr else "")
        if not (run / name / "metrics.csv").exists():
            orthodiff(log, "fuse", "--config", run / "config.json", "--out", run / name, "--method", method,
                      *(["--ehr"] if ehr else []))
        rows.append({"steps": count, "heads": heads, "run": name, **macro_row(run / name)})
    return pd.DataFrame(rows)


def compared(a: Path, b: Path, table: Path, log: Path) -> pd.Series:
    """The macro row (delta, p_value) of `orthodiff compare A B`, kept in `table` and reused."""
    if not table.exists():
        orthodiff(log, "compare", a, b, "--out", table)
    return pd.read_parquet(table).set_index("label").loc["macro"]


def pretrained_vs_random(out: Path, count: int, heads: str, log: Path, runs: Path | None = None) -> pd.DataFrame:
    """Paired permutation test of each fusion run on the `count`-step backbones against the
    same run on the initialisation (step 0): same cohort, split, heads and settings (runs
    under `runs`, by default `out/fusion`)."""
    runs = runs or out / "fusion"
    pretrained, random = runs / f"{count:05d}_{heads}", runs / f"00000_{heads}"
    rows = []
    for method, ehr in FUSIONS:
        name = method + ("_ehr" if ehr else "")
        if name == "ehr_only":  # no image features: the same model on both sides
            continue
        macro = compared(pretrained / name, random / name, pretrained / "vs_random" / f"{name}.parquet", log)
        rows.append({"run": name, "steps": count, "heads": heads, "delta": macro["delta"], "p_value": macro["p_value"]})
    return pd.DataFrame(rows)


def pooling_ablation(out: Path, store: Path, catalog: Path, count: int, timesteps: str, heads: str, log: Path) -> pd.DataFrame:
    """Each plane's probe of the `count`-step backbone with GAP, GLP and SAP pooling (its own
    sweep and selection each), scored on test; GLP and SAP against GAP by paired permutation."""
    rows = []
    for plane in PLANES:
        for pooling in ("gap", "glp", "sap"):
            row = probe(out, store, catalog, plane, count, timesteps, pooling, heads, log)
            run, gap = (out / "probe" / f"{plane}_{count:05d}_{name}_{heads}" / "test" for name in (pooling, "gap"))
            if pooling != "gap":
                macro = compared(run, gap, run.parent / "vs_gap.parquet", log)
                row.update(delta_vs_gap=macro["delta"], p_vs_gap=macro["p_value"])
            rows.append(row)
    return pd.DataFrame(rows)


# the from-scratch networks and their epochs: the equal-budget pair (5 epochs, the paper's
# Stage I fine-tuning budget) and ResNet-18 at 4x that, so that "the features beat a network from
# scratch" does not rest on a budget too short for the network to learn
BASELINES = (("resnet18", 5), ("unet_encoder", 5), ("resnet18", 20))


def baseline_run(out: Path, model: str, epochs: int = 5, size: int | None = None) -> Path:
    """A network from scratch trained for `epochs` on all training patients, or on the
    label-efficiency subset of `size`."""
    return out / "baselines" / (model + ("" if epochs == 5 else f"_{epochs}ep") + ("" if size is None else f"_{size:03d}"))


def baselines(out: Path, store: Path, catalog: Path, count: int, heads: str, log: Path) -> pd.DataFrame:
    """The from-scratch networks (`baseline classify`: one per plane, at 1e-3, batch 4, exam
    probabilities averaged over planes) on the same split, each against the concat fusion of the
    `count`-step features, the selection's own method, by paired permutation."""
    rows = []
    fused = out / "fusion" / f"{count:05d}_{heads}" / "concat"
    for model, epochs in BASELINES:
        run = baseline_run(out, model, epochs)
        if not (run / "run.json").exists():
            orthodiff(log, "baseline", "classify", "--model", model, "--epochs", epochs, "--store", store,
                      "--catalog", catalog, "--out", run)
        macro = compared(fused, run, run / "vs_features.parquet", log)
        rows.append({"model": model, "epochs": epochs, **macro_row(run), "features_run": f"concat, {count} steps",
                     "features_minus_model": macro["delta"], "p_value": macro["p_value"]})
    return pd.DataFrame(rows)


def transfer(out: Path, count: int, cases: int, timesteps: str, heads: str, log: Path, joint: str = "ankle") -> pd.DataFrame:
    """Cross-joint transfer: a synthetic `joint` cohort (seed 2) extracted with the knee backbones
    of `count` steps and of the initialisation; the fusion ablation on each, the pretrained
    runs against the initialisation's, and ResNet-18 from scratch against concat."""
    root = out / "transfer" / joint
    catalog, store = root / "cohort" / "catalog.parquet", root / "store.zarr"
    if not catalog.exists():
        orthodiff(log, "synth", "--joint", joint, "--out", root / "cohort", "--cases", cases, "--size", 64, "--seed", 2)
    orthodiff(log, "ingest", "--catalog", catalog, "--store", store, "--size", SIZE)
    tables = []
    for steps in (0, count):
        for plane in PLANES:
            orthodiff(log, "extract", "--plane", plane, "--store", store, "--backbone", checkpoint(out, plane, steps),
                      "--timesteps", timesteps)
        tables.append(fusion(out, store, catalog, steps, heads, log, runs=root))
    versus = pretrained_vs_random(out, count, heads, log, runs=root).rename(
        columns={"delta": "delta_vs_random", "p_value": "p_vs_random"})
    table = pd.concat(tables).assign(joint=joint).merge(versus, on=["run", "steps", "heads"], how="left")
    resnet = root / "resnet18"
    if not (resnet / "run.json").exists():
        orthodiff(log, "baseline", "classify", "--model", "resnet18", "--store", store, "--catalog", catalog, "--out", resnet)
    macro = compared(root / f"{count:05d}_{heads}" / "concat", resnet, resnet / "vs_features.parquet", log)
    row = {"steps": None, "heads": None, "run": "resnet18", **macro_row(resnet), "joint": joint,
           "delta_vs_random": np.nan, "p_vs_random": np.nan, "concat_minus_resnet18": macro["delta"], "p_vs_resnet18": macro["p_value"]}
    return pd.concat([table, pd.DataFrame([row])], ignore_index=True)


SUBSETS = (25, 50, 100, 200)  # training patients of the label-efficiency curves (and "all")


def label_efficiency(out: Path, catalog: Path, count: int, heads: str, log: Path) -> Path:
    """The fusion head (concat) and LightGBM of the `count`-step configuration trained on nested
    subsets of the training patients, scored on test. The subsets are added to a copy of the
    catalog split exactly as `synth --seed 1` split it (so the frozen configuration accepts it)."""
    subsets = out / "cohort" / "catalog.subsets.parquet"
    if not subsets.exists():
        orthodiff(log, "catalog", "split", catalog, "--seed", 1, "--val", 0.15, "--test", 0.2,
                  "--subsets", ",".join(map(str, SUBSETS)), "--out", subsets)
    run = out / "efficiency" / f"{count:05d}_{heads}"
    if not (run / "run.json").exists():
        orthodiff(log, "efficiency", "--config", out / "fusion" / f"{count:05d}_{heads}" / "config.json",
                  "--catalog", subsets, "--subsets", ",".join(map(str, (*SUBSETS, "all"))), "--out", run)
    return run


def efficiency_vs_random(out: Path, count: int, heads: str) -> pd.DataFrame:
    """Each label-efficiency point of the `count`-step backbones against the same point on the
    initialisation: both AUROCs with their CIs, and the paired permutation test."""
    predictions = {n: pd.read_parquet(out / "efficiency" / f"{n:05d}_{heads}" / "predictions.parquet") for n in (count, 0)}
    curve = pd.read_parquet(out / "efficiency" / f"{count:05d}_{heads}" / "efficiency.parquet")
    rows = []
    for subset, head, patients in curve[["subset", "head", "patients"]].itertuples(index=False):
        a, b = (predictions[n][(predictions[n]["subset"] == subset) & (predictions[n]["head"] == head)] for n in (count, 0))
        rows.append({"head": head, "subset": subset, "patients": patients, "steps": count, **paired(a, b, "pretrained", "random")})
    return pd.DataFrame(rows)


def baseline_efficiency(out: Path, store: Path, count: int, heads: str, log: Path) -> pd.DataFrame:
    """ResNet-18 from scratch for 5 and 20 epochs on each label-efficiency subset (a copy of the
    catalog without the other training patients), against concat of the `count`-step features
    on the same subset."""
    subsets = pd.read_parquet(out / "cohort" / "catalog.subsets.parquet")
    predictions = pd.read_parquet(out / "efficiency" / f"{count:05d}_{heads}" / "predictions.parquet")
    rows = []
    for epochs in (5, 20):
        for size in SUBSETS:
            run = baseline_run(out, "resnet18", epochs, size)
            if not (run / "run.json").exists():
                part = subsets[(subsets["split"] != "train") | subsets[f"subset_{size}"]]
                path = out / "cohort" / f"catalog.subset_{size:03d}.parquet"
                part.to_parquet(path, index=False)
                orthodiff(log, "baseline", "classify", "--model", "resnet18", "--epochs", epochs, "--store", store,
                          "--catalog", path, "--out", run)
            features = predictions[(predictions["subset"] == str(size)) & (predictions["head"] == "concat")]
            rows.append({"patients": size, "epochs": epochs,
                         **paired(features, pd.read_parquet(run / "predictions.parquet"), "concat", "resnet18")})
    return pd.DataFrame(rows)


# Stage I fine-tuning settings: the paper's (head 5e-4, encoder 0.05 x that, 5 epochs) and the
# probes' of the small-cohort heads (SMALL_COHORT_PROBE: 10 epochs at 3e-3), encoder again 0.05 x
FINETUNE = {"paper": {"head_lr": 5e-4, "lr": 2.5e-5, "epochs": 5}, "small": {"head_lr": 3e-3, "lr": 1.5e-4, "epochs": 10}}


def finetuned(out: Path, store: Path, count: int, heads: str, log: Path, size: int | None = None,
              settings: str = "paper") -> Path:
    """Stage I fine-tuning (`finetune`, batch 10, `FINETUNE[settings]`) of each plane's
    `count`-step backbone at the frozen configuration's timestep, block and pooling, on all
    training patients or the label-efficiency subset of `size`; extraction of each fine-tuned
    backbone at that timestep; then concat fusion with the fine-tuned heads as Stage I
    (`fuse --finetuned`, on the same subset). Returns the fusion run."""
    config_path = out / "fusion" / f"{count:05d}_{heads}" / "config.json"
    config = json.loads(config_path.read_text())
    subsets = out / "cohort" / "catalog.subsets.parquet"
    root = out / "finetune" / f"{count:05d}_{heads}" / settings / ("all" if size is None else f"{size:03d}")
    subset = ["--subset", size] if size is not None else []
    rates = [flag for key, value in FINETUNE[settings].items() for flag in (f"--{key.replace('_', '-')}", value)]
    tuned = {}
    for plane, choice in config["planes"].items():
        tuned[plane] = root / f"{plane}.pt"
        if not tuned[plane].exists():
            orthodiff(log, "finetune", "--plane", plane, "--store", store, "--catalog", subsets, "--backbone",
                      checkpoint(out, plane, count), "--timestep", choice["timestep"], "--block", choice["block"],
                      "--pooling", config["pooling"], *rates, "--out", tuned[plane], *subset)
        orthodiff(log, "extract", "--plane", plane, "--store", store, "--backbone", tuned[plane],
                  "--timesteps", choice["timestep"])
    run = root / "concat"
    if not (run / "run.json").exists():
        orthodiff(log, "fuse", "--config", config_path, "--catalog", subsets, "--out", run, "--method", "concat",
                  "--finetuned", ",".join(f"{plane}={path}" for plane, path in tuned.items()), *subset)
    return run


def finetuning(out: Path, store: Path, count: int, heads: str, log: Path) -> pd.DataFrame:
    """LP vs FT vs ResNet-18 from scratch at every label count: the fine-tuned concat fusion
    (the paper's rates; on all patients also the probes' settings) against the probe's concat
    fusion (the label-efficiency curve's point) and against ResNet-18 (5 epochs) trained on the
    same patients, each by paired permutation on the test exams."""
    probed = pd.read_parquet(out / "efficiency" / f"{count:05d}_{heads}" / "predictions.parquet")
    rows = []
    for size, settings in [*((size, "paper") for size in (*SUBSETS, None)), (None, "small")]:
        ft = pd.read_parquet(finetuned(out, store, count, heads, log, size, settings) / "predictions.parquet")
        lp = probed[(probed["subset"] == ("all" if size is None else str(size))) & (probed["head"] == "concat")]
        resnet = pd.read_parquet(baseline_run(out, "resnet18", 5, size) / "predictions.parquet")
        versus_lp, versus_resnet = paired(ft, lp, "ft", "lp"), paired(ft, resnet, "ft", "resnet18")
        rows.append({"patients": size or "all", "steps": count, "ft_settings": settings,
                     **{k: v for k, v in versus_lp.items() if k.startswith(("ft", "lp"))},
                     "ft_minus_lp": versus_lp["delta"], "p_vs_lp": versus_lp["p_value"],
                     **{k: v for k, v in versus_resnet.items() if k.startswith("resnet18")},
                     "ft_minus_resnet18": versus_resnet["delta"], "p_vs_resnet18": versus_resnet["p_value"],
                     "exams": versus_lp["exams"]})
    return pd.DataFrame(rows)


def headline(out: Path, count: int, heads: str) -> pd.DataFrame:
    """At each label count, the best diffusion-feature result against the best network from
    scratch trained on the same patients, by paired permutation on their common test exams.
    Each side's best is picked by its own test macro AUROC, which flatters both, the features
    more: they have more runs to pick from (every fusion method on all patients)."""
    from orthodiff.heads.metrics import macro_auroc

    def macro(table: pd.DataFrame) -> float:
        labels = [c[2:] for c in table.columns if c.startswith("p_")]
        return macro_auroc(table[labels].to_numpy(), table[[f"p_{c}" for c in labels]].to_numpy())

    probed = pd.read_parquet(out / "efficiency" / f"{count:05d}_{heads}" / "predictions.parquet")
    tuned, fused = out / "finetune" / f"{count:05d}_{heads}", out / "fusion" / f"{count:05d}_{heads}"
    rows = []
    for size in (*SUBSETS, None):
        subset = "all" if size is None else str(size)
        part = "all" if size is None else f"{size:03d}"
        features = {f"{head}, stored features": probed[(probed["subset"] == subset) & (probed["head"] == head)]
                    for head in probed.loc[probed["subset"] == subset, "head"].unique()}
        features["fine-tuned (paper's rates), concat"] = pd.read_parquet(tuned / "paper" / part / "concat" / "predictions.parquet")
        scratch = {f"resnet18, {epochs} epochs": pd.read_parquet(baseline_run(out, "resnet18", epochs, size) / "predictions.parquet")
                   for epochs in (5, 20)}
        if size is None:
            features.update({f"{name}, stored features": pd.read_parquet(fused / name / "predictions.parquet")
                             for name in (m + ("_ehr" if ehr else "") for m, ehr in FUSIONS) if name != "ehr_only"})
            features["fine-tuned (probes' settings), concat"] = pd.read_parquet(tuned / "small" / "all" / "concat" / "predictions.parquet")
            scratch.update({f"{model}, {epochs} epochs": pd.read_parquet(baseline_run(out, model, epochs) / "predictions.parquet")
                            for model, epochs in BASELINES})
        best_features, best_scratch = (max(side, key=lambda name: macro(side[name])) for side in (features, scratch))
        versus = paired(features[best_features], scratch[best_scratch], "features", "scratch")
        rows.append({"patients": size or "all", "steps": count, "features_run": best_features,
                     "scratch_run": best_scratch, **versus})
    return pd.DataFrame(rows)


SEGMENTATION_SUBSETS = (5, 10, 20, 40)  # training patients of the segmentation curve (and "all")


def segmentation_efficiency(out: Path, store: Path, catalog: Path, count: int, epochs: int, log: Path) -> pd.DataFrame:
    """Sagittal segmentation on nested subsets of training patients: the published light head
    fine-tuning the `count`-step backbone (`segment train`, t = 10, mid_2, the paper's rates,
    batch 10) against MONAI's 3D U-Net from scratch (`baseline segment`, lr 1e-3, batch 2), the
    same `epochs` each; test macro Dice with patient-bootstrap CIs and, per subset, the paired
    Wilcoxon signed-rank test of per-patient mean Dice (the evaluation framework's)."""
    from orthodiff.evaluation.comparison import compare_models

    subsets = out / "cohort" / "catalog.segmentation_subsets.parquet"
    if not subsets.exists():
        orthodiff(log, "catalog", "split", catalog, "--seed", 1, "--val", 0.15, "--test", 0.2,
                  "--subsets", ",".join(map(str, SEGMENTATION_SUBSETS)), "--out", subsets)
    sizes = ",".join(map(str, (*SEGMENTATION_SUBSETS, "all")))
    root = out / "segmentation" / f"{count:05d}_e{epochs:03d}"
    common = ["--plane", "sagittal", "--store", store, "--catalog", subsets, "--epochs", epochs, "--subsets", sizes]
    runs = {"light_head": root / "light_head", "unet": root / "unet"}
    if not (runs["light_head"] / "run.json").exists():
        orthodiff(log, "segment", "train", *common, "--backbone", checkpoint(out, "sagittal", count), "--out", runs["light_head"])
    if not (runs["unet"] / "run.json").exists():
        orthodiff(log, "baseline", "segment", "--model", "unet", *common, "--out", runs["unet"])
    curves, per_patient = [], []
    for model, run in runs.items():
        curves.append(pd.read_csv(run / "efficiency.csv", dtype={"subset": str}).assign(model=model))
        series = pd.read_parquet(run / "efficiency_series.parquet")
        dice = series.drop(columns=["subset", "series_id", "patient_id"]).mean(axis=1)  # over the structures present
        per_patient.append(series[["subset", "patient_id"]].assign(dice=dice, model=model)
                           .groupby(["subset", "patient_id", "model"], as_index=False)["dice"].mean())
    per_patient = pd.concat(per_patient).rename(columns={"patient_id": "subject"})
    tests = []
    for subset, part in per_patient.groupby("subset"):  # light_head - unet, one subset at a time
        _, pairwise = compare_models(part.assign(dataset=subset))
        tests.append(pairwise.assign(subset=subset)[["subset", "subjects", "median_difference", "p"]])
    return pd.concat(curves).merge(pd.concat(tests), on="subset", how="left")


def paired(a: pd.DataFrame, b: pd.DataFrame, name_a: str, name_b: str) -> dict:
    """Macro AUROC of two exam-prediction tables on their common exams (in `a`'s order), and the
    paired permutation test (`orthodiff compare`'s)."""
    from orthodiff.heads.metrics import evaluate
    from orthodiff.heads.runs import common_exams, compare_predictions

    labels = [c[2:] for c in a.columns if c.startswith("p_")]
    a, b = common_exams(a, b, (name_a, name_b))
    row = {}
    for name, table in ((name_a, a), (name_b, b)):
        macro = evaluate(table[labels].to_numpy(), table[[f"p_{c}" for c in labels]].to_numpy(), labels,
                         groups=table["patient_id"].to_numpy(), n_boot=500).set_index(["metric", "label"]).loc[("macro_auroc", "all")]
        row.update({name: macro["value"], f"{name}_low": macro["ci_low"], f"{name}_high": macro["ci_high"]})
    macro = compare_predictions(a, b, labels).set_index("label").loc["macro"]
    return {**row, "delta": macro["delta"], "p_value": macro["p_value"], "exams": len(a)}


def plot_efficiency(table: pd.DataFrame, path: Path) -> None:
    from orthodiff.outputs import atomic_savefig, pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, (head, part) in zip(axes, table.groupby("head", sort=False)):
        for column, label in (("pretrained", f"{part['steps'].iloc[0]}-step backbones"), ("random", "initialisation")):
            ax.errorbar(part["patients"], part[column], yerr=[part[column] - part[f"{column}_low"], part[f"{column}_high"] - part[column]],
                        marker="o", capsize=3, label=label)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xticks(part["patients"], [str(n) for n in part["patients"]])
        ax.minorticks_off()
        ax.set_xlabel("training patients (log scale)")
        ax.set_title(f"{head}: test macro AUROC (95% CI)")
        ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_segmentation(table: pd.DataFrame, path: Path) -> None:
    from orthodiff.outputs import atomic_savefig, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for model, part in table.groupby("model", sort=False):
        ax.errorbar(part["series"], part["macro_dice"], yerr=[part["macro_dice"] - part["ci_low"], part["ci_high"] - part["macro_dice"]],
                    marker="o", capsize=3, label=model)
    ax.set_xscale("log")
    ax.set_xticks(part["series"], [str(n) for n in part["series"]])
    ax.minorticks_off()
    ax.set_xlabel("training series, sagittal (log scale)")
    ax.set_ylabel("test macro Dice (95% CI)")
    ax.legend()
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_gates(gating: pd.DataFrame, path: Path, title: str) -> None:
    from orthodiff.outputs import atomic_savefig, pyplot

    plt = pyplot()
    table = gating.pivot(index="label", columns="plane", values="weight")[list(PLANES)]
    ax = table.plot.bar(figsize=(8, 3.5), rot=0)
    ax.axhline(1 / 3, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("mean MPAE gate weight (test)")
    ax.set_title(title)
    ax.figure.tight_layout()
    atomic_savefig(ax.figure, path)
    plt.close(ax.figure)


def ship(out: Path, steps: int, args: argparse.Namespace, log: Path) -> Path:
    """Export each plane's `steps` checkpoint as the demo's shipped encoder, with its manifest."""
    import hashlib

    from orthodiff.outputs import write_json

    weights = Path(__file__).resolve().parents[2] / "weights"
    files = {}
    for plane in PLANES:
        kept, shipped = checkpoint(out, plane, steps), weights / f"demo_{plane}.pt"
        orthodiff(log, "export-encoder", kept, "--out", shipped)
        files[plane] = {"file": shipped.name, "sha256": hashlib.sha256(shipped.read_bytes()).hexdigest(),
                        "backbone_id": backbone_id(shipped), "source_backbone": backbone_id(kept)}
    manifest = {
        "made_by": f"python bench/experiments/study.py --cases {args.cases} --steps {args.steps} --ship {steps}",
        "cohort": f"orthodiff synth --cases {args.cases} --size 64 --seed 1, ingested at {SIZE} px "
                  "(another cohort than the demo's, which is seed 0)",
        "pretraining": {"preset": PRESET, "steps": steps, "batch": BATCH, "lr": LR, "seed": 0},
        "format": "orthodiff export-encoder: EMA time embedding, encoder and middle block in float16",
        "files": files,
    }
    return write_json(manifest, weights / "demo.json")


def plot_curve(curve: pd.DataFrame, path: Path) -> None:
    from orthodiff.outputs import atomic_savefig, pyplot

    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for plane, part in curve.groupby("plane", sort=False):
        x = part["steps"].clip(lower=10)  # log axis: the initialisation drawn at 10
        left.errorbar(x, part["test_auroc"], yerr=[part["test_auroc"] - part["test_low"], part["test_high"] - part["test_auroc"]],
                      marker="o", capsize=3, label=plane)
        right.plot(x, part["val_loss"], marker="o", label=plane)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_xlabel("pretraining steps (initialisation drawn at 10)")
        ax.legend()
    left.axhline(0.5, color="grey", lw=0.8, ls="--")
    left.set_ylabel("test macro AUROC (probe, 95% CI)")
    left.set_title("Probe on stored features vs pretraining")
    right.set_ylabel("denoising validation loss (EMA weights)")
    right.set_title("Denoising loss vs pretraining")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("study"))
    parser.add_argument("--docs", type=Path, default=Path(__file__).resolve().parents[2] / "docs" / "results" / "study")
    parser.add_argument("--cases", type=int, default=400)
    parser.add_argument("--steps", default="0,300,1000")
    parser.add_argument("--timesteps", default="10,50,150,300")
    parser.add_argument("--pooling", default="gap", choices=("gap", "glp", "sap"))
    parser.add_argument("--heads", default="small", choices=("small", "paper"),
                        help="heads settings: the demo's small-cohort ones or the paper's")
    parser.add_argument("--segmentation-epochs", type=int, default=20,
                        help="epochs of the light head and the U-Net in the segmentation curve (the paper: 30)")
    parser.add_argument("--ship", type=int, help="export this step count's encoders as the demo's weights")
    args = parser.parse_args()
    out, docs = args.out.resolve(), args.docs.resolve()
    (out / "backbones").mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    log, cohort, store = out / "study.log", out / "cohort", out / "store.zarr"
    catalog = cohort / "catalog.parquet"
    steps = [int(s) for s in args.steps.split(",")]
    suffix = "" if args.heads == "small" else "_paper"  # the tables of the paper's heads settings

    if not catalog.exists():
        orthodiff(log, "synth", "--out", cohort, "--cases", args.cases, "--size", 64, "--seed", 1)
    orthodiff(log, "ingest", "--catalog", catalog, "--store", store, "--size", SIZE)
    rows = []
    for count in steps:  # the curve fills one step count at a time, all planes
        pretrain_curve(out, store, [count], log)
        for plane in PLANES:
            row = probe(out, store, catalog, plane, count, args.timesteps, args.pooling, args.heads, log)
            row["val_loss"] = validation_loss(store, checkpoint(out, plane, count), plane)
            rows.append(row)
        curve = pd.DataFrame(rows)
        curve.to_csv(docs / f"pretraining_curve{suffix}.csv", index=False, float_format="%.4f")
        plot_curve(curve, docs / f"pretraining_curve{suffix}.png")
    if len(steps) > 1:  # the fusion ablation at every step count
        table = pd.concat([fusion(out, store, catalog, count, args.heads, log) for count in steps])
        table.to_csv(docs / f"fusion{suffix}.csv", index=False, float_format="%.4f")
        pd.concat([pretrained_vs_random(out, count, args.heads, log) for count in steps if count]).to_csv(
            docs / f"pretrained_vs_random{suffix}.csv", index=False, float_format="%.4f")
        # the best checkpoint by a label-free criterion, the denoising validation loss (mean over
        # planes): the selections' validation AUROCs are maxima over 64 combinations of 60 exams
        best = min((count for count in steps if count), key=lambda count: curve.loc[curve["steps"] == count, "val_loss"].mean())
        for count in (0, best):
            label_efficiency(out, catalog, count, args.heads, log)
        efficiency = efficiency_vs_random(out, best, args.heads)
        efficiency.to_csv(docs / f"label_efficiency{suffix}.csv", index=False, float_format="%.4f")
        plot_efficiency(efficiency, docs / f"label_efficiency{suffix}.png")
        sweep = out / "fusion" / f"{best:05d}_{args.heads}" / "sweep"  # the timestep x block heatmaps
        pd.read_parquet(sweep / "sweep.parquet").to_csv(docs / f"sweep{suffix}.csv", index=False, float_format="%.4f")
        for plane in PLANES:
            shutil.copyfile(sweep / f"heatmap_{plane}.png", docs / f"heatmap_{plane}{suffix}.png")
        gating = pd.read_parquet(out / "fusion" / f"{best:05d}_{args.heads}" / "mpae" / "gating.parquet")
        gating.to_csv(docs / f"mpae_gates{suffix}.csv", index=False, float_format="%.4f")
        plot_gates(gating, docs / f"mpae_gates{suffix}.png", f"MPAE gate weights per label ({best}-step backbones)")
        baselines(out, store, catalog, best, args.heads, log).to_csv(docs / f"baselines{suffix}.csv", index=False,
                                                                    float_format="%.4f")
        baseline_efficiency(out, store, best, args.heads, log).to_csv(docs / f"baseline_efficiency{suffix}.csv",
                                                                      index=False, float_format="%.4f")
        pooling_ablation(out, store, catalog, best, args.timesteps, args.heads, log).to_csv(
            docs / f"pooling{suffix}.csv", index=False, float_format="%.4f")
        transfer(out, best, args.cases, args.timesteps, args.heads, log).to_csv(
            docs / f"transfer{suffix}.csv", index=False, float_format="%.4f")
        finetuning(out, store, best, args.heads, log).to_csv(docs / f"finetuning{suffix}.csv", index=False, float_format="%.4f")
        headline(out, best, args.heads).to_csv(docs / f"headline{suffix}.csv", index=False, float_format="%.4f")
        segmentation = segmentation_efficiency(out, store, catalog, best, args.segmentation_epochs, log)
        segmentation.to_csv(docs / "segmentation_efficiency.csv", index=False, float_format="%.4g")  # p far below 1e-4
        plot_segmentation(segmentation, docs / "segmentation_efficiency.png")
    if args.ship is not None:
        ship(out, args.ship, args, log)


if __name__ == "__main__":
    main()
