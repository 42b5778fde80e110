"""Batched GAP sweep equals one-by-one training; top-k; heatmaps; HTML report."""

import numpy as np
import pytest
import torch

from orthodiff.errors import OrthodiffError
from orthodiff.heads.report import build_report
from orthodiff.heads.sweep import plot_heatmaps, sweep, top_configs
from orthodiff.heads.synthetic import synthetic_catalog, synthetic_features
from orthodiff.outputs import write_table

LABELS = ["ACL", "PCL", "MM", "LM", "MCL"]
PARAMS = dict(epochs=6, lr=5e-3)


@pytest.fixture(scope="module")
def cohort():
    catalog = synthetic_catalog(220, LABELS, seed=5)
    features = synthetic_features(catalog, LABELS, channels=24, timesteps=(10, 100, 500), seed=5, activation=False)
    return catalog, features


@pytest.mark.slow
def test_batched_gap_sweep_matches_one_by_one_training(cohort):
    catalog, features = cohort
    batched = sweep(features, catalog, LABELS, batched=True, probe_params=PARAMS)
    alone = sweep(features, catalog, LABELS, batched=False, probe_params=PARAMS)
    assert len(batched) == 3 * 3 * 3 * (len(LABELS) + 1)
    key = ["plane", "timestep", "block", "label"]
    merged = batched.merge(alone, on=key, suffixes=("_batched", "_alone"))
    assert len(merged) == len(batched)
    assert np.nanmax(np.abs(merged.auroc_batched - merged.auroc_alone)) < 0.005
    # the synthetic signal peaks at timestep 100 in the last block: the sweep must find it
    top = top_configs(batched, k=4)
    assert list(top.groupby("plane").size()) == [4, 4, 4]
    best = top[top["rank"] == 1]
    assert (best["timestep"] == 100).all()
    assert (top.groupby("plane")["auroc"].apply(lambda s: s.is_monotonic_decreasing)).all()


def test_heatmaps_and_html_report(cohort, tmp_path):
    catalog, features = cohort
    results = sweep(features, catalog, LABELS, probe_params=PARAMS)
    write_table(results, tmp_path / "sweep")
    paths = plot_heatmaps(results, tmp_path)
    assert [p.name for p in paths] == ["heatmap_sagittal.png", "heatmap_coronal.png", "heatmap_axial.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    report = build_report(tmp_path).read_text()
    assert report.count("data:image/png;base64,") == 3 and "<table" in report and "mid_2" in report
    assert not list(tmp_path.glob(".*.tmp"))


def test_sweep_bad_input(cohort):
    catalog, features = cohort
    with pytest.raises(OrthodiffError, match="no val series of plane sagittal"):
        sweep(features, catalog.assign(split=catalog.split.replace("val", "test")), LABELS)
    with pytest.raises(OrthodiffError, match="lacks label columns"):
        sweep(features, catalog.drop(columns="PCL"), LABELS)
    with pytest.raises(OrthodiffError, match="unknown pooling 'max'"):
        sweep(features, catalog, LABELS, pooling="max")


def test_batched_sap_probes_match_one_probe_at_a_time():
    """K SAP probes trained as one batched model give each configuration the predictions of
    the paper's single SAP probe (``PlaneProbe("sap")``: raw activation -> SAP -> [GAP, SAP]
    -> standardisation -> linear) trained alone on that configuration."""
    from orthodiff.heads.batched_sap import BatchedSAPProbes
    from orthodiff.heads.probe import PlaneProbe

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (40, 2)).astype(np.float32)
    x = rng.normal(size=(40, 3, 32, 1, 2, 3)).astype(np.float32) + 3 * y[:, None, :1, None, None, None]
    params = dict(epochs=3, lr=5e-3, batch_size=8, random_state=4)
    model = BatchedSAPProbes(**params).fit(x, y)
    batched = model.predict_proba(x)
    assert batched.shape == (40, 3, 2)
    for k in range(3):
        alone = PlaneProbe("sap", **params).fit(x[:, k], y)
        np.testing.assert_allclose(batched[:, k], alone.predict_proba(x[:, k]), atol=1e-4)
        exported = model.probe(k)  # the configuration as a fitted single probe (a Stage I probe)
        assert exported.get_params() == alone.get_params()
        np.testing.assert_allclose(exported.predict_proba(x[:, k]), batched[:, k], atol=1e-6)
        np.testing.assert_allclose(exported.transform(x[:, k]), alone.transform(x[:, k]), atol=1e-3)
    assert np.abs(batched[:, 0, 0] - batched[:, 0, 1]).max() > 0.05  # trained, not at the start


