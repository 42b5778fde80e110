"""The MSK evaluation paper's fine-tuning grids: the training-set-size ablation (5, 10, 20,
40 and all subjects per dataset, nested) and dataset mixing (each dataset alone; datasets
grouped by anatomy, tissue type or sequence; all together).

A grid point is one fine-tuning scenario (the datasets trained on together) at one
training-set size. It is run by `promptable.run_prompt` (the fine-tuning loop and its
recipe live there only), once per dataset of the scenario, all sharing one fine-tuned model,
and each dataset's test masks are scored by `run.measure` and `metrics` (the conventions of
`evaluate seg`). A point is finished when its tables are written; a rerun keeps finished
points and finishes the others (`run_prompt` itself keeps finished masks and weights).
Everything lands in one tidy table (point x model x dataset x structure) and a summary.

A dataset is a catalog (named by its folder, or its file name when that is not
`catalog.parquet`). Mixing groups catalogs by the values they have of a catalog column
(`joint`: anatomy; `sequence`; any column) or by the tissue types of their joint's
structures (`tissue`, `catalogs/structures.toml`); a catalog joins every group whose value
it has, and always trains whole. Groupings that would train on the same catalogs as an
earlier scenario (a group of one is `single`; a group of all is `all`) are run once and
named in the notes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from orthodiff.errors import OrthodiffError
from orthodiff.files import safe_name

SIZES = (5, 10, 20, 40, "all")  # the paper's training subjects per dataset
GROUPINGS = ("single", "joint", "tissue", "sequence", "all")  # its mixing scenarios (joint: anatomy)
POINT_KEYS = ["scenario", "mixing", "train_subjects", "train_subjects_n"]


@dataclass(frozen=True)
class Scenario:
    """Catalogs fine-tuned on together and each evaluated; `mixing` is how they were chosen
    (`single`, a grouping such as `joint`, or `all`: the paper's types 1, 2 and 3)."""

    name: str
    mixing: str
    catalogs: tuple[Path, ...]


@dataclass(frozen=True)
class Scoring:
    """How each point's masks are scored (`evaluate seg`'s options of the same names)."""

    split: str = "test"
    plane: str | None = None
    central: int = 0
    dataset_by: tuple[str, ...] = ("joint", "plane")
    nsd_tolerance: float = 1.0
    overlap_level: str = "slice"
    min_pixels: int = 100
    min_voxels: int = 1000


def dataset_name(catalog) -> str:
    """A catalog's dataset name: its folder's name, or its file's stem when the file is not
    called `catalog.parquet` (several catalogs in one folder)."""
    path = Path(catalog).resolve()
    return path.parent.name if path.name == "catalog.parquet" else path.stem


def _names(catalogs) -> dict[str, Path]:
    named = {}
    for catalog in map(Path, catalogs):
        name = safe_name(dataset_name(catalog), f"{catalog}: dataset name")
        if name in named:
            raise OrthodiffError(f"{catalog} and {named[name]} are both dataset {name!r}; datasets are named by their "
                                 "catalog's folder (or file name): rename one")
        named[name] = catalog
    return named


def _values(catalog: Path, grouping: str) -> set[str]:
    """The values `catalog` has of `grouping` (a column, or `tissue`) among its series with a
    reference mask; an absent column gives none."""
    from orthodiff.evaluation.inputs import reference_rows

    rows, structure_set = reference_rows(catalog, None)
    if grouping == "tissue":
        return {s.tissue for s in structure_set.structures if s.tissue}
    if grouping not in rows.columns:
        return set()
    return {str(v) for v in rows[grouping].dropna().unique() if str(v)}


def mixing_scenarios(catalogs, groupings=GROUPINGS) -> tuple[list[Scenario], list[str]]:
    """The scenarios of `groupings` over `catalogs` (`single`: each alone; `all`: together;
    `tissue` or a catalog column: one group per value), in that order, and notes on the
    groupings left out (no catalog has the column, or the same catalogs as an earlier scenario)."""
    named = _names(catalogs)
    scenarios, notes = [], []
    for grouping in groupings:
        if grouping == "single":
            found = [Scenario(f"single_{name}", "single", (path,)) for name, path in named.items()]
        elif grouping == "all":
            found = [Scenario("all", "all", tuple(named.values()))]
        else:
            values = {name: _values(path, grouping) for name, path in named.items()}
            groups = sorted(set().union(*values.values()))
            if not groups:
                notes.append(f"{grouping}: no catalog has a column {grouping!r} (among series with a reference mask)")
            found = [Scenario(safe_name(f"{grouping}_{value}", f"{grouping} value"), grouping,
                              tuple(named[n] for n in named if value in values[n])) for value in groups]
        for scenario in found:
            same = next((s for s in scenarios if set(s.catalogs) == set(scenario.catalogs)), None)
            if same:
                notes.append(f"{scenario.name}: trains on the same datasets as {same.name}; run once, as {same.name}")
            else:
                scenarios.append(scenario)
    if not scenarios:
        raise OrthodiffError(f"no mixing scenario from groupings {list(groupings)}; choose from single, all, tissue or a "
                             "catalog column (joint, sequence, plane)")
    return scenarios, notes


def _size_label(size) -> str:
    if str(size) == "all" or size == 0:
        return "all"
    if int(size) < 1:
        raise OrthodiffError(f"training-set size {size!r}: expected a positive number of subjects or 'all'")
    return str(int(size))


def _train_subjects(catalogs, limit: int, seed: int) -> int:
    """How many subjects a point trains on: up to `limit` per catalog (all of a smaller one)."""
    from orthodiff.evaluation.inputs import reference_rows
    from orthodiff.evaluation.promptable import training_subjects

    total = 0
    for catalog in catalogs:
        try:
            rows, _ = reference_rows(catalog, "train")
        except OrthodiffError:  # no train series with masks: it contributes nothing
            continue
        total += training_subjects(rows, limit, seed)["patient_id"].nunique()
    return total


def _score(model: str, folder: Path, catalog: Path, scoring: Scoring):
    """(label tier, dataset tier, notes) of the masks under `folder` on `catalog`."""
    from orthodiff.evaluation.inputs import Model
    from orthodiff.evaluation.metrics import subject_scores, tiered_tables
    from orthodiff.evaluation.run import measure

    per_series, per_slice, _, notes, _ = measure([Model(model, folder / "masks")], catalog, scoring.split, scoring.central,
                                                 scoring.dataset_by, scoring.nsd_tolerance, None, scoring.plane,
                                                 scoring.min_pixels, scoring.min_voxels)
    tiers = tiered_tables(subject_scores(per_series, per_slice if scoring.overlap_level == "slice" else None))
    return tiers["label"], tiers["dataset"], notes


def _evaluated(catalogs, scoring: Scoring) -> tuple[list[Path], list[str]]:
    """The catalogs with reference masks in `scoring`'s split and plane, and notes on the others."""
    from orthodiff.evaluation.inputs import reference_rows

    keep, notes = [], []
    for catalog in catalogs:
        try:
            reference_rows(catalog, scoring.split, scoring.plane)
        except OrthodiffError as err:
            notes.append(f"{dataset_name(catalog)}: trained on, not evaluated ({err})")
        else:
            keep.append(catalog)
    return keep, notes


def _run_point(folder: Path, scenario: Scenario, size: str, prompt: dict, scoring: Scoring, progress):
    """Fine-tune once on the scenario's catalogs (up to `size` subjects each), segment and
    score each catalog's `scoring.split`; write and return (scores, summary, notes)."""
    from orthodiff.evaluation.promptable import run_prompt
    from orthodiff.outputs import read_table, write_table

    if (folder / "summary.parquet").is_file():
        return tuple(read_table(folder / f"{name}.parquet") for name in ("scores", "summary", "notes"))
    limit = 0 if size == "all" else int(size)
    point = {"scenario": scenario.name, "mixing": scenario.mixing, "train_subjects": size,
             "train_subjects_n": _train_subjects(scenario.catalogs, limit, prompt.get("seed", 0))}
    evaluated, skipped = _evaluated(scenario.catalogs, scoring)
    if not evaluated:
        raise OrthodiffError(f"{scenario.name}: no catalog has series with a reference mask in split {scoring.split!r}"
                             + (f" of plane {scoring.plane!r}" if scoring.plane else "") + " to evaluate on")
    scores, summary, notes = [], [], [pd.DataFrame({"note": skipped}).assign(**point)]
    for catalog in evaluated:  # the first run fine-tunes on every catalog; the others load its weights
        name = dataset_name(catalog)
        run_prompt(catalog, folder / name, split=scoring.split, plane=scoring.plane, train_subjects=limit,
                   mix=tuple(c for c in scenario.catalogs if c != catalog), finetuned=folder / "sam_finetuned.pt",
                   progress=progress, **prompt)
        label, dataset, why = _score(prompt.get("model", "sam"), folder / name, catalog, scoring)
        scores.append(label.assign(catalog=name, **point))
        summary.append(dataset.assign(catalog=name, **point))
        notes.append(why.assign(catalog=name, **point))
    first = POINT_KEYS + ["model", "catalog"]
    scores, summary, notes = (pd.concat(t, ignore_index=True) for t in (scores, summary, notes))
    scores, summary, notes = (t[first + [c for c in t.columns if c not in first]] if "model" in t else t
                              for t in (scores, summary, notes))
    for name, table in (("scores", scores), ("notes", notes), ("summary", summary)):  # summary last: it marks the point done
        write_table(table, folder / name)
    return scores, summary, notes


def _same_settings(out: Path, record: dict) -> None:
    """Refuse to resume a grid whose folder holds other settings (the sizes and scenarios
    may grow, and the device may change; what each point means may not)."""
    from orthodiff.outputs import portable, read_run, resolved

    if not (out / "run.json").is_file():
        return
    before = read_run(out, (record["kind"],), f"a {record['kind']} folder")
    now = json.loads(json.dumps(resolved(portable(record, out), out)))
    for record_ in (before, now):
        record_.get("config", {}).pop("device", None)
    for key in ("catalogs", "config", "scoring"):
        if before.get(key) != now.get(key):
            raise OrthodiffError(f"{out}: holds a {record['kind']} run with other {key} ({before.get(key)}); resume it with "
                                 "the same settings, or choose another --out")


PROMPT_FIXED = ("catalog_path", "out", "split", "plane", "train_subjects", "mix", "finetuned", "progress", "predictor", "sam")


def run_grid(kind: str, scenarios: list[Scenario], sizes, out, scoring: Scoring = Scoring(), progress=None, notes=(),
             **prompt) -> dict[str, pd.DataFrame]:
    """Every (scenario, size) point under `out/points/<scenario>_<size>/`, then `scores`
    (per point, model, dataset and structure: Dice, IoU, HD95, NSD, Dice SD, subjects),
    `summary` (per point, model and dataset) and `notes`, Parquet + CSV, and `run.json`.
    `prompt` holds `run_prompt`'s fine-tuning and segmentation settings (checkpoint, model,
    size, finetune_epochs >= 1, recipe, ...); the grid sets the rest."""
    from orthodiff.outputs import write_run, write_table

    fixed = sorted(set(prompt) & set(PROMPT_FIXED))
    if fixed:
        raise OrthodiffError(f"{kind}: {fixed[0]} is set by the grid, not by the caller")
    if not prompt.get("finetune_epochs"):
        raise OrthodiffError(f"{kind} fine-tunes at every point: give --finetune-epochs (1 or more)")
    if prompt.get("model", "sam") not in ("sam", "medsam"):
        raise OrthodiffError(f"{kind}: fine-tuning is for SAM and MedSAM, not {prompt.get('model')!r}")
    labels = list(dict.fromkeys(_size_label(s) for s in sizes))
    if not labels:
        raise OrthodiffError(f"{kind}: no training-set sizes; give e.g. 5,10,20,40,all")
    out = Path(out)
    catalogs = list(dict.fromkeys(str(c) for s in scenarios for c in s.catalogs))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in prompt.items()}
    record = {"kind": kind, "catalogs": catalogs, "config": config,
              "scoring": {**asdict(scoring), "dataset_by": list(scoring.dataset_by)}}
    _same_settings(out, record)
    parts = []
    for scenario in scenarios:
        for size in labels:
            folder = out / "points" / f"{scenario.name}_{size}"
            parts.append(_run_point(folder, scenario, size, prompt, scoring, progress))
    scores, summary, point_notes = (pd.concat(t, ignore_index=True) for t in zip(*parts))
    notes = pd.concat([pd.DataFrame({"note": list(notes)}), point_notes], ignore_index=True)
    tables = {"scores": scores, "summary": summary, "notes": notes}
    for name, table in tables.items():
        write_table(table, out / name)
    write_run({**record, "scenarios": [s.name for s in scenarios], "sizes": labels}, out)
    return tables


def run_ablation(catalog, out, sizes=SIZES, mix=(), scoring: Scoring = Scoring(), progress=None, **prompt):
    """The training-set-size ablation: fine-tune on `sizes` subjects (nested, the same seeded
    order at every size) of `catalog`'s train split and of each `mix` catalog's (a catalog
    with fewer gives all it has), evaluate on `scoring.split` of each; `run_grid`'s tables."""
    named = _names([catalog, *mix])
    scenario = Scenario(f"{'mixed' if mix else 'single'}_{next(iter(named))}", "mixed" if mix else "single",
                        tuple(named.values()))
    return run_grid("ablation", [scenario], sizes, out, scoring, progress, **prompt)


def run_mixing(catalogs, out, groupings=GROUPINGS, sizes=("all",), scoring: Scoring = Scoring(), progress=None, **prompt):
    """Dataset mixing: every scenario of `groupings` over `catalogs` (`mixing_scenarios`),
    each at every training-set size of `sizes` (the paper ablates sizes within each
    scenario too), evaluated on each of its catalogs; `run_grid`'s tables."""
    scenarios, notes = mixing_scenarios(catalogs, groupings)
    return run_grid("mixing", scenarios, sizes, out, scoring, progress, notes, **prompt)
