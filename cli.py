"""The `orthodiff` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from orthodiff.errors import OrthodiffError
from orthodiff.evaluation.commands import register as register_evaluation
from orthodiff.heads import defaults as PAPER
from orthodiff.options import (
    BoundedGroup, Discretisation, Dtype, FingerprintTask, ImageFormat, JoinOn, Joint, Method, OnError, PersonaModel, Plane, Pooling, Precision, Preset, Roi, Similarity, plain, split_list, subset_sizes,
)
from orthodiff.supervised.commands import register as register_supervised
from orthodiff.tables import make_console

app = typer.Typer(
    name="orthodiff",
    help="Diffusion features for musculoskeletal MRI: synthesize, ingest, pretrain, extract, probe.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    cls=BoundedGroup,
)
catalog_app = typer.Typer(help="Cohort catalogs: validate, split, import.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
store_app = typer.Typer(help="Inspect and check a store.", no_args_is_help=True)
app.add_typer(store_app, name="store")

console = make_console()

# Heads training settings, one meaning on every heads command (None: the library's defaults,
# the paper's values; or, for fuse and efficiency, the configuration's).
Epochs = Annotated[int | None, typer.Option(help="Training epochs.", show_default=f"the paper's: {PAPER.PROBE['epochs']} (probes), {PAPER.FUSION['epochs']} (fusion)")]
Lr = Annotated[float | None, typer.Option(help="Learning rate (Adam, cosine schedule).", show_default=f"the paper's: {PAPER.PROBE['lr']} (probes), {PAPER.FUSION['lr']} (fusion)")]
WeightDecay = Annotated[float | None, typer.Option(help="Adam weight decay (L2).", show_default="the paper's: 0")]
Batch = Annotated[int | None, typer.Option(help="Exams (or series) per optimizer step.", show_default="the paper's")]


def _heads_params(epochs, lr, weight_decay, batch) -> dict:
    """The heads settings given on the command line (the others keep their defaults)."""
    given = {"epochs": epochs, "lr": lr, "weight_decay": weight_decay, "batch_size": batch}
    return {k: v for k, v in given.items() if v is not None}


@app.command()
def demo(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for everything the demo makes.")] = Path(
        "orthodiff-demo"
    ),
    pretrain: Annotated[int | None, typer.Option(
        metavar="STEPS", show_default="the shipped backbones",
        help="Pretrain the backbones here for STEPS steps per plane instead of using the shipped ones "
             "(0 keeps the random initialisation: the baseline).")] = None,
) -> None:
    """Run the pipeline end to end on the embedded synthetic cohort."""
    from orthodiff.demo import run_demo

    run_demo(out, console, pretrain=pretrain)


@catalog_app.command("validate")
def catalog_validate(
    path: Annotated[Path, typer.Argument(help="Cohort catalog (Parquet).")],
    check_files: Annotated[bool, typer.Option(metavar="", help="Check that every path and mask_path exists.")] = True,
) -> None:
    """Check a cohort catalog; the first problem is named by row, column and value."""
    from orthodiff.catalogs.cohort import read_catalog, validate_catalog

    df = read_catalog(path)
    validate_catalog(df, path, check_files=check_files)
    splits = df.groupby("split")["patient_id"].nunique().to_dict()
    console.print(
        f"[green]ok[/] {path}: {len(df)} series, {df['case_id'].nunique()} exams, "
        f"{df['patient_id'].nunique()} patients; patients per split {splits}"
    )


@catalog_app.command("split")
def catalog_split(
    path: Annotated[Path, typer.Argument(help="Cohort catalog (Parquet); left as it is unless --in-place.")],
    seed: Annotated[int, typer.Option(help="Random seed of the patient-level split.")] = 0,
    val: Annotated[float, typer.Option(help="Fraction of patients in the validation split.")] = 0.06,
    test: Annotated[float, typer.Option(help="Fraction of patients in the test split.")] = 0.12,
    subsets: Annotated[
        str, typer.Option(help="Nested label-efficiency subset sizes in training patients, e.g. 100,500,1000.")
    ] = "",
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="New catalog to write (Parquet).", show_default="PATH with a .split suffix, e.g. catalog.split.parquet")] = None,
    in_place: Annotated[bool, typer.Option(metavar="", help="Rewrite PATH itself (runs made under its old split then refuse it).")] = False,
    stratify: Annotated[str, typer.Option(help="Catalog column whose values are split alike (the MSK evaluation paper: sex); '' for none.")] = "sex",
) -> None:
    """Split a catalog by patient (no leakage) into a new catalog; optionally add nested training subsets.

    Features, sweeps and configurations made under the old split keep its fingerprint and
    refuse a catalog whose split differs; the command says how many series moved.
    """
    from orthodiff.catalogs.cohort import add_subsets, read_catalog, split_catalog, split_fingerprint, write_catalog

    if out is not None and in_place:
        raise OrthodiffError("--out and --in-place: give one of them")
    old = read_catalog(path)
    df = split_catalog(old, seed=seed, val=val, test=test, stratify=stratify or None)
    if subsets.strip():
        df = add_subsets(df, split_list(subsets, "--subsets", int), seed=seed)
    target = write_catalog(df, path if in_place else out or path.with_suffix(".split.parquet"))
    counts = df.groupby("split")["patient_id"].nunique().to_dict()
    moved = int((old["split"].to_numpy() != df["split"].to_numpy()).sum()) if "split" in old else len(df)
    console.print(f"wrote {target}: patients per split {counts}; split fingerprint {split_fingerprint(df)}")
    if moved:
        console.print(f"[yellow]{moved} of {len(df)} series moved to another split[/] (was {split_fingerprint(old)}): "
                      "sweeps and configurations made under the old split will refuse this catalog", highlight=False)


# --- public knee datasets: `catalog from-<dataset>` (library: catalogs/datasets/) ---------
DatasetRoot = Annotated[Path, typer.Argument(help="The dataset's folder, as downloaded and unpacked.")]
DatasetOut = Annotated[Path, typer.Option(metavar="FILE", help="Catalog to write (Parquet); converted series go beside it, under its name without suffix.")]
DatasetSeed = Annotated[int, typer.Option(help="Seed of the patient split of the dataset's training exams.")]
DatasetVal = Annotated[float, typer.Option(help="Fraction of the dataset's training patients held out for validation.")]


def _imported(out: Path, df, dataset: str) -> None:
    from orthodiff.catalogs.datasets.common import finish

    finish(df, out)
    splits = df.groupby("split")["case_id"].nunique().to_dict()
    console.print(f"wrote {out}: {len(df)} series of {df['case_id'].nunique()} {dataset} exams; exams per split {splits}")


@catalog_app.command("from-mrnet")
def catalog_from_mrnet(directory: DatasetRoot, out: DatasetOut, seed: DatasetSeed = 0, val: DatasetVal = 0.06) -> None:
    """Build a catalog (task `mrnet`) from the MRNet knee dataset; `valid/` becomes the test split."""
    from orthodiff.catalogs.datasets.mrnet import mrnet_catalog

    _imported(out, mrnet_catalog(directory, seed=seed, val=val), "MRNet")


@catalog_app.command("from-kneemri")
def catalog_from_kneemri(directory: DatasetRoot, out: DatasetOut, seed: DatasetSeed = 0, val: DatasetVal = 0.06,
                         test: Annotated[float, typer.Option(help="Fraction of patients for the test split (KneeMRI has none).")] = 0.12) -> None:
    """Build a catalog (task `kneemri`, ACL grade) from KneeMRI; its pickles are read as numpy arrays only."""
    from orthodiff.catalogs.datasets.kneemri import kneemri_catalog

    _imported(out, kneemri_catalog(directory, out, seed=seed, val=val, test=test), "KneeMRI")


@catalog_app.command("from-fastmri")
def catalog_from_fastmri(directory: DatasetRoot, out: DatasetOut,
                         annotations: Annotated[Path, typer.Option(help="fastMRI+ Annotations/ folder (knee.csv, knee_file_list.csv).")],
                         seed: DatasetSeed = 0, val: DatasetVal = 0.06) -> None:
    """Build a catalog (task `fastmri`) from fastMRI knee HDF5 files labelled by fastMRI+; fastMRI val becomes test."""
    from orthodiff.catalogs.datasets.fastmri import fastmri_catalog

    df = fastmri_catalog(directory, out, annotations, seed=seed, val=val)
    if df.attrs.get("unreviewed"):
        console.print(f"left out {len(df.attrs['unreviewed'])} files fastMRI+ did not review (no labels)")
    _imported(out, df, "fastMRI")


@catalog_app.command("from-skmtea")
def catalog_from_skmtea(directory: DatasetRoot, out: DatasetOut,
                        version: Annotated[str, typer.Option(help="Annotation version (folder under annotations/) giving the official splits.")] = "v1.0.0") -> None:
    """Build a catalog (task `skmtea`) from SKM-TEA: echo RSS images, tissue masks, qDESS T2 maps, official splits."""
    from orthodiff.catalogs.datasets.skmtea import skmtea_catalog

    _imported(out, skmtea_catalog(directory, out, version=version), "SKM-TEA")


@catalog_app.command("from-oaizib")
def catalog_from_oaizib(directory: DatasetRoot, out: DatasetOut,
                        oai: Annotated[Path, typer.Option(help="OAI baseline folder where oai_mri_paths.txt's DICOM paths start.")],
                        fold: Annotated[int, typer.Option(help="Cross-validation fold: 1 trains on List1 and tests on List2, 2 the reverse.")] = 1,
                        seed: DatasetSeed = 0, val: DatasetVal = 0.06) -> None:
    """Build a catalog (task `oaizib`) of OAI DESS series with OAI-ZIB bone and cartilage masks."""
    from orthodiff.catalogs.datasets.oaizib import oaizib_catalog

    _imported(out, oaizib_catalog(directory, oai, out, fold=fold, seed=seed, val=val), "OAI-ZIB")


@catalog_app.command("from-dicom")
def catalog_from_dicom(
    directory: Annotated[Path, typer.Argument(help="Folder tree of DICOM files (a PACS export, a DICOMDIR medium).")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="Catalog to write (Parquet); rejects and series manifests go beside it.")],
    salt_file: Annotated[Path, typer.Option(metavar="FILE", help="The salt of the pseudonyms: created when missing; keep it, and keep it apart from what you share.")],
    joint: Annotated[Joint, typer.Option(callback=plain, help="The joint (its task's labels are what --labels must hold).")] = Joint.knee,
    labels: Annotated[Path | None, typer.Option(metavar="CSV", help="Exam labels: one row per exam, the task's 0/1 columns (and EHR columns if any).")] = None,
    join_column: Annotated[str | None, typer.Option(help="The --labels column naming each exam.")] = None,
    join_on: Annotated[JoinOn, typer.Option(callback=plain, help="What --join-column holds.")] = JoinOn.accession,
    workers: Annotated[int | None, typer.Option(help="Processes reading headers (1 to the number of cores).", show_default="1")] = None,
) -> None:
    """Build a pseudonymous catalog of the usable MR series of a DICOM folder tree; every unused file is in the rejects table."""
    from orthodiff.catalogs.dicom_archive import build_from_dicom, reject_summary, rejects_path

    scan = build_from_dicom(directory, out, salt_file, joint, labels, join_column, join_on, workers or 1, progress=True)
    df = scan.catalog
    console.print(f"wrote {out}: {len(df)} series of {df['case_id'].nunique()} exams of {df['patient_id'].nunique()} patients "
                  f"({', '.join(f'{p} {n}' for p, n in df['plane'].value_counts().items())})", highlight=False)
    for row in reject_summary(scan.rejects).itertuples():
        console.print(f"rejected {row.reason}: {row.files} files ({row.rows} rejects-table rows)", highlight=False)
    console.print(f"rejects: {rejects_path(out)} (and .csv)", highlight=False)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder to write images/, masks/ and catalog.parquet into.")],
    joint: Annotated[Joint, typer.Option(callback=plain, help="The joint (and so its labels and structures).")] = Joint.knee,
    cases: Annotated[int, typer.Option(help="Number of exams (one per patient).")] = 200,
    size: Annotated[int, typer.Option(help="In-plane matrix of every series.")] = 64,
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    format: Annotated[ImageFormat, typer.Option("--format", callback=plain, help="File format of the series.")] = ImageFormat.nifti,
    preview: Annotated[Path | None, typer.Option(help="Also write a PNG montage of the first exam.")] = None,
    healthy_share: Annotated[float | None, typer.Option(help="Share of exams with every label 0 (e.g. 0.5 for persona backbones); default: the label priors' own (about 9% for the knee).")] = None,
) -> None:
    """Generate a synthetic cohort (phantom images, masks, catalog) with realistic labels and sites."""
    from orthodiff.catalogs.cohort import cohort_summary, read_catalog
    from orthodiff.catalogs.synth import preview as write_preview, synthesize
    from orthodiff.tables import frame_table

    catalog = synthesize(joint, cases, size, seed, out, fmt=format, healthy_share=healthy_share)
    df = read_catalog(catalog)
    console.print(f"wrote {catalog}: {len(df)} series of {cases} {joint} exams ({format}, {size}x{size})")
    console.print(frame_table(cohort_summary(df)["labels"][["label", "positive", "prevalence"]], "Labels"))
    if preview:
        console.print(f"preview {write_preview(catalog, preview)}")


@app.command()
def ingest(
    catalog: Annotated[Path, typer.Option(help="Cohort catalog (Parquet) of the series to read.")],
    store: Annotated[str, typer.Option(help="Store to write (a path or fsspec URL); created if missing.")],
    size: Annotated[int, typer.Option(help="In-plane size of the preprocessed volumes.")] = 256,
    on_error: Annotated[OnError, typer.Option(callback=plain, help="fail: stop at the first bad series; skip: go on and list rejects.")] = OnError.fail,
    repair: Annotated[bool, typer.Option("--repair", help="Read again the stored series that fail their checksum (see `store verify`).")] = False,
    mirror_left: Annotated[bool, typer.Option("--mirror-left", help="Flip left knees (catalog column laterality) left-right to look like right knees; recorded per series.")] = False,
) -> None:
    """Read, check, reorient and preprocess every catalog series into the store's volumes (reruns skip what is there)."""
    from orthodiff.featurestore.ingest import REJECTS, ingest as run_ingest
    from orthodiff.tables import frame_table

    result = run_ingest(catalog, store, size=size, on_error=on_error, repair=repair, mirror_left=mirror_left)
    counts = result.groupby("status").size().rename("series").reset_index()
    console.print(frame_table(counts, f"ingest {catalog} -> {store}"))
    rejected = result[result["status"] == "rejected"]
    if len(rejected):
        console.print(frame_table(rejected[["series_id", "reason"]], f"Rejected series (also in {store}/{REJECTS})"))


