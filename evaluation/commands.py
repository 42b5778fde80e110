"""CLI of the evaluation tier: `evaluate seg` and `evaluate prompt`. Registered on the main
app by `orthodiff.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from orthodiff.options import Encoder, Interpolation, OverlapLevel, Plane, PromptModel, PromptSource, PromptWindow, Recipe, plain, split_list
from orthodiff.tables import make_console

console = make_console()
evaluate_app = typer.Typer(help="Evaluate segmentations: metrics, biomarker agreement, model comparison; promptable models.",
                           no_args_is_help=True)

Catalog = Annotated[Path, typer.Option(help="Cohort catalog (Parquet) with the reference mask_path of every series.")]
Split = Annotated[str, typer.Option(help="Catalog split to evaluate ('' for every series with a reference mask).")]
OnePlane = Annotated[Plane | None, typer.Option(callback=plain, help="Only series of this plane (a `segment predict` run covers its model's plane).")]


@evaluate_app.command("seg")
def seg(
    models: Annotated[list[Path], typer.Argument(help="`segment predict` runs or folders of <series_id>.nii.gz masks; named by folder.")],
    catalog: Catalog,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for the tables, figures and evaluation.html.")],
    split: Split = "test",
    plane: OnePlane = None,
    central: Annotated[int, typer.Option(help="Evaluate only this many central slices (16: what the backbone sees); 0 for all.")] = 0,
    dataset_by: Annotated[str, typer.Option(help="Comma-separated catalog columns whose values name a series' dataset.")] = "joint,plane",
    group: Annotated[str, typer.Option(help="Catalog column of the random intercept in the acquisition model (center, dataset).")] = "center",
    nsd_tolerance: Annotated[float, typer.Option(help="Normalised surface Dice tolerance in mm.")] = 1.0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples (by subject) for non-parametric agreement (the paper: 10,000).")] = 10000,
    seed: Annotated[int, typer.Option(help="Random seed of the bootstrap and imputation.")] = 0,
    overlap_level: Annotated[OverlapLevel, typer.Option(callback=plain, help="Dice and IoU per slice (the paper) or per 3D series, then per subject.")] = OverlapLevel.slice,
    min_pixels: Annotated[int, typer.Option(help="Reference cleaning: drop components under this many pixels per slice (0: off).")] = 100,
    min_voxels: Annotated[int, typer.Option(help="Reference cleaning: drop components under this many voxels per volume (0: off).")] = 1000,
    interactions: Annotated[bool, typer.Option(help="Acquisition x model interactions in the mixed-effects model (the paper's).")] = True,
) -> None:
    """Dice, IoU, HD95, NSD; tiered tables; biomarkers and agreement; Friedman/Wilcoxon; acquisition effects."""
    from orthodiff.evaluation.run import run_evaluate_seg
    from orthodiff.progress import progress_bar
    from orthodiff.tables import frame_table

    with progress_bar(console, "series", None) as advance:
        tables = run_evaluate_seg(models, catalog, out, split or None, central, tuple(split_list(dataset_by, "--dataset-by")), group,
                                  nsd_tolerance, bootstrap, seed, progress=advance, plane=plane,
                                  overlap_level=overlap_level, min_pixels=min_pixels, min_voxels=min_voxels,
                                  interactions=interactions)
    console.print(frame_table(tables["tier_dataset"], f"Subject Dice, IoU, HD95 (mm), NSD by dataset — {out}"))
    from orthodiff.evaluation.biomarkers import CLINICAL

    agreement = tables["agreement"]
    shown = agreement[agreement["biomarker"].str.contains(CLINICAL)]
    columns = ["model", "biomarker", "n", "method", "icc", "icc_low", "icc_high", "icc_a1", "bias", "loa_low", "loa_high"]
    console.print(frame_table(shown.reindex(columns=columns),  # statistics are absent when too few subjects
                              "Biomarker agreement with the reference (thickness, relaxation, disc height, muscle volume); icc: ICC(3,1) or the bootstrap "
                              "mixed-model ratio, icc_a1: absolute agreement ICC(2,1)", "{:.2f}"))
    if not tables["wilcoxon"].empty:
        console.print(frame_table(tables["wilcoxon"], "Pairwise Wilcoxon on subject Dice (Benjamini-Hochberg)", "{:.3g}"))
    console.print(f"wrote {out / 'evaluation.html'}")


@evaluate_app.command("prompt")
def prompt(
    catalog: Catalog,
    out: Annotated[Path, typer.Option(metavar="DIR", help="Folder for masks/<series_id>.nii.gz (like `segment predict`) and run.json.")],
    checkpoint: Annotated[Path | None, typer.Option(help="Published weights file (SAM/MedSAM state dict, SAM2 checkpoint); nothing is downloaded.")] = None,
    model: Annotated[PromptModel, typer.Option(callback=plain, help="The promptable model.")] = PromptModel.sam,
    encoder: Annotated[Encoder, typer.Option(callback=plain, help="SAM/MedSAM image encoder of the checkpoint.")] = Encoder.vit_b,
    prompts: Annotated[PromptSource, typer.Option(callback=plain, help="Box source: reference (the catalog's masks) or masks (--prompt-masks).")] = PromptSource.reference,
    prompt_masks: Annotated[Path | None, typer.Option(help="A `segment predict` run or mask folder whose boxes prompt the model.")] = None,
    shift: Annotated[int, typer.Option(help="Move every box corner by up to this many pixels (robustness to prompts).")] = 0,
    split: Split = "test",
    plane: OnePlane = None,
    min_size: Annotated[int, typer.Option(help="Remove connected components smaller than this many pixels per slice.")] = 20,
    sam2_config: Annotated[str | None, typer.Option(help="SAM2 only: the sam2 package's config name of the checkpoint.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the box shifts.")] = 0,
    device: Annotated[str | None, typer.Option(help="torch device (default: CPU).")] = None,
    finetune_epochs: Annotated[int, typer.Option(help="SAM/MedSAM: first fine-tune the mask decoder on the train split (Dice + BCE).")] = 0,
    finetune_encoder: Annotated[bool, typer.Option(help="Fine-tune the image encoder too.")] = False,
    lr: Annotated[float, typer.Option(help="Fine-tuning learning rate.")] = 1e-4,
    window: Annotated[PromptWindow, typer.Option(callback=plain, help="1st-99th percentile window of the volume's non-zero voxels (the paper) or of each slice.")] = PromptWindow.volume,
    interpolation: Annotated[Interpolation, typer.Option(callback=plain, help="Resize of each slice to 1024: cubic spline (the paper) or linear.")] = Interpolation.cubic,
    recipe: Annotated[Recipe, typer.Option(callback=plain, help="Fine-tuning: paper (AdamW, warm restarts, early stopping on val, clipping, accumulation) or plain (Adam, cosine).")] = Recipe.paper,
    train_shift: Annotated[int, typer.Option(help="Fine-tuning augmentation: move training box corners by up to this many pixels of 1024 (the paper: 0 or 20).")] = 0,
    train_subjects: Annotated[int, typer.Option(help="Fine-tune on at most this many train subjects per catalog, nested (the paper's ablation: 5, 10, 20, 40); 0 for all.")] = 0,
    mix: Annotated[list[Path] | None, typer.Option(help="Another catalog whose train (and val) split joins the fine-tuning (dataset mixing); repeatable.")] = None,
) -> None:
    """Segment every structure slice by slice with SAM, MedSAM or SAM2 from box prompts."""
    from orthodiff.evaluation.promptable import run_prompt
    from orthodiff.progress import progress_bar

    with progress_bar(console, "slices", None) as advance:
        written = run_prompt(catalog, out, checkpoint, model, encoder, prompts, prompt_masks, shift, split or None, min_size,
                             sam2_config, seed, device, progress=advance, finetune_epochs=finetune_epochs,
                             finetune_encoder=finetune_encoder, lr=lr, plane=plane, window=window,
                             interpolation=interpolation, recipe=recipe, train_shift=train_shift,
                             train_subjects=train_subjects, mix=tuple(mix or ()))
    console.print(f"wrote {written} masks to {out / 'masks'}; evaluate them with `orthodiff evaluate seg {out} ...`")


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
