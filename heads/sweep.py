"""Timestep x block sweeps: one probe per (plane, timestep, block), trained on the training
split and scored (macro AUROC, exam level) on validation; top-k per plane; heatmaps.

GAP sweeps train every configuration of a plane inside ONE batched linear model: the
GAP vectors of all (timestep, block) pairs are read once per epoch, and because the loss
is a sum of independent per-configuration losses and Adam is element-wise, each slice
follows exactly the trajectory it would follow alone (``PlaneProbe("gap")``). SAP sweeps
do the same with ``BatchedSAPProbes`` over the activations of all configurations.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr
from scipy.special import expit
from sklearn.utils.validation import check_is_fitted
from torch import nn

from orthodiff.catalogs.tasks import PLANES
from orthodiff.errors import OrthodiffError
from orthodiff.heads.batched_sap import BatchedSAPProbes
from orthodiff.heads.defaults import PROBE
from orthodiff.heads.estimator import MultiLabelClassifier
from orthodiff.heads.metrics import auroc_per_label
from orthodiff.heads.probe import PlaneProbe, channel_statistics
from orthodiff.heads.protocol import check_labels, select_series
from orthodiff.options import Pooling, choice
from orthodiff.outputs import atomic_savefig, pyplot
from orthodiff.training import apply, train


class BatchedGAPNet(nn.Module):
    """K independent linear GAP probes: (N, K, C) -> (N, K, labels)."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, n_labels: int):
        super().__init__()
        k, c = mean.shape
        self.register_buffer("mean", torch.from_numpy(mean))
        self.register_buffer("scale", torch.from_numpy(scale))
        self.weight = nn.Parameter(torch.zeros(k, c, n_labels))
        self.bias = nn.Parameter(torch.zeros(k, n_labels))

    def linear(self, standardized: torch.Tensor) -> torch.Tensor:
        # (K, N, C) @ (K, C, L): one batched matmul for every configuration. The input is made
        # contiguous per configuration first: the weight gradient's bmm then runs ~3x faster
        # than on the strided view, for a copy that costs a few percent of that.
        return torch.baddbmm(self.bias[:, None], standardized.transpose(0, 1).contiguous(), self.weight).transpose(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear((x - self.mean) / self.scale)


class BatchedGAPProbes(MultiLabelClassifier):
    """``PlaneProbe("gap")`` for K configurations at once; ``X`` is (N, K, C) GAP vectors,
    outputs carry the configuration axis: ``predict_proba`` (N, K, labels), or (N, K, 2) for
    a 1-D binary ``y``."""

    def __init__(self, epochs: int = PROBE["epochs"], lr: float = PROBE["lr"], batch_size: int = PROBE["batch_size"],
                 weight_decay: float = 0.0, random_state: int = 0):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.random_state = random_state

    def fit(self, X, y, sample_weight=None) -> "BatchedGAPProbes":
        X = np.asarray(X, dtype=np.float32)
        y = self._encode_targets(y)
        mean, scale = channel_statistics(X)
        net = BatchedGAPNet(mean, scale, y.shape[1])
        # standardise once up front instead of in every step (same values as ``net.forward``)
        self.net_ = train(
            net, [(X - mean) / scale], y, sample_weight, epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            random_state=self.random_state, weight_decay=self.weight_decay, forward=net.linear,
        )
        return self

    def _positive_proba(self, X) -> np.ndarray:
        check_is_fitted(self)
        return expit(apply(self.net_, [np.asarray(X, dtype=np.float32)]))


def _exam_auroc(prob: np.ndarray, rows: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """Per-label AUROC after averaging each exam's series; ``prob`` (N, ..., labels)."""
    codes, cases = pd.factorize(rows["case_id"].to_numpy())
    counts = np.bincount(codes)
    flat = prob.reshape(len(prob), -1)
    mean = np.zeros((len(cases), flat.shape[1]))
    np.add.at(mean, codes, flat)
    mean = (mean / counts[:, None]).reshape((len(cases),) + prob.shape[1:])
    y = rows.drop_duplicates("case_id").set_index("case_id").loc[cases, labels].to_numpy()
    configs = mean.reshape(len(cases), -1)  # (cases, K * labels), configuration-major
    k = configs.shape[1] // len(labels)
    return auroc_per_label(np.tile(y, (1, k)), configs).reshape(k, len(labels))


def _plane_rows(catalog: pd.DataFrame, plane: str, split: str, labels: list[str]) -> pd.DataFrame:
    rows = catalog[(catalog["plane"] == plane) & (catalog["split"] == split)]
    if rows.empty:
        raise OrthodiffError(f"the catalog has no {split} series of plane {plane}")
    return rows


def sweep(
    features: dict[str, xr.Dataset],
    catalog: pd.DataFrame,
    labels: list[str],
    pooling: str = "gap",
    batched: bool = True,
    probe_params: dict | None = None,
    progress=None,
    probes: dict | None = None,
    workers: int = 1,
) -> pd.DataFrame:
    """Tidy validation AUROC: columns plane, timestep, block, label (and "macro"), auroc.

    ``features[plane]`` holds ``gap(series, timestep, block, channel)`` (and
    ``activation`` for GLP/SAP). ``batched=False`` trains GAP and SAP probes one by one.
    ``probes``: a dict filled with the fitted probe of each (plane, timestep, block) for GLP and
    SAP, the Stage I probes of fusion on that configuration (GAP's costs nothing to refit).
    ``workers`` > 1 sweeps the planes in that many processes at once, each with an equal share
    of the CPU threads. Each plane trains exactly as it would alone (the demo's sweep and the
    tests give identical AUROCs and probes; a different thread count could change float
    rounding). It pays on CPU, where a SAP step keeps about one core busy.
    """
    check_labels(catalog, labels)
    pooling = choice(Pooling, pooling, "pooling")
    if workers < 1:
        raise OrthodiffError(f"--workers {workers}: need at least 1")
    params = probe_params or {}
    planes = [p for p in PLANES if p in features]
    jobs = {plane: (plane, features[plane], catalog, labels, pooling, batched, params) for plane in planes}
    workers = min(workers, len(planes))
    if workers <= 1:  # one plane (or none) needs no pool
        done = {plane: _plane_sweep(*job, progress=progress) for plane, job in jobs.items()}
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=torch.set_num_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_plane_sweep, *job): plane for plane, job in jobs.items()}
            done = {}
            for future in as_completed(futures):
                done[futures[future]] = future.result()
                if progress:
                    progress(plane_units(features[futures[future]], pooling, batched))
    out = []
    for plane in planes:
        rows, fitted = done[plane]
        out.extend(rows)
        if probes is not None:
            probes.update(fitted)
    return pd.DataFrame(out)