@app.command()
def pretrain(
    plane: Annotated[Plane, typer.Option(callback=plain, help="One backbone per plane.")],
    store: Annotated[str, typer.Option(help="Store holding the ingested volumes.")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="Checkpoint to write (reference layout).")],
    preset: Annotated[Preset, typer.Option(callback=plain, help="paper (16x256x256), small (16x128x128), tiny (16x64x64) or demo (16x32x32).")] = Preset.tiny,
    steps: Annotated[int, typer.Option(help="Optimisation steps in total (the paper: 21,500; 0 writes the initialisation, a random-init baseline).")] = 1000,
    batch: Annotated[int, typer.Option(help="Volumes per step and process.")] = 4,
    every: Annotated[int, typer.Option(help="Write a checkpoint every this many steps.")] = 500,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: 1e-5 x batch x processes).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, batches and noise.")] = 0,
    resume: Annotated[bool, typer.Option(metavar="", help="Continue the checkpoint at --out exactly where it stopped.")] = False,
    healthy: Annotated[bool, typer.Option(metavar="", help="Train only on series of exams whose labels are all 0 (a persona backbone; needs --catalog).")] = False,
    catalog: Annotated[Path | None, typer.Option(help="Cohort catalog that decides which exams are healthy (with --healthy).")] = None,
) -> None:
    """Pretrain one plane's 3D diffusion U-Net on the store's training volumes (torchrun for several GPUs)."""
    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.pretrain import healthy_series
    from orthodiff.backbone.pretrain import pretrain as run_pretrain
    from orthodiff.featurestore.volumes import open_volumes

    if healthy and catalog is None:
        raise OrthodiffError("--healthy needs --catalog: the catalog's labels decide which exams are healthy")
    if healthy:
        console.print(f"--healthy: {len(healthy_series(catalog))} series of all-negative exams in {catalog} (all planes and splits)")
    path = run_pretrain(open_volumes(store), plane, preset, steps, batch, out, every=every, lr=lr, seed=seed, resume=resume,
                        healthy_catalog=catalog if healthy else None)
    if healthy:
        from orthodiff.backbone.checkpoint import read_checkpoint

        console.print(f"trained on {read_checkpoint(path)['healthy']['train_series']} healthy {plane} training series")
    console.print(f"wrote {path} (backbone id {backbone_id(path)})")


