"""Task catalogs and cohort catalog validation/splitting (the dataset importers: test_datasets.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from orthodiff.catalogs import ehr_schema, get_task, structures, tasks
from orthodiff.catalogs.cohort import (
    add_subsets,
    cohort_summary,
    read_catalog,
    split_catalog,
    validate_catalog,
    write_catalog,
)
from orthodiff.errors import OrthodiffError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orthodiff", *args], capture_output=True, text=True, timeout=120
    )


def make_catalog(tmp_path, n_patients: int = 10) -> pd.DataFrame:
    """A small valid knee catalog whose series files exist (empty placeholders)."""
    rows = []
    for p in range(n_patients):
        case = f"P{p:03d}-1"
        for plane in ("sagittal", "coronal", "axial"):
            series = f"{case}-{plane}-0"
            (tmp_path / f"{series}.nii").write_bytes(b"")
            rows.append(
                {
                    "series_id": series, "case_id": case, "patient_id": f"P{p:03d}",
                    "task": "knee", "joint": "knee", "plane": plane, "scan": 0,
                    "path": f"{series}.nii", "mask_path": None, "center": "A", "vendor": "GE",
                    "field_strength": 3.0, "slice_thickness": 3.5, "split": "train",
                    **{label: p % 2 for label in get_task("knee").label_columns},
                    "age": 20.0 + p % 60, "height": 175.0, "weight": np.nan,
                    "sex": "M", "athlete": None, "injury_event": "sports",
                }
            )
    return pd.DataFrame(rows)


def test_task_catalogs_hold_the_paper_label_sets():
    assert get_task("knee").label_columns == ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
    assert get_task("ankle").label_columns == ["ATFL", "CFL", "ATR", "OLT"]
    assert len(get_task("shoulder").labels) == 7
    assert get_task("mrnet").joint == "knee"
    assert {t.joint for t in tasks().values()} == {"knee", "ankle", "shoulder", "spine", "thigh"}  # spine, thigh: the evaluation phantoms
    knee = structures("knee")
    assert [s.tissue for s in structures("spine").structures] == ["bone"] + ["disc"] * 4
    assert knee.values == list(range(1, 12))
    assert knee.mask_planes == ("sagittal", "coronal")
    ehr = ehr_schema()
    assert len(ehr.categorical["injury_event"]["classes"]) == 8
    assert ehr.columns == ["age", "height", "weight", "sex", "athlete", "injury_event"]
    with pytest.raises(KeyError, match="unknown task 'elbow'"):
        get_task("elbow")


def test_valid_catalog_passes_and_round_trips(tmp_path):
    df = make_catalog(tmp_path)
    path = write_catalog(df, tmp_path / "catalog.parquet")
    back = read_catalog(path)
    validate_catalog(back, path)
    pd.testing.assert_frame_equal(back, df)


@pytest.mark.parametrize(
    ("row", "column", "value", "message"),
    [
        (4, "joint", "elbow", "row 4, column 'joint', value 'elbow': unknown joint"),
        (2, "plane", "oblique", "row 2, column 'plane', value 'oblique': unknown plane"),
        (5, "ACL", 2, "row 5, column 'ACL', value 2: label must be 0 or 1"),
        (7, "MM", np.nan, "row 7, column 'MM', value nan: label must be 0 or 1"),
        (3, "path", "nowhere.nii", "row 3, column 'path', value 'nowhere.nii': file not found"),
        (1, "age", "forty", "row 1, column 'age', value 'forty': not a number"),
        (6, "split", "holdout", "row 6, column 'split', value 'holdout': unknown split"),
    ],
)
def test_validate_names_row_column_and_value(tmp_path, row, column, value, message):
    df = make_catalog(tmp_path)
    if column in ("age", "MM"):
        df[column] = df[column].astype(object)
    df.at[row, column] = value
    with pytest.raises(OrthodiffError) as err:
        validate_catalog(df, tmp_path / "catalog.parquet")
    assert message in str(err.value)


def test_validate_rejects_duplicates_and_leakage(tmp_path):
    df = make_catalog(tmp_path)
    dup = df.copy()
    dup.at[4, "plane"] = "sagittal"  # second sagittal scan 0 of case P001-1
    with pytest.raises(OrthodiffError, match=r"row 4, column 'scan'.*duplicate \(case, plane, scan\)"):
        validate_catalog(dup, tmp_path / "c.parquet")
    leak = make_catalog(tmp_path)
    leak.loc[leak["patient_id"] == "P002", "split"] = "test"
    leak.at[8, "split"] = "train"  # one of P002's series stays in train
    with pytest.raises(OrthodiffError, match=r"patient 'P002' is also in split .*leakage"):
        validate_catalog(leak, tmp_path / "c.parquet")


def test_split_is_by_patient_and_deterministic(tmp_path):
    df = make_catalog(tmp_path, n_patients=200)
    out = split_catalog(df, seed=3, val=0.06, test=0.12)
    assert out.groupby("patient_id")["split"].nunique().max() == 1
    per_split = out.groupby("split")["patient_id"].nunique()
    assert (per_split["val"], per_split["test"], per_split["train"]) == (12, 24, 164)
    assert out["split"].equals(split_catalog(df, seed=3)["split"])
    assert not out["split"].equals(split_catalog(df, seed=4)["split"])
    validate_catalog(out, tmp_path / "c.parquet")


def test_subsets_are_nested_patient_sets_of_the_training_split(tmp_path):
    df = split_catalog(make_catalog(tmp_path, n_patients=120), seed=0)
    out = add_subsets(df, [10, 50, 25], seed=1)
    previous: set[str] = set()
    for n in (10, 25, 50):
        patients = set(out.loc[out[f"subset_{n}"], "patient_id"])
        assert len(patients) == n
        assert previous <= patients
        assert set(out.loc[out[f"subset_{n}"], "split"]) == {"train"}
        # whole patients: every series of a chosen patient is in the subset
        assert out.loc[out["patient_id"].isin(patients), f"subset_{n}"].all()
        previous = patients
    with pytest.raises(OrthodiffError, match="exceeds the"):
        add_subsets(df, [10_000])


def test_cli_validate_reports_one_line_and_exit_code_2(tmp_path):
    df = make_catalog(tmp_path)
    df.at[0, "plane"] = "oblique"
    path = write_catalog(df, tmp_path / "catalog.parquet")
    result = run_cli("catalog", "validate", str(path))
    assert result.returncode == 2
    assert "row 0, column 'plane', value 'oblique'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_split_with_subsets(tmp_path):
    path = write_catalog(make_catalog(tmp_path, n_patients=60), tmp_path / "catalog.parquet")
    before = path.read_bytes()
    result = run_cli("catalog", "split", str(path), "--seed", "1", "--subsets", "5,20")
    assert result.returncode == 0, result.stderr
    assert path.read_bytes() == before  # a new catalog by default: stores made under the old split stay valid
    split = tmp_path / "catalog.split.parquet"
    df = read_catalog(split)
    assert {"subset_5", "subset_20"} <= set(df.columns)
    assert df.groupby("patient_id")["split"].nunique().max() == 1
    assert run_cli("catalog", "validate", str(split)).returncode == 0


def test_cohort_summary_counts_exams_not_series(tmp_path):
    df = make_catalog(tmp_path, n_patients=10)
    df.loc[df["patient_id"].isin(["P000", "P001"]), "center"] = "B"
    df.loc[df["patient_id"] == "P000", "field_strength"] = 1.5
    repeat = df[(df["case_id"] == "P002-1") & (df["plane"] == "axial")].assign(scan=1, series_id="P002-1-axial-1")
    df = pd.concat([df[~((df["case_id"] == "P003-1") & (df["plane"] == "coronal"))], repeat])

    summary = cohort_summary(df)

    labels = summary["labels"].set_index("label")
    assert labels.loc["ACL", "exams"] == 10 and labels.loc["ACL", "positive"] == 5
    assert labels.loc["ACL", "prevalence"] == pytest.approx(0.5)
    sites = summary["sites"].set_index("center")
    assert sites.loc["B", "1.5T"] == 1 and sites.loc["B", "3T"] == 1 and sites.loc["A", "exams"] == 8
    planes = summary["planes"].set_index("plane")
    assert planes.loc["axial", "scan_1"] == 1 and planes.loc["coronal", "exams_missing"] == 1


UNSAFE_IDS = ["../../elsewhere/x", "/abs/x", "a\\b", "c:x", ".", "..", "CON", "nul.txt", "com1", "a\x00b", "tab\tx",
              "trailing.", "x" * 201]


@pytest.mark.parametrize("column", ["series_id", "case_id", "patient_id"])
@pytest.mark.parametrize("value", UNSAFE_IDS)
def test_ids_that_cannot_name_a_file_are_refused(tmp_path, column, value):
    """Ids become file names (`<out>/masks/<series_id>.nii.gz`): traversal, absolute paths,
    separators, NUL, `.`/`..` and Windows device names (Microsoft's "Naming Files, Paths, and
    Namespaces") are refused by `catalog validate` and by every command reading the catalog."""
    df = make_catalog(tmp_path)
    df.loc[df[column] == df.at[3, column], column] = value  # the whole patient/case, so no other check fires first
    with pytest.raises(OrthodiffError, match=rf"row 3, column '{column}'.*cannot name a file"):
        validate_catalog(df, tmp_path / "c.parquet")
    df.to_parquet(tmp_path / "c.parquet")
    with pytest.raises(OrthodiffError, match=rf"row 3, column '{column}'.*cannot name a file"):
        read_catalog(tmp_path / "c.parquet")


def test_empty_id_is_refused(tmp_path):
    df = make_catalog(tmp_path)
    df.at[2, "series_id"] = ""
    with pytest.raises(OrthodiffError, match=r"row 2, column 'series_id', value '': empty value"):
        validate_catalog(df, tmp_path / "c.parquet")
    from orthodiff.files import series_file

    with pytest.raises(OrthodiffError, match="cannot name a file"):
        series_file(tmp_path, "")


@pytest.mark.parametrize("command", [
    ["segment", "predict", "--run", "run", "--store", "s.zarr", "--out", "out", "--catalog"],
    ["evaluate", "prompt", "--out", "out", "--catalog"],
    ["evaluate", "seg", ".", "--out", "eval", "--catalog"],
])
def test_commands_writing_per_series_files_refuse_a_traversal_id(tmp_path, command, monkeypatch):
    from typer.testing import CliRunner

    from orthodiff.cli import app

    df = make_catalog(tmp_path)
    df.at[0, "series_id"] = "../../elsewhere/x"
    df.at[0, "mask_path"] = "P000-1-sagittal-0.nii"
    df.to_parquet(tmp_path / "c.parquet")
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.parent.rglob("*"))
    result = CliRunner().invoke(app, [*command, str(tmp_path / "c.parquet")])
    assert isinstance(result.exception, OrthodiffError)
    assert "row 0, column 'series_id', value '../../elsewhere/x': cannot name a file" in str(result.exception)
    assert set(tmp_path.parent.rglob("*")) == before  # nothing written, not even an empty output folder


def test_catalog_validate_refuses_a_traversal_id_in_one_line(tmp_path):
    df = make_catalog(tmp_path)
    df.at[0, "series_id"] = "../../elsewhere/x"
    df.to_parquet(tmp_path / "c.parquet")
    result = run_cli("catalog", "validate", str(tmp_path / "c.parquet"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "row 0, column 'series_id', value '../../elsewhere/x': cannot name a file (contains '/')" in result.stderr
