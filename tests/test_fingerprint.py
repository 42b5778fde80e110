"""Fingerprint head: sklearn contract, learned usage, and the end-to-end CLI path
pretrain --healthy -> persona -> radiomics -> fingerprint on a planted-signal cohort."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from typer.testing import CliRunner

from orthodiff.heads.fingerprint import FingerprintClassifier, youden_threshold


def test_fingerprint_head_clone_fit_predict_and_explain():
    rng = np.random.default_rng(0)
    r = pd.DataFrame(rng.normal(size=(120, 6)), columns=[f"f{i}" for i in range(6)])
    y = (r["f2"] > 0).astype(int).to_numpy()
    head = FingerprintClassifier(usage="mlp", hidden=8, epochs=60, lr=1e-2, random_state=0)
    assert clone(head).get_params() == head.get_params()
    with pytest.raises(NotFittedError):
        head.predict_proba(r)
    head.fit(r, y)
    assert not hasattr(clone(head), "beta_")
    p = head.predict_proba(r)
    assert p.shape == (120, 2) and np.allclose(p.sum(1), 1)
    assert (head.predict(r) == y).mean() > 0.9
    every = head.explain(r, top=6)  # u * beta * r: the informative feature carries the decisions
    assert every.groupby("feature").contribution.apply(lambda c: c.abs().mean()).idxmax() == "f2"
    assert list(head.explain(r.iloc[:3], top=2).exam) == [0, 0, 1, 1, 2, 2]
    hard = clone(head).set_params(hard_threshold=0.5).fit(r, y)
    assert set(np.unique(hard.usage_weights(r))) <= {0.0, 1.0}
    ones = FingerprintClassifier(usage="none", epochs=60, lr=1e-2).fit(r, y)
    assert (ones.usage_weights(r) == 1).all() and np.argmax(np.abs(ones.beta_.detach().numpy())) == 2
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8)


def test_fingerprint_randomness_comes_from_random_state_only():
    import torch

    rng = np.random.default_rng(1)
    r = pd.DataFrame(rng.normal(size=(40, 4)), columns=[f"f{i}" for i in range(4)])
    y = (r["f1"] > 0).astype(int).to_numpy()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    fits = [FingerprintClassifier(hidden=4, epochs=3, random_state=s).fit(r, y).predict_proba(r) for s in (7, 7, 8)]
    assert torch.equal(torch.get_rng_state(), before)  # fit leaves torch's global generator as it was
    np.testing.assert_array_equal(fits[0], fits[1])
    assert not np.array_equal(fits[0], fits[2])


@pytest.mark.slow
def test_resnet18_usage_predictor_reads_the_image():
    """The paper's usage predictor: MONAI's 3D ResNet-18 on the volume gives each exam its own u."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 1, 8, 8, 8)).astype(np.float32)
    r = pd.DataFrame(rng.normal(size=(6, 4)), columns=[f"f{i}" for i in range(4)])
    y = np.array([0, 1] * 3)
    head = FingerprintClassifier(usage="resnet18", hidden=8, epochs=1, batch_size=6, random_state=0)
    assert clone(head).get_params() == head.get_params()
    head.fit({"radiomics": r, "usage": images}, y)
    assert type(head.usage_net_.encoder).__name__ == "ResNet" and len(head.loss_curve_) == 1
    u = head.usage_weights({"radiomics": r, "usage": images})
    assert u.shape == (6, 4) and ((u > 0) & (u < 1)).all()
    assert np.abs(u - u.mean(0)).max() > 1e-3  # patient-specific, not one population usage
    flipped = head.usage_weights({"radiomics": r, "usage": images[::-1].copy()})
    np.testing.assert_allclose(flipped, u[::-1], atol=1e-5)  # u follows the image, not the radiomics row
    p = head.predict_proba({"radiomics": r, "usage": images})
    assert p.shape == (6, 2) and np.allclose(p.sum(1), 1)


def _planted_cohort(root) -> tuple[str, str]:
    """12 exams (axial only): even ones ACL+MM positive with a bright central box."""
    from orthodiff.catalogs.tasks import get_task
    from orthodiff.featurestore.volumes import append_volumes

    rng = np.random.default_rng(0)
    n = 12
    split = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    labels = get_task("knee").label_columns
    meta = pd.DataFrame({"series_id": [f"s{i}" for i in range(n)], "case_id": [f"c{i}" for i in range(n)],
                         "patient_id": [f"p{i}" for i in range(n)], "plane": "axial", "scan": 0, "split": split})
    vols = rng.uniform(-0.3, 0.3, (n, 16, 32, 32))
    vols[::2, 6:10, 13:19, 12:20] += 0.6
    append_volumes(str(root / "s.zarr"), vols, meta)
    catalog = meta.assign(task="knee", joint="knee", **{label: 0 for label in labels})
    catalog.loc[::2, ["ACL", "MM"]] = 1
    catalog.to_parquet(root / "c.parquet")
    return str(root / "s.zarr"), str(root / "c.parquet")