@app.command()
def sample(
    backbone: Annotated[Path, typer.Option(help="Backbone checkpoint.")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="PNG montage to write.")],
    n: Annotated[int, typer.Option(help="Number of volumes to generate.")] = 4,
    sampling_steps: Annotated[int, typer.Option(help="DDIM steps.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of the starting noise.")] = 0,
) -> None:
    """Generate volumes with DDIM and save their central slices: did pretraining learn anatomy?"""
    from orthodiff.backbone.preview import sample_preview
    from orthodiff.progress import progress_bar

    with progress_bar(console, f"DDIM sampling {n} volumes", sampling_steps) as advance:
        path = sample_preview(backbone, out, n=n, steps=sampling_steps, seed=seed, progress=advance)
    console.print(f"wrote {path}")


@app.command("export-encoder")
def export_encoder(
    backbone: Annotated[Path, typer.Argument(help="Full backbone checkpoint (from pretrain).")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="Encoder checkpoint to write.")],
) -> None:
    """Keep what features need (EMA encoder and middle block, float16): a checkpoint small enough to ship."""
    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.checkpoint import export_encoder as write_encoder

    path = write_encoder(backbone, out)
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, backbone id {backbone_id(path)}; "
                  f"full checkpoint {backbone_id(backbone)})")


@app.command()
def extract(
    plane: Annotated[Plane, typer.Option(callback=plain, help="The plane of the series to extract.")],
    store: Annotated[str, typer.Option(help="Store holding the volumes (path or fsspec URL).")],
    backbone: Annotated[Path, typer.Option(help="Backbone checkpoint of that plane.")],
    timesteps: Annotated[str, typer.Option(help="Diffusion timesteps, comma-separated.")] = "10,30,50,100,150,200,300,500",
    blocks: Annotated[str, typer.Option(help="Middle-block outputs, comma-separated.")] = "mid_0,mid_1,mid_2",
    dtype: Annotated[Dtype, typer.Option(callback=plain, help="Stored dtype of the activations.")] = Dtype.float16,
    workers: Annotated[int | None, typer.Option(help="Start a local Dask cluster of this many processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Use an existing Dask cluster (tcp://host:port).")] = None,
    series_batch: Annotated[int, typer.Option(help="Series per forward pass (one timestep each).")] = 8,
    precision: Annotated[Precision, typer.Option(callback=plain, help="Network precision (bf16: a bfloat16 network; fp16: autocast).")] = Precision.fp32,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    repair: Annotated[bool, typer.Option("--repair", help="Also recompute the units that fail their checksum (see `store verify`).")] = False,
    compiled: Annotated[bool, typer.Option("--compile", help="Run the network through torch.compile (eager if that fails).")] = False,
) -> None:
    """Persist every timestep x block middle-block activation of a plane into the store (reruns finish what is missing)."""
    from orthodiff.featurestore.extract import extract as run_extract
    from orthodiff.featurestore.verify import store_info
    from orthodiff.tables import frame_table

    summary = run_extract(store, backbone, plane, split_list(timesteps, "--timesteps", int), split_list(blocks, "--blocks"),
                          dtype=dtype, seed=seed, series_batch=series_batch, workers=workers, scheduler=scheduler,
                          precision=precision, repair=repair, compiled=compiled)
    share = f", {summary['network_share']:.0%} inside the network" if summary["network_share"] is not None else ""
    console.print(f"extracted {summary['series']} {plane} series ({summary['tasks']} tasks) in {summary['seconds']} s "
                  f"({precision}{share}) into features/{summary['backbone']}")
    console.print(frame_table(store_info(store), f"{store}"))


