"""The MSK evaluation paper's fine-tuning grids (`evaluate ablation`, `evaluate mixing`) on a
tiny phantom: nested training-set sizes, mixing scenarios, one tidy table, resumable runs;
and the fine-tuning loop's mixed-precision settings."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from orthodiff.catalogs.cohort import write_catalog
from orthodiff.catalogs.writers import write_nifti
from orthodiff.errors import OrthodiffError
from orthodiff.evaluation.grid import Scoring, mixing_scenarios, run_ablation, run_mixing
from orthodiff.evaluation.promptable import build_sam

TINY = {"model": "sam", "size": "tiny", "finetune_epochs": 1, "lr": 1e-3, "min_size": 1, "recipe": "plain"}
SCORING = Scoring(min_pixels=0, min_voxels=0)


def phantom(folder, joint="knee", sequence=None, patients=4):
    """A catalog of `patients` sagittal series (the last one `test`, the rest `train`) whose
    reference is a femur rectangle on one slice: one image-encoder pass per series."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(patients):
        mask = np.zeros((16, 32, 32), np.uint8)
        mask[8, 6:20, 5 + i : 26] = 1
        image = rng.normal(100, 5, mask.shape).astype(np.float32) + 60 * mask
        write_nifti(folder / f"s{i}.nii.gz", image, "sagittal", 0.5, 3.0)
        write_nifti(folder / f"s{i}_mask.nii.gz", mask, "sagittal", 0.5, 3.0)
        rows.append({"series_id": f"s{i}", "case_id": f"c{i}", "patient_id": f"p{i}", "task": joint, "joint": joint,
                     "plane": "sagittal", "scan": 0, "path": f"s{i}.nii.gz", "mask_path": f"s{i}_mask.nii.gz",
                     "center": "c", "vendor": "v", "field_strength": 3.0, "slice_thickness": 3.0,
                     "split": "test" if i == patients - 1 else "train", **({"sequence": sequence} if sequence else {})})
    return write_catalog(pd.DataFrame(rows), folder / "catalog.parquet")


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_sam.pt"
    torch.save(build_sam("tiny").state_dict(), path)
    return path


@pytest.mark.slow  # a tiny SAM still encodes 1024 x 1024 slices: about a second each
def test_ablation_grid_nests_sizes_writes_one_tidy_table_and_resumes(tmp_path, checkpoint, monkeypatch):
    import orthodiff.evaluation.promptable as promptable

    catalog = phantom(tmp_path / "knee", patients=3)
    out = tmp_path / "ablation"
    tables = run_ablation(catalog, out, [1, "all"], scoring=SCORING, checkpoint=checkpoint, **TINY)
    scores, summary = tables["scores"], tables["summary"]
    assert set(scores.columns) >= {"scenario", "mixing", "model", "catalog", "dataset", "structure", "dice", "iou", "hd95", "nsd"}
    assert len(scores) == 2 * 11 and (scores["scenario"] == "single_knee").all()  # every knee structure at both points
    femur = scores[scores["structure"] == "Femur"]  # the only structure in the phantom: the others are undefined
    assert femur["train_subjects"].tolist() == ["1", "all"] and femur["train_subjects_n"].tolist() == [1, 2]
    assert femur["dice"].between(0, 1).all() and scores.loc[scores["structure"] != "Femur", "dice"].isna().all()
    assert summary["train_subjects"].tolist() == ["1", "all"] and (summary["model"] == "sam").all()
    assert (out / "points" / "single_knee_1" / "knee" / "masks" / "s2.nii.gz").is_file()
    first = {p: (out / "points" / p / "sam_finetuned.pt").stat().st_mtime_ns for p in ("single_knee_1", "single_knee_all")}

    calls = []
    original = promptable.run_prompt
    monkeypatch.setattr(promptable, "run_prompt", lambda *a, **k: calls.append(a) or original(*a, **k))
    again = run_ablation(catalog, out, [1, "all"], scoring=SCORING, checkpoint=checkpoint, **TINY)
    assert calls == []  # finished points are kept
    pd.testing.assert_frame_equal(again["scores"], scores)
    (out / "points" / "single_knee_all" / "summary.parquet").unlink()  # a point interrupted before its tables
    run_ablation(catalog, out, [1, "all"], scoring=SCORING, checkpoint=checkpoint, **TINY)
    assert len(calls) == 1  # only that point, and it reuses its fine-tuned weights
    assert all((out / "points" / p / "sam_finetuned.pt").stat().st_mtime_ns == t for p, t in first.items())

    with pytest.raises(OrthodiffError, match="other config"):
        run_ablation(catalog, out, [1], scoring=SCORING, checkpoint=checkpoint, **{**TINY, "lr": 1e-2})
    with pytest.raises(OrthodiffError, match="give --finetune-epochs"):
        run_ablation(catalog, tmp_path / "x", [1], checkpoint=checkpoint, **{**TINY, "finetune_epochs": 0})
    with pytest.raises(OrthodiffError, match="positive number of subjects"):
        run_ablation(catalog, tmp_path / "x", [-1], checkpoint=checkpoint, **TINY)


