"""Bench: do healthy personas reconstruct healthy anatomy? A resumable background job.

    .venv/bin/python bench/experiments/personas_healthy.py --out runs/personas_healthy
    .venv/bin/python bench/experiments/personas_healthy.py --out /tmp/ph --smoke   # minutes: the plumbing only

Stages (each skipped when its output is complete, so a killed run is rerun with the same
command and goes on; the pretraining continues its own checkpoint, `pretrain --resume`):
1. `synth` a knee cohort with a high share of healthy exams (`--healthy-share`);
2. `ingest` its sagittal series (the plane the backbone is trained on) into `store.zarr` at
   32 px, as `orthodiff demo` does with its 64 px series, so the backbone serves the demo's chain;
3. `pretrain --healthy` the sagittal backbone (demo preset, 16 x 32 x 32) on the healthy
   training series for `--pretrain-steps`, checkpoint every `--every` steps;
4. `ingest` the held-out exams to score into `test.zarr`: the first `--test-exams` healthy
   and lesion (ACL, PCL, MM or LM: a structure the residual can localise) test exams;
5. `persona` of those series (central box, RePaint with the healthy backbone);
6. with `--ddpm-steps` > 0: the paper's masked DDPM trained on the same healthy series
   (`persona-models --models ddpm`) and its personas (`persona --model ddpm`);
7. `persona-fidelity` of each persona model: SSIM / MSE inside the box on the healthy test
   exams with 95% CIs beside the mean- and blur-filled box, the localisation score on the
   lesion exams, and `fidelity.png` (image / persona / residual);
8. `results.md`: the tables, the commands, the timings; with `--page`, the same into that docs
   page (between its `<!-- healthy personas -->` markers, the pictures copied to docs/images/).

Every command is printed (`$ orthodiff ...`) before it runs; timings go to `timings.json`.

Cost with the defaults, from short timings on the 2-core machine shared with other jobs
(2026-12-06): pretraining 5.9 s per step of 2 volumes (200 steps: 20 min), the masked DDPM
0.7 s per step of 2 (800 steps: 9 min), RePaint 7.5 s per step for 8 series (16 series x 20
steps: 5 min), DDPM sampling 0.35 s per series and step (16 x 50: 5 min), synth, ingestion
and scoring a few minutes: about 45 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

LESIONS = ("ACL", "PCL", "MM", "LM")  # labels whose structure mask the localisation score uses
PLANE = "sagittal"
INGEST_SIZE = 32  # the demo preset's volumes (16 x 32 x 32), as `orthodiff demo` ingests its 64 px cohort


def arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/personas_healthy"))
    parser.add_argument("--cases", type=int, default=160)
    parser.add_argument("--healthy-share", type=float, default=0.7)
    parser.add_argument("--size", type=int, default=64, help="in-plane size of the synthetic series (the demo's 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=200, help="in total: a rerun with more continues")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--every", type=int, default=50, help="checkpoint every this many steps (what a kill loses)")
    parser.add_argument("--test-exams", type=int, default=8, help="healthy and lesion test exams scored (each)")
    parser.add_argument("--sampling-steps", type=int, default=20)
    parser.add_argument("--jumps", type=int, default=1)
    parser.add_argument("--ddpm-steps", type=int, default=800, help="masked-DDPM training steps (0: no DDPM)")
    parser.add_argument("--ddpm-sampling-steps", type=int, default=50)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--page", type=Path, help="docs page whose healthy-personas section gets the results")
    parser.add_argument("--smoke", action="store_true", help="tiny defaults: checks the plumbing in a few minutes")
    argv = sys.argv[1:] if argv is None else argv
    if "--smoke" in argv:
        parser.set_defaults(cases=12, healthy_share=0.5, pretrain_steps=2, every=1, test_exams=2, sampling_steps=2,
                            ddpm_steps=2, ddpm_sampling_steps=2, bootstrap=50)
    return parser.parse_args(argv)


class Runner:
    """Runs `orthodiff` commands in `out`, printed first, timed into `timings.json`."""

    def __init__(self, out: Path):
        self.out = out
        self.timings_path = out / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.commands_path = out / "commands.json"  # every stage's command, also those of earlier runs
        self.commands = json.loads(self.commands_path.read_text()) if self.commands_path.exists() else {}

    def __call__(self, name: str, *args) -> None:
        args = [str(a) for a in args]
        line = "orthodiff " + shlex.join(args)
        self.commands[name] = line
        self.commands_path.write_text(json.dumps(self.commands, indent=1))
        print(f"$ {line}", flush=True)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "orthodiff", *args], cwd=self.out, check=True)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - start, 1)
        self.timings_path.write_text(json.dumps(self.timings, indent=1))

    def done(self, stage: str) -> bool:
        return (self.out / f".done-{stage}").exists()

    def mark(self, stage: str) -> None:
        (self.out / f".done-{stage}").write_text("")


def plane_catalog(catalog: pd.DataFrame) -> pd.DataFrame:
    return catalog[(catalog.plane == PLANE) & (catalog.scan == 0)]


def test_exams(catalog: pd.DataFrame, n: int) -> pd.DataFrame:
    """The sagittal series of the first `n` healthy and `n` lesion (any of `LESIONS`) test exams."""
    from orthodiff.catalogs.cohort import label_columns

    rows = plane_catalog(catalog)
    rows = rows[rows.split == "test"]
    healthy = rows[(rows[label_columns(catalog)] == 0).all(axis=1)].head(n)
    lesion = rows[(rows[list(LESIONS)] == 1).any(axis=1) & rows.mask_path.notna()].head(n)
    return pd.concat([healthy, lesion])


def written_catalog(df: pd.DataFrame, path: Path) -> Path:
    """`df` as a catalog at `path`, in the cohort folder (its relative paths resolve there)."""
    from orthodiff.catalogs.cohort import write_catalog

    if not path.exists():
        write_catalog(df, path)
    return path


def checkpoint_step(path: Path) -> int:
    """The step a pretraining checkpoint has reached (-1: none yet)."""
    from orthodiff.backbone.checkpoint import read_checkpoint

    return int(read_checkpoint(path).get("step", 0)) if path.exists() else -1


def fidelity_section(folder: Path, title: str, picture: str) -> str:
    rep = pd.read_csv(folder / "fidelity_reproduction.csv")
    loc = pd.read_csv(folder / "fidelity_localisation.csv")
    lines = [f"### {title}", "", "| completion of the box | healthy test series | SSIM (95% CI) | MSE 0-255 (95% CI) |",
             "|---|---|---|---|"]
    for row in rep.itertuples():
        lines.append(f"| {row.completion} | {row.series} | {row.ssim:.3f} ({row.ssim_low:.3f}-{row.ssim_high:.3f}) | "
                     f"{row.mse_255:.0f} ({row.mse_255_low:.0f}-{row.mse_255_high:.0f}) |")
    if len(loc):
        lines += ["", "| lesion | completion | series | localisation score (95% CI; 1 = none) | median |", "|---|---|---|---|---|"]
        for row in loc.itertuples():
            lines.append(f"| {row.label} | {row.completion} | {row.series} | {row.score:.2f} "
                         f"({row.score_low:.2f}-{row.score_high:.2f}) | {row.median:.2f} |")
    lines += ["", f"![image, persona, residual]({picture})", ""]
    return "\n".join(lines)


def replace_section(page: Path, name: str, text: str) -> None:
    """Put `text` between the page's `<!-- name -->` and `<!-- /name -->` markers (added at the end if missing)."""
    content = page.read_text() if page.exists() else ""
    start, stop = f"<!-- {name} -->", f"<!-- /{name} -->"
    if start in content and stop in content:
        head, rest = content.split(start, 1)
        content = head + start + "\n" + text.rstrip() + "\n" + stop + rest.split(stop, 1)[1]
    else:
        content = content.rstrip() + f"\n\n{start}\n{text.rstrip()}\n{stop}\n"
    page.write_text(content)