@app.command()
def persona(
    plane: Annotated[Plane, typer.Option(callback=plain, help="The plane of the series to inpaint.")],
    store: Annotated[str, typer.Option(help="Store holding the volumes (path or fsspec URL).")],
    backbone: Annotated[Path, typer.Option(help="Backbone checkpoint of that plane trained with `pretrain --healthy`.")],
    roi: Annotated[Roi, typer.Option(callback=plain, help="box (the paper's central box, split by --grid) or structures (stored masks).")] = Roi.box,
    grid: Annotated[int, typer.Option(help="Cells per axis of the central box: 1, 2 or 3.")] = 3,
    sampling_steps: Annotated[int, typer.Option(help="Reverse diffusion steps of the inpainting.")] = 50,
    jumps: Annotated[int | None, typer.Option(help="RePaint resampling passes per step (1: none; default 2; not for --model ddpm).")] = None,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    workers: Annotated[int | None, typer.Option(help="Start a local Dask cluster of this many processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Use an existing Dask cluster (tcp://host:port).")] = None,
    series_batch: Annotated[int, typer.Option(help="Series per forward pass.")] = 8,
    repair: Annotated[bool, typer.Option("--repair", help="Also redo the shards that fail their checksum (see `store verify`).")] = False,
    model: Annotated[PersonaModel, typer.Option(callback=plain, help="repaint: --backbone from `pretrain --healthy` with RePaint; ddpm: the paper's masked DDPM (linear schedule) from `persona-models --models ddpm`.")] = PersonaModel.repaint,
) -> None:
    """Inpaint each series' ROIs with a healthy backbone: its healthy persona (reruns finish what is missing)."""
    from orthodiff.personas.store import make_personas

    summary = make_personas(store, backbone, plane, roi, grid, sampling_steps, jumps, seed, workers, scheduler,
                            warn=lambda text: console.print(f"[yellow]warning:[/] {text}"), series_batch=series_batch,
                            repair=repair, model=model)
    console.print(f"made {summary['series']} {plane} personas ({summary['rois']} ROIs, {summary['tasks']} tasks) "
                  f"in {summary['seconds']} s into personas/{summary['backbone']}/{plane}")


