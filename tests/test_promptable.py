"""The SAM-family adapter: preprocessing, prompts, post-processing, a box oracle end to end
through `evaluate seg`, and a tiny randomly initialised SAM from the package's modules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from orthodiff.catalogs.cohort import write_catalog
from orthodiff.catalogs.writers import write_nifti
from orthodiff.errors import OrthodiffError
from orthodiff.evaluation.promptable import (
    SIZE, PromptedSegmenter, SamBoxPredictor, boxes_of, build_sam, postprocess, preprocess_slice, run_prompt, shift_boxes,
)


def box_oracle(image, boxes, shape):
    """Logits +10 inside each (1024-pixel) box mapped back to `shape`, -10 outside."""
    h, w = shape
    logits = np.full((len(boxes), h, w), -10.0)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        logits[i, round(y0 * h / SIZE) : round(y1 * h / SIZE), round(x0 * w / SIZE) : round(x1 * w / SIZE)] = 10.0
    return logits


@pytest.fixture
def rectangles(tmp_path):
    """Two sagittal knee series whose reference masks are rectangles (femur, femoral cartilage)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(2):
        mask = np.zeros((16, 40, 48), np.uint8)  # structures on three slices: prompts only there
        mask[7:10, 5:20, 8 + i : 30] = 1
        mask[8:10, 22:27, 10:40] = 4
        image = rng.normal(100, 5, mask.shape).astype(np.float32) + 50 * mask
        write_nifti(tmp_path / f"s{i}.nii.gz", image, "sagittal", 0.5, 3.0)
        write_nifti(tmp_path / f"s{i}_mask.nii.gz", mask, "sagittal", 0.5, 3.0)
        rows.append({"series_id": f"s{i}", "case_id": f"c{i}", "patient_id": f"p{i}", "task": "knee", "joint": "knee",
                     "plane": "sagittal", "scan": 0, "path": f"s{i}.nii.gz", "mask_path": f"s{i}_mask.nii.gz",
                     "center": f"center_{i}", "vendor": "v", "field_strength": 3.0, "slice_thickness": 3.0, "split": "test"})
    return write_catalog(pd.DataFrame(rows), tmp_path / "catalog.parquet")


def test_preprocess_clips_percentiles_to_uint8_1024_three_channels():
    plane = np.linspace(0, 1, 40 * 48).reshape(40, 48)
    plane[0, 0], plane[-1, -1] = -1000.0, 1000.0  # outliers beyond the 1st/99th percentile
    image = preprocess_slice(plane)
    assert image.shape == (3, SIZE, SIZE) and image.dtype == np.uint8
    assert (image[0] == image[1]).all() and (image[1] == image[2]).all()
    assert image.min() == 0 and image.max() == 255
    assert abs(int(image[0, SIZE // 2, SIZE // 2]) - 128) <= 3  # the middle of a ramp stays mid-grey


def test_boxes_shifts_and_postprocessing():
    mask = np.zeros((2, 10, 12), np.uint8)
    mask[1, 2:5, 3:9] = 4
    boxes = boxes_of(mask, [1, 4])
    assert list(boxes) == [(1, 4)] and boxes[(1, 4)].tolist() == [3, 2, 9, 5]
    moved = shift_boxes(boxes, 2, (10, 12), np.random.default_rng(0))[(1, 4)]
    assert np.abs(moved - boxes[(1, 4)]).max() <= 2 and moved[0] < moved[2] and moved[1] < moved[3]
    logits = np.full((2, 10, 12), -1.0)
    logits[0, :, :6], logits[1, :, 4:] = 1.0, 2.0  # overlap in columns 4-5: the larger logit wins
    logits[0, 0, 10] = 5.0  # a one-pixel island of structure 1, removed
    labels = postprocess(logits, [1, 4], min_size=3)
    assert (labels[:, :4] == 1).all() and labels[0, 10] == 0
    labels[0, 10] = 4
    assert (labels[:, 4:] == 4).all()


@pytest.mark.slow
def test_box_oracle_end_to_end_through_evaluate(rectangles, tmp_path):
    from orthodiff.evaluation.run import run_evaluate_seg

    out = tmp_path / "oracle"
    assert run_prompt(rectangles, out, predictor=box_oracle, min_size=1) == 2
    assert run_prompt(rectangles, out, predictor=box_oracle, min_size=1) == 0  # finished series are kept
    shifted = tmp_path / "shifted"
    run_prompt(rectangles, shifted, predictor=box_oracle, shift=3, min_size=1)
    chained = tmp_path / "chained"  # boxes from another model's masks: no reference needed
    run_prompt(rectangles, chained, predictor=box_oracle, prompts="masks", prompt_masks=out, min_size=1)
    tables = run_evaluate_seg([out, shifted, chained], rectangles, tmp_path / "eval", n_boot=50, min_pixels=0, min_voxels=0)
    dice = tables["tier_dataset"].set_index("model")["dice"]
    assert dice["oracle"] == 1.0 and dice["chained"] == 1.0
    assert 0.5 < dice["shifted"] < 1.0


@pytest.mark.slow
def test_tiny_sam_from_the_package_modules(rectangles, tmp_path):
    torch.manual_seed(0)
    sam = build_sam("tiny")
    path = tmp_path / "tiny.pt"
    torch.save(sam.state_dict(), path)
    again = build_sam("tiny", path)
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), again.state_dict().values()))
    with pytest.raises(OrthodiffError, match="not a SAM vit_b state dict"):
        build_sam("vit_b", path)
    logits = SamBoxPredictor(sam)(preprocess_slice(np.random.rand(40, 48)), np.array([[100.0, 100, 600, 500], [0, 0, 50, 50]]),
                                  (40, 48))
    assert logits.shape == (2, 40, 48) and np.isfinite(logits).all() and logits.std() > 0
    mask = PromptedSegmenter(SamBoxPredictor(sam), min_size=1).segment(np.random.rand(1, 40, 48), {(0, 4): np.array([5.0, 5, 30, 20])})
    assert mask.shape == (1, 40, 48) and set(np.unique(mask)) <= {0, 4}


