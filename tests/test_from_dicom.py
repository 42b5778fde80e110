"""`catalog from-dicom` on a generated PACS export (`catalogs.pacs_export`).

Formats as the DICOM standard defines them (https://dicom.nema.org/medical/dicom/current/):
the file format and DICOMDIR in PS3.10, SOP classes (MR Image, Basic Text SR, Media Storage
Directory) in PS3.4, ImageType, EchoNumbers and the image plane attributes in PS3.3
C.7.6.1, C.8.3.1 and C.7.6.2, transfer syntaxes (JPEG-LS, encapsulated pixel data) in PS3.5
section 8 and annex A; what must not leave a de-identified output follows PS3.15 annex E.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from orthodiff.catalogs.cohort import read_catalog, validate_catalog
from orthodiff.catalogs.dicom_archive import read_salt, scan_archive
from orthodiff.catalogs.pacs_export import write_pacs_export
from orthodiff.cli import app
from orthodiff.errors import OrthodiffError

EXPECTED_REJECTS = {  # reason -> files, as `write_pacs_export` plants them in its first exam
    "derived": 16, "localizer": 9, "missing_slices": 16, "no_decoder": 16, "too_few_slices": 8,
    "non_image": 2, "not_dicom": 2, "unreadable": 1,
}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("pacs") / "archive"
    return root, write_pacs_export(root, exams=2, slices=16, size=32)


@pytest.fixture()
def no_jpeg_ls(monkeypatch):
    """The JPEG-LS series must find no decoder: true unless a plugin is installed, then simulated."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        from orthodiff.catalogs import dicom_archive

        real = dicom_archive._decoder_missing
        monkeypatch.setattr(dicom_archive, "_decoder_missing",
                            lambda uid: "JPEG-LS: install pylibjpeg + pylibjpeg-libjpeg" if uid == JPEGLSLossless else real(uid))


def run(*args: str):
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result


def test_from_dicom_keeps_exactly_the_usable_series_and_names_every_reject(archive, tmp_path, no_jpeg_ls):
    root, made = archive
    out = tmp_path / "cohort" / "catalog.parquet"
    result = run("catalog", "from-dicom", root, "--out", out, "--salt-file", tmp_path / "keys" / "salt")
    assert result.exit_code == 0, result.output
    df = read_catalog(out)
    validate_catalog(df, out)
    assert run("catalog", "validate", out).exit_code == 0

    # per exam: the three interleaved series and the two echoes of the dual-echo sagittal series
    assert len(df) == 10 and df["case_id"].nunique() == 2 and df["patient_id"].nunique() == 2
    for _, exam in df.groupby("case_id"):
        assert exam["plane"].value_counts().to_dict() == {"sagittal": 3, "coronal": 1, "axial": 1}
        assert sorted(exam.loc[exam["plane"] == "sagittal", "echo_time"]) == [12.0, 30.0, 80.0]
        assert exam["scan"].tolist() == exam.groupby("plane").cumcount().tolist()
        assert exam["fat_suppression"].tolist() == (exam["plane"] == "coronal").tolist()
        assert exam["laterality"].nunique() == 1
    assert set(df["laterality"]) == {"L", "R"}
    assert (df["slices"] == 16).all() and np.allclose(df["slice_spacing"], 3.0) and np.allclose(df["pixel_spacing"], 0.5)
    assert (df["field_strength"] == 3.0).all() and (df["vendor"] == "SIEMENS").all()

    rejects = pd.read_parquet(out.with_name("catalog.rejects.parquet"))
    assert rejects.groupby("reason")["files"].sum().to_dict() == EXPECTED_REJECTS
    assert pd.read_csv(out.with_name("catalog.rejects.csv"))["reason"].tolist() == rejects["reason"].tolist()
    assert "pylibjpeg-libjpeg" in rejects.loc[rejects["reason"] == "no_decoder", "detail"].iloc[0]
    assert set(rejects.loc[rejects["reason"] == "non_image", "detail"]) == {"Basic Text SR Storage", "Media Storage Directory Storage"}
    assert rejects.loc[rejects["reason"] == "unreadable", "detail"].iloc[0] == "truncated pixel data"
    assert df["slices"].sum() + rejects["files"].sum() == made["files"]  # every file accounted for
    for reason, files in EXPECTED_REJECTS.items():
        assert f"rejected {reason}: {files} files" in result.output

    # ingest reads each series through its manifest, although three share one folder
    from orthodiff.featurestore.ingest import ingest
    from orthodiff.featurestore.volumes import open_volumes

    log = ingest(out, str(tmp_path / "store.zarr"), size=16, progress=False)
    assert (log["status"] == "ingested").all() and len(log) == 10
    assert sorted(open_volumes(str(tmp_path / "store.zarr"))["series"].values) == sorted(df["series_id"])

    # no identifier of the headers in any byte written (catalog, rejects, manifests, store) or printed
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "keys" not in p.parts]
    texts = [p.read_bytes() for p in written] + [result.output.encode()]
    texts += [pd.read_parquet(p).to_csv().encode() for p in written if p.suffix == ".parquet"]
    for identifier in made["identifiers"]:
        assert not [t for t in texts if identifier.encode() in t], identifier