@app.command("persona-fidelity")
def persona_fidelity(
    plane: Annotated[Plane, typer.Option(callback=plain, help="The plane of the personas to score.")],
    store: Annotated[str, typer.Option(help="Store holding the personas.")],
    catalog: Annotated[Path, typer.Option(help="Cohort catalog (labels decide healthy and lesion exams).")],
    split: Annotated[str, typer.Option(help="Split to score.")] = "test",
    backbone_id: Annotated[str | None, typer.Option(help="Backbone id in the store: the persona backbone, when several made personas.")] = None,
    out: Annotated[Path | None, typer.Option(metavar="DIR", help="Folder for the per-series and summary tables and fidelity.png (image / persona / residual).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of series for the 95% CIs.")] = 500,
    examples: Annotated[int, typer.Option(help="Healthy and lesion series drawn in fidelity.png (each).")] = 3,
) -> None:
    """Persona fidelity beside the mean- and blur-filled ROI: SSIM/MSE in the ROI on healthy exams, residual localisation on lesions."""
    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.personas.fidelity import persona_fidelity as score
    from orthodiff.personas.reader import open_personas
    from orthodiff.tables import frame_table

    tables = score(open_personas(store, plane, backbone_id), read_catalog(catalog), split, out, bootstrap, examples=examples)
    rep, loc = tables["reproduction"], tables["localisation"]
    if rep.series.max():
        console.print(frame_table(rep.round(3), f"{plane} personas of {rep.series.iloc[0]} healthy {split} series beside "
                                                f"the mean- and blur-filled ROI (inside the ROI, 95% CIs)"))
    if len(loc):
        console.print(frame_table(loc.round(2), "localisation: residual energy share in the lesion / in a random region of its size (1: none)"))
    if out:
        console.print(f"wrote {out}/fidelity_*.csv and {out}/fidelity.png")


