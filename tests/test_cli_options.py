"""One meaning per command-line option: every command's options walked through typer's click
tree; choices are the library's own; bad values are refused before a command runs."""

from __future__ import annotations

import json
from collections import defaultdict
from enum import Enum
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from orthodiff import options
from orthodiff.cli import app
from orthodiff.errors import OrthodiffError
from orthodiff.options import split_list, subset_sizes
from orthodiff.outputs import read_run

# `--model` names an architecture everywhere; which architectures depends on the task
# (classifiers, segmenters, promptable models), so its Enum differs by command.
ONE_MEANING_MANY_CHOICES = {"--model"}


def commands(group=None, path=()):
    """(command path, click command) for every leaf command of the app."""
    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, (*path, name))
        else:
            yield " ".join((*path, name)), command


def option_table() -> dict[str, list[tuple[str, object, object]]]:
    """Option name -> [(command, annotation, parameter)] over the whole CLI."""
    table = defaultdict(list)
    for name, command in commands():
        for param in command.params:
            if param.param_type_name == "option":
                table[param.opts[0]].append((name, param.type_descriptor.annotation, param))
    return table


def test_every_option_name_has_one_type_across_commands():
    table = option_table()
    assert len(table) > 60 and len(list(commands())) > 25
    clashes = {}
    for option, uses in table.items():
        kinds = {annotation for _, annotation, _ in uses}
        if option in ONE_MEANING_MANY_CHOICES:
            kinds = {"an Enum" if isinstance(a, type) and issubclass(a, Enum) else a for a in kinds}
        if len(kinds) > 1:
            clashes[option] = sorted(f"{command}: {annotation}" for command, annotation, _ in uses)
    assert clashes == {}


def test_the_options_that_once_meant_two_things_mean_one():
    table = option_table()

    def annotations(option):
        return {annotation for _, annotation, _ in table[option]}

    assert annotations("--backbone") == {Path}  # a checkpoint file ...
    assert all("checkpoint" in param.help for _, _, param in table["--backbone"])
    assert annotations("--backbone-id") == {str}  # ... an id of a backbone in the store
    assert all("id" in param.help for _, _, param in table["--backbone-id"])
    assert {command for command, _, _ in table["--backbone-id"]} >= {"sweep", "fuse", "radiomics", "persona-fidelity"}
    assert annotations("--plane") == {options.Plane} and annotations("--planes") == {str}
    assert all("omma" in param.help for _, _, param in table["--planes"])  # a comma-separated list
    assert all(issubclass(a, Enum) for a in annotations("--model"))  # an architecture; a run folder is --run
    assert [param.metavar for _, _, param in table["--run"]] == ["DIR"]
    for command, _, param in table["--out"]:  # a file or a folder, and the help says which
        assert param.metavar in ("FILE", "DIR"), command
        assert ("older" in param.help) == (param.metavar == "DIR"), command
    ingest = dict(commands())["ingest"]
    assert [p.opts[0] for p in ingest.params if p.param_type_name == "option"][0] == "--catalog"  # an option everywhere
    assert all(p.param_type_name == "option" for p in ingest.params)


@pytest.mark.slow
def test_choices_are_the_librarys_own():
    from orthodiff.backbone.precision import PRECISIONS
    from orthodiff.backbone.unet import PRESETS
    from orthodiff.catalogs.dicom_archive import JOIN_ON
    from orthodiff.catalogs.tasks import PLANES, joints
    from orthodiff.heads.fingerprint_cohort import TARGETS
    from orthodiff.heads.fusion import METHODS
    from orthodiff.heads.pooling import POOLINGS
    from orthodiff.heads.protocol import COMPARATORS
    from orthodiff.personas.registration import SIMILARITIES
    from orthodiff.radiomics.ibsi import DISCRETISATIONS
    from orthodiff.supervised.networks import CLASSIFIERS, DECODERS, UNETR_SIZES

    def values(choice):
        return [member.value for member in choice]

    assert values(options.Plane) == list(PLANES)
    assert values(options.Pooling) == list(POOLINGS)
    assert values(options.Method) == [*METHODS, *COMPARATORS]
    assert values(options.Preset) == list(PRESETS)
    assert values(options.Joint) == joints()
    assert values(options.JoinOn) == list(JOIN_ON)
    assert values(options.Precision) == list(PRECISIONS)
    assert values(options.Discretisation) == list(DISCRETISATIONS)
    assert values(options.Decoder) == list(DECODERS)
    assert values(options.UnetrSize) == list(UNETR_SIZES)
    assert values(options.FingerprintTask) == list(TARGETS)
    assert values(options.Similarity) == list(SIMILARITIES)
    assert set(values(options.ClassifierModel)) == set(CLASSIFIERS) - {"finetune"}


