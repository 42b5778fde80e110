"""CLI of the evaluation tier: `evaluate seg`, `evaluate prompt` and the fine-tuning grids
`evaluate ablation` and `evaluate mixing`. Registered on the main app by `orthodiff.cli`."""

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
MinPixels = Annotated[int, typer.Option(help="Reference cleaning: drop components under this many pixels per slice (0: off).")]
MinVoxels = Annotated[int, typer.Option(help="Reference cleaning: drop components under this many voxels per volume (0: off).")]
# options of every promptable-model command (prompt, ablation, mixing): one meaning each
Checkpoint = Annotated[Path | None, typer.Option(help="Published weights file (SAM/MedSAM state dict, SAM2 checkpoint); nothing is downloaded.")]
Model = Annotated[PromptModel, typer.Option(callback=plain, help="The promptable model.")]
ImageEncoder = Annotated[Encoder, typer.Option(callback=plain, help="SAM/MedSAM image encoder of the checkpoint.")]
MinSize = Annotated[int, typer.Option(help="Remove connected components smaller than this many pixels per slice.")]
Device = Annotated[str | None, typer.Option(help="torch device (default: CPU).")]
FinetuneEncoder = Annotated[bool, typer.Option(help="Fine-tune the image encoder too.")]
Lr = Annotated[float, typer.Option(help="Fine-tuning learning rate.")]
Window = Annotated[PromptWindow, typer.Option(callback=plain, help="1st-99th percentile window of the volume's non-zero voxels (the paper) or of each slice.")]
Resize = Annotated[Interpolation, typer.Option(callback=plain, help="Resize of each slice to 1024: cubic spline (the paper) or linear.")]
FinetuneRecipe = Annotated[Recipe, typer.Option(callback=plain, help="Fine-tuning: paper (AdamW, warm restarts, early stopping on val, clipping, accumulation) or plain (Adam, cosine).")]
TrainShift = Annotated[int, typer.Option(help="Fine-tuning augmentation: move training box corners by up to this many pixels of 1024 (the paper: 0 or 20).")]
Mix = Annotated[list[Path] | None, typer.Option(help="Another catalog whose train (and val) split joins the fine-tuning (dataset mixing); repeatable.")]
Amp = Annotated[bool | None, typer.Option("--amp/--no-amp", show_default="on for CUDA (the paper's), off on the CPU",
                                          help="Mixed precision while fine-tuning: bfloat16 autocast, or float16 with loss scaling on GPUs without bfloat16.")]


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
    min_pixels: MinPixels = 100,
    min_voxels: MinVoxels = 1000,
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
    checkpoint: Checkpoint = None,
    model: Model = PromptModel.sam,
    encoder: ImageEncoder = Encoder.vit_b,
    prompts: Annotated[PromptSource, typer.Option(callback=plain, help="Box source: reference (the catalog's masks) or masks (--prompt-masks).")] = PromptSource.reference,
    prompt_masks: Annotated[Path | None, typer.Option(help="A `segment predict` run or mask folder whose boxes prompt the model.")] = None,
    shift: Annotated[int, typer.Option(help="Move every box corner by up to this many pixels (robustness to prompts).")] = 0,
    split: Split = "test",
    plane: OnePlane = None,
    min_size: MinSize = 20,
    sam2_config: Annotated[str | None, typer.Option(help="SAM2 only: the sam2 package's config name of the checkpoint.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the box shifts.")] = 0,
    device: Device = None,
    finetune_epochs: Annotated[int, typer.Option(help="SAM/MedSAM: first fine-tune the mask decoder on the train split (Dice + BCE).")] = 0,
    finetune_encoder: FinetuneEncoder = False,
    lr: Lr = 1e-4,
    window: Window = PromptWindow.volume,
    interpolation: Resize = Interpolation.cubic,
    recipe: FinetuneRecipe = Recipe.paper,
    train_shift: TrainShift = 0,
    train_subjects: Annotated[int, typer.Option(help="Fine-tune on at most this many train subjects per catalog, nested (the paper's ablation: 5, 10, 20, 40); 0 for all.")] = 0,
    mix: Mix = None,
    amp: Amp = None,
) -> None:
    """Segment every structure slice by slice with SAM, MedSAM or SAM2 from box prompts."""
    from orthodiff.evaluation.promptable import run_prompt
    from orthodiff.progress import progress_bar

    with progress_bar(console, "slices", None) as advance:
        written = run_prompt(catalog, out, checkpoint, model, encoder, prompts, prompt_masks, shift, split or None, min_size,
                             sam2_config, seed, device, progress=advance, finetune_epochs=finetune_epochs,
                             finetune_encoder=finetune_encoder, lr=lr, plane=plane, window=window,
                             interpolation=interpolation, recipe=recipe, train_shift=train_shift,
                             train_subjects=train_subjects, mix=tuple(mix or ()), amp=amp)
    console.print(f"wrote {written} masks to {out / 'masks'}; evaluate them with `orthodiff evaluate seg {out} ...`")