def _rows_only(folder, joint, sequence):
    """A catalog without images: scenarios read only the catalog."""
    folder.mkdir(parents=True)
    rows = pd.DataFrame({"series_id": ["a"], "case_id": ["a"], "patient_id": ["a"], "task": [joint], "joint": [joint],
                         "plane": ["sagittal"], "scan": [0], "path": ["a.nii.gz"], "mask_path": ["a_mask.nii.gz"],
                         "center": ["c"], "vendor": ["v"], "field_strength": [3.0], "slice_thickness": [3.0],
                         "split": ["test"], "sequence": [sequence]})
    return write_catalog(rows, folder / "catalog.parquet")


def test_mixing_scenarios_group_by_anatomy_tissue_and_sequence(tmp_path):
    knee = _rows_only(tmp_path / "knee_dess", "knee", "DESS")
    knee2 = _rows_only(tmp_path / "knee_cube", "knee", "CUBE")
    thigh = _rows_only(tmp_path / "thigh_t1", "thigh", "T1")
    spine = _rows_only(tmp_path / "spine_t1", "spine", "T1")
    scenarios, notes = mixing_scenarios([knee, knee2, thigh, spine])
    by_name = {s.name: {c.parent.name for c in s.catalogs} for s in scenarios}
    assert by_name["single_knee_dess"] == {"knee_dess"} and by_name["joint_knee"] == {"knee_dess", "knee_cube"}
    assert by_name["sequence_T1"] == {"thigh_t1", "spine_t1"}  # same sequence, different anatomy
    assert by_name["tissue_bone"] == {"knee_dess", "knee_cube", "thigh_t1", "spine_t1"}  # every joint has bone
    assert "all" not in by_name and any("all: trains on the same datasets as tissue_bone" in n for n in notes)
    assert "joint_thigh" not in by_name and any(n.startswith("joint_thigh: ") for n in notes)  # = single_thigh_t1
    assert [s.mixing for s in scenarios][:4] == ["single"] * 4
    only, why = mixing_scenarios([knee, thigh], ["single", "protocol"])
    assert len(only) == 2 and "no catalog has a column 'protocol'" in why[0]
    with pytest.raises(OrthodiffError, match="both dataset 'knee'"):
        mixing_scenarios([tmp_path / "a" / "knee.parquet", tmp_path / "b" / "knee.parquet"])


@pytest.mark.slow  # a tiny SAM still encodes 1024 x 1024 slices: about a second each
def test_mixing_fine_tunes_each_scenario_once_and_scores_each_dataset(tmp_path, checkpoint):
    a = phantom(tmp_path / "knee_a", patients=2)
    b = phantom(tmp_path / "knee_b", patients=2)
    tables = run_mixing([a, b], tmp_path / "mixing", ["all"], ["all"], SCORING, checkpoint=checkpoint, **TINY)
    summary = tables["summary"].set_index(["scenario", "catalog"])
    assert sorted(summary.index) == [("all", "knee_a"), ("all", "knee_b")]  # trained together, scored on each
    assert (summary["train_subjects_n"] == 2).all() and (summary["mixing"] == "all").all()
    assert summary["dice"].between(0, 1).all()
    point = tmp_path / "mixing" / "points" / "all_all"
    assert sorted(p.name for p in point.iterdir() if p.is_dir()) == ["knee_a", "knee_b"]
    assert [p.name for p in point.glob("*.pt")] == ["sam_finetuned.pt"]  # one model for both datasets


