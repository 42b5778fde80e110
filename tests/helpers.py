"""Small stores and backbones shared by the backbone and feature-store tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from orthodiff.featurestore.volumes import append_volumes


def make_volume_store(path, n: int = 8, size: int = 32, planes=("axial",), seed: int = 0) -> str:
    """A store of random volumes: `n` series per plane, the last two of each in `val`."""
    rng = np.random.default_rng(seed)
    rows = [(f"s{i}-{p}", f"c{i}", f"p{i}", p, 0, "val" if i >= n - 2 else "train") for p in planes for i in range(n)]
    meta = pd.DataFrame(rows, columns=["series_id", "case_id", "patient_id", "plane", "scan", "split"])
    append_volumes(str(path), rng.uniform(-1, 1, (len(meta), 16, size, size)), meta)
    return str(path)


def random_checkpoint(path, plane: str, preset: str = "demo", seed: int = 0, width: int | None = None,
                      config=None) -> str:
    """An untrained backbone checkpoint of `plane` in the reference layout (no pretraining);
    `width` overrides the preset's base channel count (a backbone of another width); `config`
    (a UNetConfig) replaces the preset's architecture, e.g. a micro U-Net for fast tests."""
    import dataclasses

    import torch

    from orthodiff.backbone import PRESETS, DiffusionUNet
    from orthodiff.backbone.checkpoint import reference_state, save_atomic
    from orthodiff.backbone.diffusion import NoiseScheduler

    config = config or (PRESETS[preset] if width is None else dataclasses.replace(PRESETS[preset], width=width))
    torch.manual_seed(seed)
    state = reference_state(DiffusionUNet(config), dict(NoiseScheduler().state_dict()))
    save_atomic({"ema": state, "model": state, "plane": plane, "preset": preset, "config": config.to_dict()}, path)
    return str(path)


def series_count(tree) -> int:
    """Series over every plane node of an `open_store` tree's features."""
    return sum(node.to_dataset().sizes["series"] for node in tree["features"].subtree if "series" in node.dims)


def label_catalog(path, n: int = 8, planes=("axial",), sick=(0, 1, 2)) -> str:
    """A knee catalog for `make_volume_store`'s series: exams `sick` have ACL and MM set, the rest are all 0."""
    from orthodiff.catalogs.tasks import get_task

    labels = get_task("knee").label_columns
    rows = []
    for p in planes:
        for i in range(n):
            row = {"series_id": f"s{i}-{p}", "case_id": f"c{i}", "patient_id": f"p{i}", "task": "knee", "joint": "knee",
                   "plane": p, "scan": 0, "split": "val" if i >= n - 2 else "train", **{label: 0 for label in labels}}
            if i in sick:
                row.update(ACL=1, MM=1)
            rows.append(row)
    pd.DataFrame(rows).to_parquet(path)
    return str(path)