def test_pseudonyms_are_stable_per_salt_and_the_salt_file_is_private(archive, tmp_path, no_jpeg_ls):
    root, _ = archive
    salt_file = tmp_path / "salt"
    first = scan_archive(root, read_salt(salt_file)).catalog
    assert oct(salt_file.stat().st_mode & 0o777) == "0o600"
    again = scan_archive(root, read_salt(salt_file), workers=2).catalog
    pd.testing.assert_frame_equal(first, again)  # the same salt gives the same ids, with any number of workers
    (tmp_path / "other").write_text("b" * 64)
    other = scan_archive(root, read_salt(tmp_path / "other")).catalog
    assert not set(other["case_id"]) & set(first["case_id"]) and not set(other["series_id"]) & set(first["series_id"])
    with pytest.raises(OrthodiffError, match="between 1 and"):
        scan_archive(root, read_salt(salt_file), workers=0)
    (tmp_path / "short").write_text("abc")
    with pytest.raises(OrthodiffError, match="at least 32"):
        read_salt(tmp_path / "short")


def test_labels_join_by_accession_and_bad_rows_are_named_without_their_values(archive, tmp_path, no_jpeg_ls):
    root, made = archive
    accessions = [i for i in made["identifiers"] if i.startswith("ACC")]
    labels = ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
    good = pd.DataFrame({"accession": accessions, **{label: [1, 0] for label in labels}, "age": [34, 61]})
    csv = tmp_path / "labels.csv"
    good.to_csv(csv, index=False)
    out = tmp_path / "labelled.parquet"
    args = ["catalog", "from-dicom", root, "--out", out, "--salt-file", tmp_path / "salt", "--labels", csv,
            "--join-column", "accession"]
    assert run(*args).exit_code == 0
    df = read_catalog(out)
    validate_catalog(df, out)
    assert sorted(df.drop_duplicates("case_id")[["ACL", "age"]].values.tolist()) == [[0, 61.0], [1, 34.0]]
    assert "accession" not in df.columns

    pd.concat([good, good.iloc[[0]].assign(accession="ACC-NOT-THERE")]).to_csv(csv, index=False)
    with pytest.raises(OrthodiffError, match="line 4 match no exam") as err:
        run(*args)
    assert "ACC-NOT-THERE" not in str(err.value)
    pd.concat([good, good.iloc[[1]]]).to_csv(csv, index=False)
    with pytest.raises(OrthodiffError, match="lines 3, 4 match the same exam twice") as err:
        run(*args)
    assert not any(a in str(err.value) for a in accessions)

    good.iloc[[0]].to_csv(csv, index=False)  # one exam unlabelled: its series become no_label rejects
    assert run(*args).exit_code == 0
    assert read_catalog(out)["case_id"].nunique() == 1
    rejects = pd.read_parquet(out.with_name("labelled.rejects.parquet"))
    assert rejects.loc[rejects["reason"] == "no_label", "files"].sum() == 5 * 16


def test_a_killed_run_leaves_no_catalog_and_a_rerun_finishes(archive, tmp_path):
    root, _ = archive
    out = tmp_path / "catalog.parquet"
    command = [sys.executable, "-c", "import sys; from orthodiff.catalogs.dicom_archive import build_from_dicom; "
               "build_from_dicom(*sys.argv[1:])", str(root), str(out), str(tmp_path / "salt")]
    env = {**os.environ, "ORTHODIFF_FAULT": "from-dicom:manifest@3"}
    killed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert killed.returncode == 86 and not out.exists() and len(list(tmp_path.glob("catalog.series/*.json"))) == 3
    assert not [p for p in tmp_path.rglob("*.tmp")]
    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert len(read_catalog(out)) == 10 and len(list(tmp_path.glob("catalog.series/*.json"))) == 10