@app.command()
def radiomics(
    plane: Annotated[Plane, typer.Option(callback=plain, help="The plane of the series.")],
    store: Annotated[str, typer.Option(help="Store holding volumes (and personas).")],
    source: Annotated[str, typer.Option(help="Comma-separated: image, persona, residual.")] = "image,persona,residual",
    families: Annotated[str, typer.Option(help="Comma-separated IBSI families.")] = "first_order,histogram,shape,glcm,glrlm,glszm,gldzm,ngtdm,gldm",
    bins: Annotated[int, typer.Option(help="Grey levels of the fixed-bin-number discretisation.")] = 32,
    discretisation: Annotated[Discretisation, typer.Option(callback=plain, help="Fixed bin number (--bins) or fixed bin size (--bin-width).")] = Discretisation.fixed_bin_number,
    bin_width: Annotated[float | None, typer.Option(help="Bin width in intensity units (fixed_bin_size only).")] = None,
    grid: Annotated[int, typer.Option(help="Cells per axis of the central box: 1, 2 or 3; 0: the box personas' "
                                           "own grid, or 3 on a store without personas.")] = 0,
    backbone_id: Annotated[str | None, typer.Option(help="Backbone id in the store: the persona backbone, when several made personas.")] = None,
    workers: Annotated[int | None, typer.Option(help="Start a local Dask cluster of this many processes.")] = None,
    scheduler: Annotated[str | None, typer.Option(help="Use an existing Dask cluster (tcp://host:port).")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Also redo the shards that fail their checksum (see `store verify`).")] = False,
) -> None:
    """IBSI radiomic features per ROI of the image, its persona and the residual (reruns finish what is missing)."""
    from orthodiff.radiomics.store import extract_radiomics

    summary = extract_radiomics(store, plane, split_list(source, "--source"), split_list(families, "--families"), bins, grid, backbone_id,
                                workers, scheduler, discretisation=discretisation, bin_width=bin_width, repair=repair)
    console.print(f"computed {summary['features']} features for {summary['series']} {plane} series in "
                  f"{summary['seconds']} s into radiomics/{summary['settings']}/{plane}")


@app.command()
def fingerprint(
    store: Annotated[str, typer.Option(help="Store holding radiomics (and diffusion features for the usage predictor).")],
    catalog: Annotated[Path, typer.Option(help="Cohort catalog (labels, splits, patients).")],
    task: Annotated[FingerprintTask, typer.Option(callback=plain, help="The target: any abnormality, the ACL, or the menisci.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for metrics.csv, explanations and coefficients.")],
    settings: Annotated[str | None, typer.Option(help="Radiomics settings id, when the store holds several.")] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs of the fingerprint heads.")] = 200,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of patients for the CIs.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    usage_encoders: Annotated[str | None, typer.Option(help="Comma-separated encoder checkpoints, one per plane (e.g. weights/demo_sagittal.pt): adds the paper's usage predictor on the volumes, pretrained and fine-tuned.")] = None,
) -> None:
    """Radiomic fingerprint head and comparators on one task: test AUC, accuracy, sensitivity, specificity."""
    from orthodiff.progress import progress_bar
    from orthodiff.heads.fingerprint_cohort import models, run_fingerprint
    from orthodiff.supervised.networks import usage_encoder
    from orthodiff.tables import frame_table

    encoder = usage_encoder(split_list(usage_encoders, "--usage-encoders")) if usage_encoders else None
    with progress_bar(console, f"fingerprint {task}", len(models(usage_encoder=encoder))) as advance:
        table = run_fingerprint(store, catalog, task, out, settings, epochs, bootstrap, seed, progress=advance,
                                usage_encoder=encoder)
    shown = table[["model", "sources", "auc", "accuracy", "sensitivity", "specificity"]].copy()
    shown["auc 95% CI"] = [f"{a:.2f}-{b:.2f}" for a, b in table["auc_ci"]]
    console.print(frame_table(shown.round(3), f"{task}: test exams ({out / 'metrics.csv'})"))


@app.command("persona-models")
def persona_models_command(
    store: Annotated[str, typer.Option(help="Store with the plane's volumes.")],
    catalog: Annotated[Path, typer.Option(help="Cohort catalog: its labels decide which exams are healthy.")],
    plane: Annotated[Plane, typer.Option(callback=plain, help="The plane whose healthy series train and test the models.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for persona_models(.csv/.parquet), the summary and the DDPM.")],
    models: Annotated[str, typer.Option(help="Comma-separated: ddpm (the paper's), gan, vit_ae.")] = "ddpm,gan,vit_ae",
    steps: Annotated[int, typer.Option(help="Training steps of each model.")] = 200,
    sampling_steps: Annotated[int, typer.Option(help="DDPM reverse steps (of its 1000).")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """The paper's reconstruction-model comparison: masked DDPM, GAN, ViT autoencoder, mean and blur fills, ROI SSIM/MSE on healthy test series."""
    from orthodiff.options import split_list
    from orthodiff.personas.compare import PERSONA_MODELS, compare_persona_models
    from orthodiff.tables import frame_table

    table = compare_persona_models(store, catalog, plane, out, split_list(models, "--models", choices=PERSONA_MODELS),
                                   steps, sampling_steps, seed=seed)
    shown = table[["model", "ssim", "mse_255"]].copy()
    shown["ssim 95% CI"] = [f"{a:.2f}-{b:.2f}" for a, b in table["ssim_ci"]]
    console.print(frame_table(shown, f"{plane}: personas of {table.test_series.iloc[0]} healthy test series ({out})"))


@app.command("register")
def register_command(
    store: Annotated[str, typer.Option(help="Store whose volumes are aligned.")],
    plane: Annotated[Plane, typer.Option(callback=plain, help="The plane of the series to align.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder of the new store for the aligned volumes (and registration_<plane>.csv).")],
    iterations: Annotated[int, typer.Option(help="Optimiser iterations; a series that needs more is left out, with its reason.")] = 200,
    similarity: Annotated[Similarity, typer.Option(callback=plain, help="Metric: normalised correlation (one contrast) or Mattes mutual information (a plane mixing contrasts, e.g. fat-suppressed and not).")] = Similarity.correlation,
) -> None:
    """Affine registration of a plane's series to its mean training volume (the paper's "affine" preprocessing)."""
    from orthodiff.personas.registration import register_store

    table = register_store(store, plane, str(out), iterations, similarity=similarity)
    failed = table[table.reason.notna()]
    console.print(f"aligned {len(table) - len(failed)} of {len(table)} {plane} series into {out}"
                  + "".join(f"\n[yellow]left out[/] {r.series_id}: {r.reason}" for r in failed.itertuples()))


@app.command("registration-compare")
def registration_compare_command(
    none: Annotated[Path, typer.Option(metavar="DIR", help="`orthodiff fingerprint --out` on the unregistered store.")],
    affine: Annotated[Path, typer.Option(metavar="DIR", help="The same on the `orthodiff register` store.")],
) -> None:
    """The paper's none-vs-affine comparison: both fingerprint runs' test metrics side by side."""
    from orthodiff.personas.registration import registration_comparison
    from orthodiff.tables import frame_table

    table = registration_comparison({"none": none, "affine": affine})
    console.print(frame_table(table[["model", "registration", "auc", "accuracy", "sensitivity", "specificity"]].round(3),
                              "registration: none vs affine"))


@store_app.command("info")
def store_info_command(store: Annotated[str, typer.Argument(help="Store path or URL.")]) -> None:
    """Backbones, planes, series complete/total, size on disk, compression ratio."""
    from orthodiff.featurestore.verify import store_info
    from orthodiff.tables import frame_table

    console.print(frame_table(store_info(store), f"{store}", float_format="{:.2f}"))


@store_app.command("verify")
def store_verify(store: Annotated[str, typer.Argument(help="Store path or URL.")]) -> None:
    """Check shapes, completion against content, NaN/Inf and provenance; exit 1 naming what is wrong."""
    from orthodiff.featurestore.verify import verify_store

    problems = verify_store(store)
    for problem in problems[:50]:
        console.print(f"[red]problem:[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    console.print(f"[green]ok[/] {store}")


@app.command()
def sweep(
    store: Annotated[str, typer.Option(help="Feature store (path or fsspec URL).")],
    catalog: Annotated[Path, typer.Option(help="Cohort catalog (Parquet) of the stored series.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for sweep tables, heatmaps and run.json.")],
    pooling: Annotated[Pooling, typer.Option(callback=plain, help="sap (the paper's default), glp, or gap (fastest: one batched sweep over the stored GAP summaries).")] = Pooling(PAPER.POOLING),
    planes: Annotated[str, typer.Option(help="Comma-separated planes.")] = "sagittal,coronal,axial",
    backbone_id: Annotated[str | None, typer.Option(
        help="Backbone id(s) in the store, comma-separated, one per plane (see `orthodiff store info`).",
        show_default="each plane's only backbone; an error naming them when a plane has several")] = None,
    epochs: Epochs = None,
    lr: Lr = None,
    weight_decay: WeightDecay = None,
    batch: Batch = None,
    workers: Annotated[int | None, typer.Option(
        help="Processes sweeping planes at once; the results do not depend on it.",
        show_default="one per plane for sap and glp, 1 for gap")] = None,
) -> None:
    """One probe per (plane, timestep, block) on train, scored on validation; top 4 per plane."""
    from orthodiff.heads.inputs import load_inputs
    from orthodiff.heads.runs import run_sweep, sweep_steps
    from orthodiff.heads.sweep import default_workers
    from orthodiff.progress import progress_bar
    from orthodiff.tables import frame_table

    data, labels, provenance = load_inputs(store, catalog, split_list(backbone_id, "--backbone-id") or None,
                                           split_list(planes, "--planes", choices=Plane))
    workers = workers or default_workers(len(data.features), pooling)
    with progress_bar(console, f"{pooling} sweep", sweep_steps(data, pooling)) as advance:
        _, top = run_sweep(data, labels, pooling, out, _heads_params(epochs, lr, weight_decay, batch), provenance, advance,
                           workers=workers)
    console.print(frame_table(top, f"Top 4 (timestep, block) per plane, validation macro AUROC — {out}"))


@app.command()
def select(
    sweep_dir: Annotated[Path, typer.Option("--sweep", help="Directory written by `orthodiff sweep`.")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="Configuration file (JSON) to freeze the choice in.")],
    method: Annotated[Method, typer.Option(callback=plain, help="Fusion head used to score the combinations.")] = Method(PAPER.METHOD),
    epochs: Epochs = None,
    lr: Lr = None,
    weight_decay: WeightDecay = None,
    batch: Batch = None,
    plane_epochs: Annotated[int | None, typer.Option(help="MPAE: epochs of the per-plane heads.", show_default="the paper's: 5")] = None,
    plane_lr: Annotated[float | None, typer.Option(help="MPAE: learning rate of the per-plane heads.", show_default="the paper's: 5e-5")] = None,
    gate_epochs: Annotated[int | None, typer.Option(help="MPAE: full-batch epochs of the gate.", show_default="the paper's: 10")] = None,
) -> None:
    """Score every cross-plane combination of the per-plane top 4 on validation; freeze the best
    (with the fusion settings, which `fuse` and `efficiency` then use)."""
    from orthodiff.heads.inputs import sweep_inputs
    from orthodiff.heads.runs import run_select, selection_size
    from orthodiff.progress import progress_bar
    from orthodiff.tables import frame_table

    data, labels, _ = sweep_inputs(sweep_dir)
    with progress_bar(console, "cross-plane combinations", selection_size(sweep_dir)) as advance:
        mpae = {k: v for k, v in (("plane_epochs", plane_epochs), ("plane_lr", plane_lr), ("gate_epochs", gate_epochs)) if v is not None}
        scored, config = run_select(sweep_dir, data, labels, out, method,
                                    {**_heads_params(epochs, lr, weight_decay, batch), **mpae}, progress=advance)
    console.print(frame_table(scored.head(10), f"Best of {len(scored)} combinations (validation) — frozen in {out}"))


@app.command()
def fuse(
    config: Annotated[Path, typer.Option(help="Configuration frozen by `orthodiff select`.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for metrics, predictions and plots.")],
    method: Annotated[Method, typer.Option(callback=plain, help="Fusion head, or a comparator (lightgbm, logistic; ehr_only: the paper's EHR-only baseline).")] = Method(PAPER.METHOD),
    ehr: Annotated[bool, typer.Option(metavar="", help="Late-fuse an EHR head per label.")] = False,
    store: Annotated[str | None, typer.Option(help="Feature store (default: the configuration's).")] = None,
    catalog: Annotated[Path | None, typer.Option(help="Catalog (default: the configuration's).")] = None,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (by patient) for 95% CIs.")] = 500,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Fusion epochs.", show_default="the configuration's")] = None,
    lr: Annotated[float | None, typer.Option(help="Fusion learning rate.", show_default="the configuration's")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Fusion weight decay.", show_default="the configuration's")] = None,
    batch: Annotated[int | None, typer.Option(help="Exams per fusion step.", show_default="the configuration's")] = None,
    backbone_id: Annotated[str | None, typer.Option(help="Backbone id(s) in the store, comma-separated, one per plane, e.g. fine-tuned backbones (default: the configuration's).")] = None,
    threshold: Annotated[str, typer.Option(help="Decision threshold for CP/CR/CF1, sensitivity, specificity: a number (paper: 0.5) or 'youden' (per label, Youden's J on validation, frozen for test).")] = "0.5",
    finetuned: Annotated[str | None, typer.Option(help="Fine-tuned checkpoints, plane=path comma-separated: their pooling heads are Stage I and their features (extracted into the store) are fused; default --backbone-id becomes their ids.")] = None,
    subset: Annotated[int | None, typer.Option(help="Train on this label-efficiency subset of the training patients (the catalog's subset_<N> column, see `catalog split --subsets`), e.g. with backbones fine-tuned on it.")] = None,
) -> None:
    """Train the two-stage fusion head on train, report test metrics with 95% CIs."""
    from orthodiff.backbone import backbone_id as checkpoint_id
    from orthodiff.heads.inputs import load_inputs
    from orthodiff.heads.runs import read_config, run_fuse
    from orthodiff.outputs import read_table
    from orthodiff.supervised.runs import finetuned_probes
    from orthodiff.progress import progress_bar
    from orthodiff.tables import frame_table

    cfg = read_config(config)
    probes, checkpoints = None, {}
    for item in split_list(finetuned, "--finetuned"):
        plane, sep, path = item.partition("=")
        if not sep:
            raise OrthodiffError(f"--finetuned {item!r}: expected plane=path")
        checkpoints[plane.strip()] = Path(path.strip())
    if checkpoints:
        probes = finetuned_probes(checkpoints, cfg)
        if not backbone_id:
            if set(cfg["planes"]) - set(checkpoints):
                raise OrthodiffError(f"--finetuned covers {sorted(checkpoints)} of the planes {list(cfg['planes'])}: "
                                     "give --backbone-id with one id per plane")
            backbone_id = ",".join(checkpoint_id(checkpoints[p]) for p in cfg["planes"])
    backbones = split_list(backbone_id, "--backbone-id") or cfg.get("backbone")
    data, labels, _ = load_inputs(store or cfg.get("store"), catalog or cfg.get("catalog"), backbones, list(cfg["planes"]))
    with progress_bar(console, f"fuse {method}{' + EHR' if ehr else ''}: train, evaluate, write", 3) as advance:
        metrics, _ = run_fuse(cfg, data, labels, method, out, ehr=ehr, n_boot=bootstrap, seed=seed,
                                  fusion_params=_heads_params(epochs, lr, weight_decay, batch), threshold=threshold,
                                  probes=probes, progress=advance, subset=subset)
    console.print(frame_table(metrics.drop(columns="note"), f"Test metrics, {method}{' + EHR' if ehr else ''} — {out}"))
    for label, note in metrics.loc[metrics["note"] != "", ["label", "note"]].drop_duplicates().itertuples(index=False):
        console.print(f"[yellow]{label}[/]: {note}", highlight=False)
    missing = read_table(out / "missing_planes.parquet")
    if len(missing):
        console.print(f"{len(missing)} test exams miss a plane and were left out of fusion (exams_left_out; "
                      f"listed in {out / 'missing_planes.csv'})")


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="First `orthodiff fuse` or `baseline classify` output directory.")],
    b: Annotated[Path, typer.Argument(help="Second `orthodiff fuse` or `baseline classify` output directory.")],
    permutations: Annotated[int, typer.Option(help="Paired permutations.")] = 1000,
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Also write the table to this Parquet file (and a CSV beside it).")] = None,
) -> None:
    """Paired permutation test (patients swapped between A and B) and per-label AUROC deltas."""
    from orthodiff.outputs import write_table
    from orthodiff.heads.runs import compare_runs
    from orthodiff.tables import frame_table

    table = compare_runs(a, b, n_perm=permutations)
    if out:
        write_table(table, out)
    console.print(frame_table(table, f"AUROC A = {a} vs B = {b} (delta = A - B)", "{:.4f}"))