@pytest.mark.slow
def test_end_to_end_healthy_persona_radiomics_fingerprint(tmp_path):
    from orthodiff.cli import app

    store, catalog = _planted_cohort(tmp_path)
    runner = CliRunner()

    def ok(*args):
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 0, result.output
        return result.output

    out = ok("pretrain", "--plane", "axial", "--store", store, "--out", tmp_path / "h.pt", "--preset", "demo",
             "--steps", 1, "--batch", 1, "--healthy", "--catalog", catalog)
    assert "trained on 3 healthy axial training series" in out
    out = ok("persona", "--plane", "axial", "--store", store, "--backbone", tmp_path / "h.pt", "--grid", 1,
             "--sampling-steps", 1, "--jumps", 1)
    assert "made 12 axial personas (1 ROIs, 1 tasks)" in out and "warning" not in out
    out = ok("radiomics", "--plane", "axial", "--store", store, "--families", "first_order,histogram")
    assert "computed 123 features for 12 axial series" in out  # 1 ROI x 3 sources x (18 + 23)
    from orthodiff.backbone import backbone_id
    from orthodiff.radiomics.reader import open_radiomics

    assert open_radiomics(store).attrs["persona_backbones"] == {"axial": backbone_id(tmp_path / "h.pt")}
    from pathlib import Path

    import orthodiff

    encoder = Path(orthodiff.__file__).parent / "weights" / "demo_axial.pt"  # the shipped, pretrained axial encoder
    out = ok("fingerprint", "--store", store, "--catalog", catalog, "--task", "acl", "--out", tmp_path / "fp",
             "--epochs", 30, "--bootstrap", 20, "--usage-encoders", encoder)
    table = pd.read_csv(tmp_path / "fp" / "metrics.csv").set_index("model")
    assert len(table) == 10 and (table["sources"].str.len() > 0).all()
    assert table.loc["fingerprint (image+persona, pretrained encoder)", "usage input"] == "volumes (pretrained encoder)"
    assert np.isfinite(table.loc["fingerprint (image+persona, pretrained encoder)", "auc"])
    assert (tmp_path / "fp" / "explain_image_persona_pretrained_encoder.csv").is_file()
    assert table.loc["classical radiomics (L1 logistic, image)", "auc"] == 1.0  # the planted box is found
    assert table.loc["fingerprint (image+persona)", "auc"] == 1.0
    explain = pd.read_csv(tmp_path / "fp" / "explain_image_persona.csv")
    assert set(explain.exam) == {"c9", "c10", "c11"} and explain.feature.str.startswith("axial|box1_z0y0x0|").all()
    import json

    run = json.loads((tmp_path / "fp" / "run.json").read_text())
    assert run["personas"]["axial"]["healthy"]["train_series"] == 3  # which cohort the persona backbone saw
    method = run["method"]
    assert method["spatial_indices"] and method["beta_penalty"] == "norm" and method["youden_every"] == 10
    ok("report", tmp_path / "fp")  # metrics, explanations, betas and the persona figure in one HTML page
    page = (tmp_path / "fp" / "report.html").read_text()
    assert "explain_image_persona.csv" in page and "persona_example.png" in page and "data:image/png;base64" in page
    result = runner.invoke(app, ["fingerprint", "--store", store, "--catalog", catalog, "--task", "pcl", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'pcl' is not one of" in result.output  # refused before the command runs
    out = ok("persona-fidelity", "--plane", "axial", "--store", store, "--catalog", catalog)
    assert "personas of 2 healthy test series" in out  # c9 and c11


def _radiomics(n_exams: int, grid: int = 2):
    """A tiny `open_radiomics`-shaped Dataset: one plane, the cells of a grid, two sources."""
    import xarray as xr

    from orthodiff.personas.rois import box_grid

    _, names = box_grid((8, 8, 8), grid)
    rng = np.random.default_rng(0)
    value = rng.normal(size=(n_exams, len(names), 2, 3))
    return xr.Dataset({"value": (("series", "roi", "source", "feature"), value)},
                      coords={"series": [f"s{i}" for i in range(n_exams)], "case_id": ("series", [f"c{i}" for i in range(n_exams)]),
                              "scan": ("series", np.zeros(n_exams, int)), "plane": ("series", ["axial"] * n_exams),
                              "roi_name": ("roi", names), "source": ["image", "persona"], "feature": ["mean", "energy", "skew"]})


def test_spatial_indices_enter_the_matrix_and_pass_unscaled():
    """Sec. 5.2.2: per sub-patch 35 + 3 candidates, the 3 being its position in the n^3 grid."""
    from orthodiff.heads.fingerprint_cohort import exam_matrix

    ds = _radiomics(10)
    catalog = pd.DataFrame({"case_id": [f"c{i}" for i in range(10)]})
    X = exam_matrix(ds, catalog)
    assert X.shape == (10, 8 * 2 * (3 + 3))  # 2x2x2 cells x 2 sources x (3 features + 3 indices)
    assert (X["axial|box2_z1y0x1|persona|index_z"] == 2).all() and (X["axial|box2_z1y0x1|persona|index_y"] == 1).all()
    assert (X["axial|box2_z1y0x1|image|index_x"] == 2).all()
    assert exam_matrix(ds, catalog, spatial_indices=False).shape == (10, 8 * 2 * 3)
    y = np.arange(10) % 2
    head = FingerprintClassifier(usage="none", epochs=2, random_state=0).fit(X, y)
    indices = X.columns.str.endswith(("|index_z", "|index_y", "|index_x"))
    assert (head.mean_[indices] == 0).all() and (head.scale_[indices] == 1).all()  # raw positions, not centred to 0
    assert (head.mean_[~indices] != 0).all()
    r, _ = head._tensors(X)
    np.testing.assert_array_equal(r.numpy()[:, indices], X.loc[:, indices].to_numpy())


def test_youden_re_estimated_every_10_epochs_and_eq8_penalties():
    rng = np.random.default_rng(1)
    r = pd.DataFrame(rng.normal(size=(40, 3)), columns=["a", "b", "c"])
    y = (r["a"] + 0.5 * rng.normal(size=40) > 0).astype(int).to_numpy()
    val = (r.iloc[:20], y[:20])
    head = FingerprintClassifier(usage="mlp", hidden=4, epochs=25, lr=1e-2, random_state=0).fit(r, y, validation=val)
    assert [epoch for epoch, _ in head.threshold_history_] == [10, 20]  # sec. 5.2.4, not once after training
    assert head.threshold_ == head.threshold_history_[-1][1]
    once = clone(head).set_params(youden_every=None).fit(r, y, validation=val)
    assert [epoch for epoch, _ in once.threshold_history_] == [25]
    assert once.threshold_ == pytest.approx(youden_threshold(val[1], once.predict_proba(val[0])[:, 1]))
    assert float(head.bias_) == 0.0 and not head.bias_.requires_grad  # eq. 7 has no intercept
    assert float(clone(head).set_params(fit_intercept=True).fit(r, y).bias_.detach()) != 0.0
    import torch

    bce = torch.nn.BCEWithLogitsLoss()
    logit, target, u = torch.zeros(2), torch.tensor([0.0, 1.0]), torch.tensor([[0.5, 0.5, 1.0], [0.0, 0.0, 0.0]])
    head.beta_.data = torch.tensor([3.0, 4.0, 0.0])
    for penalty, expected in (("norm", 5.0), ("squared", 25.0)):  # lambda_beta ||beta||_2 (eq. 8) vs its square
        head.set_params(beta_penalty=penalty, lambda_beta=1.0, lambda_u=0.5)
        extra = float((head._loss(logit, u, target, bce) - bce(logit, target)).detach())
        assert extra == pytest.approx(expected + 0.5 * (2.0 + 0.0) / 2)  # + lambda_u * mean_exams ||u||_1
    with pytest.raises(Exception, match="beta_penalty"):
        clone(head).set_params(beta_penalty="l1").fit(r, y)


def test_diffusion_encoder_usage_predictor_frozen_or_fine_tuned():
    """The usage predictor on our own pretrained 3D network (the shipped demo encoder)."""
    from pathlib import Path

    import torch

    import orthodiff
    from orthodiff.backbone.checkpoint import load_backbone
    from orthodiff.errors import OrthodiffError
    from orthodiff.supervised.networks import usage_encoder

    path = str(Path(orthodiff.__file__).parent / "weights" / "demo_axial.pt")
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, size=(4, 1, 16, 32, 32)).astype(np.float32)
    r = pd.DataFrame(rng.normal(size=(4, 3)), columns=["a", "b", "c"])
    y = np.array([0, 1, 0, 1])
    X = {"radiomics": r, "usage": images}
    frozen = FingerprintClassifier(usage="diffusion", encoder=usage_encoder([path]), finetune=False, epochs=1,
                                   batch_size=4, random_state=0)
    assert clone(frozen).encoder is not frozen.encoder
    frozen.fit(X, y)
    pretrained = load_backbone(path, "cpu").state_dict()

    def unchanged(model) -> bool:
        return all(torch.equal(v, pretrained[k]) for k, v in model.usage_net_.encoder.encoders[0].unet.state_dict().items())

    assert unchanged(frozen) and frozen.usage_net_.encoder.dim == 64  # frozen: the shipped weights
    tuned = clone(frozen).set_params(finetune=True).fit(X, y)
    assert not unchanged(tuned) and all(torch.equal(v, pretrained[k]) for k, v in
                                        tuned.encoder.encoders[0].unet.state_dict().items())  # the given one untouched
    u = tuned.usage_weights(X)
    assert u.shape == (4, 3) and np.abs(u - u.mean(0)).max() > 0
    with pytest.raises(OrthodiffError, match="pretrained on 16x32x32"):
        clone(frozen).fit({"radiomics": r, "usage": images[:, :, :8]}, y)
    with pytest.raises(OrthodiffError, match="needs `encoder`"):
        clone(frozen).set_params(encoder=None).fit(X, y)
