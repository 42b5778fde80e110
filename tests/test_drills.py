"""Kill drills and simultaneous starts: a store is never left in a state a rerun cannot finish.

Each drill ends a job abruptly (`os._exit`, no cleanup, like `kill -9`) at a named step via
the `ORTHODIFF_FAULT` hook, in a child forked from a server process so no interpreter start is paid per drill,
then checks what readers see and that a rerun gives the bytes of an uninterrupted run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import orthodiff
from orthodiff.errors import OrthodiffError
from orthodiff.faults import ENV, EXIT_CODE
from orthodiff.featurestore.extract import extract
from orthodiff.featurestore.features import IncompleteFeatures
from orthodiff.featurestore.ingest import ingest
from orthodiff.featurestore.verify import store_info, verify_store
from orthodiff.featurestore.volumes import open_volumes
from orthodiff.personas.store import make_personas
from orthodiff.radiomics.store import extract_radiomics
from orthodiff.heads.store import plane_nodes
from helpers import make_volume_store, random_checkpoint, series_count
from test_ingest import make_cohort

EXTRACT = dict(plane="sagittal", timesteps=(10,), blocks=("mid_0",), progress=False)
CREATE_STEPS = ["create:backbone", "create:plane"] + [f"create:{a}" for a in
                ("activation", "gap", "series", "case_id", "patient_id", "scan", "timestep", "block")] + [
    "grow:timestep:data", "grow:timestep:resized", "grow:block:data", "grow:block:resized", "grow:series:data",
    "grow:series:case_id", "grow:series:patient_id", "grow:series:scan"]


def _forkserver():
    """Children forked from a fresh server that imported orthodiff but never ran torch (forking
    a process whose thread pools have run can hang the child)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["orthodiff.featurestore.extract", "orthodiff.featurestore.ingest",
                                "orthodiff.personas.store", "orthodiff.radiomics.store"])
    return ctx


def _run_with_fault(point: str, job, args, kwargs) -> None:
    os.environ[ENV] = point
    job(*args, **kwargs)


def killed_at(point: str, job, *args, **kwargs) -> None:
    """Run `job` in a child process that dies at `point`; fail unless it died there."""
    proc = _forkserver().Process(target=_run_with_fault, args=(point, job, args, kwargs))
    proc.start()
    proc.join(120)
    if proc.exitcode is None:
        proc.kill()
    assert proc.exitcode == EXIT_CODE, f"the job did not reach {point!r} (exit {proc.exitcode})"


def feature_files(store: str) -> dict[str, bytes]:
    root = Path(store)
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ("/c/" in str(p) and "features" in str(p) or "_records" in str(p))}


@pytest.fixture(scope="module")
def drill(tmp_path_factory):
    """4 axial series extracted, 4 sagittal ones not yet; the sagittal reference extraction."""
    root = tmp_path_factory.mktemp("drill")
    store = make_volume_store(root / "base.zarr", n=4, planes=("axial", "sagittal"))
    extract(store, random_checkpoint(root / "ax.pt", "axial"), "axial", (10,), ("mid_0",), progress=False)
    sag = random_checkpoint(root / "sag.pt", "sagittal", seed=1)
    reference = str(root / "reference.zarr")
    shutil.copytree(store, reference)
    extract(reference, sag, **EXTRACT)
    return store, sag, feature_files(reference), reference


