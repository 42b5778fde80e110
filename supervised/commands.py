"""CLI commands of the supervised tier: `finetune`, `segment train|predict`,
`baseline classify|segment`, `table`. Registered on the main app by `orthodiff.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orthodiff.options import ClassifierModel, Decoder, Plane, Pooling, SegmenterModel, UnetrSize, plain, split_list, subset_sizes
from orthodiff.tables import make_console

console = make_console()
segment_app = typer.Typer(help="Segmentation of joint structures: train a head, predict masks.", no_args_is_help=True)
baseline_app = typer.Typer(help="Supervised baselines from scratch on the same splits and metrics.", no_args_is_help=True)

Store = Annotated[str, typer.Option(help="Store holding the volumes (path or fsspec URL).")]
Catalog = Annotated[Path, typer.Option(help="Cohort catalog (Parquet) of the stored series.")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
Seed = Annotated[int, typer.Option(help="Random seed.")]
Device = Annotated[str | None, typer.Option(help="torch device (default: CUDA when available, else CPU).")]


def _dice_table(dice, title):
    from orthodiff.tables import frame_table

    console.print(frame_table(dice.drop(columns="name"), title))


def finetune(
    plane: Annotated[Plane, typer.Option(callback=plain, help="The backbone's plane.")],
    store: Store,
    catalog: Catalog,
    backbone: Annotated[Path, typer.Option(help="Pretrained backbone checkpoint of that plane.")],
    out: Annotated[Path, typer.Option(metavar="FILE", help="Fine-tuned checkpoint to write (a new backbone id).")],
    timestep: Annotated[int, typer.Option(help="Diffusion timestep of the inputs.")] = 10,
    block: Annotated[str, typer.Option(help="Middle-block output the head pools.")] = "mid_2",
    pooling: Annotated[Pooling, typer.Option(callback=plain, help="Pooling of the head on the middle block.")] = Pooling.sap,
    epochs: Epochs = 5,
    lr: Annotated[float, typer.Option(help="Learning rate of the encoder and middle block (paper: 0.05 x the head's).")] = 2.5e-5,
    head_lr: Annotated[float, typer.Option(help="Learning rate of the pooling head.")] = 5e-4,
    batch_size: Annotated[int, typer.Option("--batch", help="Series per step.")] = 10,
    timesteps: Annotated[str, typer.Option(help="FT-Opt: candidate timesteps, e.g. 10,100,200: each is fine-tuned, the best validation macro AUROC is written (default: --timestep).")] = "",
    blocks: Annotated[str, typer.Option(help="FT-Opt: candidate blocks, e.g. mid_0,mid_2 (default: --block).")] = "",
    subset: Annotated[int | None, typer.Option(help="Fine-tune on this label-efficiency subset of the training patients (the catalog's subset_<N> column).")] = None,
    seed: Seed = 0,
    device: Device = None,
) -> None:
    """Stage I fine-tuning: encoder + middle block with a pooling head on the training split; writes a new backbone."""
    from orthodiff.progress import progress_bar
    from orthodiff.supervised.runs import run_finetune

    with progress_bar(console, f"fine-tuning the {plane} backbone: steps", None) as advance:
        summary = run_finetune(store, catalog, plane, backbone, timestep, block, out, pooling, epochs, lr, head_lr,
                               batch_size, seed, device, progress=advance,
                               timesteps=split_list(timesteps, "--timesteps", int) or None,
                               blocks=split_list(blocks, "--blocks") or None, subset=subset)
    console.print(f"wrote {out}: backbone {summary['backbone']} (from {summary['finetuned_from']}) at timestep "
                  f"{summary['timestep']}, {summary['block']}, "
                  f"{summary['train_series']} training series, {summary['seconds']} s, "
                  f"validation macro AUROC {summary['val_macro_auroc']:.3f}")
    console.print(f"next: orthodiff extract --plane {plane} --store {store} --backbone {out}")


def _segment(store, catalog, plane, model, out, backbone, timestep, block, epochs, lr, batch_size, subsets, seed, device,
             **options):
    from orthodiff.progress import progress_bar
    from orthodiff.supervised.runs import run_segment

    sizes = subset_sizes(subsets)
    with progress_bar(console, f"{model} segmentation: training steps", None) as advance:
        dice = run_segment(store, catalog, plane, model, out, backbone, timestep, block, epochs, lr,
                           batch_size=batch_size, subsets=sizes, seed=seed, device=device, progress=advance, **options)
    _dice_table(dice, f"Test Dice per structure, {model}, {plane} — {out}")


@segment_app.command("train")
def segment_train(
    plane: Annotated[Plane, typer.Option(callback=plain, help="A plane with masks (knee: sagittal or coronal).")],
    store: Store,
    catalog: Catalog,
    backbone: Annotated[Path, typer.Option(help="Pretrained (or fine-tuned) backbone checkpoint of that plane.")],
    out: Annotated[Path, typer.Option(metavar="DIR", help="Run folder: model, Dice table, overlay PNG.")],
    timestep: Annotated[int, typer.Option(help="Diffusion timestep of the inputs.")] = 10,
    block: Annotated[str, typer.Option(help="Middle-block output the decoder starts from.")] = "mid_2",
    epochs: Epochs = 30,
    lr: Annotated[float, typer.Option(help="Learning rate of the encoder and middle block (the head's is 1e-3, as the paper).")] = 5e-5,
    batch_size: Annotated[int, typer.Option("--batch", help="Series per step.")] = 10,
    subsets: Annotated[str, typer.Option(help="Label-efficiency subsets (catalog subset_<N> columns) and/or 'all', e.g. 50,100,200,500,all.")] = "",
    decoder: Annotated[Decoder, typer.Option(callback=plain, help="light: the paper's head on the middle block alone; skip: orthodiff's decoder with encoder skip connections.")] = Decoder.light,
    timesteps: Annotated[str, typer.Option(help="Candidate timesteps, e.g. 10,50,100: each is trained, the best validation Dice is kept (default: --timestep).")] = "",
    blocks: Annotated[str, typer.Option(help="Candidate blocks, e.g. mid_0,mid_2 (default: --block).")] = "",
    seed: Seed = 0,
    device: Device = None,
) -> None:
    """Fine-tune encoder + middle block with the paper's light head (0.2 x cross-entropy + soft Dice); test Dice per structure."""
    _segment(store, catalog, plane, "diffusion", out, backbone, timestep, block, epochs, lr, batch_size, subsets, seed, device,
             decoder=decoder, timesteps=split_list(timesteps, "--timesteps", int) or None,
             blocks=split_list(blocks, "--blocks") or None)


