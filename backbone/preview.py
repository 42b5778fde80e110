"""`orthodiff sample`: DDIM samples from a backbone, as a montage of their central slices.

The quickest check that pretraining learned anatomy rather than noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from orthodiff.backbone.checkpoint import load_backbone
from orthodiff.backbone.diffusion import NoiseScheduler
from orthodiff.errors import OrthodiffError
from orthodiff.files import atomic_write


@torch.no_grad()
def ddim_sample(model: torch.nn.Module, scheduler: NoiseScheduler, shape: tuple[int, ...], steps: int = 50,
                generator: torch.Generator | None = None, progress=None) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from pure noise drawn from `generator` over `steps`
    timesteps of `scheduler`; `progress()` is called after each step."""
    device = next(model.parameters()).device
    x = torch.randn(shape, generator=generator).to(device)
    for t in scheduler.set_timesteps(steps).tolist():
        eps = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
        x = scheduler.step(eps, t, x).prev_sample
        if progress:
            progress()
    return x


def sample_volumes(checkpoint: str | Path, n: int = 4, steps: int = 50, seed: int = 0, progress=None) -> np.ndarray:
    """`n` generated volumes (n, D, H, W) in [-1, 1]; `progress()` after each DDIM step."""
    if n < 1 or steps < 1:
        raise OrthodiffError(f"--n and --sampling-steps must be at least 1 (got {n}, {steps})")
    model = load_backbone(checkpoint)
    c = model.config
    generator = torch.Generator().manual_seed(seed)
    x = ddim_sample(model, NoiseScheduler(), (n, 1, c.depth, c.image_size, c.image_size), steps, generator, progress)
    return x[:, 0].clamp(-1, 1).cpu().numpy()


def sample_preview(checkpoint: str | Path, png: str | Path, n: int = 4, steps: int = 50, seed: int = 0,
                   progress=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volumes = sample_volumes(checkpoint, n, steps, seed, progress)
    fig, axes = plt.subplots(1, n, figsize=(3 * n, 3.2), squeeze=False)
    for ax, volume in zip(axes[0], volumes):
        ax.imshow(volume[volume.shape[0] // 2], cmap="gray", vmin=-1, vmax=1)
        ax.axis("off")
    fig.suptitle(f"{Path(checkpoint).name}: {n} DDIM samples ({steps} steps), central slice")
    fig.tight_layout()
    atomic_write(png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return Path(png)
