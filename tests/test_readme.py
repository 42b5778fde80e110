"""The heads commands the demo prints (in the sweeps guide, docs/guides/sweeps-fusion.md) and
the README's store snippet, run as written on a small folder laid out like the one
`orthodiff demo` leaves; they reproduce what the demo's step 5 computes; the demo's rerun
reuses its runs; the HTML report tells the story in order; a changed split is refused.
The guides' other blocks run in tests/test_docs.py on folders they make themselves."""

import json
import re
import shlex
import time
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from helpers import random_checkpoint
from orthodiff.catalogs.synth import synthesize
from orthodiff.catalogs.tasks import PLANES
from orthodiff.cli import app
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.ingest import ingest
from orthodiff.demo import POOLING, TEST, VAL
from orthodiff.heads.pipeline import SMALL_COHORT_FUSION, SMALL_COHORT_PROBE, settings_flags, heads_commands, run_heads

# Every test here needs the demo-like folder (synthesis, ingestion, extraction, heads runs).
pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[1] / "README.md"
GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "sweeps-fusion.md"
# The guide's settings are the demo's (100 fusion epochs); the test swaps in short ones.
FAST_PROBE = {"epochs": 2, "lr": 3e-3, "batch_size": 16, "weight_decay": 1e-2}
FAST_FUSION = {"epochs": 2, "lr": 3e-3, "batch_size": 16, "weight_decay": 1e-2}