def test_an_unlabelled_catalog_validates_but_heads_need_labels(archive, tmp_path):
    from orthodiff.catalogs.cohort import label_columns

    root, _ = archive
    df = scan_archive(root, read_salt(tmp_path / "salt")).catalog
    validate_catalog(df, tmp_path / "c.parquet", check_files=False)
    with pytest.raises(OrthodiffError, match="no label columns"):
        label_columns(df)
    with pytest.raises(OrthodiffError, match="missing label column 'PCL'"):
        validate_catalog(df.assign(ACL=0), tmp_path / "c.parquet", check_files=False)


def test_each_series_fault_has_its_reason(tmp_path):
    """Series that the PACS export does not plant: duplicate, irregular, mixed sizes, another
    modality, no geometry; and a label CSV keyed by the catalog's own case ids."""
    import pydicom

    from orthodiff.catalogs.dicom_archive import join_labels
    from orthodiff.catalogs.writers import write_dicom_series

    rng = np.random.default_rng(0)

    def series(name: str, edit=None, size: int = 16, uid: str | None = None) -> None:
        folder = write_dicom_series(tmp_path / "a" / name, rng.random((16, size, size)), "axial", 0.5, 3.0,
                                    "x", f"{uid or name}-1-0")
        for k, path in enumerate(sorted(folder.iterdir())):
            if edit is not None:
                ds = pydicom.dcmread(path)
                edit(k, ds)
                ds.save_as(path, enforce_file_format=True)

    def shifted(k, ds):
        if k == 5:
            ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], ds.ImagePositionPatient[2] + 1.0]

    def duplicate(k, ds):
        if k == 5:
            ds.ImagePositionPatient = list(pydicom.dcmread(ds.filename.replace("0005", "0004")).ImagePositionPatient)

    series("good")
    series("shifted", shifted)
    series("duplicate", duplicate)
    series("ct", lambda k, ds: setattr(ds, "Modality", "CT"))
    series("nogeometry", lambda k, ds: delattr(ds, "ImagePositionPatient"))
    series("sizes")
    series("sizes-8", size=8, uid="sizes")  # the same series, another matrix size
    scan = scan_archive(tmp_path / "a", b"s" * 32)
    reasons = scan.rejects.groupby("reason")["files"].sum().to_dict()
    assert reasons == {"inconsistent_spacing": 16, "duplicate_slices": 16, "not_mr": 16, "no_geometry": 16, "mixed_size": 32}
    assert len(scan.catalog) == 1

    csv = tmp_path / "labels.csv"
    labels = ["ACL", "PCL", "MM", "LM", "MCL", "LCL", "PD", "EFFU"]
    pd.DataFrame({"exam": scan.catalog["case_id"], **{label: [1] for label in labels}}).to_csv(csv, index=False)
    labelled, unlabelled = join_labels(scan.catalog, csv, "exam", "case-id", b"s" * 32)
    assert labelled["ACL"].tolist() == [1] and unlabelled.empty


def test_pydicom_test_files_are_each_accounted_for(tmp_path):
    """pydicom's own test files (CT, RT, SR, JPEG, RLE, DICOMDIR media, files that contradict
    their transfer syntax): none crashes the scan, each is a reject with a reason."""
    from pydicom.data import get_testdata_file

    root = Path(get_testdata_file("MR_truncated.dcm")).parent
    scan = scan_archive(root, b"s" * 32)
    rejects = scan.rejects.set_index("path")
    assert scan.catalog.empty and rejects["files"].sum() == sum(1 for p in root.rglob("*") if p.is_file())
    assert rejects.loc["MR_truncated.dcm", "reason"] == "unreadable"
    assert rejects.loc["dicomdirtests/DICOMDIR", "reason"] == "non_image"
    assert rejects.loc["CT_small.dcm", "reason"] == "not_mr"
    assert (rejects.loc["dicomdirtests/98892003/MR2", "reason"] == "localizer").all()


@pytest.mark.parametrize("tags, side", [
    ({"ImageLaterality": "R", "SeriesDescription": "left"}, "R"),  # the attribute wins over words
    ({"SeriesDescription": "PD SAG LEFT KNEE"}, "L"),
    ({"BodyPartExamined": "KNEE", "ProtocolName": "knee_rt"}, "R"),
    ({"SeriesDescription": "left vs right"}, ""),
    ({"SeriesDescription": "PD SAG", "Laterality": "B"}, ""),
])
def test_laterality_from_the_attribute_else_from_words(tags, side):
    from pydicom.dataset import Dataset

    from orthodiff.catalogs.dicom_archive import _laterality

    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    assert _laterality(ds) == side