def test_prompt_needs_a_checkpoint_and_a_known_model(rectangles, tmp_path):
    with pytest.raises(OrthodiffError, match="needs --checkpoint"):
        run_prompt(rectangles, tmp_path / "x")
    with pytest.raises(OrthodiffError, match="unknown promptable model"):
        run_prompt(rectangles, tmp_path / "x", checkpoint=tmp_path / "none.pt", model="sam3")
    with pytest.raises(OrthodiffError, match="needs --prompt-masks"):
        run_prompt(rectangles, tmp_path / "x", prompts="masks", predictor=box_oracle)


@pytest.mark.slow
def test_finetune_decoder_on_the_train_split(rectangles, tmp_path):
    from orthodiff.catalogs.cohort import read_catalog

    import nibabel as nib

    catalog = read_catalog(rectangles)
    catalog.loc[0, "split"] = "train"
    write_catalog(catalog, rectangles)
    for i in range(2):  # structures on one slice only: one image-encoder pass per series
        path = rectangles.parent / f"s{i}_mask.nii.gz"
        mask = np.asarray(nib.load(path).dataobj).transpose(2, 1, 0)
        mask[np.arange(16) != 8] = 0
        write_nifti(path, mask, "sagittal", 0.5, 3.0)
    torch.manual_seed(0)
    sam = build_sam("tiny")
    encoder = [p.clone() for p in sam.image_encoder.parameters()]
    decoder = [p.clone() for p in sam.mask_decoder.parameters()]
    out = tmp_path / "ft"
    assert run_prompt(rectangles, out, sam=sam, finetune_epochs=1, lr=1e-3, min_size=1) == 1  # the test series
    assert all(torch.equal(a, b) for a, b in zip(encoder, sam.image_encoder.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(decoder, sam.mask_decoder.parameters()))
    saved = build_sam("tiny", out / "sam_finetuned.pt")
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), saved.state_dict().values()))