def default_workers(planes: int, pooling: str) -> int:
    """Processes for a sweep when none are asked for: one per plane for GLP and SAP, even on
    fewer cores. On two cores the demo's SAP sweep took 3:37 in three processes; one plane
    alone takes 2:07 and two at once 2:17, so two processes would take about 4:24 and one about
    6:20. One for GAP, whose batched sweep takes seconds, less than starting a process."""
    return max(1, planes) if Pooling(pooling).trained else 1


def plane_units(ds: xr.Dataset, pooling: str, batched: bool) -> int:
    """Progress units of one plane: one for a batched sweep, one per configuration otherwise."""
    return 1 if Pooling(pooling).batched and batched else ds.sizes["timestep"] * ds.sizes["block"]


def _plane_sweep(plane, ds, catalog, labels, pooling, batched, params, progress=None) -> tuple[list[dict], dict]:
    """One plane of :func:`sweep`: its tidy rows and its fitted GLP/SAP probes."""
    timesteps, blocks = ds["timestep"].to_numpy().tolist(), ds["block"].to_numpy().tolist()
    configs = [(t, b) for t in timesteps for b in blocks]
    pooling = Pooling(pooling)
    var = ds[pooling.variable]
    if pooling is Pooling.gap and batched:  # GAP summaries are kilobytes per series: one read
        var = var.load()
    parts = {}
    for split in ("train", "val"):
        rows = _plane_rows(catalog, plane, split, labels)
        selected = select_series(var, rows["series_id"], plane)
        parts[split] = (rows.set_index("series_id").loc[selected["series"].to_numpy()].reset_index(), selected)
    (train_rows, train_x), (val_rows, val_x) = parts["train"], parts["val"]
    y = train_rows[labels].to_numpy()
    probes = {}
    if pooling is Pooling.gap and batched:
        def flat(x):
            return x.transpose("series", "timestep", "block", "channel").to_numpy().reshape(len(x), len(configs), -1)
        model = BatchedGAPProbes(**params).fit(flat(train_x), y)
        aucs = _exam_auroc(model.predict_proba(flat(val_x)), val_rows, labels)
    elif pooling is Pooling.sap and batched:
        def configurations(x):  # lazy (series, configuration, channel, z, y, x), configs in order
            return x.stack(configuration=("timestep", "block")).transpose("series", "configuration", ...).data
        model = BatchedSAPProbes(**params).fit(configurations(train_x), y)
        aucs = _exam_auroc(model.predict_proba(configurations(val_x)), val_rows, labels)
        probes = {(plane, int(t), str(b)): model.probe(k) for k, (t, b) in enumerate(configs)}
    else:
        aucs = []
        for t, b in configs:
            # one configuration at a time, as the reference workflow reads one slab per
            # configuration; GAP slabs are small enough to load, activations stream
            def slab(x):
                part = x.sel(timestep=t, block=b)
                return (part if pooling.trained else part.load()).data

            probe = PlaneProbe(pooling, **params).fit(slab(train_x), y)
            aucs.append(_exam_auroc(probe.predict_proba(slab(val_x)), val_rows, labels)[0])
            if pooling.trained:
                probes[(plane, int(t), str(b))] = probe
            if progress:
                progress()
        aucs = np.stack(aucs)
    out = []
    for (t, b), row in zip(configs, aucs):
        macro = np.nanmean(row) if np.isfinite(row).any() else np.nan
        for label, value in [*zip(labels, row), ("macro", macro)]:
            out.append({"plane": plane, "timestep": int(t), "block": str(b), "label": label, "auroc": float(value)})
    if progress and pooling.batched and batched:
        progress()
    return out, probes