@app.command()
def efficiency(
    config: Annotated[Path, typer.Option(help="Configuration frozen by `orthodiff select`.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the curves table and PNG.")],
    subsets: Annotated[str, typer.Option(help="Nested training subsets (the catalog's subset_<N> columns, see `catalog split --subsets`) and/or 'all'.")] = "all",
    method: Annotated[Method, typer.Option(callback=plain, help="Fusion head.")] = Method(PAPER.METHOD),
    store: Annotated[str | None, typer.Option(help="Feature store (default: the configuration's).")] = None,
    catalog: Annotated[Path | None, typer.Option(help="Catalog (default: the configuration's).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Fusion epochs.", show_default="the configuration's")] = None,
    lr: Annotated[float | None, typer.Option(help="Fusion learning rate.", show_default="the configuration's")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Fusion weight decay.", show_default="the configuration's")] = None,
    batch: Annotated[int | None, typer.Option(help="Exams per fusion step.", show_default="the configuration's")] = None,
) -> None:
    """Label-efficiency curves: the fusion head vs the LightGBM comparator on nested subsets."""
    from orthodiff.heads.inputs import load_inputs
    from orthodiff.progress import progress_bar
    from orthodiff.heads.runs import read_config, run_efficiency
    from orthodiff.tables import frame_table

    sizes = subset_sizes(subsets)
    cfg = read_config(config)
    data, labels, _ = load_inputs(store or cfg.get("store"), catalog or cfg.get("catalog"), cfg.get("backbone"), list(cfg["planes"]))
    with progress_bar(console, "subsets x heads", 2 * len(sizes)) as advance:
        curves = run_efficiency(cfg, data, labels, sizes, out, method=method, progress=advance,
                                fusion_params=_heads_params(epochs, lr, weight_decay, batch))
    console.print(frame_table(curves, f"Test macro AUROC by training patients — {out}"))


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (sweep/select/fuse/efficiency outputs inside).")],
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="HTML file to write (default: RUN_DIR/report.html).")] = None,
) -> None:
    """One self-contained HTML report (tables and plots) of a run directory."""
    import pandas as pd

    from orthodiff.heads.report import build_report, report_inputs
    from orthodiff.tables import frame_table

    path = build_report(run_dir, out)
    files = report_inputs(run_dir)
    kinds = pd.DataFrame({"file": [str(p.relative_to(run_dir)) for p in files], "kind": [p.suffix[1:] for p in files]})
    console.print(frame_table(kinds, f"Included in {path} ({path.stat().st_size / 1024:.0f} KiB)"))