@pytest.mark.parametrize("args, option", [
    (["extract", "--plane", "oblique", "--store", "s.zarr", "--backbone", "a.pt"], "--plane"),
    (["sweep", "--store", "s.zarr", "--catalog", "c.parquet", "--out", "o", "--pooling", "max"], "--pooling"),
    (["fuse", "--config", "c.json", "--out", "o", "--method", "attention"], "--method"),
    (["baseline", "classify", "--model", "vit", "--store", "s", "--catalog", "c", "--out", "o"], "--model"),
])
def test_a_bad_choice_is_refused_by_the_command_line(args, option, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and option in result.output and "is not one of" in result.output
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_every_choice_reaches_the_command_as_a_plain_string(monkeypatch, tmp_path):
    """Enum members saved into a checkpoint would not load with ``weights_only=True``."""
    enums = [(command, option) for option, uses in option_table().items() for command, annotation, param in uses
             if isinstance(annotation, type) and issubclass(annotation, Enum)
             and param.type_descriptor.parameter_info.callback is not options.plain]
    assert enums == []
    seen = {}

    def synthesize(joint, cases, size, seed, out, fmt, healthy_share):
        seen.update(joint=joint, fmt=fmt)
        shares.append(healthy_share)
        raise OrthodiffError("stop")

    shares = []
    monkeypatch.setattr("orthodiff.catalogs.synth.synthesize", synthesize)
    CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--joint", "ankle"])
    assert seen == {"joint": "ankle", "fmt": "nifti"} and {type(v) for v in seen.values()} == {str}
    CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--healthy-share", "0.5"])
    assert shares == [None, 0.5]


def test_choices_are_listed_in_help():
    result = CliRunner().invoke(app, ["sweep", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "gap|glp|sap" in result.output


def test_split_list_names_the_option_and_the_bad_item():
    assert split_list(" 10, 50,,100 ", "--timesteps", int) == [10, 50, 100]
    assert split_list(None, "--planes") == [] and split_list("axial", "--planes", choices=options.Plane) == ["axial"]
    assert subset_sizes("50,all") == [50, "all"]
    with pytest.raises(OrthodiffError, match=r"--timesteps '10,x': 'x' is not an integer"):
        split_list("10,x", "--timesteps", int)
    with pytest.raises(OrthodiffError, match=r"--planes 'axial,oblique': 'oblique' is not one of sagittal, coronal, axial"):
        split_list("axial,oblique", "--planes", choices=options.Plane)
    with pytest.raises(OrthodiffError, match=r"--subsets '5,al': 'al' is not an integer or 'all'"):
        subset_sizes("5,al")


def test_read_run_checks_the_kind(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"kind": "sweep", "pooling": "gap"}))
    assert read_run(tmp_path, ("sweep",), "a sweep directory")["pooling"] == "gap"
    with pytest.raises(OrthodiffError, match=r"not a fuse run \(its run.json is of kind 'sweep'; expected kind fuse\)"):
        read_run(tmp_path, ("fuse",), "a fuse run")
    with pytest.raises(OrthodiffError, match=r"not a sweep directory \(no readable run.json"):
        read_run(tmp_path / "nowhere", ("sweep",), "a sweep directory")
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(OrthodiffError, match="no readable run.json"):
        read_run(tmp_path, ("sweep",), "a sweep directory")


ABSURD = [
    ("extract", "--workers", "-1"), ("extract", "--workers", "500"), ("radiomics", "--workers", "0"),
    ("synth", "--size", "100000"), ("ingest", "--size", "100000"), ("radiomics", "--bins", "1000000"),
    ("sweep", "--epochs", "-1"), ("sweep", "--batch", "0"), ("sweep", "--lr", "-1"), ("sweep", "--lr", "0"),
    ("persona", "--sampling-steps", "100000000"), ("persona", "--series-batch", "-4"),
    ("fuse", "--bootstrap", "1000000000"), ("fuse", "--bootstrap", "-1"),
]


@pytest.mark.parametrize(("command", "option", "value"), ABSURD)
def test_absurd_numbers_are_refused_before_the_command_runs(command, option, value, tmp_path):
    """Each of these hung (`--workers -1`), ran for ever, divided by zero or asked for terabytes."""
    with pytest.raises(OrthodiffError, match=rf"^{option} {value if option != '--lr' else float(value)}: outside "):
        CliRunner().invoke(app, [*command.split(), option, value], catch_exceptions=False)  # `main` prints it as one line


def test_every_numeric_option_has_a_range():
    """A numeric option added later gets its range in `options.LIMITS`."""
    missing = sorted({option for option, uses in option_table().items() for _, annotation, param in uses
                      if annotation in (int, float, int | None, float | None) and param.name not in options.LIMITS})
    assert missing == []


def test_run_tasks_refuses_workers_the_machine_cannot_start():
    from orthodiff.featurestore.extract import run_tasks

    for workers in (-1, 0, 10_000):
        with pytest.raises(OrthodiffError, match=rf"--workers {workers}: expected 1 to"):
            run_tasks(print, [], (), "x", 0, workers=workers, progress=False)


def test_a_second_job_writing_the_same_output_folder_stops_with_one_error(tmp_path):
    """Two `fuse` runs into one folder both exited 0, the second silently replacing the first."""
    import socket

    from orthodiff.files import LOCK, folder_lock

    out = tmp_path / "out"
    out.mkdir()
    args = ["segment", "predict", "--run", "r", "--store", "s", "--catalog", str(tmp_path / "none.parquet"), "--out", str(out)]
    with folder_lock(out):  # a job is writing `out`
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, OrthodiffError) and "another orthodiff job" in str(result.exception)
        assert (out / LOCK).is_file()
    assert not (out / LOCK).exists()  # released when that job ends
    (out / LOCK).write_text(f"{socket.gethostname()} 999999999")  # left by a job that was killed
    result = CliRunner().invoke(app, args)
    assert "catalog file not found" in str(result.exception) and not (out / LOCK).exists()  # taken over, then released