def guide_block(heading: str) -> list[str]:
    """The lines of the first bash block under the guide's ``## heading``, continuations joined."""
    section = GUIDE.read_text().split(f"## {heading}\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """orthodiff-demo/ in miniature: 120 exams split as the demo's (72 training patients),
    random demo-preset backbones, one (timestep, block) per plane."""
    root = tmp_path_factory.mktemp("readme")
    demo = root / "orthodiff-demo"
    catalog = synthesize("knee", 120, 32, 0, demo / "cohort", progress=False, workers=1, val=VAL, test=TEST)
    store = str(demo / "store.zarr")
    ingest(catalog, store, size=32, progress=False)
    for plane in PLANES:
        checkpoint = random_checkpoint(demo / "backbones" / f"{plane}.pt", plane, seed=1)
        extract(store, checkpoint, plane, (50,), ("mid_2",), series_batch=16, progress=False)
    return root


@pytest.fixture(scope="module")
def readme_runs(demo_folder):
    """Every line of the guide's block for the demo's folder through the CLI, in the folder's parent."""
    import os

    lines = guide_block("On the demo's folder")
    probe, fusion = settings_flags(SMALL_COHORT_PROBE), settings_flags(SMALL_COHORT_FUSION)
    outputs = []
    cwd = os.getcwd()
    os.chdir(demo_folder)
    try:
        for line in lines:
            line = line.replace(probe, settings_flags(FAST_PROBE)) if " sweep " in line else line.replace(fusion, settings_flags(FAST_FUSION))
            args = shlex.split(line)
            assert args[0] == "orthodiff", line
            result = CliRunner().invoke(app, args[1:])
            assert result.exit_code == 0, f"{line}\n{result.output}{result.exception!r}"
            outputs.append(result.output)
    finally:
        os.chdir(cwd)
    return demo_folder / "runs", lines, outputs


def test_guide_heads_block_is_what_the_demo_prints(readme_runs):
    _, lines, _ = readme_runs
    printed = heads_commands(Path("orthodiff-demo/store.zarr"), Path("orthodiff-demo/cohort/catalog.parquet"), Path("runs"),
                             SMALL_COHORT_PROBE, SMALL_COHORT_FUSION, POOLING)
    steps = [line for line in lines if line.split()[1] in ("sweep", "select", "fuse")]
    assert len(steps) == 4 and all(line in printed for line in steps)


def test_guide_commands_reproduce_the_demo_and_rerun_reuses(readme_runs, demo_folder):
    runs, _, outputs = readme_runs
    demo = demo_folder / "orthodiff-demo"
    console = Console(record=True, width=200)
    run_heads(str(demo / "store.zarr"), demo / "cohort" / "catalog.parquet", demo / "heads", console, pooling=POOLING,
              probe_params=FAST_PROBE, fusion_params=FAST_FUSION, n_boot=500)
    for name in ("mpae_ehr", "concat"):  # same split, features and settings: same numbers
        pd.testing.assert_frame_equal(pd.read_parquet(demo / "heads" / name / "metrics.parquet"),
                                      pd.read_parquet(runs / name / "metrics.parquet"))
    assert json.loads((runs / "config.json").read_text())["planes"] == json.loads((demo / "heads" / "config.json").read_text())["planes"]
    curves = pd.read_parquet(runs / "efficiency" / "efficiency.parquet")
    catalog = pd.read_parquet(demo / "cohort" / "catalog.parquet")
    training = catalog.loc[catalog["split"] == "train", "patient_id"].nunique()
    assert training == 72  # 60% of 120, the demo's training share
    assert curves["patients"].tolist() == [25, 25, 50, 50, training, training]

    stamp = (demo / "heads" / "mpae" / "metrics.parquet").stat().st_mtime_ns
    start = time.perf_counter()
    console = Console(record=True, width=200)
    again = run_heads(str(demo / "store.zarr"), demo / "cohort" / "catalog.parquet", demo / "heads", console,
                      pooling=POOLING, probe_params=FAST_PROBE, fusion_params=FAST_FUSION, n_boot=500)
    assert "reused 5 complete fusion runs" in console.export_text()
    assert (demo / "heads" / "mpae" / "metrics.parquet").stat().st_mtime_ns == stamp
    assert time.perf_counter() - start < 60
    assert set(again["run"]) == {"concat", "concat_ehr", "mpae", "mpae_ehr", "lightgbm"}
    assert (again["exams_left_out"] == 1).all() and again["low_support"].str.contains("PD").all()


def test_report_overview_first_with_curves_and_links(readme_runs):
    runs, _, _ = readme_runs
    page = (runs / "report.html").read_text()
    order = [page.index(f"<h2>{title}</h2>") for title in
             ("Overview", "ROC and precision-recall curves", "Per-label results", "Subgroups",
              "Sweep and selection (validation split)", "Label efficiency", "All files")]
    assert order == sorted(order)
    overview = page[order[0]:order[1]]
    for expected in ("<h3>Cohort</h3>", "<h3>Configuration</h3>", "<h3>Test results</h3>", "95% CI",
                     "<h3>Method comparisons</h3>", "p (permutation)", "mpae_ehr", "concat", "CF1", "exams left out"):
        assert expected in overview, expected
    assert page.count("<details>") == 3  # two runs' subgroups + the selection table, collapsed
    assert page.count("alt='ROC curves per label'") == 1 and page.count("alt='precision-recall curves per label'") == 1
    files = [p for p in runs.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "report.html"]
    links = re.findall(r"<a href='([^']+)'>", page.split("<h2>All files</h2>")[1])
    assert sorted(links) == sorted(f"./{p.relative_to(runs).as_posix()}" for p in files)  # ./-relative: never a scheme
    assert "low support" in page  # the tiny cohort has labels with a handful of test positives


def test_a_changed_split_is_refused(readme_runs, tmp_path):
    runs, _, _ = readme_runs
    demo = runs.parent / "orthodiff-demo"
    resplit = tmp_path / "catalog.parquet"
    result = CliRunner().invoke(app, ["catalog", "split", str(demo / "cohort" / "catalog.parquet"), "--seed", "3",
                                      "--val", "0.15", "--test", "0.2", "--out", str(resplit)])
    assert result.exit_code == 0 and "moved to another split" in result.output
    result = CliRunner().invoke(app, ["fuse", "--config", str(runs / "config.json"), "--catalog", str(resplit),
                                      "--out", str(tmp_path / "fuse")])
    assert "made under another train/val/test split" in str(result.exception)
    assert not (tmp_path / "fuse").exists()


def readme_python_blocks() -> list[str]:
    """Every ```python block of the README, as written."""
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_store_snippet_runs_as_written(demo_folder, monkeypatch, capsys):
    """The README's reading block, run unchanged beside orthodiff-demo/ (the heads snippet runs
    in tests/test_estimators.py); what it builds holds the stored values."""
    import numpy as np
    import xarray as xr

    blocks = [b for b in readme_python_blocks() if "orthodiff.heads" not in b]
    assert len(blocks) == 1 and "open_store" in blocks[0]
    monkeypatch.chdir(demo_folder)
    names: dict = {"__name__": "__readme__"}
    exec(compile(blocks[0], "README.md", "exec"), names)
    tree, axial, catalog = names["tree"], names["axial"], pd.read_parquet(demo_folder / "orthodiff-demo/cohort/catalog.parquet")
    assert "/axial" in capsys.readouterr().out and "axial" in tree["features"][names["bid"]].children
    assert set(axial.series.values) == set(catalog.loc[catalog.plane == "axial", "series_id"])
    assert names["case"].sizes["series"] == len(catalog[(catalog.case_id == "P00017-1") & (catalog.plane == "axial")]) > 0
    np.testing.assert_array_equal(names["slab"].values, names["plain"].activation.sel(timestep=50, block="mid_2").values)
    table = names["table"]
    assert table.shape == (axial.sizes["series"], axial.sizes["channel"] + 3)
    expected = catalog.set_index("series_id").loc[table.index, ["split", "ACL", "age"]]
    for column in ("split", "ACL", "age"):  # the catalog's values on each series
        np.testing.assert_array_equal(table[column].to_numpy(), expected[column].to_numpy(), err_msg=column)
    flat = names["flat"]
    assert flat.sizes["series"] == len(catalog) and sorted(set(flat.plane.values)) == sorted(PLANES)
    xr.testing.assert_equal(flat.gap.sel(series=axial.series.values).drop_vars("plane"), axial.gap.drop_vars("plane"))
