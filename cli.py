"""The `orthodiff` command line."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from orthodiff.errors import OrthodiffError

app = typer.Typer(
    name="orthodiff",
    help="Diffusion features for musculoskeletal MRI: synthesize, ingest, pretrain, extract, probe.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
catalog_app = typer.Typer(help="Cohort catalogs: validate, split, import.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")

console = Console()


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working directory for everything the demo makes.")] = Path(
        "orthodiff-demo"
    ),
) -> None:
    """Run the pipeline end to end on the embedded synthetic cohort."""
    from orthodiff.demo import run_demo

    run_demo(out, console)


@catalog_app.command("validate")
def catalog_validate(
    path: Annotated[Path, typer.Argument(help="Cohort catalog (Parquet).")],
    check_files: Annotated[bool, typer.Option(help="Check that every path and mask_path exists.")] = True,
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
    path: Annotated[Path, typer.Argument(help="Cohort catalog (Parquet), rewritten in place unless --out.")],
    seed: Annotated[int, typer.Option(help="Random seed of the patient-level split.")] = 0,
    val: Annotated[float, typer.Option(help="Fraction of patients in the validation split.")] = 0.06,
    test: Annotated[float, typer.Option(help="Fraction of patients in the test split.")] = 0.12,
    subsets: Annotated[
        str, typer.Option(help="Nested label-efficiency subset sizes in training patients, e.g. 100,500,1000.")
    ] = "",
    out: Annotated[Path | None, typer.Option(help="Write here instead of in place.")] = None,
) -> None:
    """Split a catalog by patient (no leakage) and optionally add nested training subsets."""
    from orthodiff.catalogs.cohort import add_subsets, read_catalog, split_catalog, write_catalog

    df = split_catalog(read_catalog(path), seed=seed, val=val, test=test)
    if subsets.strip():
        try:
            sizes = [int(s) for s in subsets.split(",")]
        except ValueError:
            raise OrthodiffError(f"--subsets {subsets!r}: expected comma-separated integers") from None
        df = add_subsets(df, sizes, seed=seed)
    target = write_catalog(df, out or path)
    counts = df.groupby("split")["patient_id"].nunique().to_dict()
    console.print(f"wrote {target}: patients per split {counts}")


@catalog_app.command("from-mrnet")
def catalog_from_mrnet(
    directory: Annotated[Path, typer.Argument(help="MRNet folder holding train/, valid/ and the label CSVs.")],
    out: Annotated[Path, typer.Option(help="Catalog to write (Parquet).")],
    seed: Annotated[int, typer.Option(help="Seed of the train/val patient split.")] = 0,
    val: Annotated[float, typer.Option(help="Fraction of MRNet train patients held out for validation.")] = 0.06,
) -> None:
    """Build a catalog (task `mrnet`) from the MRNet knee dataset; `valid/` becomes the test split."""
    from orthodiff.catalogs.cohort import validate_catalog, write_catalog
    from orthodiff.catalogs.mrnet import mrnet_catalog

    df = mrnet_catalog(directory, seed=seed, val=val)
    validate_catalog(df, out)
    write_catalog(df, out)
    console.print(f"wrote {out}: {len(df)} series of {df['case_id'].nunique()} MRNet exams")


def main() -> None:
    try:
        app()
    except OrthodiffError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