register_supervised(app)
register_evaluation(app)


def _os_error(err: OSError) -> str:
    """One line for an operating-system error: the file, what happened, what to do."""
    import errno

    where = err.filename or "a file"
    advice = {
        errno.ENOSPC: "free some space and rerun the command: finished work is kept",
        errno.EDQUOT: "free some space and rerun the command: finished work is kept",
        errno.EROFS: "the file system is read-only; write to another store or remount it writable",
        errno.EACCES: "check the permissions of that path (or choose another one)",
        errno.EPERM: "check the permissions of that path (or choose another one)",
        errno.ENOENT: "check the path",
    }.get(err.errno, "check the path and rerun")
    return f"{where}: {err.strerror or err}; {advice}"


def _outside_error(err: Exception) -> str | None:
    """One line for what the machine or a storage service did (not a bug of ours), else None:
    a write that failed for lack of space inside torch's writer, or an object store that still
    failed after its client's retries (botocore, s3fs, gcsfs, aiohttp)."""
    first = (str(err).strip().splitlines() or [""])[-1][:200]
    if isinstance(err, RuntimeError) and ("write failed" in first or "No space left" in first):
        return f"writing a file failed ({first}); is the disk full? free some space and rerun the command: finished work is kept"
    if type(err).__module__.split(".")[0] in ("botocore", "aiobotocore", "s3fs", "gcsfs", "aiohttp"):
        return (f"the object store failed after retries ({type(err).__name__}: {first}); check that it is reachable "
                "and rerun the command: finished work is kept")
    return None


def main() -> None:
    try:
        app()
    except OrthodiffError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {_os_error(err)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as err:
        line = _outside_error(err)
        if line is None:
            raise
        Console(stderr=True).print(f"[bold red]error:[/] {line}", highlight=False, soft_wrap=True)
        sys.exit(2)
