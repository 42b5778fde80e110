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
    out = ok("fingerprint", "--store", store, "--catalog", catalog, "--task", "acl", "--out", tmp_path / "fp",
             "--epochs", 30, "--bootstrap", 20)
    table = pd.read_csv(tmp_path / "fp" / "metrics.csv").set_index("model")
    assert len(table) == 9 and (table["sources"].str.len() > 0).all()
    assert table.loc["classical radiomics (L1 logistic, image)", "auc"] == 1.0  # the planted box is found
    assert table.loc["fingerprint (image+persona)", "auc"] == 1.0
    explain = pd.read_csv(tmp_path / "fp" / "explain_image_persona.csv")
    assert set(explain.exam) == {"c9", "c10", "c11"} and explain.feature.str.startswith("axial|box1_z0y0x0|").all()
    ok("report", tmp_path / "fp")  # metrics, explanations, betas and the persona figure in one HTML page
    page = (tmp_path / "fp" / "report.html").read_text()
    assert "explain_image_persona.csv" in page and "persona_example.png" in page and "data:image/png;base64" in page
    result = runner.invoke(app, ["fingerprint", "--store", store, "--catalog", catalog, "--task", "pcl", "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "'pcl' is not one of" in result.output  # refused before the command runs
    out = ok("persona-fidelity", "--plane", "axial", "--store", store, "--catalog", catalog)
    assert "personas of 2 healthy test series" in out  # c9 and c11