def main(argv=None) -> None:
    args = arguments(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out)

    if not (out / "cohort" / "catalog.parquet").exists():  # synth writes its catalog last
        run("synth", "synth", "--out", "cohort", "--cases", args.cases, "--size", args.size, "--seed", args.seed,
            "--healthy-share", args.healthy_share)
    from orthodiff.catalogs.cohort import read_catalog

    catalog = read_catalog(out / "cohort" / "catalog.parquet")
    train_catalog = written_catalog(plane_catalog(catalog), out / "cohort" / "sagittal.parquet").relative_to(out)
    score_catalog = written_catalog(test_exams(catalog, args.test_exams), out / "cohort" / "scored.parquet").relative_to(out)

    if not run.done("ingest"):
        run("ingest", "ingest", "--catalog", train_catalog, "--store", "store.zarr", "--size", INGEST_SIZE)
        run.mark("ingest")

    backbone = out / f"healthy_{PLANE}.pt"
    if checkpoint_step(backbone) < args.pretrain_steps:
        run("pretrain", "pretrain", "--plane", PLANE, "--store", "store.zarr", "--out", backbone.name, "--preset", "demo",
            "--steps", args.pretrain_steps, "--batch", args.batch, "--every", args.every, "--lr", args.lr,
            "--seed", args.seed, "--healthy", "--catalog", "cohort/catalog.parquet",
            *(["--resume"] if backbone.exists() else []))

    if not run.done("ingest-test"):
        run("ingest test", "ingest", "--catalog", score_catalog, "--store", "test.zarr", "--size", INGEST_SIZE)
        run.mark("ingest-test")

    from orthodiff.backbone import backbone_id
    from orthodiff.backbone.checkpoint import read_checkpoint

    models = {"repaint": backbone_id(backbone)}  # stages below are keyed by the weights: more steps, new personas
    if not run.done(f"persona-{models['repaint']}"):
        run("persona repaint", "persona", "--plane", PLANE, "--store", "test.zarr", "--backbone", backbone.name,
            "--roi", "box", "--grid", 1, "--sampling-steps", args.sampling_steps, "--jumps", args.jumps,
            "--seed", args.seed)
        run.mark(f"persona-{models['repaint']}")

    if args.ddpm_steps:
        ddpm = out / "ddpm" / f"ddpm_{PLANE}.pt"
        if not run.done(f"ddpm-train-{args.ddpm_steps}"):
            run("ddpm train", "persona-models", "--store", "store.zarr", "--catalog", "cohort/catalog.parquet",
                "--plane", PLANE, "--out", "ddpm", "--models", "ddpm", "--steps", args.ddpm_steps,
                "--sampling-steps", args.ddpm_sampling_steps, "--seed", args.seed)
            run.mark(f"ddpm-train-{args.ddpm_steps}")
        from orthodiff.personas.ddpm import ddpm_id

        models["ddpm"] = ddpm_id(ddpm)
        if not run.done(f"persona-{models['ddpm']}"):
            run("persona ddpm", "persona", "--plane", PLANE, "--store", "test.zarr", "--backbone", "ddpm/" + ddpm.name,
                "--model", "ddpm", "--roi", "box", "--grid", 1, "--sampling-steps", args.ddpm_sampling_steps,
                "--seed", args.seed)
            run.mark(f"persona-{models['ddpm']}")

    sections, page_sections = [], []
    for name, bid in models.items():
        folder = f"fidelity_{name}"
        if not run.done(f"fidelity-{bid}"):
            run(f"fidelity {name}", "persona-fidelity", "--plane", PLANE, "--store", "test.zarr", "--catalog",
                "cohort/catalog.parquet", "--split", "test", "--backbone-id", bid, "--out", folder,
                "--bootstrap", args.bootstrap, "--examples", 3)
            run.mark(f"fidelity-{bid}")
        sections.append(fidelity_section(out / folder, f"{name} personas ({bid})", f"{folder}/fidelity.png"))
        if args.page:
            picture = args.page.resolve().parent.parent / "images" / f"personas_healthy_{name}.png"
            shutil.copyfile(out / folder / "fidelity.png", picture)
            page_sections.append(fidelity_section(out / folder, f"{name} personas ({bid})", f"../images/{picture.name}"))

    healthy_train = (read_checkpoint(backbone).get("healthy") or {}).get("train_series", 0)
    header = [
        "# Healthy personas on a synthetic cohort", "",
        f"{args.cases} knee exams ({args.healthy_share:.0%} healthy), {args.size} px ingested at {INGEST_SIZE}, seed "
        f"{args.seed}; sagittal "
        f"backbone (demo preset) pretrained on {healthy_train} healthy training series for {checkpoint_step(backbone)} "
        f"steps of {args.batch} (lr {args.lr}); personas of the central box with {args.sampling_steps} RePaint steps x "
        f"{args.jumps} jumps" + (f", masked DDPM {args.ddpm_steps} steps, {args.ddpm_sampling_steps} sampling steps"
                                if args.ddpm_steps else "") + ".", "",
        f"Timings (s, the machine as loaded): {json.dumps(run.timings)}", "",
    ]
    commands = ["Commands (run in this folder; `bench/experiments/personas_healthy.py` prints them as it goes):", "",
                "```bash", *run.commands.values(), "```", ""]
    (out / "results.md").write_text("\n".join(header + sections + commands))
    print((out / "results.md").read_text())
    if args.page:
        replace_section(args.page, "healthy personas", "\n".join(header[2:] + page_sections + commands))


if __name__ == "__main__":
    main()