@segment_app.command("predict")
def segment_predict(
    run: Annotated[Path, typer.Option(metavar="DIR", help="Run folder written by `segment train` or `baseline segment`.")],
    store: Store,
    catalog: Catalog,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for masks/<series>.nii.gz, biomarkers and agreement.")],
    split: Annotated[str, typer.Option(help="Catalog split to predict.")] = "test",
    device: Device = None,
) -> None:
    """Predict masks as NIfTI on each input series' grid; biomarkers with Bland-Altman agreement."""
    from orthodiff.progress import progress_bar
    from orthodiff.supervised.runs import run_segment_predict
    from orthodiff.tables import frame_table

    with progress_bar(console, "masks", None) as advance:
        table = run_segment_predict(run, store, catalog, out, split, device, progress=advance)
    if table.empty:
        console.print(f"wrote masks to {out / 'masks'}; no reference masks to compare biomarkers with")
    else:
        console.print(frame_table(table, f"Biomarker agreement, predicted vs reference masks ({split}) — {out}", "{:.2f}"))


@baseline_app.command("classify")
def baseline_classify(
    model: Annotated[ClassifierModel, typer.Option(callback=plain, help="The architecture, trained from scratch.")],
    store: Store,
    catalog: Catalog,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Run folder: predictions, metrics, run.json.")],
    planes: Annotated[str, typer.Option(help="Comma-separated planes; exam probabilities are averaged over them.")] = "sagittal,coronal,axial",
    epochs: Epochs = 5,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch", help="Series per step.")] = 4,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (by patient) for 95% CIs.")] = 500,
    seed: Seed = 0,
    device: Device = None,
) -> None:
    """Diagnosis from scratch: one network per plane, test metrics per exam."""
    from orthodiff.progress import progress_bar
    from orthodiff.supervised.runs import run_baseline_classify
    from orthodiff.tables import frame_table

    plane_list = split_list(planes, "--planes", choices=Plane)
    with progress_bar(console, f"{model}, one network per plane: training steps", None) as advance:
        metrics = run_baseline_classify(store, catalog, model, plane_list, out, epochs, lr, batch_size, seed=seed,
                                        n_boot=bootstrap, device=device, progress=advance)
    console.print(frame_table(metrics.drop(columns="note"), f"Test metrics, {model} from scratch — {out}"))


@baseline_app.command("segment")
def baseline_segment(
    model: Annotated[SegmenterModel, typer.Option(callback=plain, help="The architecture (MONAI, 3D), trained from scratch.")],
    plane: Annotated[Plane, typer.Option(callback=plain, help="A plane with masks (knee: sagittal or coronal).")],
    store: Store,
    catalog: Catalog,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Run folder: model, Dice table, overlay PNG.")],
    epochs: Epochs = 5,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    batch_size: Annotated[int, typer.Option("--batch", help="Series per step.")] = 2,
    subsets: Annotated[str, typer.Option(help="Label-efficiency subsets and/or 'all'.")] = "",
    unetr_size: Annotated[UnetrSize, typer.Option(callback=plain, help="UNETR size: paper (hidden 768, 12 heads, MLP 3072) or small (192, 4, 384).")] = UnetrSize.paper,
    seed: Seed = 0,
    device: Device = None,
) -> None:
    """Segmentation from scratch with the same splits and Dice."""
    _segment(store, catalog, plane, model, out, None, 0, "mid_2", epochs, lr, batch_size, subsets, seed, device,
             unetr_size=unetr_size)


def table(
    runs: Annotated[list[Path], typer.Argument(help="Run directories of one task (fuse/baseline classify, or segment).")],
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Also write the table to this Parquet file (and a CSV beside it).")] = None,
) -> None:
    """One comparison table of runs of one task: probe, fine-tuned and baselines side by side."""
    from orthodiff.outputs import write_table
    from orthodiff.supervised.runs import comparison
    from orthodiff.tables import frame_table

    frame = comparison(runs)
    if out:
        write_table(frame, out)
    console.print(frame_table(frame, "Test results side by side"))


def register(app: typer.Typer) -> None:
    app.command()(finetune)
    app.command()(table)
    app.add_typer(segment_app, name="segment")
    app.add_typer(baseline_app, name="baseline")