GridOut = Annotated[Path, typer.Option(metavar="DIR", help="Folder of the grid: points/<scenario>_<size>/ (masks, fine-tuned weights), "
                                                           "scores, summary, notes; a rerun finishes what is missing.")]
Sizes = Annotated[str, typer.Option(help="Training subjects per dataset, comma-separated, nested ('all': every subject).")]
GridEpochs = Annotated[int, typer.Option("--finetune-epochs", help="Fine-tuning epochs at every point (the paper's recipe stops early on a val split).")]
GridSeed = Annotated[int, typer.Option(help="Random seed of the subject order (nested sizes) and the fine-tuning.")]
DatasetBy = Annotated[str, typer.Option(help="Comma-separated catalog columns whose values name a series' dataset.")]


def _grid_options(
    checkpoint: Checkpoint = None,
    model: Model = PromptModel.sam,
    encoder: ImageEncoder = Encoder.vit_b,
    finetune_epochs: GridEpochs = 50,
    finetune_encoder: FinetuneEncoder = False,
    lr: Lr = 1e-4,
    recipe: FinetuneRecipe = Recipe.paper,
    train_shift: TrainShift = 0,
    seed: GridSeed = 0,
    device: Device = None,
    amp: Amp = None,
    window: Window = PromptWindow.volume,
    interpolation: Resize = Interpolation.cubic,
    min_size: MinSize = 20,
    split: Split = "test",
    plane: OnePlane = None,
    dataset_by: DatasetBy = "joint,plane",
    min_pixels: MinPixels = 100,
    min_voxels: MinVoxels = 1000,
):
    """The fine-tuning and scoring settings of every grid point: (`run_prompt` keywords, `Scoring`)."""
    from orthodiff.evaluation.grid import Scoring

    prompt = {"checkpoint": checkpoint, "model": model, "size": encoder, "finetune_epochs": finetune_epochs,
              "finetune_encoder": finetune_encoder, "lr": lr, "recipe": recipe, "train_shift": train_shift, "seed": seed,
              "device": device, "window": window, "interpolation": interpolation, "min_size": min_size, "amp": amp}
    return prompt, Scoring(split or None, plane, dataset_by=tuple(split_list(dataset_by, "--dataset-by")),
                           min_pixels=min_pixels, min_voxels=min_voxels)


def grid_command(name: str):
    """Register `evaluate <name>` with the command's own parameters followed by
    `_grid_options`' (one declaration for both grids), which it receives as `**settings`."""
    import inspect

    def register(command):
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        command.__signature__ = inspect.Signature([*own, *inspect.signature(_grid_options, eval_str=True).parameters.values()])
        command.__annotations__ = {**_grid_options.__annotations__, **command.__annotations__}
        return evaluate_app.command(name)(command)

    return register


def _grid_done(tables, out, what: str) -> None:
    from orthodiff.tables import frame_table

    summary = tables["summary"].pivot_table(index=["scenario", "train_subjects", "train_subjects_n"], columns="catalog",
                                            values="dice", sort=False).reset_index().rename_axis(columns=None)
    console.print(frame_table(summary, f"{what}: mean subject Dice per dataset — {out}"))
    console.print(f"wrote {out / 'scores.csv'} (per structure) and {out / 'summary.csv'}")


@grid_command("ablation")
def ablation(catalog: Catalog, out: GridOut, sizes: Sizes = "5,10,20,40,all", mix: Mix = None, **settings) -> None:
    """Training-set-size ablation: fine-tune SAM/MedSAM on 5, 10, 20, 40 and all subjects (nested), score each."""
    from orthodiff.evaluation.grid import run_ablation
    from orthodiff.options import subset_sizes
    from orthodiff.progress import progress_bar

    prompt, scoring = _grid_options(**settings)
    with progress_bar(console, "steps and slices", None) as advance:
        tables = run_ablation(catalog, out, subset_sizes(sizes, "--sizes"), tuple(mix or ()), scoring, advance, **prompt)
    _grid_done(tables, out, "Training-set-size ablation")


@grid_command("mixing")
def mixing(
    catalogs: Annotated[list[Path], typer.Argument(help="Cohort catalogs, one dataset each (named by its folder).")],
    out: GridOut,
    groupings: Annotated[str, typer.Option(help="Comma-separated scenarios: single, all, tissue, or a catalog column to group by "
                                                "(joint: anatomy; sequence; plane).")] = "single,joint,tissue,sequence,all",
    sizes: Sizes = "all",
    **settings,
) -> None:
    """Dataset mixing: fine-tune on each dataset alone, on groups sharing anatomy, tissue or sequence, and on all."""
    from orthodiff.evaluation.grid import run_mixing
    from orthodiff.options import subset_sizes
    from orthodiff.progress import progress_bar

    prompt, scoring = _grid_options(**settings)
    with progress_bar(console, "steps and slices", None) as advance:
        tables = run_mixing(catalogs, out, split_list(groupings, "--groupings"), subset_sizes(sizes, "--sizes"), scoring,
                            advance, **prompt)
    _grid_done(tables, out, "Dataset mixing")


def register(app: typer.Typer) -> None:
    app.add_typer(evaluate_app, name="evaluate")