def top_configs(results: pd.DataFrame, k: int = 4) -> pd.DataFrame:
    """The ``k`` best (timestep, block) per plane by validation macro AUROC, ranked."""
    macro = results[results["label"] == "macro"].sort_values(["plane", "auroc", "timestep", "block"], ascending=[True, False, True, True])
    top = macro.groupby("plane", sort=False).head(k).copy()
    top["rank"] = top.groupby("plane").cumcount() + 1
    order = {p: i for i, p in enumerate(PLANES)}
    return top.sort_values(["plane", "rank"], key=lambda s: s.map(order) if s.name == "plane" else s)[
        ["plane", "rank", "timestep", "block", "auroc"]
    ].reset_index(drop=True)


def plot_heatmaps(results: pd.DataFrame, out_dir) -> list:
    """One PNG per plane: validation macro AUROC over timestep (rows) x block (columns)."""
    plt = pyplot()
    paths = []
    macro = results[results["label"] == "macro"]
    for plane, part in macro.groupby("plane", sort=False):
        grid = part.pivot(index="timestep", columns="block", values="auroc").sort_index()
        fig, ax = plt.subplots(figsize=(1.6 + 1.1 * grid.shape[1], 1.2 + 0.45 * grid.shape[0]))
        image = ax.imshow(grid.to_numpy(), cmap="viridis", aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        ax.set_xlabel("block")
        ax.set_ylabel("timestep")
        for (i, j), value in np.ndenumerate(grid.to_numpy()):
            ax.text(j, i, "—" if np.isnan(value) else f"{value:.3f}", ha="center", va="center", fontsize=8, color="w")
        fig.colorbar(image, ax=ax, label="val macro AUROC")
        ax.set_title(f"{plane}: validation macro AUROC")
        fig.tight_layout()
        paths.append(atomic_savefig(fig, Path(out_dir) / f"heatmap_{plane}.png"))
        plt.close(fig)
    return paths
