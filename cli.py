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


def main() -> None:
    try:
        app()
    except OrthodiffError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