def test_mixed_precision_follows_the_device():
    from orthodiff.training import amp_settings

    assert not amp_settings("cpu").enabled and not amp_settings("cpu", True).enabled  # never on the CPU
    assert amp_settings("cuda", bf16=True) == amp_settings("cuda", True, bf16=True)  # on by default on CUDA (the paper)
    assert amp_settings("cuda", bf16=True).dtype == torch.bfloat16 and not amp_settings("cuda", bf16=True).scaler
    old = amp_settings("cuda", bf16=False)  # a GPU without bfloat16: float16 needs loss scaling
    assert old.enabled and old.dtype == torch.float16 and old.scaler
    assert not amp_settings("cuda", False, bf16=True).enabled


def test_float16_loss_scaling_unscales_before_clipping(monkeypatch):
    """The scaler path of the loop, forced on the CPU (which has float16 autocast): with
    gradients unscaled before clipping it trains as float32 does; clipping the scaled
    gradients would shrink every step by the scale (65,536)."""
    import orthodiff.training as training

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 2, (32, 1))

    def fit():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        training.train(model, [x], y, None, epochs=3, lr=0.05, batch_size=8, random_state=0, clip_norm=0.5)
        return model.weight.detach().clone()

    plain = fit()
    monkeypatch.setattr(training, "amp_settings", lambda *a, **k: training.Amp(True, torch.float16, scaler=True))
    scaled = fit()
    torch.manual_seed(0)
    start = torch.nn.Linear(4, 1).weight.detach()
    assert (plain - start).abs().max() > 0.05  # it trained
    assert torch.allclose(scaled, plain, atol=0.02)


def test_grid_commands_hand_the_library_plain_settings(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from orthodiff.cli import app

    seen = {}

    def grid(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        raise OrthodiffError("stop")

    monkeypatch.setattr("orthodiff.evaluation.grid.run_ablation", grid)
    monkeypatch.setattr("orthodiff.evaluation.grid.run_mixing", grid)
    result = CliRunner().invoke(app, ["evaluate", "ablation", "--catalog", "c.parquet", "--out", str(tmp_path / "a"),
                                      "--sizes", "5,10,all", "--finetune-epochs", "2", "--no-amp"])
    assert str(result.exception) == "stop" and seen["args"][2] == [5, 10, "all"]  # `main` prints errors as one line
    assert seen["kwargs"]["amp"] is False and seen["kwargs"]["model"] == "sam" and type(seen["kwargs"]["model"]) is str
    CliRunner().invoke(app, ["evaluate", "mixing", "a.parquet", "b.parquet", "--out", str(tmp_path / "m")])
    assert seen["args"][2] == ["single", "joint", "tissue", "sequence", "all"] and seen["args"][3] == ["all"]
    assert seen["kwargs"]["amp"] is None and seen["kwargs"]["finetune_epochs"] == 50  # amp: on for CUDA only
    result = CliRunner().invoke(app, ["evaluate", "ablation", "--catalog", "c", "--out", str(tmp_path / "x"), "--sizes", "5,x"])
    assert "--sizes '5,x': 'x' is not an integer or 'all'" in str(result.exception)
    summary = pd.DataFrame({"scenario": ["single_knee"] * 2, "train_subjects": ["5", "all"], "train_subjects_n": [5, 12],
                            "model": "sam", "catalog": "knee", "dice": [0.61, 0.83]})
    monkeypatch.setattr("orthodiff.evaluation.grid.run_ablation", lambda *a, **k: {"summary": summary})
    result = CliRunner().invoke(app, ["evaluate", "ablation", "--catalog", "c", "--out", str(tmp_path / "y")],
                                terminal_width=200)
    assert result.exit_code == 0 and "mean subject Dice per dataset" in result.output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.output.splitlines() if line.count("│") > 2]
    assert rows == [["single_knee", "5", "5", "0.610"], ["single_knee", "all", "12", "0.830"]]  # a column per dataset