def test_paper_preprocessing_windows_the_volume_and_resizes_by_cubic_spline():
    from orthodiff.evaluation.promptable import intensity_windows

    rng = np.random.default_rng(1)
    volume = np.zeros((3, 20, 24))
    volume[:, 4:16, 4:20] = rng.uniform(10, 20, (3, 12, 16))
    volume[2] *= 3  # a brighter slice: the volume window keeps it brighter, a slice window would not
    windows = intensity_windows(volume)
    assert (windows == np.percentile(volume[volume != 0], [1, 99])).all()  # the background's zeros are left out
    assert (intensity_windows(volume, "slice")[:, 0] == 0).all()
    with pytest.raises(OrthodiffError, match="unknown intensity window"):
        intensity_windows(volume, "global")
    dark, bright = (preprocess_slice(volume[z], windows[z]) for z in (0, 2))
    assert dark.mean() < bright.mean()
    step = np.zeros((8, 8))
    step[:, 4:] = 1.0
    cubic, linear = preprocess_slice(step, (0, 1))[0], preprocess_slice(step, (0, 1), "linear")[0]
    row = cubic[SIZE // 2].astype(int)
    assert row[:300].max() < 10 and row[-300:].min() > 245 and abs(row[SIZE // 2] - 128) <= 4
    assert (cubic != linear).any()  # a cubic spline rings at the edge where linear does not
    with pytest.raises(OrthodiffError, match="unknown interpolation"):
        preprocess_slice(step, (0, 1), "nearest")


def test_tiny_random_sam2_runs_on_the_cpu_without_torchvision(rectangles, tmp_path):
    """SAM2 (the `sam2` package, installed without its torchvision requirement) from its
    tiny Hiera config shrunk by hydra overrides, random weights, box prompts end to end."""
    pytest.importorskip("sam2", reason="sam2 not installed: SAM2_BUILD_CUDA=0 pip install --no-deps sam2")
    from orthodiff.evaluation.promptable import Sam2BoxPredictor, build_sam2_model
    torch.manual_seed(0)
    shrink = ["++model.image_size=256", "++model.image_encoder.trunk.embed_dim=16", "++model.image_encoder.trunk.num_heads=1",
              "++model.image_encoder.trunk.stages=[1,1,1,1]", "++model.image_encoder.trunk.global_att_blocks=[]",
              "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]"]
    model = build_sam2_model("configs/sam2.1/sam2.1_hiera_t.yaml", overrides=shrink)
    predictor = Sam2BoxPredictor(model)
    logits = predictor(preprocess_slice(np.random.rand(40, 48)), np.array([[100.0, 100, 600, 500], [0, 0, 50, 50]]), (40, 48))
    assert logits.shape == (2, 40, 48) and np.isfinite(logits).all() and logits.std() > 0
    assert not np.allclose(logits[0], logits[1])  # each box its own mask
    assert run_prompt(rectangles, tmp_path / "sam2", predictor=predictor, min_size=1) == 2
    with pytest.raises(OrthodiffError, match="SAM2 config 'configs/none.yaml'"):
        build_sam2_model("configs/none.yaml")


def test_finetune_with_the_papers_recipe_stops_early_on_the_val_split(monkeypatch):
    import orthodiff.training as training
    from orthodiff.evaluation.promptable import finetune_sam

    torch.manual_seed(0)
    sam = build_sam("tiny")
    image = torch.as_tensor(preprocess_slice(np.random.rand(40, 48)))[None]
    with torch.no_grad():
        embedding = sam.image_encoder(sam.preprocess(image.float()))
    inputs, boxes, targets = embedding.repeat(3, 1, 1, 1), torch.tensor([[100.0, 100, 600, 500]] * 3), torch.zeros(3, 1, 256, 256)
    targets[:, :, 25:125, 25:150] = 1
    seen, steps = {}, []
    original = training.train

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(training, "train", spy)  # finetune_sam imports the loop when called
    # a validation set it can only get worse on: the best epoch is the first, and 10 more end it
    finetune_sam(sam, inputs, boxes, targets, epochs=30, lr=1e-3, shift=20, val=(inputs[:1], boxes[:1], 1 - targets[:1]),
                 on_step=lambda: steps.append(1))
    assert seen["optimizer"] == "adamw" and seen["accumulate"] == 4 and seen["clip_norm"] == 1.0 and seen["patience"] == 10
    assert len(steps) == 11  # 3 pairs in batches of 2 accumulated: one step an epoch; stopped after epoch 11
    with pytest.raises(OrthodiffError, match="unknown fine-tuning recipe"):
        finetune_sam(sam, inputs, boxes, targets, recipe="fast")


def test_training_set_size_ablation_nests_and_datasets_mix(rectangles, tmp_path):
    import shutil

    from orthodiff.catalogs.cohort import read_catalog
    from orthodiff.evaluation.promptable import _pairs_of, training_subjects

    rows = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(80)], "series_id": range(80)})
    sizes = {n: set(training_subjects(rows, n, seed=3)["patient_id"]) for n in (5, 10, 20, 40)}
    assert [len(sizes[n]) for n in (5, 10, 20, 40)] == [5, 10, 20, 40]
    assert sizes[5] < sizes[10] < sizes[20] < sizes[40]  # nested
    assert len(training_subjects(rows, 100, seed=3)) == 80  # fewer subjects than asked: all of them
    catalog = read_catalog(rectangles)
    catalog["split"] = "train"
    write_catalog(catalog, rectangles)
    other = tmp_path / "other"
    shutil.copytree(rectangles.parent, other, ignore=shutil.ignore_patterns("other"))
    sam = build_sam("tiny")
    one = _pairs_of(sam, [rectangles], "train", False, "volume", "cubic", limit=1)
    both = _pairs_of(sam, [rectangles, other / "catalog.parquet"], "train", False, "volume", "cubic", limit=1)
    assert len(both[0]) == 2 * len(one[0]) > 0  # each dataset contributes up to the limit
    assert _pairs_of(sam, [rectangles], "val", False, "volume", "cubic") is None
