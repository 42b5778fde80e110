"""`orthodiff demo`: the pipeline end to end on the embedded synthetic knee cohort.

Every stage writes under one folder and is skipped when its output is already complete,
so rerunning an interrupted demo finishes only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
from rich.console import Console

from orthodiff.errors import OrthodiffError
from orthodiff.tables import frame_table

JOINT, CASES, SIZE, SEED = "knee", 400, 64, 0
# Patients per split: 240 train, 40 validation, 120 test. The test split is what tells a trained
# backbone from a random one; on the graded phantom the training split must be this large too:
# with 140 training exams the shipped backbones did not beat their initialisation with any pooling
# (docs/results/benchmarks.md, "The demo's backbones").
VAL, TEST = 0.1, 0.3
# The demo's backbones: by default the shipped `demo`-preset encoders (16 x 32 x 32), trained by
# `bench/experiments/study.py` on another synthetic cohort (weights/demo.json says how; docs/results/benchmarks.md, "The demo's
# backbones"). `--pretrain N` trains them here instead, briefly (0 keeps the random
# initialisation: the baseline they are compared with).
PRESET, INGEST_SIZE, BATCH, LR = "demo", 32, 4, 2e-4
WEIGHTS = Path(__file__).parent / "weights"
TIMESTEPS = (10, 50, 150, 300)
# The heads: GLP, the pooling that showed the shipped backbones' gain over their initialisation
# most clearly on this cohort (docs/results/benchmarks.md, "The demo's backbones"); its sweep takes under a minute
# where SAP's, the paper's choice, would take most of the demo's budget
POOLING = "glp"


def _disk_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def volumes_table(store: Path) -> pd.DataFrame:
    """Series in the store's volumes, per plane and split."""
    from orthodiff.featurestore.volumes import open_volumes

    ds = open_volumes(str(store))
    coords = pd.DataFrame({"plane": ds.plane.values, "split": ds.split.values})
    table = coords.groupby(["plane", "split"]).size().unstack("split", fill_value=0).reset_index()
    table["masks"] = pd.Series(ds.has_mask.values).groupby(coords["plane"].values).sum().reindex(table["plane"]).values
    return table


