"""`orthodiff persona-models`: the paper's comparison of reconstruction models (its Table 2).

The masked-input DDPM (`personas.ddpm`), the GAN and the ViT autoencoder
(`personas.comparators`) are trained on the healthy training series of one plane with the
paper's central box masked, then complete the box of the healthy test series; each is scored
with the same ROI SSIM and MSE as `orthodiff persona-fidelity` (`fidelity.roi_ssim_mse`),
beside its two model-free baselines (`fidelity.fill_baselines`: the box filled with the
mean of its surroundings, and with a blurred copy of them). RePaint personas
made by `orthodiff persona` are scored by `persona-fidelity` on the same series and box.
CIs are percentile bootstraps over test series (scipy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from orthodiff.errors import OrthodiffError

PERSONA_MODELS = ("ddpm", "gan", "vit_ae")


def _healthy_volumes(store: str, catalog: str | Path, plane: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    from orthodiff.backbone.pretrain import healthy_series
    from orthodiff.featurestore.volumes import open_volumes

    healthy = healthy_series(catalog)
    ds = open_volumes(store)
    keep = np.flatnonzero((ds.plane.values == plane) & np.array([str(s) in healthy for s in ds.series.values]))
    ds = ds.isel(series=keep)
    out, test = {}, []
    for split in ("train", "test"):
        rows = np.flatnonzero(ds.split.values == split)
        if not len(rows):
            raise OrthodiffError(f"{store}: no healthy {plane} {split} series in {catalog} (all labels 0): persona "
                                 f"models are trained and scored on healthy exams only")
        out[split] = torch.from_numpy(ds.volume.isel(series=rows).values.astype(np.float32))[:, None]
        if split == "test":
            test = [str(s) for s in ds.series.values[rows]]
    return out, test


def compare_persona_models(store: str, catalog: str | Path, plane: str, out: str | Path, models=PERSONA_MODELS,
                           steps: int = 200, sampling_steps: int = 50, batch: int = 2, seed: int = 0,
                           n_boot: int = 500, progress=None) -> pd.DataFrame:
    """Train each of `models` for `steps` on the healthy training series, score the healthy
    test series; writes `persona_models` (per series) and `persona_models_summary` (mean SSIM
    and MSE with 95% CIs per model) to `out` and returns the summary."""
    from orthodiff.outputs import write_table
    from orthodiff.personas.comparators import train_persona_comparator
    from orthodiff.personas.ddpm import masked_inpaint, save_masked_ddpm, train_masked_ddpm
    from orthodiff.personas.fidelity import BASELINES, fill_baselines, mean_ci, roi_ssim_mse
    from orthodiff.personas.rois import box_grid

    unknown = [m for m in models if m not in PERSONA_MODELS]
    if unknown:
        raise OrthodiffError(f"persona models {unknown}: expected some of {list(PERSONA_MODELS)}")
    volumes, test = _healthy_volumes(store, catalog, plane)
    mask = torch.from_numpy(box_grid(tuple(volumes["train"].shape[2:]), 1)[0] > 0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    x0 = volumes["test"]
    fills = [fill_baselines(v[0].numpy(), mask.numpy()) for v in x0]  # the two model-free completions
    completions = {name.replace("_", " "): torch.from_numpy(np.stack([f[name] for f in fills])[:, None]).to(x0.dtype)
                   for name in BASELINES}
    healthy = {"catalog": str(catalog), "train_series": len(volumes["train"]), "plane": plane}
    for name in models:
        if name == "ddpm":
            model, _ = train_masked_ddpm(volumes["train"], mask, steps, batch, seed=seed, healthy=healthy)
            save_masked_ddpm(model, out / f"ddpm_{plane}.pt")
            completions[name] = masked_inpaint(model, x0, mask[None, None], sampling_steps, torch.Generator().manual_seed(seed))
        else:
            model, _ = train_persona_comparator(name, volumes["train"], mask, steps, batch, seed=seed)
            completions[name] = model.inpaint(x0, mask[None, None])
        if progress:
            progress()
    rows = []
    roi = mask.numpy()
    for name, completion in completions.items():
        for i, series in enumerate(test):
            ssim, mse = roi_ssim_mse(x0[i, 0].numpy(), completion[i, 0].numpy(), roi)
            rows.append({"model": name, "series": series, "ssim": ssim, "mse": mse, "mse_255": mse * (255 / 2) ** 2})
    per_series = pd.DataFrame(rows)
    summary = []
    for name, group in per_series.groupby("model", sort=False):
        row = {"model": name, "plane": plane, "test_series": len(group), "train_series": len(volumes["train"]),
               "steps": 0 if name in ("mean fill", "blur fill") else steps}
        for metric in ("ssim", "mse_255"):
            row[metric], *ci = mean_ci(group[metric], n_boot, seed)
            row[f"{metric}_ci"] = ci
        summary.append(row)
    summary = pd.DataFrame(summary)
    write_table(per_series, out / "persona_models")
    write_table(summary, out / "persona_models_summary")
    return summary