def test_attention_mean_is_the_mean_attention_and_its_gradient():
    """``attention_mean`` (chunked, P recomputed in backward) equals softmax(q^T k) averaged
    over the queries, and so do its gradients, across more rows than one chunk."""

    from orthodiff.heads import batched_sap

    torch.manual_seed(0)
    qt = torch.randn(batched_sap.CHUNK + 5, 4, 6, dtype=torch.float64, requires_grad=True)
    kt = torch.randn(batched_sap.CHUNK + 5, 4, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(batched_sap.CHUNK + 5, 6, dtype=torch.float64)
    (batched_sap.attention_mean(qt, kt) * weights).sum().backward()
    fast = qt.grad.clone(), kt.grad.clone()
    qt.grad = kt.grad = None
    plain = (qt.transpose(1, 2) @ kt).softmax(-1).mean(1)
    (plain * weights).sum().backward()
    torch.testing.assert_close(batched_sap.attention_mean(qt, kt), plain)
    torch.testing.assert_close(fast, (qt.grad, kt.grad))


def test_attention_mean_kernel_matches_the_eager_mean_attention(monkeypatch):
    """In float32 ``attention_mean`` runs the fused C kernel (compiled for these sizes) on
    (B, d, N, L) queries and keys and gives the float64 mean attention of every (b, n) and
    its gradients up to float32 rounding; without a C compiler the kernel is reported
    unavailable (and ``attention_mean`` runs eagerly)."""
    from orthodiff.heads import attention_kernel, batched_sap

    torch.manual_seed(1)
    qt = torch.randn(7, 3, 2, 21, dtype=torch.float64, requires_grad=True)
    kt = torch.randn(7, 3, 2, 21, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(7, 2, 21, dtype=torch.float64)
    plain = torch.einsum("bdni,bdnj->bnij", qt, kt).softmax(-1).mean(2)
    (plain * weights).sum().backward()
    q32, k32 = (t.detach().float().requires_grad_() for t in (qt, kt))
    assert attention_kernel.load(3, 21) is not None
    fused = batched_sap.attention_mean(q32, k32)
    (fused * weights.float()).sum().backward()
    torch.testing.assert_close(fused.double(), plain.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q32.grad.double(), qt.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(k32.grad.double(), kt.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(batched_sap.attention_mean(qt, kt), plain)  # float64: the eager path

    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr(attention_kernel, "_warned", False)
    with pytest.warns(UserWarning, match="no C compiler"):
        assert attention_kernel.load.__wrapped__(3, 21) is None


@pytest.mark.slow
def test_batched_sap_sweep_finds_the_signal():
    catalog = synthetic_catalog(120, LABELS, seed=5)
    features = synthetic_features(catalog, LABELS, channels=32, spatial=(1, 2, 2), timesteps=(10, 100), seed=5)
    params = dict(epochs=4, lr=5e-3)
    probes, advanced = {}, []
    results = sweep(features, catalog, LABELS, "sap", probe_params=params, probes=probes)
    assert len(results) == 3 * 2 * 3 * (len(LABELS) + 1)
    best = top_configs(results, k=1)
    assert (best["timestep"] == 100).all() and (best["auroc"] > 0.6).all()

    # planes swept in two processes at once: the same numbers and probes, one progress unit per plane
    in_processes = {}
    parallel = sweep(features, catalog, LABELS, "sap", probe_params=params, probes=in_processes, workers=2,
                     progress=advanced.append)
    assert parallel.equals(results) and advanced == [1, 1, 1]
    assert in_processes.keys() == probes.keys()
    for key, probe in probes.items():
        for name, tensor in probe.net_.state_dict().items():
            assert torch.equal(tensor, in_processes[key].net_.state_dict()[name]), (key, name)
    with pytest.raises(OrthodiffError, match="--workers 0"):
        sweep(features, catalog, LABELS, "sap", workers=0)