def shipped_weights(plane: str) -> Path:
    """The shipped `demo`-preset encoder of `plane`, checked against the sha256 in weights/demo.json."""
    try:
        manifest = json.loads((WEIGHTS / "demo.json").read_text())
    except (OSError, ValueError) as err:
        raise OrthodiffError(f"{WEIGHTS / 'demo.json'}: the shipped weights' manifest is unreadable ({err}); "
                             "reinstall orthodiff") from None
    path = WEIGHTS / manifest["files"][plane]["file"]
    if not path.is_file():
        raise OrthodiffError(f"{path}: the shipped demo weights are missing (reinstall orthodiff, or train "
                             "backbones here with `orthodiff demo --pretrain 30`)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != manifest["files"][plane]["sha256"]:
        raise OrthodiffError(f"{path}: sha256 {digest[:16]} is not the recorded {manifest['files'][plane]['sha256'][:16]}: "
                             "the shipped weights are damaged; reinstall orthodiff")
    return path


def _made_by(ckpt: dict) -> str:
    return "the shipped weights" if ckpt.get("parts") == "encoder" else f"{ckpt.get('step')} pretraining steps here"


def demo_backbone(out: Path, store: Path, plane: str, steps: int | None, console: Console) -> Path:
    """`out/backbones/<plane>.pt`: a copy of the shipped weights (`steps` None) or a backbone
    pretrained here for `steps`. Backbones of the other kind, or other shipped weights, are
    refused rather than silently reused."""
    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.checkpoint import read_checkpoint
    from orthodiff.backbone.pretrain import pretrain
    from orthodiff.featurestore.volumes import open_volumes
    from orthodiff.files import atomic_write

    path = out / "backbones" / f"{plane}.pt"
    if not path.exists():
        if steps is None:
            shipped = shipped_weights(plane)
            return atomic_write(path, lambda tmp: shutil.copyfile(shipped, tmp))
        return pretrain(open_volumes(str(store)), plane, PRESET, steps, BATCH, path, every=max(steps, 1), lr=LR, seed=SEED)
    ckpt = read_checkpoint(path)
    made, wanted = _made_by(ckpt), "the shipped weights" if steps is None else f"{steps} pretraining steps here"
    if made == wanted and steps is None and backbone_id(path, ckpt) != backbone_id(shipped_weights(plane)):
        made = "other shipped weights"
    if made != wanted:
        raise OrthodiffError(f"{path}: this demo folder's backbones are {made}, not {wanted}; choose another --out")
    console.print(f"reusing {path}")
    return path


def run_demo(out: Path, console: Console, pretrain: int | None = None) -> None:
    """The pipeline on the embedded cohort, with the shipped backbones or (``pretrain``) ones
    trained here for that many steps per plane."""
    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.preview import sample_preview
    from orthodiff.catalogs.cohort import cohort_summary, read_catalog, validate_catalog
    from orthodiff.catalogs.synth import preview, synthesize
    from orthodiff.catalogs.tasks import PLANES
    from orthodiff.featurestore.extract import extract
    from orthodiff.featurestore.ingest import ingest
    from orthodiff.featurestore.verify import store_info
    from orthodiff.heads.pipeline import SMALL_COHORT_FUSION, SMALL_COHORT_PROBE, heads_commands, run_heads

    out = Path(out)
    cohort, store = out / "cohort", out / "store.zarr"
    catalog = cohort / "catalog.parquet"

    console.rule(f"1. synthetic {JOINT} cohort: {CASES} exams, {SIZE}x{SIZE}, seed {SEED}")
    if catalog.exists():
        console.print(f"reusing {catalog}")
    else:
        synthesize(JOINT, CASES, SIZE, SEED, cohort, val=VAL, test=TEST)
        preview(catalog, out / "cohort_preview.png")
    df = read_catalog(catalog)
    validate_catalog(df, catalog)
    console.print(
        f"[green]valid[/] {catalog}: {len(df)} series, {df['case_id'].nunique()} exams, "
        f"{df['patient_id'].nunique()} patients; preview {out / 'cohort_preview.png'}"
    )
    summary = cohort_summary(df)
    console.print(frame_table(summary["labels"], "Label prevalence (per exam)"))
    console.print(frame_table(summary["sites"], "Exams per center and field strength"))
    console.print(frame_table(summary["planes"], "Series per plane and scan"))

    console.rule(f"2. ingest into {store}")
    result = ingest(catalog, str(store), size=INGEST_SIZE)
    counts = result.groupby("status").size().to_dict()
    console.print(f"series {counts}; volumes take {_disk_bytes(store / 'volumes') / 2**20:.1f} MiB on disk")
    console.print(frame_table(volumes_table(store), f"{store}: volumes (16 x {INGEST_SIZE} x {INGEST_SIZE}, float16)"))

    if pretrain is None:
        console.rule(f"3. the shipped {PRESET}-preset backbones, one per plane")
    else:
        console.rule(f"3. pretrain one {PRESET}-preset backbone per plane ({pretrain} steps of {BATCH})")
    checkpoints = {plane: demo_backbone(out, store, plane, pretrain, console) for plane in PLANES}
    for plane, path in checkpoints.items():
        console.print(f"{plane}: {path} (backbone id {backbone_id(path)})")
    if pretrain is None:
        console.print(f"they hold the encoders only, what extraction reads; how they were made: {WEIGHTS / 'demo.json'}")
    else:
        samples = out / "backbones" / "samples_sagittal.png"
        if not samples.exists():
            sample_preview(checkpoints["sagittal"], samples, n=4, steps=25)
        console.print(f"DDIM samples: {samples} (after {pretrain} pretraining steps they are still noise; "
                      "anatomy appears after thousands of steps, see docs/results/benchmarks.md, 'Real sizes')")

    console.rule(f"4. extract timesteps {', '.join(map(str, TIMESTEPS))} x blocks mid_0-2 for every plane")
    for plane in PLANES:
        done = extract(str(store), checkpoints[plane], plane, TIMESTEPS)
        console.print(f"{plane}: {done['series']} series extracted in {done['seconds']} s")
    console.print(frame_table(store_info(str(store)), f"orthodiff store info {store}", float_format="{:.2f}"))

    console.rule(f"5. heads on the stored features: {POOLING.upper()} sweep, select, fusion, EHR, LightGBM, report")
    console.print("the same, command by command, with the demo's small-cohort settings (the CLI's defaults are the paper's):")
    for line in heads_commands(store, catalog, out / "heads", SMALL_COHORT_PROBE, SMALL_COHORT_FUSION, POOLING):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    run_heads(str(store), catalog, out / "heads", console, pooling=POOLING, probe_params=SMALL_COHORT_PROBE,
              fusion_params=SMALL_COHORT_FUSION)