@pytest.mark.slow
@pytest.mark.parametrize("point", CREATE_STEPS)
def test_extract_killed_while_creating_a_plane_is_finished_by_the_rerun(drill, tmp_path, point):
    base, sag, reference, _ = drill
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    killed_at(point, extract, store, sag, **EXTRACT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", IncompleteFeatures)
        nodes = plane_nodes(orthodiff.open_store(store))  # the intact plane stays readable
    assert list(nodes) == ["axial"] and nodes["axial"].sizes["series"] == 4
    info = store_info(store)  # no traceback, whatever step was cut
    assert list(info.loc[info["plane"] == "axial", "series"]) == ["4/4"]
    problems = verify_store(store)
    if point == "create:backbone":  # no plane group yet: nothing half-made to report
        assert problems == [] and not caught
    else:
        assert "sagittal not complete yet" in str(caught[0].message)
        assert problems and all("sagittal" in p for p in problems)
    extract(store, sag, **EXTRACT)
    assert feature_files(store) == reference and verify_store(store) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", IncompleteFeatures)
        assert series_count(orthodiff.open_store(store)) == 8


@pytest.mark.slow
def test_readers_during_a_first_extraction_get_the_complete_planes(drill, tmp_path):
    base, sag, _, _ = drill
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    killed_at("extract:record", extract, store, sag, **EXTRACT)  # data written, job still "running"
    with pytest.warns(IncompleteFeatures) as caught:
        tree = orthodiff.open_store(store)
    assert "rerun `orthodiff extract`" in str(caught[0].message)
    assert [p.rsplit("/", 1)[1] for p in tree.attrs["incomplete"]] == ["sagittal"]
    nodes = plane_nodes(tree)
    assert list(nodes) == ["axial"] and np.isfinite(nodes["axial"].gap.values).all() and nodes["axial"].sizes["series"] == 4


INGEST_STEPS = (["ingest:group"] + [f"ingest:{a}" for a in ("volume", "mask", "has_mask", "scan", "series", "case_id",
                                                             "patient_id", "plane", "split", "axis", "spacing_reason")]
                + ["ingest:rows"])


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohort")
    catalog = make_cohort(root)
    reference = str(root / "reference.zarr")
    ingest(catalog, reference, size=16, progress=False)
    return catalog, open_volumes(reference).load()


@pytest.mark.slow
@pytest.mark.parametrize("point", INGEST_STEPS)
def test_first_ingest_killed_at_each_step_is_finished_by_the_rerun(cohort, tmp_path, point):
    catalog, reference = cohort
    store = str(tmp_path / "s.zarr")
    killed_at(point, ingest, catalog, store, size=16, progress=False)
    assert verify_store(store) == [] or all("volumes" in p for p in verify_store(store))
    result = ingest(catalog, store, size=16, progress=False)
    assert (result["status"] == "ingested").all()
    xr.testing.assert_identical(open_volumes(store).load(), reference)
    assert verify_store(store) == []


def _plan_at(go, store: str, checkpoint: str) -> None:
    from orthodiff.featurestore.extract import plan

    go.wait(60)
    plan(store, checkpoint, "sagittal", (10,), ("mid_0",))


@pytest.mark.slow
def test_many_simultaneous_first_extractions_of_one_plane(drill, tmp_path):
    """Eight jobs start the same first extraction at the same instant; every one succeeds."""
    base, sag, reference, _ = drill
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    ctx = _forkserver()
    go = ctx.Event()
    procs = [ctx.Process(target=_plan_at, args=(go, store, sag)) for _ in range(8)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 8
    extract(store, sag, **EXTRACT)
    assert feature_files(store) == reference and verify_store(store) == []


@pytest.mark.slow
def test_temporary_file_of_a_killed_write_is_removed_by_the_rerun(drill, tmp_path):
    base, sag, reference, _ = drill
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    killed_at("extract:record", extract, store, sag, **EXTRACT)
    shard = next(p for p in Path(store, "features").rglob("activation/c/0/0/0/0/0/0/0") if "sagittal" in str(p))
    shard.with_suffix(".0123abcd.partial").write_bytes(shard.read_bytes()[:100])  # what a kill mid-write leaves
    extract(store, sag, **EXTRACT)
    assert feature_files(store) == reference and not list(Path(store).rglob("*.partial"))


def test_atomic_write_follows_the_umask(tmp_path):
    from orthodiff.files import atomic_write

    old = os.umask(0o027)
    try:
        path = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640


def _shard(store: str, plane: str = "sagittal") -> Path:
    return next(p for p in Path(store, "features").rglob("activation/c/0/0/0/0/0/0/0") if plane in str(p))


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _overwrite(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[200:264] = bytes(range(64))
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGE = {"flip one byte": _flip, "overwrite 64 bytes": _overwrite, "truncate": _truncate, "delete": Path.unlink}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_verify_names_a_damaged_feature_shard_and_repair_recomputes_it(drill, tmp_path, damage):
    _, sag, reference, reference_store = drill
    store = str(tmp_path / "s.zarr")
    shutil.copytree(reference_store, store)
    DAMAGE[damage](_shard(store))
    problems = verify_store(store)
    assert any(re.search(r"sagittal: series 0-3 at t=10 mid_0: (content does not match its checksum|unreadable)", p)
               for p in problems), problems
    assert not any("axial" in p for p in problems)
    assert extract(store, sag, **EXTRACT)["series"] == 0  # a plain rerun trusts the records
    assert extract(store, sag, **EXTRACT, repair=True)["series"] == 4
    assert feature_files(store) == reference and verify_store(store) == []


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_verify_names_a_damaged_volume_and_ingest_repair_reads_it_again(cohort, tmp_path, damage):
    catalog, reference = cohort
    store = str(tmp_path / "s.zarr")
    ingest(catalog, store, size=16, progress=False)
    row = 4
    DAMAGE[damage](Path(store, f"volumes/volume/c/{row}/0/0/0"))
    sid = str(reference.series.values[row])
    problems = verify_store(store)
    assert any(f"volumes: row {row} (series {sid!r})" in p for p in problems) and len(problems) == 2, problems
    result = ingest(catalog, store, size=16, progress=False, repair=True)
    assert result.loc[result["status"] == "repaired", "series_id"].tolist() == [sid]
    xr.testing.assert_identical(open_volumes(store).load(), reference)
    assert verify_store(store) == []


@pytest.mark.slow
def test_extract_from_a_truncated_volume_is_one_named_error(drill, tmp_path):
    base, sag, _, _ = drill
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    chunk = Path(store, "volumes/volume/c/5/0/0/0")  # a sagittal series (rows 4-7)
    chunk.write_bytes(chunk.read_bytes()[:50])
    with pytest.raises(OrthodiffError, match=r"volumes of series s0-sagittal\.\.s3-sagittal are unreadable.*ingest --repair"):
        extract(store, sag, **EXTRACT)


# Personas and radiomics: the same creation path (`series_groups.prepare_group`), so the same drills.
PERSONA = dict(grid=1, steps=1, jumps=1, progress=False, warn=lambda _: None)
RADIOMICS = dict(sources=("image",), families=("first_order",), grid=1, progress=False)
GROUP_STEPS = ["group", "case_id", "patient_id", "scan", "series"]
GROW_STEPS = ["grow:series:data", "grow:series:case_id", "grow:series:patient_id", "grow:series:scan"]
PERSONA_STEPS = [f"persona:{s}" for s in ("group", "persona", "mask", "roi_name", "roi", *GROUP_STEPS[1:], "record")]
RADIOMICS_STEPS = [f"radiomics:{s}" for s in ("group", "value", "undefined", "roi_name", "source", "feature", "reason",
                                               "roi", "code", *GROUP_STEPS[1:], "record")]


def _micro_checkpoint(path) -> str:
    from orthodiff.backbone.unet import UNetConfig

    return random_checkpoint(path, "axial", config=UNetConfig(8, 16, 32, (1, 1)))


def _persona_job(store, ckpt, repair=False):
    return make_personas(store, ckpt, "axial", **PERSONA, repair=repair)


def _radiomics_job(store, repair=False):
    return extract_radiomics(store, "axial", **RADIOMICS, repair=repair)


def _kind_files(store: str, kind: str) -> dict[str, bytes]:
    root = Path(store)
    files = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    return {name: p.read_bytes() for name, p in files.items() if kind in name and ("/c/" in name or "_records" in name)}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """3 axial series of 16 x 8 x 8, a micro backbone, and reference stores: personas alone,
    radiomics alone (of the box grid), both (radiomics of the personas)."""
    root = tmp_path_factory.mktemp("kinds")
    base = make_volume_store(root / "base.zarr", n=3, size=8)
    ckpt = _micro_checkpoint(root / "m.pt")
    reference = {name: shutil.copytree(base, root / f"{name}.zarr") for name in ("personas", "radiomics", "both")}
    _persona_job(reference["personas"], ckpt)
    _radiomics_job(reference["radiomics"])
    _persona_job(reference["both"], ckpt)
    _radiomics_job(reference["both"])
    return base, ckpt, {name: str(path) for name, path in reference.items()}


@pytest.mark.parametrize("point", PERSONA_STEPS + GROW_STEPS)
def test_persona_killed_at_each_creation_step_is_finished_by_the_rerun(kinds, tmp_path, point):
    base, ckpt, reference = kinds
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    killed_at(point, _persona_job, store, ckpt)
    store_info(store)  # no traceback, whatever step was cut
    problems = verify_store(store)
    assert all("personas/" in p for p in problems), problems
    if point in PERSONA_STEPS[:PERSONA_STEPS.index("persona:series")]:
        assert any("creation not finished" in p for p in problems), problems
    assert _persona_job(store, ckpt)["series"] == 3
    assert _kind_files(store, "personas") == _kind_files(reference["personas"], "personas") and verify_store(store) == []


@pytest.mark.parametrize("point", RADIOMICS_STEPS + GROW_STEPS)
def test_radiomics_killed_at_each_creation_step_is_finished_by_the_rerun(kinds, tmp_path, point):
    base, _, reference = kinds
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    killed_at(point, _radiomics_job, store)
    store_info(store)
    problems = verify_store(store)
    assert all("radiomics/" in p for p in problems), problems
    if point in RADIOMICS_STEPS[:RADIOMICS_STEPS.index("radiomics:series")]:
        assert any("creation not finished" in p for p in problems), problems
    assert _radiomics_job(store)["series"] == 3
    assert _kind_files(store, "radiomics") == _kind_files(reference["radiomics"], "radiomics") and verify_store(store) == []


def test_a_persona_or_radiomics_group_left_without_arrays_does_not_wedge_the_store(kinds, tmp_path):
    """What a kill right after the group's creation left before: a group with no arrays, on
    which every later run failed (`KeyError: 'series'`, `'Dataset' object has no attribute 'series'`)."""
    import zarr

    base, ckpt, reference = kinds
    store = str(tmp_path / "s.zarr")
    shutil.copytree(base, store)
    root = zarr.open_group(store, mode="r+")
    for kind in ("personas", "radiomics"):  # the group with its provenance, as the old code created it
        made = zarr.open_group(reference["both"], mode="r")
        gid = next(iter(made[kind].group_keys()))
        attrs = {k: v for k, v in made[f"{kind}/{gid}/axial"].attrs.items() if k != "arrays"}
        root.create_group(f"{kind}/{gid}/axial", attributes=attrs)
    assert _persona_job(store, ckpt)["series"] == 3 and _radiomics_job(store)["series"] == 3
    assert verify_store(store) == []


def _first_chunk(store: str, array: str) -> Path:
    return sorted(p for p in Path(store).rglob("*") if p.is_file() and f"/{array}/c/" in str(p))[0]


@pytest.mark.parametrize("kind,array", [("personas", "persona"), ("personas", "mask"),
                                        ("radiomics", "value")])
def test_verify_names_a_flipped_byte_in_personas_and_radiomics_and_repair_redoes_it(kinds, tmp_path, kind, array):
    _, ckpt, reference = kinds
    store = str(tmp_path / "s.zarr")
    shutil.copytree(reference["both"], store)
    _flip(_first_chunk(store, array))
    problems = verify_store(store)
    assert any(re.search(rf"{kind}/\w+/axial: series 0-2: (content does not match its checksum|unreadable)", p)
               for p in problems) and any("--repair" in p for p in problems), problems
    info = store_info(store)
    assert set(info["group"].str.split("/").str[0]) == {"volumes", "personas", "radiomics"}
    job = _persona_job if kind == "personas" else _radiomics_job
    args = (store, ckpt) if kind == "personas" else (store,)
    assert job(*args)["series"] == 0  # a plain rerun trusts the records
    assert job(*args, repair=True)["series"] == 3
    assert _kind_files(store, kind) == _kind_files(reference["both"], kind) and verify_store(store) == []
